"""Unimodal sub-networks shared by TFN and LFN (Zadeh et al., 2017, Sect. 4.1-4.2; Liu et al., 2018, Sect. 4).

* :class:`SubNet` (acoustic / visual): the time-averaged feature vector -> BatchNorm -> Dropout -> three
  Linear+ReLU layers (TFN's "3 hidden layers of ReLU units"; MMSA ``FeatureNets.SubNet``).
* :class:`TextSubNet` (language): an LSTM over the right-padded word sequence, run packed by the true lengths so
  the final state is the state at each sample's last word (never the padding), then Dropout -> Linear.
* :class:`ModalityEncoders`: one of the above per modality, as configured, returning ``{m: (B, d_m)}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.contract import Batch
from mmfusion.errors import ConfigError
from mmfusion.models.common import length_mask, lengths_of, masked_mean, run_lstm


def as_sequence(x: Tensor) -> Tensor:
    """(B, D) utterance vectors -> (B, 1, D); (B, T, D) unchanged."""
    return x[:, None, :] if x.dim() == 2 else x


def per_modality(value: float | int | Mapping[str, float | int], modalities: Sequence[str], key: str) -> dict:
    """A scalar for every modality, or a mapping that must name every modality (clear error otherwise)."""
    if isinstance(value, Mapping):
        missing = [m for m in modalities if m not in value]
        if missing:
            raise ConfigError(f"model.{key} has no entry for modalities {missing}; got keys {list(value)}")
        return {m: value[m] for m in modalities}
    return {m: value for m in modalities}


def encoder_hidden(
    modalities: Sequence[str],
    hidden: int | Mapping[str, int],
    text_hidden: int,
    sequence_modalities: Sequence[str],
) -> dict[str, int]:
    """Hidden size per modality: ``hidden`` (int or mapping) for the vector sub-networks, ``text_hidden`` for the
    LSTM sub-networks unless ``hidden`` names them explicitly."""
    out = {}
    for m in modalities:
        if isinstance(hidden, Mapping) and m in hidden:
            out[m] = int(hidden[m])
        elif m in sequence_modalities:
            out[m] = int(text_hidden)
        elif isinstance(hidden, Mapping):
            raise ConfigError(f"model.hidden has no entry for modality {m!r}; got keys {list(hidden)}")
        else:
            out[m] = int(hidden)
    return out


class SubNet(nn.Module):
    """BatchNorm1d -> Dropout -> 3 x (Linear + ReLU) on a (B, D) vector.

    A training batch of one sample cannot be batch-normalised; it then uses the running statistics (MMSA crashes
    there, notes §4.1 item 7)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm
        use_batch = self.training and x.shape[0] > 1
        if n.training and use_batch:
            x = n(x)
        else:
            x = F.batch_norm(x, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
        return self.layers(self.drop(x))


class TextSubNet(nn.Module):
    """LSTM (packed by length) -> final hidden state of the top layer -> Dropout -> Linear (no activation)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float, num_layers: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            in_dim,
            hidden,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        lstm = self.lstm
        if (
            lstm.num_layers == 1
            and x.device.type == "cpu"
            and lstm.input_size >= 4 * lstm.hidden_size
            and x.shape[1] > 1
        ):
            # wide inputs (e.g. 768-d BERT features): the hand-written BPTT skips the input gradient that the oneDNN
            # kernel always computes (B*T*D*4H multiply-adds), worth more than its per-step overhead
            valid = None if bool((lengths >= x.shape[1]).all()) else length_mask(lengths, x.shape[1])
            _, last = lstm_scan(lstm, x, valid)
        else:
            _, last = run_lstm(lstm, x, lengths)
        return self.out(self.drop(last))


class _LSTMScan(torch.autograd.Function):
    """One 1-layer LSTM over precomputed input projections, with a hand-written backward (BPTT).

    Forward per step: one ``addmm`` on the recurrent weights and a few in-place elementwise ops into preallocated
    (T, B, .) buffers. Backward: the gate-derivative factors of all steps are formed at once, the per-step loop only
    carries ``(dh, dc)`` (one ``mm`` with ``W_hh`` per step), and the recurrent weight gradient is ONE large GEMM
    over all steps (autograd would issue a small ``mm`` per step). Padded steps (``mask`` False) carry ``(h, c)``.

    Memory: per step it keeps the gate activations ``[sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)]`` (4H), the cell
    and hidden states (2H), as ``nn.LSTMCell`` under autograd does; ``tanh(c)`` is recomputed in the backward,
    whose factors are written into one (T, B, 4H) buffer without temporaries.

    Args (forward): xproj (B, T, 4H) = ``x W_ih^T + b_ih + b_hh``; w_hh (4H, H); mask (T, B, 1) bool or None.
    Returns: cell states (T, B, H) and the last (carried) hidden state (B, H).
    """

    @staticmethod
    def forward(ctx: Any, xproj: Tensor, w_hh: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        b, t, g4 = xproj.shape
        h4 = g4 // 4
        s = xproj.new_empty(t, b, g4)  # [sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)] per step
        cs = xproj.new_empty(t, b, h4)
        hs = xproj.new_empty(t + 1, b, h4)
        hs[0].zero_()
        c = xproj.new_zeros(b, h4)
        tc = xproj.new_empty(b, h4)  # tanh(c_t) of the current step
        wt = w_hh.t()
        for k in range(t):
            st = s[k]
            torch.addmm(xproj[:, k], hs[k], wt, out=st)
            st[:, : 2 * h4].sigmoid_()
            st[:, 2 * h4 : 3 * h4].tanh_()
            st[:, 3 * h4 :].sigmoid_()
            ck = cs[k]
            torch.mul(st[:, h4 : 2 * h4], c, out=ck)
            ck.addcmul_(st[:, :h4], st[:, 2 * h4 : 3 * h4])
            torch.tanh(ck, out=tc)
            torch.mul(st[:, 3 * h4 :], tc, out=hs[k + 1])
            if mask is not None:
                torch.where(mask[k], ck, c, out=ck)
                torch.where(mask[k], hs[k + 1], hs[k], out=hs[k + 1])
            c = ck
        ctx.save_for_backward(w_hh, s, cs, hs, mask)
        return cs, hs[t].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward (a clear error instead of a wrong one)
    def backward(ctx: Any, d_cs: Tensor | None, d_hlast: Tensor | None) -> tuple[Tensor | None, ...]:
        w_hh, s, cs, hs, mask = ctx.saved_tensors
        t, b, g4 = s.shape
        h4 = g4 // 4
        i, f, tg, o = s.split(h4, -1)
        # d(gate pre-activations) = [dcc, dcc, dcc, dh] * a, for all steps at once, written slot by slot:
        # a = [tanh(g) i (1 - i), c_{t-1} f (1 - f), i (1 - tanh(g)^2), tanh(c) o (1 - o)]
        a = torch.empty_like(s)
        a_i, a_f, a_g, a_o = a.split(h4, -1)
        torch.neg(i, out=a_i).add_(1).mul_(i).mul_(tg)
        torch.neg(f, out=a_f).add_(1).mul_(f)
        a_f[1:].mul_(cs[:-1])
        a_f[0].zero_()  # c_0 = 0
        torch.mul(tg, tg, out=a_g).neg_().add_(1).mul_(i)
        tc = torch.tanh(cs)
        torch.neg(o, out=a_o).add_(1).mul_(o).mul_(tc)
        q = tc.square_().neg_().add_(1).mul_(o)  # o (1 - tanh(c)^2): dc += dh * q
        f_eff = f
        if mask is not None:
            a.mul_(mask)
            q.mul_(mask)
            f_eff = torch.where(mask, f, torch.ones_like(f))
            keep_h = (~mask).to(s.dtype)
        dg = torch.empty_like(s)
        dh = d_hlast if d_hlast is not None else s.new_zeros(b, h4)
        dc = s.new_zeros(b, h4)
        for k in range(t - 1, -1, -1):
            dct = dc + d_cs[k] if d_cs is not None else dc
            dcc = torch.addcmul(dct, dh, q[k])
            gk = dg[k]
            torch.mul(a[k, :, : 3 * h4].view(b, 3, h4), dcc[:, None], out=gk[:, : 3 * h4].view(b, 3, h4))
            torch.mul(a[k, :, 3 * h4 :], dh, out=gk[:, 3 * h4 :])
            dc = dcc * f_eff[k]
            dh = gk.mm(w_hh) if mask is None else torch.addcmul(gk.mm(w_hh), dh, keep_h[k])
        del a, q
        d_w = dg.reshape(-1, g4).t().mm(hs[:-1].reshape(-1, h4)) if ctx.needs_input_grad[1] else None
        return dg.transpose(0, 1), d_w, None


def lstm_scan(lstm: nn.LSTM, x: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """A 1-layer ``lstm`` (batch_first) over ``x`` (B, T, D): input projections of all steps in one GEMM, then
    :class:`_LSTMScan`. valid: (B, T) bool or None (all valid). Returns cell states (T, B, H), last hidden (B, H)."""
    xproj = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
    mask = None if valid is None else valid.t()[..., None].contiguous()
    return _LSTMScan.apply(xproj, lstm.weight_hh_l0, mask)


class ModalityEncoders(nn.Module):
    """One encoder per modality: :class:`TextSubNet` for ``sequence_modalities`` (output ``text_out``),
    :class:`SubNet` on the masked time-mean for the others (output ``hidden[m]``)."""

    def __init__(
        self,
        input_dims: Mapping[str, int],
        hidden: int | Mapping[str, int],
        dropout: float | Mapping[str, float],
        text_out: int,
        sequence_modalities: Sequence[str] = ("text",),
    ) -> None:
        super().__init__()
        mods = tuple(input_dims)
        hid = per_modality(hidden, mods, "hidden")
        drop = per_modality(dropout, mods, "dropout")
        self.sequence_modalities = tuple(m for m in sequence_modalities if m in mods)
        self.nets = nn.ModuleDict()
        self.out_dims: dict[str, int] = {}
        for m in mods:
            if m in self.sequence_modalities:
                self.nets[m] = TextSubNet(input_dims[m], int(hid[m]), int(text_out), float(drop[m]))
                self.out_dims[m] = int(text_out)
            else:
                self.nets[m] = SubNet(input_dims[m], int(hid[m]), float(drop[m]))
                self.out_dims[m] = int(hid[m])

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        z = {}
        for m, net in self.nets.items():
            x = as_sequence(batch["x"][m])
            lens = lengths_of(batch, m, x)
            if m in self.sequence_modalities:
                z[m] = net(x, lens)
            else:
                z[m] = net(x[:, 0] if x.shape[1] == 1 else masked_mean(x, lens))
        return z


def _chunk() -> int:
    """Values per chunk of the dropout loops (the 64-bit draws and the noise stay in cache): 2^16 with one thread;
    with more, 2^14, below ATen's parallel grain size (32768), so each chunk op runs serially (an OpenMP region per
    chunk costs a barrier, and on a loaded machine each barrier waits for a descheduled thread: 6x slower)."""
    return 1 << 16 if torch.get_num_threads() == 1 else 1 << 14


def dropout_keep(n: int, p: float) -> Tensor:
    """Dropout's keep mask (Srivastava et al., JMLR 2014, Eq. 2) for ``n`` values, ``(n,)`` bool, drawn from the
    global CPU generator exactly as ``F.dropout`` on CPU draws it, about twice as fast.

    ``F.dropout`` on CPU fills ``bernoulli_(q)``, ``q = 1 - p``: one ``u = (r mod 2^53) 2^-53`` per value from a
    64-bit draw ``r``, kept where ``u < q``. ``random_(0, 2^53)`` makes the same integers ``r mod 2^53`` in the same
    order without the per-value double arithmetic, and ``u < q <=> r < ceil(q 2^53)`` is exact; so the mask and the
    generator state afterwards are bit-identical (tested against ``F.dropout``).
    """
    thr = math.ceil((1.0 - p) * 2.0**53)
    keep = torch.empty(n, dtype=torch.bool)
    chunk = _chunk()
    draws = torch.empty(min(chunk, n), dtype=torch.int64)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        torch.lt(draws[: e - s].random_(0, 2**53), thr, out=keep[s:e])
    return keep


def dropout_scale(p: float, dtype: torch.dtype) -> float:
    """``1 / (1 - p)`` rounded as ``F.dropout`` rounds it (``ones.div_(1 - p)`` in ``dtype``)."""
    return torch.ones((), dtype=dtype).div_(1.0 - p).item()


def apply_keep(x: Tensor, keep: Tensor, scale: float, out: Tensor | None = None) -> Tensor:
    """``x * noise`` with ``noise = keep * scale`` (``F.dropout``'s product, bit for bit), in cache-sized chunks so
    that the float noise is never materialised at full size; ``out=x`` works in place."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    xf, of = x.reshape(-1), out.view(-1)
    chunk = _chunk()
    noise = torch.empty(min(chunk, xf.numel()), dtype=x.dtype)
    for s in range(0, xf.numel(), chunk):
        e = min(xf.numel(), s + chunk)
        nz = noise[: e - s].copy_(keep[s:e]).mul_(scale)
        torch.mul(xf[s:e], nz, out=of[s:e])
    return out


class _DropoutLinear(torch.autograd.Function):
    """``dropout(x, p) W^T + b`` with autograd's kernels (bit-identical outputs and gradients), but only the dropped
    input and a bool mask are saved, the noise is never a full-size float tensor and the input gradient is masked in
    place: two ``(B, d_in)`` float temporaries fewer per step than ``nn.Dropout`` -> ``nn.Linear``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, p: float) -> Tensor:
        keep = dropout_keep(x.numel(), p)
        ctx.scale = dropout_scale(p, x.dtype)
        xd = apply_keep(x, keep, ctx.scale)
        ctx.save_for_backward(xd, weight, keep)
        return torch.addmm(bias, xd, weight.t())

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        xd, weight, keep = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            gx = gy.mm(weight)
            apply_keep(gx, keep, ctx.scale, out=gx)
        gw = gy.t().mm(xd) if ctx.needs_input_grad[1] else None
        gb = gy.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


class PostFusionMLP(nn.Module):
    """TFN's sentiment inference sub-network: Dropout -> 2 x (Linear + ReLU) -> Linear, optionally squashed to
    ``output_range`` by a scaled sigmoid (the original TFN code uses (-4, 4), MMSA (-3, 3)).

    Training on CPU, the input dropout and the first Linear (over TFN's ``prod(d_m + 1)`` fused coordinates, the
    largest tensors of the step) run as :class:`_DropoutLinear`: the same numbers and generator draws as ``net``
    (tested), faster (docs/benchmarks_models.md); elsewhere (eval, CUDA, autocast) ``net`` runs as is."""

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        dropout: float,
        output_range: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )
        if output_range is not None:
            if len(output_range) != 2 or not output_range[0] < output_range[1] or out_dim != 1:
                raise ConfigError(
                    f"model.output_range must be [low, high] with low < high for a single regression "
                    f"output; got {list(output_range)} with output_dim={out_dim}"
                )
            self.register_buffer("range_", torch.tensor([float(output_range[0]), float(output_range[1])]))
        else:
            self.range_ = None

    def _fast_path(self, x: Tensor) -> bool:
        p = self.net[0].p
        return (
            self.training
            and 0.0 < p < 1.0
            and x.dim() == 2
            and x.numel() > 0
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, x: Tensor) -> Tensor:
        if self._fast_path(x):
            first = self.net[1]
            h = _DropoutLinear.apply(x, first.weight, first.bias, self.net[0].p)
            y = self.net[2:](h)
        else:
            y = self.net(x)
        if self.range_ is not None:
            y = torch.sigmoid(y) * (self.range_[1] - self.range_[0]) + self.range_[0]
        return y
