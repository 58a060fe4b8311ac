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
K **distinct** nodes 2 pi k / K. The reference code used linspace(0, 2 pi, K), counting angle 0 twice (5-14 %
forward error, backward inconsistent with the forward; notes sect. 3.5); this one is spectrally accurate, and by
default each RBF's nodes go through a smooth periodic change of variables that clusters them at the sharp
features of its angle integrand (centre direction; for line-shaped attention the crossings of the whitened RBF's
long axis with the support boundary), so K = 100 is accurate to ~1e-7 on every map family we test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.autograd import Function

from mmfusion.attention.basis import GaussianBasis
from mmfusion.attention.linalg2 import det2, inv2, sqrtm2
from mmfusion.attention.scratch import Scratch

_SQRT2PI = math.sqrt(2 * math.pi)
# adaptive angles (_adaptive_angles): nodes per angular width of a feature, strongest concentration (kappa = 1/10),
# half-width of a node cluster in u (node spacings), relevance cut-off, margin keeping the map monotone
_ANGLE_NODES_PER_WIDTH = 3.0
_KAPPA_MIN = 0.1
_CLUSTER_NODES = 6.0
_RELEVANCE_MIN = 1e-6
_MONOTONE_MARGIN = 0.05
_GL_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _exp_floor(dtype: torch.dtype) -> float:
    """log(tiny) + 7 for the dtype's smallest normal number tiny: -80.3 in float32, -701.4 in float64."""
    return math.log(torch.finfo(dtype).tiny) + 7.0


def _exp_(x: Tensor) -> Tensor:
    """In-place exp of a non-positive argument floored at ``_exp_floor``: below it exp(x) < 1e3 tiny, i.e. zero
    to the dtype's precision in every sum it enters, and the floor keeps the CPU exp kernel off its slow path,
    which it takes for arguments below ~log(tiny) (12-20x slower per element on torch 2.13 CPU, AVX2)."""
    return x.clamp_min_(_exp_floor(x.dtype)).exp_()


def _phi(z: Tensor) -> Tensor:
    return _exp_(-0.5 * z * z).div_(_SQRT2PI)


def _gauss_legendre(n: int, lo: float, hi: float, like: Tensor) -> tuple[Tensor, Tensor]:
    if n not in _GL_CACHE:
        _GL_CACHE[n] = np.polynomial.legendre.leggauss(n)
    x, w = _GL_CACHE[n]
    x = torch.as_tensor(0.5 * (hi - lo) * x + 0.5 * (hi + lo), dtype=like.dtype, device=like.device)
    return x, torch.as_tensor(0.5 * (hi - lo) * w, dtype=like.dtype, device=like.device)


def interval_moments(
    m: Tensor, s: Tensor, lo: float, hi: float, flat_above: float = 1.0, gl_nodes: int = 24
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """X_k = int_lo^hi x^k N(x; m, s^2) dx for k = 0..3 (elementwise).

    Closed form through the truncated standard-normal moments (notes sect. 3.5: M_1, M_2, M_3). Where the Gaussian
    is flat on the interval (s > flat_above * (hi - lo)) the power expansion in m cancels catastrophically
    (degenerate, near one-hot attention; notes sect. 5 item 2), so those entries use Gauss-Legendre quadrature of
    the smooth integrand instead (accurate to ~1e-12 there).
    """
    al, be = (lo - m) / s, (hi - m) / s
    pa, pb = _phi(al), _phi(be)
    upper = al > 0  # both limits in the upper tail: difference of survival functions, no cancellation
    na, nb = torch.special.ndtr(torch.where(upper, -al, al)), torch.special.ndtr(torch.where(upper, -be, be))
    z0 = torch.where(upper, na - nb, nb - na)
    z1 = pa - pb
    z2 = z0 + al * pa - be * pb
    z3 = 2 * z1 + al * al * pa - be * be * pb
    x0 = z0
    x1 = m * z0 + s * z1
    x2 = m * m * z0 + 2 * m * s * z1 + s * s * z2
    x3 = m**3 * z0 + 3 * m * m * s * z1 + 3 * m * s * s * z2 + s**3 * z3
    _flat_moments_(enumerate((x0, x1, x2, x3)), m, s, lo, hi, flat_above, gl_nodes)
    return x0, x1, x2, x3


def _flat_moments_(
    xs: Iterable[tuple[int, Tensor]],
    m: Tensor,
    s: Tensor,
    lo: float,
    hi: float,
    flat_above: float,
    gl_nodes: int,
) -> None:
    """Overwrite each X_k of ``xs`` ((k, X_k) pairs) in place by Gauss-Legendre quadrature of the smooth integrand
    where the Gaussian is flat on the interval (s > flat_above * (hi - lo)), the entries where the closed form
    cancels catastrophically."""
    flat = s > flat_above * (hi - lo)
    if not bool(flat.any()):
        return
    idx = flat.nonzero(as_tuple=True)
    mf, sf = m[idx], s[idx]
    xn, wn = _gauss_legendre(gl_nodes, lo, hi, m)
    dens = wn * torch.exp(-0.5 * ((xn - mf[:, None]) / sf[:, None]) ** 2) / (sf[:, None] * _SQRT2PI)
    for k, xk in xs:
        xk[idx] = (dens * xn**k).sum(-1)


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
        grad_sigma = 0.5 * (
            torch.einsum("bn,bni,bnj->bij", gr, ad, ad) - torch.einsum("bn,bnij->bij", gr, ainv)
        )
        return grad_mu, grad_sigma, None, None


def _wrap(x: Tensor) -> Tensor:
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def _poisson(sin: Tensor, cos: Tensor, r: float) -> tuple[Tensor, Tensor]:
    """A = V(phi) - phi and D = V'(phi) (1 - r) / (1 + r) at sin, cos phi for the wrapped-Cauchy CDF
    V(phi) = 2 atan((1 + r) / (1 - r) tan(phi / 2)) (A odd and 2 pi-periodic; 0 < D <= 1, D(0) = 1)."""
    return 2 * torch.atan2(r * sin, 1 - r * cos), (1 - r) ** 2 / (1 + r * r - 2 * r * cos)


def _angle_features(mt: Tensor, prec: Tensor, detp: Tensor, n_angles: int) -> tuple[Tensor, Tensor]:
    """Directions (B, N, 3) and node-cluster depths gamma = 1 - kappa in [0, 1 - _KAPPA_MIN] (0: not needed) of
    the sharp features of the angle integrand of each whitened RBF N(mu~, Sigma~) restricted to the unit disk:

    C   the RBF centre direction, angular width sigma_perp / min(|mu~|, 1) (sigma_perp: std across it);
    X+- the crossings of the RBF's long axis (direction v, at distance p < 1 from the origin, normal n) with the
        unit circle, directions of p n +- sqrt(1 - p^2) v, width sigma_short / sqrt(1 - p^2) (or
        sigma_short / min(sigma_long, 1) when the origin lies inside the RBF: rays along the axis), relevance
        rho = RBF density at the crossing / its maximum on the chord (thin "needles" of line-shaped attention).

    kappa = width K / (2 pi n) clamped to [_KAPPA_MIN, 1] gives n nodes per width, with
    n = _ANGLE_NODES_PER_WIDTH log(rho / rho_min) / log(1 / rho_min), so gamma -> 0 continuously as rho -> rho_min.
    """
    tiny = torch.finfo(mt.dtype).tiny
    p00, p11, p01 = prec[..., 0, 0], prec[..., 1, 1], 0.5 * (prec[..., 0, 1] + prec[..., 1, 0])
    # Sigma~ = adj(P) / |P|: long-axis variance and direction; short variance = |Sigma~| / long = 1 / (|P| long)
    hd, s01 = 0.5 * (p11 - p00) / detp, -p01 / detp
    long2 = 0.5 * (p00 + p11) / detp + torch.sqrt(hd * hd + s01 * s01)
    sl = long2.sqrt()
    ss = torch.rsqrt((detp * long2).clamp_min(tiny))
    phv = 0.5 * torch.atan2(2 * s01, 2 * hd)
    v0, v1 = phv.cos(), phv.sin()
    xm = mt[..., 0] * v0 + mt[..., 1] * v1  # centre along the axis, measured from the foot of the origin
    ps = (
        mt[..., 1] * v0 - mt[..., 0] * v1
    )  # signed distance of the axis from the origin (normal n = (-v1, v0))
    p = ps.abs()
    h = (1 - p * p).clamp_min(0).sqrt()
    th_c = torch.atan2(mt[..., 1], mt[..., 0])
    th_p = torch.atan2(ps * v0 + h * v1, -ps * v1 + h * v0)
    th_m = torch.atan2(ps * v0 - h * v1, -ps * v1 - h * v0)
    rho0 = mt.norm(dim=-1)
    e0, e1 = mt[..., 0] / rho0.clamp_min(tiny), mt[..., 1] / rho0.clamp_min(tiny)
    sperp = torch.sqrt(
        (p00 * e0 * e0 + 2 * p01 * e0 * e1 + p11 * e1 * e1) / detp
    )  # e^T Sigma~^-1 e / |Sigma~^-1|
    w_c = torch.where(rho0 > 0, sperp / rho0.clamp(tiny, 1.0), torch.full_like(rho0, math.inf))
    w_x = ss / h.clamp_min(1e-3)
    log_min = math.log(_RELEVANCE_MIN)
    origin_in = -0.5 * (p / ss) ** 2 - 0.5 * (xm / sl) ** 2 > log_min
    w_x = torch.where(origin_in, torch.minimum(w_x, ss / sl.clamp_max(1.0)), w_x)
    inside = (xm.abs() - h).clamp_min(0) ** 2
    lrel_p = torch.where(p < 1, -0.5 * ((h - xm) ** 2 - inside) / (sl * sl), torch.full_like(p, 2 * log_min))
    lrel_m = torch.where(p < 1, -0.5 * ((h + xm) ** 2 - inside) / (sl * sl), torch.full_like(p, 2 * log_min))
    per = n_angles / (2 * math.pi * _ANGLE_NODES_PER_WIDTH)
    gam = []
    for w, lrel in ((w_c, None), (w_x, lrel_p), (w_x, lrel_m)):
        share = 1.0 if lrel is None else ((lrel - log_min) / -log_min).clamp(1e-6, 1.0)
        kappa = (w * per / share).clamp(_KAPPA_MIN, 1.0)
        gam.append(1 - kappa)
    return torch.stack([th_c, th_p, th_m], -1), torch.stack(gam, -1)


@dataclass
class _NodePlacement:
    """Where the angle nodes of each RBF cluster (``_place_nodes``), all (B, N).

    Attributes:
        theta0: direction of the first cluster (theta*); theta(0) = theta0.
        delta: offset in u of the second cluster's dip, solving psi(delta) = angle to the second feature.
        g0, g1: dip depths gamma_0, gamma_1 after the monotonicity bound (0: no dip).
        kappa: atan2 squeeze of the single-feature map (1 when there are dips).
        r: Poisson-kernel parameter fixed by the cluster half-width (a float, shared).
    """

    theta0: Tensor
    delta: Tensor
    g0: Tensor
    g1: Tensor
    kappa: Tensor
    r: float


def _adaptive_angles(
    mt: Tensor, prec: Tensor, detp: Tensor, n_angles: int, buf: Scratch | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-RBF periodic change of variables theta(u) of the angle integral: cos, sin theta_k and weights
    theta'(u_k) 2 pi / K at the K distinct nodes u_k = 2 pi k / K (``_sparsemax2d_terms``).

    theta = theta* + atan2(kappa sin psi, cos psi), psi = u - c g_0 A(u) - c g_1 (A(u - Delta) + A(Delta)), with A,
    D the wrapped-Cauchy terms of ``_poisson`` (kernel parameter r fixed by the cluster half-width
    _CLUSTER_NODES 2 pi / K). psi' = c (1 - gamma_0 D(u) - gamma_1 D(u - Delta)) has (at most two) dips of depth
    gamma_m: clusters of nodes at two arbitrary directions over a near-uniform background (g_m = gamma_m (1 - r)
    / (1 + r), c = 1 / (1 - g_0 - g_1), so psi(u + 2 pi) = psi(u) + 2 pi and psi(0) = 0). Features from
    ``_angle_features``; ones closer than a cluster half-width merge. A single feature (the centre, or a crossing
    that contains it): no dips, theta* = its direction, kappa = 1 - gamma < 1 (the atan2 map of the previous
    rule, nodes at theta* and theta* + pi). Otherwise kappa = 1, theta* = first feature and Delta solves the
    monotone scalar equation psi(Delta) = angle to the second (bisection, vectorised). gamma_max + gamma_min
    D(Delta / 2) <= 1 - _MONOTONE_MARGIN bounds sum_m gamma_m D < 1, so theta is a smooth increasing bijection of
    the circle: the trapezoid stays spectrally accurate and converges to the integral as K -> infinity.
    """
    placement = _place_nodes(mt, prec, detp, n_angles)
    return _evaluate_nodes(placement, n_angles, buf or Scratch((*mt.shape[:-1], n_angles), mt))


def _place_nodes(mt: Tensor, prec: Tensor, detp: Tensor, n_angles: int) -> _NodePlacement:
    """Features -> the change of variables' parameters (merge close features, choose theta*, solve for Delta,
    bound the dips for monotonicity); see :func:`_adaptive_angles`."""
    dt = mt.dtype
    th, gam = _angle_features(mt, prec, detp, n_angles)
    # half-width of a dip in u (Poisson kernel width (1 - r) / sqrt(r)); <= pi / 3 keeps c = 1 / (1 - G) <= 6
    du = min(2 * math.pi * _CLUSTER_NODES / n_angles, math.pi / 3)
    r = ((math.sqrt(du * du + 4) - du) / 2) ** 2
    bk = (1 - r) / (1 + r)
    # merge a feature into a later one closer than a dip half-width (C into X+-, X+ into X-)
    merged_c = torch.zeros_like(gam[..., 0], dtype=torch.bool)
    th, gam = list(th.unbind(-1)), list(gam.unbind(-1))
    for i, j in ((0, 1), (0, 2), (1, 2)):
        d = _wrap(th[i] - th[j])
        close = (gam[i] > 0) & (gam[j] > 0) & (d.abs() < du)
        th[j] = torch.where(close, th[j] + 0.5 * d, th[j])
        gam[j] = torch.where(close, torch.maximum(gam[i], gam[j]), gam[j])
        gam[i] = torch.where(close, torch.zeros_like(gam[i]), gam[i])
        if i == 0:
            merged_c = merged_c | close
    act = [g > 0 for g in gam]
    n_act = act[0].int() + act[1].int() + act[2].int()
    single = (n_act == 0) | ((n_act == 1) & (act[0] | merged_c))
    both_x = act[1] & act[2]
    first_x = torch.where(act[1], th[1], th[2])
    g_first_x = torch.where(act[1], gam[1], gam[2])
    use_c = act[0] & ~both_x
    th0 = torch.where(use_c | (n_act == 0), th[0], torch.where(both_x, th[1], first_x))
    g0 = torch.where(use_c, gam[0], torch.where(both_x, gam[1], g_first_x))
    th1 = torch.where(both_x, th[2], first_x)
    g1 = torch.where(use_c & (act[1] | act[2]), g_first_x, torch.where(both_x, gam[2], torch.zeros_like(g0)))
    kappa = torch.where(single, 1 - g0, torch.ones_like(g0))
    g0 = torch.where(single, torch.zeros_like(g0), g0)
    g1 = torch.where(single, torch.zeros_like(g1), g1)
    # placement: F(Delta) = c (Delta - G V(Delta)) = T on the monotone branch F' = c (1 - (g0 + g1) D) > 0
    tgt = torch.remainder(th1 - th0, 2 * math.pi)
    gs = g0 + g1
    big_g = bk * gs
    c = 1 / (1 - big_g)
    cmin = ((1 + r * r) - (1 - r) ** 2 * gs) / (2 * r)
    dmin = torch.where(gs > 1, torch.acos(cmin.clamp(-1, 1)), torch.zeros_like(gs)) + 1e-4
    lo, hi = dmin, 2 * math.pi - dmin
    for _ in range(20 if dt == torch.float32 else 34):
        mid = 0.5 * (lo + hi)
        f = c * (mid - big_g * (mid + _poisson(mid.sin(), mid.cos(), r)[0])) - tgt
        lo, hi = torch.where(f < 0, mid, lo), torch.where(f < 0, hi, mid)
    delta = 0.5 * (lo + hi)
    # monotone: gamma_max + gamma_min D(separation / 2) <= 1 - margin (D decreasing on [0, pi])
    sep = torch.minimum(delta, 2 * math.pi - delta)
    bound = (
        torch.maximum(g0, g1) + torch.minimum(g0, g1) * _poisson((0.5 * sep).sin(), (0.5 * sep).cos(), r)[1]
    )
    scale = ((1 - _MONOTONE_MARGIN) / bound.clamp_min(torch.finfo(dt).tiny)).clamp_max(1.0)
    return _NodePlacement(theta0=th0, delta=delta, g0=g0 * scale, g1=g1 * scale, kappa=kappa, r=r)


def _evaluate_nodes(pl: _NodePlacement, n_angles: int, buf: Scratch) -> tuple[Tensor, Tensor, Tensor]:
    """cos theta_k, sin theta_k and the weights theta'(u_k) 2 pi / K at u_k = 2 pi k / K, each (B, N, K) (three
    buffers of ``buf``).

    Every (B, N, K) buffer comes from ``buf`` and is then updated in place (a fresh one costs page faults on CPU);
    the comments name what a buffer holds after each step, and a name is deleted once its buffer is re-used."""
    theta0, delta, g0, g1, kappa, r = pl.theta0, pl.delta, pl.g0, pl.g1, pl.kappa, pl.r
    dt = theta0.dtype
    bk = (1 - r) / (1 + r)
    c = 1 / (1 - bk * (g0 + g1))
    cg0, cg1 = c * bk * g0, c * bk * g1
    u = 2 * math.pi * torch.arange(n_angles, dtype=dt, device=theta0.device) / n_angles
    su, cu = u.sin(), u.cos()
    a_u, d_u = _poisson(su, cu, r)  # A(u), D(u)
    sd, cd = delta.sin()[..., None], delta.cos()[..., None]
    a_delta, _ = _poisson(
        sd, cd, r
    )  # A(Delta); psi(0) = 0: psi = u - c g0 A(u) - c g1 (A(u - Delta) + A(Delta))
    sin_shift = torch.mul(su, cd, out=buf.take()).addcmul_(cu, sd, value=-1)  # sin(u - Delta)
    cos_shift = torch.mul(cu, cd, out=buf.take()).addcmul_(su, sd)  # cos(u - Delta)
    d_shift = torch.mul(cos_shift, -2 * r, out=buf.take())
    d_shift.add_(1 + r * r).reciprocal_().mul_((1 - r) ** 2)  # D(u - Delta)
    psi = (
        sin_shift.mul_(r).atan2_(cos_shift.mul_(-r).add_(1)).mul_(2).add_(a_delta)
    )  # A(u - Delta) + A(Delta)
    del sin_shift  # its buffer is psi now
    psi.mul_(-cg1[..., None]).addcmul_(a_u, cg0[..., None], value=-1).add_(u)  # psi(u)
    # psi' = c (1 - g0 D(u) - g1 D(u - Delta)); weight = psi' kappa / (cos^2 psi + kappa^2 sin^2 psi) 2 pi / K
    dpsi = d_shift.mul_(-g1[..., None]).addcmul_(d_u, g0[..., None], value=-1).add_(1)  # psi' / c
    del d_shift
    cos_psi = torch.cos(psi, out=cos_shift)
    del cos_shift
    ksin_psi = psi.sin_().mul_(kappa[..., None])  # kappa sin psi
    del psi
    norm2 = torch.square(cos_psi, out=buf.take()).addcmul_(
        ksin_psi, ksin_psi
    )  # cos^2 psi + kappa^2 sin^2 psi
    weights = dpsi.div_(norm2).mul_((c * kappa * (2 * math.pi / n_angles))[..., None])
    del dpsi
    inv_norm = norm2.rsqrt_()
    del norm2
    cos_rel = cos_psi.mul_(inv_norm)  # cos(theta - theta0) = cos psi / |.|
    sin_rel = ksin_psi.mul_(inv_norm)  # sin(theta - theta0) = kappa sin psi / |.|
    del cos_psi, ksin_psi
    ct, st = theta0.cos()[..., None], theta0.sin()[..., None]
    cos_theta = torch.mul(cos_rel, ct, out=inv_norm).addcmul_(sin_rel, st, value=-1)
    del inv_norm
    sin_theta = sin_rel.mul_(ct).addcmul_(cos_rel, st)
    buf.give(cos_rel)
    return cos_theta, sin_theta, weights


def _whiten(mu: Tensor, sigma: Tensor, centres: Tensor, covs: Tensor) -> tuple[Tensor, ...]:
    """s = Sigma^-1/2 (t - mu) / c maps supp TP(mu, Sigma) to the unit disk (c^2 = -2 lambda); RBF j becomes
    N(mu~_j, Sigma~_j). Returns c, c^2, Sigma^-1/2, mu~ (B, N, 2), Sigma~^-1 (B, N, 2, 2), |Sigma~^-1| (B, N)."""
    dets = det2(sigma).clamp_min(torch.finfo(sigma.dtype).tiny)
    c2 = 2.0 / torch.sqrt(math.pi * dets.sqrt())  # -2 lambda, -lambda = (pi |Sigma|^{1/2})^{-1/2}
    c = c2.sqrt()
    root = sqrtm2(sigma)
    rinv = inv2(root)
    mt = torch.einsum("bij,bnj->bni", rinv, centres[None] - mu[:, None]) / c[:, None, None]  # mu~_j
    prec = c2[:, None, None, None] * (root[:, None] @ inv2(covs)[None] @ root[:, None])  # Sigma~_j^-1
    detp = c2[:, None] ** 2 * dets[:, None] / det2(covs)[None]
    return c, c2, rinv, mt, prec, detp


def _sparsemax2d_terms(
    mu: Tensor, sigma: Tensor, centres: Tensor, covs: Tensor, n_angles: int, adaptive: bool = True
):
    """Whitened polar reduction of App. A.2 (Alg. 4) for the truncated paraboloid TP(mu, Sigma).

    Whitening s = Sigma^-1/2 (t - mu) / c maps the support to the unit disk and RBF j to N(mu~_j, Sigma~_j); in
    polar coordinates s = rho a(theta) the radial moments are closed form and the angle integral is a periodic
    trapezoid sum over K distinct nodes u_k = 2 pi k / K (never the endpoint twice). ``adaptive=False``:
    theta_k = u_k (Alg. 4). ``adaptive=True`` (default): theta_k = theta_j(u_k) for a smooth increasing periodic
    per-RBF change of variables with weights theta_j'(u_k) 2 pi / K (``_adaptive_angles``) that puts node
    clusters at the sharp features of the integrand of RBF j: its centre direction and, for needle-shaped
    whitened RBFs (line-shaped attention), the two directions where its long axis crosses the unit circle (or
    the axis itself when it passes through the origin). Any such map keeps the trapezoid spectrally accurate,
    and theta_j(u) = u is Alg. 4; the features only decide where the nodes go.
    """
    c, c2, rinv, mt, prec, detp = _whiten(mu, sigma, centres, covs)
    buf = Scratch(
        (*mt.shape[:-1], n_angles), mu
    )  # every (B, N, K) buffer; fresh ones cost page faults on CPU
    if adaptive:
        a0, a1, w = _adaptive_angles(mt, prec, detp, n_angles, buf)
    else:
        u = (
            2 * math.pi * torch.arange(n_angles, dtype=mu.dtype, device=mu.device) / n_angles
        )  # distinct nodes
        a0, a1, w = u.cos(), u.sin(), torch.full_like(u, 2 * math.pi / n_angles)
    a0, a1 = a0.expand(*mt.shape[:-1], n_angles), a1.expand(*mt.shape[:-1], n_angles)  # (B, N, K)
    p00, p01, p11 = (
        prec[..., 0, 0, None],
        0.5 * (prec[..., 0, 1] + prec[..., 1, 0])[..., None],
        prec[..., 1, 1, None],
    )
    q = torch.mul(a0, a0, out=buf.take()).mul_(p00)  # a^T Sigma~^-1 a
    tmp = torch.mul(a0, a1, out=buf.take()).mul_(2 * p01)
    q.add_(tmp).add_(torch.mul(a1, a1, out=tmp).mul_(p11))
    pm = torch.einsum("bnij,bnj->bni", prec, mt)
    b = torch.mul(a0, pm[..., 0, None], out=buf.take()).addcmul_(a1, pm[..., 1, None])  # a^T Sigma~^-1 mu~
    # mu~^T P mu~ - (a^T P mu~)^2 / a^T P a = |P| (a x mu~)^2 / a^T P a  (2-D Lagrange identity; no cancellation)
    expo = torch.mul(a0, mt[..., 1, None], out=tmp).addcmul_(a1, mt[..., 0, None], value=-1).square_()
    expo.mul_(detp[..., None]).div_(q)
    sig2 = q.reciprocal_()
    stl = torch.mul(sig2, detp[..., None] / (2 * math.pi), out=buf.take())
    stl.sqrt_().mul_(w).mul_(_exp_(expo.mul_(-0.5)))  # w * s~(theta)
    buf.give(expo, *([w] if adaptive else []))
    x1, x2, x3 = _unit_interval_moments_(b.mul_(sig2), sig2.sqrt_(), buf)
    buf.give(b, sig2)
    return dict(c=c, c2=c2, rinv=rinv, stl=stl, x1=x1, x2=x2, x3=x3, a0=a0, a1=a1, buf=buf)


def _unit_interval_moments_(m: Tensor, s: Tensor, buf: Scratch) -> tuple[Tensor, Tensor, Tensor]:
    """X_k = int_0^1 x^k N(x; m, s^2) dx for k = 1, 2, 3 (elementwise), three buffers of ``buf``; reads m and s.

    :func:`interval_moments` on [0, 1] written as the moment recurrence (integration by parts, the same algebra
    as its truncated standard-normal moments) with alpha = -m / s, beta = (1 - m) / s, phi/Phi the standard
    normal pdf/cdf:  X_0 = Phi(beta) - Phi(alpha),  X_1 = m X_0 + s (phi(alpha) - phi(beta)),
    X_2 = m X_1 + s^2 X_0 - s phi(beta),  X_3 = m X_2 + 2 s^2 X_1 - s phi(beta); about half the elementwise
    passes, all in place. X_0 is a difference of survival functions when alpha > 0 (both limits in the upper
    tail), and flat Gaussians (s > 1) use the same Gauss-Legendre rule as :func:`interval_moments`.
    """
    al = torch.div(m, s, out=buf.take()).neg_()  # alpha
    be = torch.reciprocal(s, out=buf.take()).add_(al)  # beta
    # Phi(beta) - Phi(alpha) = sg (Phi(sg beta) - Phi(sg alpha)), sg = -1 in the upper tail (alpha > 0)
    sg = torch.copysign(torch.ones((), dtype=m.dtype, device=m.device), al, out=buf.take()).neg_()
    za = torch.mul(al, sg, out=buf.take())
    x0 = torch.mul(be, sg, out=buf.take())
    x0 = torch.special.ndtr(x0, out=x0).sub_(torch.special.ndtr(za, out=za)).mul_(sg)  # X_0
    buf.give(sg, za)
    pa = _exp_(al.square_().mul_(-0.5)).div_(_SQRT2PI)  # phi(alpha)
    spb = _exp_(be.square_().mul_(-0.5)).mul_(s).div_(_SQRT2PI)  # s phi(beta)
    x1 = torch.mul(m, x0, out=buf.take()).addcmul_(s, pa).sub_(spb)  # X_1
    s2 = torch.mul(s, s, out=pa)
    x2 = torch.mul(m, x1, out=buf.take()).addcmul_(s2, x0).sub_(spb)  # X_2
    x3 = torch.mul(m, x2, out=buf.take()).addcmul_(s2, x1, value=2).sub_(spb)  # X_3
    buf.give(x0, s2, spb)
    _flat_moments_(((1, x1), (2, x2), (3, x3)), m, s, 0.0, 1.0, flat_above=1.0, gl_nodes=24)
    return x1, x2, x3


class ContinuousSparsemax2d(Function):
    """2-D truncated paraboloid TP(mu, Sigma) (Alg. 4, App. A.2): r_j = -lambda int s~(theta) (M_1 - M_3) dtheta."""

    @staticmethod
    def forward(
        ctx, mu: Tensor, sigma: Tensor, centres: Tensor, covs: Tensor, n_angles: int, adaptive: bool = True
    ) -> Tensor:
        t = _sparsemax2d_terms(mu, sigma, centres, covs, n_angles, adaptive)
        stl, a0, a1 = t["stl"], t["a0"], t["a1"]
        dot = lambda x, y: torch.einsum("bnk,bnk->bn", x, y)  # noqa: E731  (batched dot, no (B, N, K) temporary)
        t1 = dot(stl, t["x1"])  # int_S psi_j                                        (B, N)
        x13 = torch.sub(t["x1"], t["x3"], out=t["buf"].take())  # M_1 - M_3 (one sum: no cancellation of two)
        r = 0.5 * t["c2"][:, None] * dot(stl, x13)
        v3 = t["x3"].mul_(stl)
        v2 = t["x2"].mul_(stl)
        t2 = torch.stack([dot(v2, a0), dot(v2, a1)], -1)  # whitened int_S s psi_j    (B, N, 2)
        v3a0 = torch.mul(v3, a0, out=t["x1"])
        t3 = torch.stack(
            [dot(v3a0, a0), dot(v3a0, a1), dot(v3.mul_(a1), a1)], -1
        )  # whitened int_S s s^T psi_j
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
        m = torch.stack(
            [torch.stack([g3[:, 0] - g1, g3[:, 1]], -1), torch.stack([g3[:, 1], g3[:, 2] - g1], -1)], -2
        )
        grad_sigma = 0.5 * c2[:, None, None] * (rinv @ m @ rinv)
        return grad_mu, grad_sigma, None, None, None, None


# --------------------------------------------------------------------------------------------------- API


def continuous_softmax(mu: Tensor, sigma: Tensor, basis: GaussianBasis) -> Tensor:
    """r = E_p[psi] for p = N(mu, sigma): 1-D mu (B,), sigma = variance (B,); 2-D mu (B, 2), sigma (B, 2, 2)."""
    c, v = _basis(basis, mu)
    return (ContinuousSoftmax1d if basis.dim == 1 else ContinuousSoftmax2d).apply(mu, sigma, c, v)


def continuous_sparsemax(
    mu: Tensor, sigma: Tensor, basis: GaussianBasis, n_angles: int = 100, adaptive_angles: bool = True
) -> Tensor:
    """r = E_p[psi] for the truncated parabola (1-D) / paraboloid (2-D) TP(mu, sigma); ``n_angles`` = K (2-D)."""
    c, v = _basis(basis, mu)
    if basis.dim == 1:
        return ContinuousSparsemax1d.apply(mu, sigma, c, v)
    return ContinuousSparsemax2d.apply(mu, sigma, c, v, n_angles, adaptive_angles)


def gaussian_density(t: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """N(t; mu, Sigma) for t (..., P, 2) (or (..., P) in 1-D), mu (..., 2), sigma (..., 2, 2)."""
    if sigma.dim() == mu.dim():  # 1-D: mu (...,), sigma = variance (...,)
        return torch.exp(-0.5 * (t - mu[..., None]) ** 2 / sigma[..., None]) / torch.sqrt(
            2 * math.pi * sigma[..., None]
        )
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
