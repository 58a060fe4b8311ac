"""Continuous softmax / sparsemax attention with Gaussian RBFs: r = E_p[psi(t)] (thesis Eq. 3.16, Ch. 4, App. A).

Every transform is a custom ``torch.autograd.Function`` of (mu, Sigma) (1-D: (mu, sigma^2)); its backward is the
Jacobian of Eq. 3.20, J = cov_{p, 2-alpha}(phi(t), psi(t)) (alpha=1: covariance under p; alpha=2: |S| times the
covariance under the uniform density on the support S), pulled back from theta = (Sigma^-1 mu, -1/2 Sigma^-1) to
(mu, Sigma). With delta = t - mu and g = dL/dr, the pull-back is (symmetric part)

    dL/dmu = Sigma^-1 C_1 g,   dL/dSigma = 1/2 Sigma^-1 C_2 g Sigma^-1,
    C_1 = cov(delta, psi),     C_2 = cov(delta delta^T, psi),

so no theta round trip is needed (notes sect. 5 item 3). Gaussians (alpha = 1): closed form (Alg. 3). Truncated
parabola (1-D, alpha = 2): closed form with erf. Truncated paraboloid (2-D, alpha = 2): whitening + polar
coordinates (App. A.2, Alg. 4): radial moments in closed form, the angle integral as a periodic trapezoid sum over
K **distinct** angles 2 pi k / K. The reference code used linspace(0, 2 pi, K), counting angle 0 twice (5-14 %
forward error, backward inconsistent with the forward; notes sect. 3.5); this one is spectrally accurate.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.autograd import Function

from mmfusion.attention.basis import GaussianBasis
from mmfusion.attention.linalg2 import det2, inv2, sqrtm2

_SQRT2PI = math.sqrt(2 * math.pi)
_ANGLE_NODES_PER_WIDTH = 3.0  # adaptive angles: >= this many nodes per angular width of an RBF
_KAPPA_MIN = 0.1
_GL_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _phi(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / _SQRT2PI


def _gauss_legendre(n: int, lo: float, hi: float, like: Tensor) -> tuple[Tensor, Tensor]:
    if n not in _GL_CACHE:
        _GL_CACHE[n] = np.polynomial.legendre.leggauss(n)
    x, w = _GL_CACHE[n]
    x = torch.as_tensor(0.5 * (hi - lo) * x + 0.5 * (hi + lo), dtype=like.dtype, device=like.device)
    return x, torch.as_tensor(0.5 * (hi - lo) * w, dtype=like.dtype, device=like.device)


def interval_moments(m: Tensor, s: Tensor, lo: float, hi: float, flat_above: float = 1.0,
                     gl_nodes: int = 24) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """X_k = int_lo^hi x^k N(x; m, s^2) dx for k = 0..3 (elementwise).

    Closed form through the truncated standard-normal moments (notes sect. 3.5: M_1, M_2, M_3). Where the Gaussian
    is flat on the interval (s > flat_above * (hi - lo)) the power expansion in m cancels catastrophically
    (degenerate, near one-hot attention; notes sect. 5 item 2), so those entries use Gauss-Legendre quadrature of
    the smooth integrand instead (accurate to ~1e-12 there).
    """
    al, be = (lo - m) / s, (hi - m) / s
    pa, pb = _phi(al), _phi(be)
    upper = al > 0  # both limits in the upper tail: difference of survival functions, no cancellation
    z0 = torch.where(upper, torch.special.ndtr(-al) - torch.special.ndtr(-be),
                     torch.special.ndtr(be) - torch.special.ndtr(al))
    z1 = pa - pb
    z2 = z0 + al * pa - be * pb
    z3 = 2 * z1 + al * al * pa - be * be * pb
    x0 = z0
    x1 = m * z0 + s * z1
    x2 = m * m * z0 + 2 * m * s * z1 + s * s * z2
    x3 = m ** 3 * z0 + 3 * m * m * s * z1 + 3 * m * s * s * z2 + s ** 3 * z3
    flat = s > flat_above * (hi - lo)
    if bool(flat.any()):
        idx = flat.nonzero(as_tuple=True)
        mf, sf = m[idx], s[idx]
        xn, wn = _gauss_legendre(gl_nodes, lo, hi, m)
        dens = wn * torch.exp(-0.5 * ((xn - mf[:, None]) / sf[:, None]) ** 2) / (sf[:, None] * _SQRT2PI)
        outs = []
        for k, xk in enumerate((x0, x1, x2, x3)):
            xk = xk.clone()
            xk[idx] = (dens * xn ** k).sum(-1)
            outs.append(xk)
        x0, x1, x2, x3 = outs
    return x0, x1, x2, x3


def _basis(basis: GaussianBasis, like: Tensor) -> tuple[Tensor, Tensor]:
    return basis.centres.to(like), basis.variances.to(like)


# --------------------------------------------------------------------------------------------------- 1-D


class ContinuousSoftmax1d(Function):
    """1-D Gaussian N(mu, sigma^2): r_j = N(mu; mu_j, sigma^2 + sigma_j^2) (notes sect. 3.6)."""

    @staticmethod
    def forward(ctx, mu: Tensor, var: Tensor, centres: Tensor, bvar: Tensor) -> Tensor:
        a = var[:, None] + bvar[None, :]  # (B, N)
        d = centres[None, :] - mu[:, None]
        r = torch.exp(-0.5 * d * d / a) / torch.sqrt(2 * math.pi * a)
        ctx.save_for_backward(r, a, d)
        return r

    @staticmethod
    def backward(ctx, g: Tensor):
        r, a, d = ctx.saved_tensors
        # C_1 = r (mu~ - mu) = r sigma^2 d / a;  C_2 = r (sigma~^2 + (mu~-mu)^2) - sigma^2 r  (Eq. 3.20, alpha=1)
        gr = g * r
        grad_mu = (gr * d / a).sum(-1)
        grad_var = 0.5 * (gr * (d * d / (a * a) - 1.0 / a)).sum(-1)
        return grad_mu, grad_var, None, None


class ContinuousSparsemax1d(Function):
    """1-D truncated parabola p(t) = [-lambda - (t-mu)^2 / (2 sigma^2)]_+ on [mu - a, mu + a], a = (3 sigma^2/2)^{1/3},
    -lambda = a^2 / (2 sigma^2) (notes sect. 3.6). Fully closed form."""

    @staticmethod
    def forward(ctx, mu: Tensor, var: Tensor, centres: Tensor, bvar: Tensor) -> Tensor:
        half = (1.5 * var) ** (1.0 / 3.0)  # (B,)
        m = (centres[None, :] - mu[:, None]) / half[:, None]  # RBF in units of the half-width
        s = torch.sqrt(bvar)[None, :] / half[:, None]
        u0, u1, u2, _ = interval_moments(m, s, -1.0, 1.0)
        r = (half * half / (2 * var))[:, None] * (u0 - u2)
        ctx.save_for_backward(var, half, u0, u1, u2)
        return r

    @staticmethod
    def backward(ctx, g: Tensor):
        var, half, u0, u1, u2 = ctx.saved_tensors
        # beta = 0 covariance: C_1 = int_S delta psi; C_2 = int_S delta^2 psi - (a^2/3) int_S psi
        c1 = half[:, None] * u1
        c2 = (half * half)[:, None] * (u2 - u0 / 3.0)
        grad_mu = (g * c1).sum(-1) / var
        grad_var = 0.5 * (g * c2).sum(-1) / (var * var)
        return grad_mu, grad_var, None, None


# --------------------------------------------------------------------------------------------------- 2-D


class ContinuousSoftmax2d(Function):
    """2-D Gaussian N(mu, Sigma): r_j = N(mu; mu_j, Sigma + Sigma_j) (Alg. 3; notes sect. 3.4)."""

    @staticmethod
    def forward(ctx, mu: Tensor, sigma: Tensor, centres: Tensor, covs: Tensor) -> Tensor:
        a = sigma[:, None] + covs[None]  # (B, N, 2, 2)
        da = det2(a)
        ainv = inv2(a, da)
        d = centres[None] - mu[:, None]  # (B, N, 2)
        ad = torch.einsum("bnij,bnj->bni", ainv, d)
        r = torch.exp(-0.5 * (d * ad).sum(-1)) / (2 * math.pi * da.sqrt())
        ctx.save_for_backward(r, ainv, ad)
        return r

    @staticmethod
    def backward(ctx, g: Tensor):
        r, ainv, ad = ctx.saved_tensors
        # mu~ - mu = Sigma A^-1 d, Sigma~ = Sigma - Sigma A^-1 Sigma  =>  Sigma^-1 C_1 = r A^-1 d,
        # Sigma^-1 C_2 Sigma^-1 = r (A^-1 d d^T A^-1 - A^-1)   (Eq. 3.20 with alpha = 1)
        gr = g * r
        grad_mu = torch.einsum("bn,bni->bi", gr, ad)
        grad_sigma = 0.5 * (torch.einsum("bn,bni,bnj->bij", gr, ad, ad) - torch.einsum("bn,bnij->bij", gr, ainv))
        return grad_mu, grad_sigma, None, None


def _sparsemax2d_terms(mu: Tensor, sigma: Tensor, centres: Tensor, covs: Tensor, n_angles: int,
                       adaptive: bool = True):
    """Whitened polar reduction of App. A.2 for the truncated paraboloid TP(mu, Sigma).

    The angle integral is a periodic trapezoid sum over K distinct nodes u_k = 2 pi k / K (never the endpoint
    twice). ``adaptive=False``: theta_k = u_k (Alg. 4). ``adaptive=True``: per RBF, theta = theta*_j +
    atan2(kappa_j sin u, cos u), a smooth periodic change of variables (weights d theta / du) that concentrates the
    nodes around the direction theta*_j of the RBF centre (and its opposite: s~ is pi-periodic) when the RBF
    subtends a small angle (angular width sigma_perp / |mu~_j|); kappa_j = 1 recovers uniform angles. It keeps
    the spectral accuracy of the periodic trapezoid for narrow RBFs far from mu (elongated or large supports).
    """
    dets = det2(sigma).clamp_min(torch.finfo(sigma.dtype).tiny)
    c2 = 2.0 / torch.sqrt(math.pi * dets.sqrt())  # -2 lambda, -lambda = (pi |Sigma|^{1/2})^{-1/2}
    c = c2.sqrt()
    root = sqrtm2(sigma)
    rinv = inv2(root)
    mt = torch.einsum("bij,bnj->bni", rinv, centres[None] - mu[:, None]) / c[:, None, None]  # mu~_j
    prec = c2[:, None, None, None] * (root[:, None] @ inv2(covs)[None] @ root[:, None])  # Sigma~_j^-1
    detp = c2[:, None] ** 2 * dets[:, None] / det2(covs)[None]
    u = 2 * math.pi * torch.arange(n_angles, dtype=mu.dtype, device=mu.device) / n_angles  # distinct nodes
    w = torch.full_like(u, 2 * math.pi / n_angles)
    if adaptive:
        rho0 = mt.norm(dim=-1).clamp_min(1e-30)  # (B, N)
        e = mt / rho0[..., None]
        # sigma_perp^2 = e_perp^T Sigma~ e_perp = e^T Sigma~^-1 e / |Sigma~^-1|   (2x2 adjugate identity)
        sperp = torch.sqrt(torch.einsum("bni,bnij,bnj->bn", e, prec, e) / detp)
        kappa = (_ANGLE_NODES_PER_WIDTH ** -1 * (sperp / rho0) * n_angles / (2 * math.pi)).clamp(_KAPPA_MIN, 1.0)
        ang0 = torch.atan2(mt[..., 1], mt[..., 0])
        su, cu = u.sin(), u.cos()
        th = ang0[..., None] + torch.atan2(kappa[..., None] * su, cu)  # (B, N, K)
        w = w * kappa[..., None] / (cu * cu + (kappa[..., None] * su) ** 2)
    else:
        th = u
    a0, a1 = th.cos(), th.sin()
    p00, p01, p11 = prec[..., 0, 0, None], 0.5 * (prec[..., 0, 1] + prec[..., 1, 0])[..., None], prec[..., 1, 1, None]
    q = p00 * a0 * a0 + 2 * p01 * a0 * a1 + p11 * a1 * a1  # a^T Sigma~^-1 a  (B, N, K)
    pm = torch.einsum("bnij,bnj->bni", prec, mt)
    b = pm[..., 0, None] * a0 + pm[..., 1, None] * a1
    cross = a0 * mt[..., 1, None] - a1 * mt[..., 0, None]
    # mu~^T P mu~ - (a^T P mu~)^2 / a^T P a = |P| (a x mu~)^2 / a^T P a  (2-D Lagrange identity; no cancellation)
    expo = detp[..., None] * cross * cross / q
    sig2 = 1.0 / q
    stl = w * torch.sqrt(sig2 * detp[..., None] / (2 * math.pi)) * torch.exp(-0.5 * expo)  # weight * s~(theta)
    x0, x1, x2, x3 = interval_moments(b / q, sig2.sqrt(), 0.0, 1.0)
    return dict(c=c, c2=c2, rinv=rinv, stl=stl, x1=x1, x2=x2, x3=x3, a0=a0, a1=a1)


class ContinuousSparsemax2d(Function):
    """2-D truncated paraboloid TP(mu, Sigma) (Alg. 4, App. A.2): r_j = -lambda int s~(theta) (M_1 - M_3) dtheta."""

    @staticmethod
    def forward(ctx, mu: Tensor, sigma: Tensor, centres: Tensor, covs: Tensor, n_angles: int,
                adaptive: bool = True) -> Tensor:
        t = _sparsemax2d_terms(mu, sigma, centres, covs, n_angles, adaptive)
        stl, a0, a1 = t["stl"], t["a0"], t["a1"]
        r = 0.5 * t["c2"][:, None] * (stl * (t["x1"] - t["x3"])).sum(-1)
        t1 = (stl * t["x1"]).sum(-1)  # int_S psi_j                                (B, N)
        v2, v3 = stl * t["x2"], stl * t["x3"]
        t2 = torch.stack([(v2 * a0).sum(-1), (v2 * a1).sum(-1)], -1)  # whitened int_S s psi_j    (B, N, 2)
        t3 = torch.stack([(v3 * a0 * a0).sum(-1), (v3 * a0 * a1).sum(-1), (v3 * a1 * a1).sum(-1)], -1)  # s s^T
        ctx.save_for_backward(t["c"], t["c2"], t["rinv"], t1, t2, t3)
        return r

    @staticmethod
    def backward(ctx, g: Tensor):
        c, c2, rinv, t1, t2, t3 = ctx.saved_tensors
        # beta = 0 covariance (Eqs. A.24-A.26): E_U[delta delta^T] = c^2 Sigma / 4; in whitened coordinates
        # Sigma^-1 C_1 = c Sigma^-1/2 T2,  Sigma^-1 C_2 Sigma^-1 = c^2 Sigma^-1/2 (T3 - T1 I / 4) Sigma^-1/2
        g2 = torch.einsum("bn,bni->bi", g, t2)
        grad_mu = c[:, None] * torch.einsum("bij,bj->bi", rinv, g2)
        g3 = torch.einsum("bn,bnk->bk", g, t3)
        g1 = (g * t1).sum(-1) / 4.0
        m = torch.stack([torch.stack([g3[:, 0] - g1, g3[:, 1]], -1), torch.stack([g3[:, 1], g3[:, 2] - g1], -1)], -2)
        grad_sigma = 0.5 * c2[:, None, None] * (rinv @ m @ rinv)
        return grad_mu, grad_sigma, None, None, None, None


# --------------------------------------------------------------------------------------------------- API


def continuous_softmax(mu: Tensor, sigma: Tensor, basis: GaussianBasis) -> Tensor:
    """r = E_p[psi] for p = N(mu, sigma): 1-D mu (B,), sigma = variance (B,); 2-D mu (B, 2), sigma (B, 2, 2)."""
    c, v = _basis(basis, mu)
    return (ContinuousSoftmax1d if basis.dim == 1 else ContinuousSoftmax2d).apply(mu, sigma, c, v)


def continuous_sparsemax(mu: Tensor, sigma: Tensor, basis: GaussianBasis, n_angles: int = 100,
                         adaptive_angles: bool = True) -> Tensor:
    """r = E_p[psi] for the truncated parabola (1-D) / paraboloid (2-D) TP(mu, sigma); ``n_angles`` = K (2-D)."""
    c, v = _basis(basis, mu)
    if basis.dim == 1:
        return ContinuousSparsemax1d.apply(mu, sigma, c, v)
    return ContinuousSparsemax2d.apply(mu, sigma, c, v, n_angles, adaptive_angles)


def gaussian_density(t: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """N(t; mu, Sigma) for t (..., P, 2) (or (..., P) in 1-D), mu (..., 2), sigma (..., 2, 2)."""
    if sigma.dim() == mu.dim():  # 1-D: mu (...,), sigma = variance (...,)
        return torch.exp(-0.5 * (t - mu[..., None]) ** 2 / sigma[..., None]) / torch.sqrt(2 * math.pi * sigma[..., None])
    d = t - mu[..., None, :]
    q = torch.einsum("...pi,...ij,...pj->...p", d, inv2(sigma), d)
    return torch.exp(-0.5 * q) / (2 * math.pi * det2(sigma).sqrt()[..., None])


def paraboloid_density(t: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """TP(t; mu, Sigma) = [-lambda - 1/2 (t-mu)^T Sigma^-1 (t-mu)]_+ (1-D: sigma = sigma^2, truncated parabola)."""
    if sigma.dim() == mu.dim():
        half = (1.5 * sigma) ** (1.0 / 3.0)
        return ((half * half)[..., None] - (t - mu[..., None]) ** 2).clamp_min(0) / (2 * sigma[..., None])
    d = t - mu[..., None, :]
    q = torch.einsum("...pi,...ij,...pj->...p", d, inv2(sigma), d)
    mlam = 1.0 / torch.sqrt(math.pi * det2(sigma).sqrt())
    return (mlam[..., None] - 0.5 * q).clamp_min(0)
