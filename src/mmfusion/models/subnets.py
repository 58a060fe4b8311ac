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
    """Values per chunk of :func:`dropout_keep`'s loop (the 64-bit draws stay in cache): 2^16 with one thread;
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


def dropout_drop_mask(n: int, p: float, out: Tensor | None = None) -> Tensor:
    """Which of ``n`` values dropout drops, ``(n,)`` bool with ``P(drop) = p`` (Srivastava et al., JMLR 2014,
    Eq. 2), from about one random byte per value instead of ``F.dropout``'s 64-bit draw: 5-10x faster on CPU.

    Each value gets one byte ``u`` of a full-range 64-bit draw (``random_(-2**63, None)``: all 64 bits uniform) and
    is kept iff ``u < t``, ``t = floor(256 q)``, ``q = 1 - p``; the values with ``u == t`` (1 in 256) are decided
    by a 53-bit draw ``r``, kept iff ``r < ceil((256 q - t) 2^53)``. That is one comparison of the uniform
    ``(u + r 2^-53) / 256`` with ``q``: ``P(keep) = ceil(q 2^61) / 2^61``, i.e. ``q`` to within ``2^-61``
    (``F.dropout``: ``2^-53``), the values independent. It is a different draw than ``F.dropout``'s (the generator
    advances differently), with the same law (tested).
    """
    q256 = (1.0 - p) * 256.0  # exact: a power-of-two scaling
    t = int(math.floor(q256))
    words = -(-n // 8)
    u = torch.empty(words, dtype=torch.int64).random_(-(2**63), None).view(torch.uint8)
    drop = torch.ge(u[:n], t, out=out) if t < 256 else torch.zeros(n, dtype=torch.bool, out=out)
    frac = q256 - t
    if frac > 0.0 and t < 256:
        tie = torch.eq(u, t)
        hit = torch.nonzero(tie.view(torch.int64)).squeeze(1)  # 8-value words holding a tie: 8x fewer to scan
        if hit.numel():
            pos = (hit[:, None] * 8 + torch.arange(8))[tie.view(words, 8)[hit]]
            pos = pos[pos < n]
            r = torch.empty(pos.numel(), dtype=torch.int64).random_(0, 2**53)
            drop[pos] = r >= math.ceil(frac * 2.0**53)
    return drop


def _cols_per_chunk(rows: int) -> int:
    """Columns per chunk of :class:`_DropoutLinear`'s loops: about 2^17 values (512 KiB in float32, in cache)."""
    return max(64, ((1 << 17) // max(rows, 1)) // 64 * 64)


class _DropoutLinear(torch.autograd.Function):
    """``dropout(x, p) W^T + b`` for a wide input (TFN's fused tensor), over column chunks of ``x``.

    The mask is :func:`dropout_drop_mask` (the law of ``F.dropout``, about one random byte per value), drawn and
    kept chunk by chunk (each chunk's ``(B, w)`` block contiguous); the dropped input ``x * keep / (1 - p)`` is
    formed one cache-sized chunk at a time and never at full size: the forward accumulates ``chunk @ W[:, chunk]^T``,
    the backward recomputes the chunk from the saved ``x`` and the mask for ``dW[:, chunk]`` and forms
    ``dx[:, chunk] = (dy @ W[:, chunk]) * keep / (1 - p)`` beside it. Chunking the skinny GEMMs (K = batch or output
    width, N = 140k-283k columns) also makes them faster than one call, which streams all of ``W`` and ``dW``
    through the cache with little reuse. Outputs and gradients equal ``nn.Dropout`` -> ``nn.Linear`` on the same
    mask to float rounding (sums accumulated in chunks; tested).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, p: float) -> Tensor:
        b, n = x.shape
        step = _cols_per_chunk(b)
        # the mask, chunk-major: chunk [s, e) is keep[b s : b e] viewed as (b, e - s)
        keep = torch.empty(b * n, dtype=torch.bool)
        scale = dropout_scale(p, x.dtype)
        buf = x.new_empty(b * min(step, n))
        y = bias.expand(b, -1).contiguous()
        for s in range(0, n, step):
            e = min(n, s + step)
            mask = dropout_drop_mask(b * (e - s), p, out=keep[b * s : b * e]).logical_not_()
            k = mask.view(torch.uint8).view(b, e - s)  # x uint8 is 3x faster than x bool (no cast copy)
            xd = torch.mul(x[:, s:e], scale, out=buf[: b * (e - s)].view(b, e - s)).mul_(k)
            y.addmm_(xd, weight[:, s:e].t())
        ctx.scale, ctx.step = scale, step
        ctx.save_for_backward(x, weight, keep)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, keep = ctx.saved_tensors
        b, n = x.shape
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx = x.new_empty(b, n) if need_x else None
        gw = weight.new_empty(weight.shape) if need_w else None
        gyt = gy.t()
        buf = x.new_empty(b * min(ctx.step, n)) if need_w else None
        for s in range(0, n, ctx.step):
            e = min(n, s + ctx.step)
            k = keep[b * s : b * e].view(torch.uint8).view(b, e - s)
            if need_w:
                xd = torch.mul(x[:, s:e], ctx.scale, out=buf[: b * (e - s)].view(b, e - s)).mul_(k)
                torch.mm(gyt, xd, out=gw[:, s:e])
            if need_x:
                torch.mm(gy, weight[:, s:e], out=gx[:, s:e]).mul_(k).mul_(ctx.scale)
        gb = gy.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


class PostFusionMLP(nn.Module):
    """TFN's sentiment inference sub-network: Dropout -> 2 x (Linear + ReLU) -> Linear, optionally squashed to
    ``output_range`` by a scaled sigmoid (the original TFN code uses (-4, 4), MMSA (-3, 3)).

    Training on CPU, the input dropout and the first Linear (over TFN's ``prod(d_m + 1)`` fused coordinates, the
    largest tensors of the step) run as :class:`_DropoutLinear`: the function of ``net`` on a dropout mask of the
    same law (:func:`dropout_drop_mask`, not ``F.dropout``'s draw), chunked and faster (docs/benchmarks_models.md);
    elsewhere (eval, CUDA, autocast) ``net`` runs as is."""

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
