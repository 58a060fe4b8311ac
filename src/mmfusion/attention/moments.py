"""Moment matching from discrete attention weights (thesis Alg. 2, Theorem 1, Eqs. 4.3 and 4.6).

Positions are the **cell centres** (one convention for the moments, the value function G and the EM; notes
sect. 5 item 7): a 2-D grid (h, w) flattened row-major has t_l = ((i + 1/2)/h, (j + 1/2)/w), coordinate 0 = row;
a 1-D sequence of true length n has t_l = (l + 1/2)/n.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmfusion.attention.linalg2 import det2, eig_floor2


def grid_positions(h: int, w: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """(h*w, 2) cell centres of an h x w grid over [0, 1]^2, row-major (index = w*row + col)."""
    r = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    c = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], -1).to(dtype=dtype, device=device)


def sequence_positions(lengths: Tensor, max_len: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, max_len) cell centres (l + 1/2)/n_b of right-padded sequences (0 on the padding)."""
    n = lengths.clamp_min(1).to(dtype)[:, None]
    l = torch.arange(max_len, device=lengths.device, dtype=dtype)[None, :]
    return torch.where(l < n, (l + 0.5) / n, torch.zeros_like(l + n))


def moments_2d(p: Tensor, pos: Tensor, floor: float = 1e-6) -> tuple[Tensor, Tensor]:
    """mu = E_p[t], V = E_p[t t^T] - mu mu^T with eigenvalues floored (Alg. 2). p (B, L), pos (L, 2)."""
    mu = p @ pos
    d = pos[None, :, :] - mu[:, None, :]
    v = torch.einsum("bl,bli,blj->bij", p, d, d)  # centred: no cancellation for peaked p
    return mu, eig_floor2(v, floor)


def moments_1d(p: Tensor, pos: Tensor, floor: float = 1e-6) -> tuple[Tensor, Tensor]:
    """mu = E_p[t], var = Var_p[t] (floored). p (B, L), pos (B, L) or (L,)."""
    mu = (p * pos).sum(-1)
    var = (p * (pos - mu[:, None]) ** 2).sum(-1)
    return mu, var.clamp_min(floor)


def sparsemax_sigma_2d(v: Tensor) -> Tensor:
    """Eq. 4.6: the truncated paraboloid TP(mu, Sigma) with covariance V has Sigma = 9 pi |V|^{1/2} V."""
    return 9 * math.pi * det2(v).clamp_min(0).sqrt()[..., None, None] * v


def sparsemax_sigma2_1d(var: Tensor) -> Tensor:
    """Eq. 4.3: the truncated parabola with variance Var has sigma^2 = (2/3) (5 Var)^{3/2}."""
    return (2.0 / 3.0) * (5 * var) ** 1.5
