"""Multimodal continuous attention (MCA): Gaussian mixtures fitted to discrete attention by weighted EM.

Thesis Sect. 5.2-5.3 and 6.3: weighted EM (Eqs. 5.12-5.15) maximising the weighted log-likelihood (Eq. 5.16),
batched over examples with a fixed number of iterations; region-based initialisation for K-MCA (Sect. 6.3.1);
test-time choice of K by C(K) = -2 sum_l w_l log p(t_l) + lambda K (Eq. 5.20). Works in d = 1 or 2 with
(..., d, d) covariances; positions are the cell centres (same as moments and G).
Covariances use an eigenvalue floor (the ML estimate under Sigma >= floor I), which keeps every EM step monotone;
the reference's additive 1e-6 jitter does not (notes sect. 4, 5). Other differences from the reference code: exactly
``n_iter`` EM steps (its ``while i <= n_iter`` loop runs n_iter + 1), pi_k = N_k renormalised (identical when the
weights sum to 1), cell-centre positions instead of linspace(1/h, 1 - 1/h, h), a private generator for random inits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmfusion.attention.linalg2 import det2, eig_floor2, inv2


def _det(s: Tensor) -> Tensor:
    return s[..., 0, 0] if s.shape[-1] == 1 else det2(s)


def _inv(s: Tensor) -> Tensor:
    return 1.0 / s if s.shape[-1] == 1 else inv2(s)


def _floor(s: Tensor, floor: float) -> Tensor:
    return s.clamp_min(floor) if s.shape[-1] == 1 else eig_floor2(s, floor)


def gaussian_logpdf(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """log N(x_l; mu_k, Sigma_k): x (B, L, d), mu (B, K, d), sigma (B, K, d, d) -> (B, L, K)."""
    d = x[:, :, None, :] - mu[:, None]
    q = torch.einsum("blki,bkij,blkj->blk", d, _inv(sigma), d)
    dim = x.shape[-1]
    return -0.5 * (q + _det(sigma).log()[:, None] + dim * math.log(2 * math.pi))


def weighted_loglik(x: Tensor, w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Eq. 5.16: sum_l w_l log sum_k pi_k N(x_l; mu_k, Sigma_k) -> (B,)."""
    lp = torch.logsumexp(pi.log()[:, None] + gaussian_logpdf(x, mu, sigma), -1)
    return (w * lp).sum(-1)


def em_step(x: Tensor, w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, floor: float = 1e-6):
    """One weighted EM step (E: Eq. 5.7; M: Eqs. 5.12-5.15, pi_k = N_k renormalised)."""
    lj = pi.log()[:, None] + gaussian_logpdf(x, mu, sigma)
    gamma = torch.softmax(lj, -1)  # responsibilities (B, L, K)
    rho = gamma * w[..., None]
    nk = rho.sum(1) + 1e-12
    mu = torch.einsum("blk,bli->bki", rho, x) / nk[..., None]
    d = x[:, :, None, :] - mu[:, None]
    sigma = torch.einsum("blk,blki,blkj->bkij", rho, d, d) / nk[..., None, None]
    return nk / nk.sum(-1, keepdim=True), mu, _floor(sigma, floor)


def weighted_em(
    x: Tensor,
    w: Tensor,
    pi: Tensor,
    mu: Tensor,
    sigma: Tensor,
    n_iter: int,
    floor: float = 1e-6,
    history: list | None = None,
):
    """``n_iter`` weighted EM steps from (pi, mu, sigma); differentiable (unrolled). ``history`` collects the
    weighted log-likelihood before every step and after the last."""
    for _ in range(n_iter):
        if history is not None:
            history.append(weighted_loglik(x, w, pi, mu, sigma).detach())
        pi, mu, sigma = em_step(x, w, pi, mu, sigma, floor)
    if history is not None:
        history.append(weighted_loglik(x, w, pi, mu, sigma).detach())
    return pi, mu, sigma


def _weighted_moments(x: Tensor, w: Tensor, floor: float) -> tuple[Tensor, Tensor]:
    """Mean (..., d) and floored covariance (..., d, d) of points x (B, L, d) under weights w (..., B?, L)."""
    m = w.sum(-1, keepdim=True).clamp_min(1e-30)
    wn = w / m
    mu = torch.einsum("bkl,bli->bki", wn, x)
    d = x[:, None] - mu[:, :, None]
    sigma = torch.einsum("bkl,bkli,bklj->bkij", wn, d, d)
    return mu, _floor(sigma, floor)


def region_masks(k: int, grid_shape: tuple[int, int] | None, x: Tensor) -> Tensor:
    """(B, K, L) 0/1 regions (Sect. 6.3.1): K=2 upper/lower halves, K=4 quadrants; in general an nr x nc split
    with nc the largest divisor of K not above sqrt(K). 1-D: K contiguous segments of [0, 1]."""
    if x.shape[-1] == 1:
        t = x[..., 0]  # (B, L) in [0, 1]
        idx = (t * k).floor().clamp(0, k - 1)
        return (idx[:, None, :] == torch.arange(k, device=x.device, dtype=x.dtype)[None, :, None]).to(x.dtype)
    nc = max(c for c in range(1, int(math.isqrt(k)) + 1) if k % c == 0)
    nr = k // nc
    ri = (x[..., 0] * nr).floor().clamp(0, nr - 1)
    ci = (x[..., 1] * nc).floor().clamp(0, nc - 1)
    cell = ri * nc + ci  # (B, L)
    return (cell[:, None, :] == torch.arange(k, device=x.device, dtype=x.dtype)[None, :, None]).to(x.dtype)


def region_init(
    x: Tensor,
    w: Tensor,
    k: int,
    grid_shape: tuple[int, int] | None,
    floor: float = 1e-6,
    valid: Tensor | None = None,
):
    """Moment matching of w inside each region; pi_k = mass of the region (Sect. 6.3.1)."""
    reg = region_masks(k, grid_shape, x)
    if valid is not None:
        reg = reg * valid[:, None, :].to(reg.dtype)
    rw = w[:, None, :] * reg + 1e-8 * reg  # a region with no mass falls back to its uniform moments
    mu, sigma = _weighted_moments(x, rw, floor)
    mass = rw.sum(-1)
    return mass / mass.sum(-1, keepdim=True), mu, sigma


def random_init(b: int, k: int, dim: int, generator: torch.Generator | None, like: Tensor, var: float = 1e-3):
    """The reference's init: pi = 1/K, mu ~ U[0, 1]^d, Sigma = 0.001 I (notes sect. 4)."""
    mu = torch.rand(b, k, dim, generator=generator, dtype=torch.float64).to(like)
    sigma = var * torch.eye(dim, dtype=like.dtype, device=like.device).expand(b, k, dim, dim).clone()
    return torch.full((b, k), 1.0 / k, dtype=like.dtype, device=like.device), mu, sigma


def criterion(x: Tensor, w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, lam: float) -> Tensor:
    """Eq. 5.20: C(K) = -2 sum_l w_l log p(t_l) + lambda K -> (B,)."""
    return -2 * weighted_loglik(x, w, pi, mu, sigma) + lam * pi.shape[-1]
