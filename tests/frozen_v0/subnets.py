# Frozen copy of src/mmfusion/models/subnets.py at commit 26d69f6 (before the issue-18 speed work): the reference of
# tests/test_models_equivalence.py. Do not edit; it is not used by the package.
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

from .common import lengths_of, masked_mean, run_lstm


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
        _, last = run_lstm(self.lstm, x, lengths)
        return self.out(self.drop(last))


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


_CHUNK = 1 << 16  # values per chunk of the dropout loops (the 64-bit draws and the noise stay in cache)


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
    draws = torch.empty(min(_CHUNK, n), dtype=torch.int64)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
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
    noise = torch.empty(min(_CHUNK, xf.numel()), dtype=x.dtype)
    for s in range(0, xf.numel(), _CHUNK):
        e = min(xf.numel(), s + _CHUNK)
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
