# ruff: noqa: B023, E731  (lambdas are integrated inside the loop iteration that defines them)
"""Continuous attention: transforms against scipy integration, gradcheck, Theorem 1, weighted EM, degenerate
inputs, value function, test-MCA selection and the plug-in (thesis Ch. 3-5, App. A; notes sect. 3-5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from mmfusion.attention.attflat import AttFlat
from mmfusion.attention.basis import GaussianBasis
from mmfusion.attention.continuous import (
    _adaptive_angles,
    _exp_,
    _unit_interval_moments_,
    _whiten,
    continuous_softmax,
    continuous_sparsemax,
    interval_moments,
    paraboloid_density,
)
from mmfusion.attention.discrete import DiscreteAttentionPool
from mmfusion.attention.linalg2 import eig_floor2, sym2
from mmfusion.attention.mca import region_init, weighted_em
from mmfusion.attention.moments import grid_positions, moments_2d, sparsemax_sigma2_1d, sparsemax_sigma_2d
from mmfusion.attention.pools import ContinuousSoftmaxPool, ContinuousSparsemaxPool, MCAPool
from mmfusion.attention.scratch import Scratch
from mmfusion.attention.value_function import ridge_g
from mmfusion.contract import FusionModel, ModelInfo
from mmfusion.plugins.continuous_attention import ContinuousAttention

F64 = torch.float64
POOLS = (ContinuousSoftmaxPool, ContinuousSparsemaxPool, MCAPool)


def _maps(n: int, scale: float, seed: int, line: str | None = None) -> torch.Tensor:
    """Softmax of N(0, scale^2) logits on 14x14; ``line`` = "row" / "diagonal": +8 on row 5 / the diagonal
    (line-shaped, near-rank-1 attention as in scripts/attention_quadrature_accuracy.py)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 14, 14, generator=g, dtype=F64) * scale
    if line == "row":
        logits[:, 5] += 8
    elif line == "diagonal":
        logits += 8 * torch.eye(14, dtype=F64)
    return logits.reshape(n, 196).softmax(-1)


def _ellipse_integral(fun, mu: np.ndarray, sigma: np.ndarray, rad2: float) -> float:
    """Brute-force 2-D integral (scipy dblquad, Cartesian) of fun(t0, t1) over {(t-mu)^T Sigma^-1 (t-mu) <= rad2}."""
    s00, s01, s11 = sigma[0, 0], sigma[0, 1], sigma[1, 1]
    half0 = math.sqrt(rad2 * s00)

    def bounds(t0: float, sign: float) -> float:
        d0 = t0 - mu[0]
        # conditional of the ellipse: t1 = mu1 + s01/s00 d0 +- sqrt((rad2 - d0^2/s00) (s11 - s01^2/s00))
        rest = max(rad2 - d0 * d0 / s00, 0.0) * (s11 - s01 * s01 / s00)
        return mu[1] + s01 / s00 * d0 + sign * math.sqrt(rest)

    val, _ = integrate.dblquad(
        lambda t1, t0: fun(t0, t1),
        mu[0] - half0,
        mu[0] + half0,
        lambda t0: bounds(t0, -1.0),
        lambda t0: bounds(t0, 1.0),
        epsabs=1e-12,
        epsrel=1e-11,
    )
    return val


def _tp_times_rbf(mu, sigma, centre, var):
    sinv = np.linalg.inv(sigma)
    mlam = 1.0 / math.sqrt(math.pi * math.sqrt(np.linalg.det(sigma)))

    def f(t0, t1):
        d = np.array([t0 - mu[0], t1 - mu[1]])
        p = max(mlam - 0.5 * d @ sinv @ d, 0.0)
        e = (t0 - centre[0]) ** 2 + (t1 - centre[1]) ** 2
        return p * math.exp(-0.5 * e / var) / (2 * math.pi * var)

    return f, 2 * mlam


# ------------------------------------------------------------------------------------------ forward vs scipy


@pytest.mark.parametrize(
    "scale,seed,line", [(1.0, 0, None), (3.0, 1, None), (1.0, 2, "row"), (1.0, 7, "diagonal")]
)
def test_sparsemax_2d_forward_matches_scipy(scale: float, seed: int, line: str | None) -> None:
    basis = GaussianBasis.grid_2d(100)
    pos = grid_positions(14, 14, F64)
    mu, v = moments_2d(_maps(4, scale, seed, line), pos)
    sigma = sparsemax_sigma_2d(v)
    r100 = continuous_sparsemax(mu, sigma, basis, 100)
    r200 = continuous_sparsemax(mu, sigma, basis, 200)
    r400 = continuous_sparsemax(mu, sigma, basis, 400)
    r_ref = continuous_sparsemax(mu, sigma, basis, 1600, adaptive_angles=False)
    # pick, per example, the RBF where K=100 is least accurate (against K=1600) and the largest one
    for b in range(2):
        js = {int((r100[b] - r_ref[b]).abs().argmax()), int(r_ref[b].argmax())}
        for j in js:
            f, rad2 = _tp_times_rbf(mu[b].numpy(), sigma[b].numpy(), basis.centres[j].numpy(), 1e-3)
            brute = _ellipse_integral(f, mu[b].numpy(), sigma[b].numpy(), rad2)
            scale_b = float(r_ref[b].max())
            assert abs(float(r100[b, j]) - brute) / scale_b < 1e-4
            assert abs(float(r400[b, j]) - brute) / scale_b < 1e-8
    # over all RBFs and examples: K = 100 within 1e-4 of the converged sum, then spectral convergence
    rel = lambda r: float(((r - r_ref).abs().amax(-1) / r_ref.amax(-1)).max())  # noqa: E731
    assert rel(r100) < 1e-4 and rel(r200) < 1e-8 and rel(r400) < 1e-10


def test_adaptive_angles_are_a_change_of_variables() -> None:
    """The per-RBF node rule is a quadrature of the circle: distinct nodes, positive weights, and
    sum_k w_k exp(i m theta_k) -> 2 pi [m = 0] spectrally (a smooth periodic bijection theta(u) with weights
    theta'(u_k) 2 pi / K), also for mu exactly on an RBF centre (one-hot at cell (3, 3) = RBF centre (0.25, 0.25))."""
    basis = GaussianBasis.grid_2d(100)
    p = torch.cat([_maps(3, 1.0, 4, "row"), _maps(3, 1.0, 5, "diagonal"), _maps(2, 20.0, 6)])
    p = torch.cat([p, torch.nn.functional.one_hot(torch.tensor([3 * 14 + 3]), 196).to(F64) + 1e-12])
    mu, v = moments_2d(p / p.sum(-1, keepdim=True), grid_positions(14, 14, F64))
    sigma = sparsemax_sigma_2d(v)
    for k, tol in ((100, 1e-5), (200, 1e-12)):
        a0, a1, w = _adaptive_angles(*_whiten(mu, sigma, basis.centres, basis.variances)[3:], k)
        assert float((a0 * a0 + a1 * a1 - 1).abs().max()) < 1e-12
        theta = torch.atan2(a1, a0)
        gaps = torch.remainder(theta.diff(dim=-1, append=theta[..., :1]), 2 * math.pi)
        assert (
            float(gaps.min()) > 1e-4
            and float(gaps.sum(-1).max()) < 2 * math.pi + 1e-9
            and bool((w > 0).all())
        )
        for m in range(4):
            cm, sm = (w * torch.cos(m * theta)).sum(-1), (w * torch.sin(m * theta)).sum(-1)
            assert (
                float((cm - (2 * math.pi if m == 0 else 0.0)).abs().max()) < tol
                and float(sm.abs().max()) < tol
            )
    assert bool(torch.isfinite(continuous_sparsemax(mu, sigma, basis)).all())


def test_uniform_angles_are_less_accurate_but_distinct() -> None:
    """The plain Alg. 4 trapezoid over distinct angles also converges (no double-counted endpoint)."""
    basis = GaussianBasis.grid_2d(100)
    mu, v = moments_2d(_maps(8, 1.0, 3), grid_positions(14, 14, F64))
    sigma = sparsemax_sigma_2d(v)
    ref = continuous_sparsemax(mu, sigma, basis, 1600, adaptive_angles=False)
    for k, tol in ((100, 1e-3), (200, 1e-8)):
        r = continuous_sparsemax(mu, sigma, basis, k, adaptive_angles=False)
        assert float(((r - ref).abs().amax(-1) / ref.amax(-1)).max()) < tol


def test_softmax_2d_forward_matches_scipy() -> None:
    basis = GaussianBasis.grid_2d(100)
    mu = torch.tensor([[0.3, 0.6]], dtype=F64)
    sigma = torch.tensor([[[0.02, 0.006], [0.006, 0.01]]], dtype=F64)
    r = continuous_softmax(mu, sigma, basis)[0]
    sinv, det = np.linalg.inv(sigma[0].numpy()), np.linalg.det(sigma[0].numpy())
    for j in (int(r.argmax()), 0, 57):
        c = basis.centres[j].numpy()

        def f(t1, t0):
            d = np.array([t0, t1]) - mu[0].numpy()
            e = (t0 - c[0]) ** 2 + (t1 - c[1]) ** 2
            return (
                math.exp(-0.5 * d @ sinv @ d)
                / (2 * math.pi * math.sqrt(det))
                * math.exp(-0.5 * e / 1e-3)
                / (2 * math.pi * 1e-3)
            )

        val, _ = integrate.dblquad(
            f, c[0] - 0.4, c[0] + 0.4, c[1] - 0.4, c[1] + 0.4, epsabs=1e-11, epsrel=1e-10
        )
        assert float(r[j]) == pytest.approx(val, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("kind", ["softmax", "sparsemax"])
def test_1d_forward_matches_scipy(kind: str) -> None:
    basis = GaussianBasis.grid_1d(16)
    mu, var = torch.tensor([0.35], dtype=F64), torch.tensor([0.004], dtype=F64)
    fn = continuous_softmax if kind == "softmax" else continuous_sparsemax
    r = fn(mu, var, basis)[0]
    for j in range(16):
        c, s2 = float(basis.centres[j]), float(basis.variances[j])
        psi = lambda t: math.exp(-0.5 * (t - c) ** 2 / s2) / math.sqrt(2 * math.pi * s2)  # noqa: E731
        if kind == "softmax":
            dens = lambda t: math.exp(-0.5 * (t - 0.35) ** 2 / 0.004) / math.sqrt(2 * math.pi * 0.004)  # noqa
            lo, hi = -1.0, 2.0
        else:
            a = (1.5 * 0.004) ** (1 / 3)
            dens = lambda t: max(a * a - (t - 0.35) ** 2, 0.0) / (2 * 0.004)  # noqa: E731
            lo, hi = 0.35 - a, 0.35 + a
        val, _ = integrate.quad(lambda t: dens(t) * psi(t), lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200)
        assert float(r[j]) == pytest.approx(val, rel=1e-8, abs=1e-12)


def test_interval_moments_closed_form_and_flat_branch() -> None:
    m = torch.tensor([0.3, -0.5, 1.7, 0.5, 40.0, -3.0], dtype=F64)
    s = torch.tensor([0.05, 0.2, 0.6, 3.0, 25.0, 300.0], dtype=F64)  # last three use the flat (GL) branch
    xs = interval_moments(m, s, 0.0, 1.0)
    for i in range(len(m)):
        mi, si = float(m[i]), float(s[i])
        for k in range(4):
            val, _ = integrate.quad(
                lambda x: x**k * math.exp(-0.5 * ((x - mi) / si) ** 2) / (si * math.sqrt(2 * math.pi)),
                0.0,
                1.0,
                epsabs=1e-15,
                epsrel=1e-12,
            )
            assert float(xs[k][i]) == pytest.approx(val, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_unit_interval_moments_recurrence_matches_scipy(dtype: torch.dtype) -> None:
    """The in-place recurrence used by the 2-D sparsemax equals scipy on [0, 1] in the bulk, both tails (upper:
    both limits above the mean) and the flat (GL) branch, and leaves m, s untouched. float32: absolute 1e-6
    (far-tail values are ~1e-12 and carry the same relative rounding as interval_moments' closed form)."""
    m = torch.tensor([0.3, -0.5, 1.7, 0.5, 40.0, -3.0, 4.0, -2.0, 0.02, 0.99], dtype=dtype)
    s = torch.tensor([0.05, 0.2, 0.6, 3.0, 25.0, 300.0, 0.4, 0.3, 1e-3, 0.9], dtype=dtype)
    m0, s0 = m.clone(), s.clone()
    x1, x2, x3 = _unit_interval_moments_(m, s, Scratch(m.shape, m))
    assert torch.equal(m, m0) and torch.equal(s, s0)
    tol = dict(rel=1e-9, abs=1e-15) if dtype == F64 else dict(rel=0.0, abs=1e-6)
    for i in range(len(m)):
        mi, si = float(m[i]), float(s[i])
        for k, xk in ((1, x1), (2, x2), (3, x3)):
            val, _ = integrate.quad(
                lambda x: x**k * math.exp(-0.5 * ((x - mi) / si) ** 2) / (si * math.sqrt(2 * math.pi)),
                0.0,
                1.0,
                points=[min(max(mi, 0.0), 1.0)],
                epsabs=1e-15,
                epsrel=1e-12,
            )
            assert float(xk[i]) == pytest.approx(val, **tol), (i, k)


def test_exp_floor_is_exact_above_and_normal_below() -> None:
    for dt in (torch.float32, F64):
        x = torch.tensor([0.0, -1.0, -50.0, -1e4, -math.inf], dtype=dt)
        y = _exp_(x.clone())
        assert torch.equal(y[:3], torch.exp(x[:3]))
        tiny = torch.finfo(dt).tiny
        assert bool((y[3:] >= tiny).all()) and bool((y[3:] < 2e3 * tiny).all())


def test_sparsemax_2d_results_do_not_alias_the_scratch_buffers() -> None:
    """The transform re-uses its (B, N, K) work buffers across calls: an earlier result (and its gradient
    through the saved integrals) must not change when a later call with the same shape writes them."""
    basis = GaussianBasis.grid_2d(16)
    pos = grid_positions(14, 14)
    out = []
    for seed in (0, 1, 0):
        mu, v = moments_2d(_maps(4, 2.0, seed).float(), pos)
        mu.requires_grad_(True)
        r = continuous_sparsemax(mu, sparsemax_sigma_2d(v), basis, 64)
        out.append((r, mu))
    (r0, mu0), (r1, _), (r2, mu2) = out
    assert not torch.allclose(r0, r1)
    assert torch.equal(r0, r2)
    r0.sum().backward()
    r2.sum().backward()
    assert torch.equal(mu0.grad, mu2.grad)


def test_scratch_keeps_buffers_per_shape() -> None:
    like = torch.zeros(())
    a = Scratch((3, 5), like)
    b1, b2 = a.take(), a.take()
    a.give(b1)
    assert a.take() is b1
    again = Scratch((3, 5), like)
    kept = {again.take().data_ptr(), again.take().data_ptr()}
    assert kept == {b1.data_ptr(), b2.data_ptr()}
    other = Scratch((7,), like)
    assert other.take().shape == (7,)
    with torch.inference_mode():  # Lightning evaluates under inference mode: its buffers are kept apart
        inf = Scratch((3, 5), like).take()
        assert inf.is_inference()
    assert not Scratch((3, 5), like).take().is_inference()


# ------------------------------------------------------------------------------------------ gradients


def test_gradcheck_every_transform() -> None:
    b2, b1 = GaussianBasis.grid_2d(16, var=1e-2), GaussianBasis.grid_1d(8)
    mu = torch.tensor([[0.4, 0.6], [0.5, 0.3]], dtype=F64, requires_grad=True)
    s = torch.tensor(
        [[[0.05, 0.01], [0.01, 0.03]], [[0.2, -0.05], [-0.05, 0.1]]], dtype=F64, requires_grad=True
    )
    assert torch.autograd.gradcheck(
        lambda m, x: continuous_softmax(m, sym2(x), b2), (mu, s), eps=1e-6, atol=1e-6
    )
    for adaptive in (True, False):
        fn = lambda m, x: continuous_sparsemax(m, sym2(x), b2, 400, adaptive_angles=adaptive)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (mu, s), eps=1e-6, atol=1e-5, rtol=1e-4)
    m1 = torch.tensor([0.3, 0.7], dtype=F64, requires_grad=True)
    v1 = torch.tensor([0.01, 0.05], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, v: continuous_softmax(m, v, b1), (m1, v1), eps=1e-7, atol=1e-6)
    assert torch.autograd.gradcheck(
        lambda m, v: continuous_sparsemax(m, v, b1), (m1, v1), eps=1e-7, atol=1e-6
    )


def test_sparsemax_2d_backward_is_the_formula_not_autograd() -> None:
    """The Function's backward matches central finite differences of the forward at K = 100 (consistency that
    the reference's linspace(0, 2 pi, 100) quadrature lacked, notes sect. 3.5)."""
    basis = GaussianBasis.grid_2d(100)
    mu, v = moments_2d(_maps(2, 2.0, 5), grid_positions(14, 14, F64))
    sigma = sparsemax_sigma_2d(v).requires_grad_(True)
    mu = mu.clone().requires_grad_(True)
    g = torch.randn(2, 100, dtype=F64, generator=torch.Generator().manual_seed(0))
    (continuous_sparsemax(mu, sigma, basis, 100) * g).sum().backward()
    for i in range(2):
        e = torch.zeros_like(mu)
        e[0, i] = 1e-6
        fd = (
            (continuous_sparsemax(mu + e, sigma, basis) - continuous_sparsemax(mu - e, sigma, basis)) * g
        ).sum() / 2e-6
        assert float(mu.grad[0, i].detach()) == pytest.approx(float(fd), rel=1e-5, abs=1e-6)
    e = torch.zeros_like(sigma)
    e[1, 0, 1] = e[1, 1, 0] = 1e-7
    fd = (
        (continuous_sparsemax(mu, sigma + e, basis) - continuous_sparsemax(mu, sigma - e, basis)) * g
    ).sum() / 2e-7
    assert float((sigma.grad[1, 0, 1] + sigma.grad[1, 1, 0]).detach()) == pytest.approx(float(fd), rel=1e-5)


@pytest.mark.parametrize("cls", POOLS)
@pytest.mark.parametrize("grid", [(4, 4), None])
def test_gradcheck_pools_end_to_end(cls, grid) -> None:
    """Through the scorer, masked softmax, moments / weighted EM, the transform and G (float64)."""
    torch.manual_seed(0)
    kw = dict(num_basis=16, basis_var=1e-2) if grid else dict(num_basis=8)
    pool = cls(3, 4, 2, dropout=0.0, grid_shape=grid, compute_dtype="float64", **kw).double()
    x = torch.randn(2, 16, 3, dtype=F64, requires_grad=True)
    mask = torch.ones(2, 16, dtype=torch.bool)
    if grid is None:
        mask[1, 11:] = False
    assert torch.autograd.gradcheck(lambda t: pool(t, mask), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ Theorem 1


def test_theorem1_truncated_paraboloid_moments() -> None:
    """TP(mu, 9 pi |V|^{1/2} V) has mass 1, mean mu and covariance V (Eq. 4.6); densities integrate to 1."""
    mu = np.array([0.45, 0.55])
    v = np.array([[0.02, 0.007], [0.007, 0.012]])
    sigma = sparsemax_sigma_2d(torch.tensor(v)).numpy()
    mlam = 1.0 / math.sqrt(math.pi * math.sqrt(np.linalg.det(sigma)))
    sinv = np.linalg.inv(sigma)
    dens = lambda t0, t1: max(mlam - 0.5 * (np.array([t0, t1]) - mu) @ sinv @ (np.array([t0, t1]) - mu), 0.0)  # noqa
    ell = lambda f: _ellipse_integral(f, mu, sigma, 2 * mlam)  # noqa: E731
    assert ell(dens) == pytest.approx(1.0, abs=1e-8)
    m0 = ell(lambda a, b: a * dens(a, b))
    m1 = ell(lambda a, b: b * dens(a, b))
    assert (m0, m1) == pytest.approx(tuple(mu), abs=1e-8)
    c01 = ell(lambda a, b: (a - mu[0]) * (b - mu[1]) * dens(a, b))
    c00 = ell(lambda a, b: (a - mu[0]) ** 2 * dens(a, b))
    assert (c00, c01) == pytest.approx((v[0, 0], v[0, 1]), abs=1e-9)
    # the density helper agrees and integrates to 1 on a fine grid
    t = torch.stack(
        torch.meshgrid(
            torch.linspace(-0.5, 1.5, 801, dtype=F64),
            torch.linspace(-0.5, 1.5, 801, dtype=F64),
            indexing="ij",
        ),
        -1,
    )
    p = paraboloid_density(t.reshape(-1, 2), torch.tensor(mu)[None], torch.tensor(sigma)[None])
    assert float(p.sum()) * (2 / 800) ** 2 == pytest.approx(1.0, abs=2e-3)


def test_theorem1_truncated_parabola_and_gaussian_1d() -> None:
    var = 0.01
    s2 = float(sparsemax_sigma2_1d(torch.tensor(var, dtype=F64)))
    a = (1.5 * s2) ** (1 / 3)
    dens = lambda t: (a * a - t * t) / (2 * s2)  # noqa: E731
    assert integrate.quad(dens, -a, a)[0] == pytest.approx(1.0, abs=1e-12)
    assert integrate.quad(lambda t: t * t * dens(t), -a, a)[0] == pytest.approx(var, abs=1e-12)
    # pools: the fitted Gaussian / paraboloid has the discrete mean and covariance of p
    pos = grid_positions(14, 14, F64)
    p = _maps(3, 2.0, 7)
    mu, v = moments_2d(p, pos)
    assert torch.allclose(mu, p @ pos)
    d = pos[None] - mu[:, None]
    assert torch.allclose(v, torch.einsum("bl,bli,blj->bij", p, d, d), atol=1e-12)


# ------------------------------------------------------------------------------------------ weighted EM


def _two_blobs(n: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    pos = grid_positions(n, n, F64)
    mus = torch.tensor([[0.25, 0.3], [0.75, 0.7]], dtype=F64)
    covs = torch.tensor([[[0.006, 0.002], [0.002, 0.004]], [[0.004, -0.001], [-0.001, 0.005]]], dtype=F64)
    dens = torch.zeros(n * n, dtype=F64)
    for k, wk in enumerate((0.4, 0.6)):
        d = pos - mus[k]
        q = torch.einsum("li,ij,lj->l", d, torch.linalg.inv(covs[k]), d)
        dens += wk * torch.exp(-0.5 * q) / (2 * math.pi * torch.linalg.det(covs[k]).sqrt())
    return pos, dens / dens.sum()


def test_weighted_em_monotone_and_recovers_two_blobs() -> None:
    pos, w = _two_blobs()
    x, w = pos[None], w[None]
    # a deliberately poor init (both means in the lower half) so EM has to move
    pi0 = torch.tensor([[0.5, 0.5]], dtype=F64)
    mu0 = torch.tensor([[[0.6, 0.2], [0.6, 0.8]]], dtype=F64)
    s0 = 0.05 * torch.eye(2, dtype=F64).expand(1, 2, 2, 2).clone()
    hist: list = []
    pi, mu, sigma = weighted_em(x, w, pi0, mu0, s0, 40, history=hist)
    ll = torch.stack(hist)[:, 0]
    assert bool((ll[1:] - ll[:-1] >= -1e-10).all()), ll
    assert float(ll[-1] - ll[0]) > 0.5
    order = mu[0, :, 0].argsort()
    assert torch.allclose(mu[0, order], torch.tensor([[0.25, 0.3], [0.75, 0.7]], dtype=F64), atol=0.01)
    assert torch.allclose(pi[0, order], torch.tensor([0.4, 0.6], dtype=F64), atol=0.01)
    # discretisation on the 14x14 grid adds about h^2/12 to the variances
    true = torch.tensor([[[0.006, 0.002], [0.002, 0.004]], [[0.004, -0.001], [-0.001, 0.005]]], dtype=F64)
    assert torch.allclose(sigma[0, order], true, atol=1.5e-3)
    # region init (upper/lower halves) lands on the same solution
    pr, mr, sr = weighted_em(x, w, *region_init(x, w, 2, (14, 14)), 30)
    assert torch.allclose(mr[0, mr[0, :, 0].argsort()], mu[0, order], atol=1e-4)


def test_eig_floor_is_the_constrained_covariance() -> None:
    a = torch.tensor(
        [[[2e-7, 0.0], [0.0, 0.3]], [[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.1], [0.1, 0.2]]], dtype=F64
    )
    f = eig_floor2(a, 1e-6)
    ev = torch.linalg.eigvalsh(f)
    assert torch.allclose(ev[0], torch.tensor([1e-6, 0.3], dtype=F64))
    assert torch.allclose(ev[1], torch.tensor([1e-6, 1e-6], dtype=F64))
    assert torch.allclose(f[2], a[2])


def test_test_time_k_selection_and_histogram() -> None:
    pos, w = _two_blobs()
    p = w[None].repeat(3, 1)
    pool = MCAPool(
        4, 4, 4, grid_shape=(14, 14), select_k=True, lam=0.0, k_max=3, n_inits=3, compute_dtype="float64"
    ).eval()
    pts = pos[None].expand(3, -1, -1)
    pool.fit_and_transform(p, pts)
    assert int(pool.k_histogram.sum()) == 3 and int(pool.k_histogram[0]) == 0  # lambda = 0: never K = 1
    pool.reset_histogram()
    pool.lam = 1e6
    pool.fit_and_transform(p, pts)
    assert pool.k_histogram.tolist() == [3, 0, 0]
    g = torch.random.get_rng_state()
    pool.fit_and_transform(p, pts)
    assert torch.equal(g, torch.random.get_rng_state())  # private generator: the global RNG is untouched


def test_k_selection_at_moderate_lambda_finds_two_blobs() -> None:
    """Eq. 5.20 at lambda = 0.6 (thesis-style penalty on unit-mass weights): two separated blobs -> K = 2, one blob
    -> K = 1, in the same batch (test-MCA, K_max = 5, 3 random inits, 20 EM iterations as Table 6.3).

    Measured on these maps: the best K = 2 fit improves -2 sum w log p by 1.83 over K = 1 for the two blobs and by
    0.015 for one blob; K = 4, 5 improve the two-blob fit by at most 0.48 over K = 2 for 2-3 more components, so
    every lambda in (0.18, 1.83) separates the two cases."""
    pos, two = _two_blobs()
    d = pos - torch.tensor([0.5, 0.45], dtype=F64)
    one = torch.exp(-0.5 * (d**2).sum(-1) / 0.01)
    p = torch.stack([two, one / one.sum()])
    pool = MCAPool(
        4,
        4,
        4,
        grid_shape=(14, 14),
        select_k=True,
        lam=0.6,
        k_max=5,
        n_inits=3,
        eval_iter=20,
        compute_dtype="float64",
    ).eval()
    _, params = pool.fit_and_transform(p, pos[None].expand(2, -1, -1))
    assert pool.k_histogram.tolist() == [1, 1, 0, 0, 0]
    active = (params["pi"] > 1e-3).sum(-1).tolist()
    assert active == [2, 1]
    order = params["mu"][0, :2, 0].argsort()
    assert torch.allclose(
        params["mu"][0, :2][order], torch.tensor([[0.25, 0.3], [0.75, 0.7]], dtype=F64), atol=0.02
    )
    pool.reset_histogram()
    pool.lam = (
        5.0  # the reference code's penalty: too large for unit-mass weights (notes sect. 4), K = 1 both
    )
    pool.fit_and_transform(p, pos[None].expand(2, -1, -1))
    assert pool.k_histogram.tolist() == [2, 0, 0, 0, 0]


# ------------------------------------------------------------------------------------------ degenerate input


@pytest.mark.parametrize("cls", POOLS)
def test_degenerate_attention_is_finite(cls) -> None:
    torch.manual_seed(0)
    pool = cls(8, 8, 6, dropout=0.0, grid_shape=(14, 14))
    x = torch.randn(4, 196, 8, requires_grad=True)
    logits = torch.full((4, 196), -30.0)
    logits[0, 0] = 30.0  # one-hot, corner
    logits[1, 14 * 7 + 6] = 30.0  # one-hot, interior
    logits[2, 14 * 5 : 14 * 6] = 30.0  # a single row
    logits[3, 3::14] = 30.0  # a single column
    pool.mlp = _Const(logits)
    y = pool(x, None)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    pool1 = cls(8, 8, 6, dropout=0.0)  # 1-D: one-hot and a length-1 sequence
    x1 = torch.randn(2, 12, 8, requires_grad=True)
    l1 = torch.full((2, 12), -30.0)
    l1[0, 4] = 30.0
    pool1.mlp = _Const(l1)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 1:] = False
    y1 = pool1(x1, mask)
    y1.sum().backward()
    assert torch.isfinite(y1).all() and torch.isfinite(x1.grad).all()


class _Const(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logits + self.bias)[..., None].to(x.dtype)


def test_sparsemax_float32_matches_float64_near_one_hot() -> None:
    basis = GaussianBasis.grid_2d(100)
    p = torch.full((2, 196), 1e-9, dtype=F64)
    p[0, 20] = 1.0
    p[1, 14 * 5 : 14 * 6] = 1.0
    p = p / p.sum(-1, keepdim=True)
    mu, v = moments_2d(p, grid_positions(14, 14, F64))
    s = sparsemax_sigma_2d(v)
    r64 = continuous_sparsemax(mu, s, basis)
    r32 = continuous_sparsemax(mu.float(), s.float(), basis)
    assert float((r32.double() - r64).abs().max() / r64.abs().max()) < 1e-4
    assert torch.isfinite(r64).all()


# ------------------------------------------------------------------------------------------ value function


def test_value_function_recovers_coefficients_in_the_span() -> None:
    basis = GaussianBasis.grid_2d(16, var=0.01)
    g = ridge_g(basis, (14, 14), ridge=1e-9, padding=False)  # (196, 16)
    f = basis.evaluate(grid_positions(14, 14, F64)).T  # (16, 196)
    beta = torch.randn(16, 5, dtype=F64)
    xv = f.T @ beta  # values lying in the span of the basis
    assert torch.allclose(xv.T @ g, beta.T, atol=1e-5)
    gp = ridge_g(GaussianBasis.grid_2d(100), (14, 14))
    assert gp.shape == (196, 100)


def test_masked_positions_are_ignored() -> None:
    torch.manual_seed(0)
    for cls in POOLS:
        pool = cls(6, 8, 4, dropout=0.0).eval()
        x = torch.randn(2, 10, 6)
        mask = torch.ones(2, 10, dtype=torch.bool)
        mask[:, 7:] = False
        y = pool(x, mask)
        x2 = x.clone()
        x2[:, 7:] = 100.0
        assert torch.allclose(pool(x2, mask), y, atol=1e-5)
        assert torch.allclose(pool(x[:, :7], None), y, atol=1e-5)


# ------------------------------------------------------------------------------------------ plug-in


class _Toy(FusionModel):
    def __init__(self) -> None:
        super().__init__()
        self.pools["image"] = AttFlat(8, 16, 12, dropout=0.0, grid_shape=(14, 14))
        self.pools["question"] = DiscreteAttentionPool(8, 16, 12)


@pytest.mark.parametrize("kind", ["softmax", "sparsemax", "mca"])
def test_plugin_replaces_image_pool_and_keeps_weights(kind: str) -> None:
    torch.manual_seed(0)
    model = _Toy()
    old = model.pools["image"]
    x = torch.randn(2, 196, 8)
    old(x, None)
    plugin = ContinuousAttention(kind=kind)
    plugin.attach(model, ModelInfo(("image", "question"), {}, 12))
    new = model.pools["image"]
    assert new is not old and isinstance(model.pools["question"], DiscreteAttentionPool)
    assert (new.in_dim, new.out_dim, new.grid_shape) == (8, 12, (14, 14))
    new(x, None)
    assert torch.allclose(new.last_attention, old.last_attention)  # same scorer weights
    assert sum(p.numel() for p in new.parameters()) == sum(p.numel() for p in old.parameters())
    with pytest.raises(Exception, match="attention pools"):
        ContinuousAttention(kind=kind, pools=["audio"]).attach(_Toy(), ModelInfo(("image",), {}, 12))
    both = _Toy()
    ContinuousAttention(kind=kind, pools="all").attach(both, ModelInfo(("image",), {}, 12))
    assert both.pools["question"].grid_shape is None and both.pools["question"](
        torch.randn(2, 5, 8)
    ).shape == (2, 12)


@pytest.mark.parametrize("cls", POOLS)
def test_density_fit_stays_float32_under_autocast(cls) -> None:
    """Under bf16 autocast the moments / EM / transform run in float32 (notes sect. 5 item 6)."""
    torch.manual_seed(0)
    pool = cls(16, 16, 8, dropout=0.0, grid_shape=(14, 14)).eval()
    x = torch.randn(2, 196, 16)
    ref = pool(x, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pool(x, None)
    assert pool.last_params["sigma"].dtype == torch.float32
    assert torch.isfinite(y).all() and torch.allclose(y.float(), ref, atol=0.1, rtol=0.05)


def test_mca_train_random_k_uses_the_global_rng() -> None:
    pool = MCAPool(6, 8, 4, dropout=0.0, grid_shape=(14, 14), k=4, train_random_k=True).train()
    x = torch.randn(2, 196, 6)
    torch.manual_seed(3)
    a = pool(x, None)
    ks = {pool.last_params["pi"].shape[1]}
    torch.manual_seed(3)
    assert torch.allclose(pool(x, None), a)  # reproducible from the seed
    for _ in range(12):
        pool(x, None)
        ks.add(pool.last_params["pi"].shape[1])
    assert ks <= {1, 2, 3, 4} and len(ks) > 1


def test_test_mca_config_trains_continuous_softmax_and_selects_k_at_evaluation() -> None:
    """experiment=easyvqa_test_mca (thesis' test-MCA): training computes exactly 2-D continuous softmax (K = 1),
    evaluation chooses K in 1..5 with 20 EM iterations; EM defaults of reg=mca follow Table 6.3 (2 for 2-MCA)."""
    from hydra.utils import instantiate

    from mmfusion.utils.runtime import compose_train_cfg

    cfg = compose_train_cfg(["experiment=easyvqa_test_mca"])
    kw = cfg.reg.mca.pool_kwargs
    assert (kw.k, kw.select_k, kw.k_max, kw.n_inits, kw.eval_iter) == (1, True, 5, 3, 20)
    assert compose_train_cfg(["reg=mca"]).reg.mca.pool_kwargs.n_iter == 2
    plugin = instantiate(cfg.reg.mca)
    torch.manual_seed(0)
    mca = MCAPool(8, 8, 6, dropout=0.0, grid_shape=(14, 14), **plugin.pool_kwargs)
    soft = ContinuousSoftmaxPool(8, 8, 6, dropout=0.0, grid_shape=(14, 14))
    soft.load_state_dict(mca.state_dict())
    x = torch.randn(3, 196, 8)
    torch.testing.assert_close(mca.train()(x), soft.train()(x))  # training: unimodal continuous softmax
    mca.eval()(x)
    assert int(mca.k_histogram.sum()) == 3  # evaluation: test-MCA chose a K for each example
