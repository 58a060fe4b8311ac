"""Small pieces shared by several fusion models."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def lengths_of(batch: dict, modality: str, x: Tensor) -> Tensor:
    """True lengths of ``x`` (B, T, D): ``batch["lengths"][modality]`` or T for every sample."""
    lens = batch.get("lengths", {}).get(modality) if isinstance(batch.get("lengths"), dict) else None
    if lens is None:
        return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    return lens.clamp(min=1, max=x.shape[1])


def length_mask(lengths: Tensor, t: int) -> Tensor:
    """(B, T) bool, True on valid (non-padded) steps of a right-padded sequence."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Mean over the true length of a right-padded (B, T, D) sequence (never averages the padding)."""
    m = length_mask(lengths, x.shape[1]).to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def run_lstm(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``lstm`` (batch_first) on a right-padded batch; return (outputs (B,T,H), last hidden of the top
    layer at each sample's true last step (B,H))."""
    if x.shape[1] == 1:
        out, (h, _) = lstm(x)
        return out, h[-1]
    if bool((lengths >= x.shape[1]).all()):  # nothing to pack: the plain LSTM (oneDNN on CPU), same result
        out, (h, _) = lstm(x)
        return out, h[-1]
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, (h, _) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, h[-1]
