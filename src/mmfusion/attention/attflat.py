"""MCAN's discrete attention-flattening pool ``AttFlat`` (Yu et al., CVPR'19; thesis Sect. 6.2).

``scores = MLP(D -> mid -> G)(x)``; masked softmax over the L positions per glimpse; ``x_att[g] = sum_l a_lg x_l``;
the G glimpses are concatenated and merged by ``Linear(D*G -> out_dim)``.
Mask convention (whole package): ``mask`` (B, L) bool, **True on valid positions** (``None``: all valid).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfusion.errors import ConfigError


def check_pool_input(x: Tensor, mask: Tensor | None, in_dim: int, name: str) -> Tensor:
    """Validate ``x`` (B, L, in_dim) and return a (B, L) bool mask (True = valid)."""
    if x.dim() != 3 or x.shape[-1] != in_dim:
        raise ConfigError(f"{name}: expected x of shape (B, L, {in_dim}), got {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ConfigError(f"{name}: expected mask of shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax over ``dim`` with invalid positions at -1e9 (as MCAN; -inf would give NaN for empty rows)."""
    fill = torch.finfo(scores.dtype).min / 2 if scores.dtype != torch.float32 else -1e9
    return torch.softmax(scores.masked_fill(~mask, fill), dim=dim)


class ScoreMLP(nn.Module):
    """MCAN's ``MLP(in, mid, out)``: Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, in_dim: int, mid_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, mid_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(mid_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AttFlat(nn.Module):
    """Discrete attention pool ``(x (B, L, D), mask (B, L)) -> (B, out_dim)`` (MCAN ``AttFlat``).

    ``grid_shape`` (h, w) marks a 2-D grid flattened row-major (index = w*row + col), used by continuous
    plug-ins and the attention-map renderer; ``None`` for 1-D sequences. ``last_attention`` holds the
    (B, L, G) weights of the last call (detached).
    """

    def __init__(
        self,
        in_dim: int,
        mid_dim: int = 512,
        out_dim: int = 1024,
        glimpses: int = 1,
        dropout: float = 0.1,
        grid_shape: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if glimpses < 1:
            raise ConfigError(f"AttFlat: glimpses must be >= 1, got {glimpses}")
        self.in_dim, self.mid_dim, self.out_dim, self.glimpses = in_dim, mid_dim, out_dim, glimpses
        self.dropout = dropout
        self.grid_shape = tuple(grid_shape) if grid_shape is not None else None
        self.mlp = ScoreMLP(in_dim, mid_dim, glimpses, dropout)
        self.linear_merge = nn.Linear(in_dim * glimpses, out_dim)
        self.last_attention: Tensor | None = None

    def attention(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Discrete attention weights (B, L, G), zero on masked positions."""
        mask = check_pool_input(x, mask, self.in_dim, type(self).__name__)
        return masked_softmax(self.mlp(x), mask[..., None], dim=1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        att = self.attention(x, mask)
        self.last_attention = att.detach()
        pooled = torch.einsum("blg,bld->bgd", att, x).reshape(x.shape[0], -1)
        return self.linear_merge(pooled)
