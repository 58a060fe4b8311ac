"""Ground truth for the estimators: equicorrelated Gaussian views and their closed forms.

Views are built per coordinate as ``x_j = sqrt(rho) z + sqrt(1 - rho) eps_j`` (``d`` dims each, ``M`` views), so
each coordinate's M-vector has correlation matrix ``R = (1 - rho) I + rho 11^T`` and coordinates are independent.

* total correlation (= MI for 2 views): ``TC = -(d/2) log det R = -(d/2)[(M-1) log(1-rho) + log(1+(M-1) rho)]``;
* optimal critic ``T*(x) = log p(x)/q(x) = -1/2 sum_k x_k^T (R^-1 - I) x_k - (d/2) log det R`` (MINE paper,
  Belghazi et al. 2018, Thm. 1 tightness; Donsker-Varadhan 1983): DV(T*) = TC and NWJ(T* + 1) = TC;
* Wasserstein-1 bracket ``c_d (sqrt(1+(M-1) rho) - 1) <= W1(P, Q) <= W2(P, Q)`` with the 1-Lipschitz witness
  ``||sum_j x_j / sqrt(M)||`` and ``W2^2 = d sum_eig (sqrt(lambda) - 1)^2`` (Gaussian W2 closed form);
* MMD^2 between isotropic Gaussians for a sum of RBF kernels (Gretton et al. 2012, with the Gaussian integral
  ``E k(X,Y) = (l^2/(l^2+s_a^2+s_b^2))^{d/2} exp(-||mu_a-mu_b||^2 / (2(l^2+s_a^2+s_b^2)))``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def correlation_matrix(m: int, rho: float) -> Tensor:
    return (1 - rho) * torch.eye(m, dtype=torch.float64) + rho * torch.ones(m, m, dtype=torch.float64)


def correlated_views(
    n: int,
    d: int,
    m: int,
    rho: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> list[Tensor]:
    """``m`` views of shape ``(n, d)`` with per-coordinate pairwise correlation ``rho`` (0 <= rho < 1)."""
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must be in [0, 1), got {rho}")
    z = torch.randn(n, d, generator=generator, dtype=dtype)
    return [
        math.sqrt(rho) * z + math.sqrt(1 - rho) * torch.randn(n, d, generator=generator, dtype=dtype)
        for _ in range(m)
    ]


def total_correlation(d: int, m: int, rho: float) -> float:
    """TC of ``m`` equicorrelated views (MI for ``m = 2``), in nats."""
    return -(d / 2) * ((m - 1) * math.log(1 - rho) + math.log(1 + (m - 1) * rho))


def optimal_critic(views: Sequence[Tensor], rho: float) -> Tensor:
    """``log dP/dQ`` at each tuple (``(N,)``), P the joint and Q the product of the marginals."""
    x = torch.stack(list(views), 1).to(torch.float64)  # (N, M, d)
    m, d = x.shape[1], x.shape[2]
    r = correlation_matrix(m, rho)
    a = torch.linalg.inv(r) - torch.eye(m, dtype=torch.float64)
    quad = torch.einsum("nid,ij,njd->n", x, a, x)
    return -0.5 * quad - 0.5 * d * torch.logdet(r)


def w1_bounds(d: int, m: int, rho: float) -> tuple[float, float]:
    """Lower and upper (W2) bounds of W1(joint, product of marginals) for the equicorrelated views."""
    c_d = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    lower = c_d * (math.sqrt(1 + (m - 1) * rho) - 1)
    eig = [1 + (m - 1) * rho] + [1 - rho] * (m - 1)
    upper = math.sqrt(d * sum((math.sqrt(lam) - 1) ** 2 for lam in eig))
    return lower, upper


def rbf_expectation(d: int, sigma: float, var_a: float, var_b: float, mean_sq_dist: float) -> float:
    """``E k(X, Y)`` for ``X ~ N(mu_a, var_a I)``, ``Y ~ N(mu_b, var_b I)`` independent, ``k = exp(-|x-y|^2/2s^2)``."""
    s = sigma**2 + var_a + var_b
    return (sigma**2 / s) ** (d / 2) * math.exp(-mean_sq_dist / (2 * s))


def gaussian_mmd2(d: int, sigmas: Sequence[float], var_p: float, var_q: float, mean_sq_dist: float) -> float:
    """Population MMD^2 between ``N(mu_p, var_p I)`` and ``N(mu_q, var_q I)`` for a sum of RBF kernels."""
    total = 0.0
    for s in sigmas:
        total += (
            rbf_expectation(d, s, var_p, var_p, 0.0)
            + rbf_expectation(d, s, var_q, var_q, 0.0)
            - 2 * rbf_expectation(d, s, var_p, var_q, mean_sq_dist)
        )
    return total


def train_estimator(
    estimator: torch.nn.Module,
    d: int,
    m: int,
    rho: float,
    *,
    steps: int = 500,
    batch: int = 256,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eval_batches: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Train a :class:`~mmfusion.estimators.dependence.DependencyEstimator` on fresh Gaussian batches (critic
    ascent) and return its mean/std estimate on ``eval_batches`` held-out batches (the MDM toy experiment)."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(estimator.parameters()).dtype
    opt = torch.optim.Adam(estimator.parameters(), lr=lr, betas=betas)
    estimator.train()
    for _ in range(steps):
        views = correlated_views(batch, d, m, rho, g, dtype)
        loss, _ = estimator.critic_loss(views, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vals = []
    with torch.no_grad():
        for _ in range(eval_batches):
            vals.append(float(estimator(correlated_views(batch, d, m, rho, g, dtype), g).estimate))
    t = torch.tensor(vals, dtype=torch.float64)
    return {"estimate": float(t.mean()), "std": float(t.std()) if len(vals) > 1 else 0.0}


def _expected_logdet_bias(p: int, dof: int) -> float:
    """``E[log det S] - log det Sigma`` for ``S = W / dof``, ``W ~ Wishart_p(dof, Sigma)`` (sum of digammas)."""
    return sum(
        float(torch.special.digamma(torch.tensor((dof - i) / 2.0, dtype=torch.float64))) for i in range(p)
    ) + p * math.log(2.0 / dof)


def gaussian_total_correlation(
    views: Sequence[Tensor], n_components: int = 8, bias_correct: bool = True
) -> float:
    """Gaussian total-correlation probe ``1/2 [sum_j log det S_jj - log det S]`` of ``M`` views ``(N, d_j)``.

    Each view is centred and reduced to its top ``n_components`` principal components (TC is invariant to
    invertible maps of each view, so whitening/rotations do not matter; the truncation keeps the covariance
    well conditioned on a validation split). ``S`` is the unbiased sample covariance of the concatenation.
    ``bias_correct`` removes the Wishart expectation of each log-determinant (digamma sums), which otherwise makes
    the plug-in estimate positive even for independent views (about ``sum_{i<j} p_i p_j / (2N)`` nats).
    Exact TC for jointly Gaussian views (with all components kept); for other laws it is the TC of the Gaussian
    with the same covariance, i.e. the second-order (linear) part of the dependence. ``nan`` if ``N`` is too small.
    """
    n = int(views[0].shape[0])
    parts = []
    for v in views:
        v = v.detach().to(torch.float64)
        v = v - v.mean(0)
        k = min(n_components, v.shape[1])
        _, _, vh = torch.linalg.svd(v, full_matrices=False)
        parts.append(v @ vh[:k].T)
    dims = [p.shape[1] for p in parts]
    p_all, dof = sum(dims), n - 1
    if dof <= p_all + 1:
        return math.nan
    x = torch.cat(parts, 1)
    cov = x.T @ x / dof
    cov = cov + 1e-10 * cov.diagonal().mean() * torch.eye(p_all, dtype=cov.dtype)
    total = -float(torch.logdet(cov)) + (_expected_logdet_bias(p_all, dof) if bias_correct else 0.0)
    start = 0
    for d in dims:
        total += float(torch.logdet(cov[start : start + d, start : start + d]))
        total -= _expected_logdet_bias(d, dof) if bias_correct else 0.0
        start += d
    return 0.5 * total
