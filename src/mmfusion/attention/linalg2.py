"""Closed-form symmetric 2x2 linear algebra (batched, elementwise; no cuSOLVER/LAPACK calls).

Notes sect. 5 item 3: batched ``torch.inverse``/``det`` on 2x2 matrices is slow and round-trips through
``theta`` lose precision, so (mu, Sigma) is kept and these closed forms are used throughout.
"""

from __future__ import annotations

import torch
from torch import Tensor


def det2(a: Tensor) -> Tensor:
    """Determinant of (..., 2, 2)."""
    return a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]


def inv2(a: Tensor, det: Tensor | None = None) -> Tensor:
    """Inverse of (..., 2, 2) by the adjugate."""
    d = det2(a) if det is None else det
    adj = torch.stack(
        [torch.stack([a[..., 1, 1], -a[..., 0, 1]], -1), torch.stack([-a[..., 1, 0], a[..., 0, 0]], -1)], -2
    )
    return adj / d[..., None, None]


def sqrtm2(a: Tensor) -> Tensor:
    """Principal square root of SPD (..., 2, 2): (A + sqrt|A| I) / sqrt(tr A + 2 sqrt|A|)."""
    s = det2(a).clamp_min(0).sqrt()
    t = (a[..., 0, 0] + a[..., 1, 1] + 2 * s).sqrt()
    eye = torch.eye(2, dtype=a.dtype, device=a.device)
    return (a + s[..., None, None] * eye) / t[..., None, None]


def sym2(a: Tensor) -> Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def eig_floor2(a: Tensor, floor: float) -> Tensor:
    """Clamp the eigenvalues of symmetric (..., 2, 2) at ``floor`` (closed form, differentiable, NaN-free).

    f(A) = alpha I + beta A with beta = (l1' - l2') / (l1 - l2), alpha = l2' - beta l2, l' = max(l, floor);
    for (near-)equal eigenvalues beta = [mean >= floor]. This is the ML covariance under the constraint
    Sigma >= floor I, so the EM M-step stays monotone (unlike additive jitter).
    """
    if floor <= 0:
        return a
    m = 0.5 * (a[..., 0, 0] + a[..., 1, 1])
    h = 0.5 * (a[..., 0, 0] - a[..., 1, 1])
    b = 0.5 * (a[..., 0, 1] + a[..., 1, 0])
    q = h * h + b * b
    tiny = torch.finfo(a.dtype).tiny ** 0.5
    ok = q > tiny
    r = torch.where(ok, torch.where(ok, q, torch.ones_like(q)).sqrt(), torch.zeros_like(q))
    l1, l2 = m + r, m - r
    c1, c2 = l1.clamp_min(floor), l2.clamp_min(floor)
    gap = torch.where(ok, 2 * r, torch.ones_like(r))
    beta = torch.where(ok, (c1 - c2) / gap, (m >= floor).to(a.dtype))
    alpha = torch.where(
        ok, c2 - beta * l2, torch.where(m >= floor, torch.zeros_like(m), torch.full_like(m, floor))
    )
    eye = torch.eye(2, dtype=a.dtype, device=a.device)
    return alpha[..., None, None] * eye + beta[..., None, None] * a
