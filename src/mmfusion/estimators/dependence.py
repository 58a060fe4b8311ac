"""Dependency and discrepancy estimators shared by the MDM and synergy plug-ins.

Notation: P = joint law of the M unimodal representations, Q = product of their marginals; a critic ``T`` scores
tuples. All bounds are lower bounds of D(P || Q) that a critic *ascends*:

* Donsker-Varadhan / MINE (Belghazi et al. 2018, Eq. 4-5): ``E_P T - log E_Q e^T``, computed with ``logsumexp``.
  Correction: Shankar (2022, Sec. 2.2) prints ``E_P g - E_Q e^g`` without the log; that form only bounds KL - 1.
* MINE's moving-average gradient correction (Belghazi et al. 2018, Sec. 3.2) written as the TUBA bound with a
  detached baseline ``b = log EMA(mean e^{T_neg})``: ``E_P T - E_Q e^{T-b} - b + 1`` (valid bound for any fixed b;
  its gradient is MINE's corrected gradient; Poole et al. 2019, Eq. 10).
* NWJ / f-divergence (Nguyen, Wainwright & Jordan 2010; MDM slides' ``I_f``): ``E_P T - E_Q e^{T-1}``.
* InfoNCE (van den Oord et al. 2018; Poole et al. 2019, Eq. 12) with K negatives per positive, ``<= log(K+1)``.
* Wasserstein dependency (Ozair et al. 2019): Kantorovich-Rubinstein dual ``E_P T - E_Q T`` over 1-Lipschitz T
  (spectral normalisation, Miyato et al. 2018; optional gradient penalty, Gulrajani et al. 2017).
  Correction: the MDM slides print ``E_P T - log E_Q T``; the log is not part of the KR dual (and is undefined for
  ``E_Q T <= 0``).

Negatives for M modalities are per-modality *derangements*: independent, distinct, non-zero cyclic shifts of the
batch, so no negative tuple contains two views of the same sample and all M views are mutually decoupled. A joint
shuffle of all-but-one modality would target ``I(Z_1; Z_2..Z_M) < TC`` instead of the total correlation.

Also here: unbiased MMD^2 with a multi-bandwidth RBF kernel (Gretton et al. 2012, Eq. 3; median heuristic,
detached) and the scale-invariant Mardia kurtosis with an EMA covariance (Mardia 1970).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.errors import ConfigError

MEASURES = ("dv", "mine", "nwj", "infonce", "wasserstein")
LN_EPS = (
    1e-12  # tiny: with LayerNorm's default 1e-5, shrinking the features below ~3e-3 would shrink the output
)


# ----------------------------------------------------------------------------------------------------------------
# negatives


def derangement_indices(
    n: int, m: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``(m, n)`` row indices: view 0 unshifted, views 1..m-1 shifted by distinct offsets drawn from 1..n-1.

    Every column (negative tuple) then takes its M views from M distinct samples.
    """
    if n < m:
        raise ConfigError(
            f"derangement negatives need batch size >= number of modalities ({m}); got batch {n}"
        )
    offsets = torch.randperm(n - 1, generator=generator)[: m - 1] + 1
    shifts = torch.cat([torch.zeros(1, dtype=torch.long), offsets]).to(device)
    return (torch.arange(n, device=device)[None, :] + shifts[:, None]) % n


def derange(views: Sequence[Tensor], generator: torch.Generator | None = None) -> list[Tensor]:
    """One batch of negative tuples (samples of Q) built from the batch of positives ``views``."""
    idx = derangement_indices(views[0].shape[0], len(views), generator, views[0].device)
    return [v[i] for v, i in zip(views, idx)]


# ----------------------------------------------------------------------------------------------------------------
# bounds on critic scores


def _log_mean_exp(t: Tensor) -> Tensor:
    t = t.reshape(-1)
    return torch.logsumexp(t, 0) - math.log(t.numel())


def dv_bound(t_p: Tensor, t_q: Tensor) -> Tensor:
    """Donsker-Varadhan ``mean(T_P) - log mean(exp T_Q)`` (stable)."""
    return t_p.mean() - _log_mean_exp(t_q)


def nwj_bound(t_p: Tensor, t_q: Tensor) -> Tensor:
    """NWJ / f-divergence (KL) ``mean(T_P) - mean(exp(T_Q - 1))``; optimal critic ``1 + log dP/dQ``."""
    return t_p.mean() - torch.exp(_log_mean_exp(t_q) - 1.0)


def tuba_bound(t_p: Tensor, t_q: Tensor, log_baseline: Tensor) -> Tensor:
    """``mean(T_P) - mean(exp(T_Q - b)) - b + 1`` for a baseline ``b`` held fixed (detached)."""
    b = log_baseline.detach()
    return t_p.mean() - torch.exp(_log_mean_exp(t_q) - b) - b + 1.0


def infonce_bound(t_pos: Tensor, t_neg: Tensor) -> Tensor:
    """InfoNCE with ``t_pos (N,)`` and ``t_neg (N, K)``: ``mean(t_pos - log((e^t_pos + sum_k e^t_neg)/(K+1)))``."""
    logits = torch.cat([t_pos[:, None], t_neg], 1)
    return (t_pos - torch.logsumexp(logits, 1) + math.log(logits.shape[1])).mean()


def wasserstein_dual(t_p: Tensor, t_q: Tensor) -> Tensor:
    """Kantorovich-Rubinstein dual ``mean(T_P) - mean(T_Q)`` (a W1 lower bound if T is 1-Lipschitz)."""
    return t_p.mean() - t_q.mean()


def gradient_penalty(
    net: nn.Module,
    x_p: Tensor,
    x_q: Tensor,
    one_sided: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``E[(||grad T(x_hat)|| - 1)^2]`` on random interpolates of positive and negative tuples (WGAN-GP).

    ``one_sided`` penalises only norms above 1 (Petzka et al. 2018).
    """
    eps = torch.rand(x_p.shape[0], 1, generator=generator, dtype=x_p.dtype).to(x_p.device)
    x_hat = (eps * x_p.detach() + (1 - eps) * x_q.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x_hat).sum(), x_hat, create_graph=True)
    excess = grad.norm(dim=1) - 1.0
    if one_sided:
        excess = excess.clamp_min(0.0)
    return (excess**2).mean()


# ----------------------------------------------------------------------------------------------------------------
# critic and estimator module


def normalize_view(x: Tensor, mode: str) -> Tensor:
    """Non-affine LayerNorm (``layernorm``), unit L2 norm (``l2``) or identity (``none``).

    Normalising before the critic removes the scale loophole of the Wasserstein measure (W1 grows linearly with
    the embeddings, so encoders maximising it could just inflate them); it is harmless for the KL/f measures.
    """
    if mode == "layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=LN_EPS)
    if mode == "l2":
        return F.normalize(x, dim=-1)
    if mode == "none":
        return x
    raise ConfigError(f"normalize must be one of layernorm, l2, none; got {mode!r}")


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int, spectral: bool = False) -> nn.Sequential:
    """``layers`` hidden Linear+LeakyReLU(0.2) blocks and a linear output; every Linear spectrally normalised
    when ``spectral`` (LeakyReLU is 1-Lipschitz, so the whole map is then 1-Lipschitz)."""

    def lin(a: int, b: int) -> nn.Module:
        layer = nn.Linear(a, b)
        return nn.utils.parametrizations.spectral_norm(layer) if spectral else layer

    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [lin(d, hidden), nn.LeakyReLU(0.2)]
        d = hidden
    mods.append(lin(d, out_dim))
    return nn.Sequential(*mods)


class ConcatCritic(nn.Module):
    """Statistics network ``T(z_1, ..., z_M) = MLP(cat(norm(z_1), ..., norm(z_M)))`` -> ``(N,)``."""

    def __init__(
        self,
        dims: Sequence[int],
        hidden: int = 256,
        layers: int = 2,
        normalize: str = "layernorm",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        normalize_view(torch.zeros(1, 1), normalize)  # validates the mode
        self.dims = tuple(int(d) for d in dims)
        self.normalize = normalize
        self.net = mlp(sum(self.dims), hidden, layers, 1, spectral_norm)

    def embed(self, views: Sequence[Tensor]) -> Tensor:
        if len(views) != len(self.dims):
            raise ConfigError(f"critic expects {len(self.dims)} views, got {len(views)}")
        for v, d in zip(views, self.dims):
            if v.shape[-1] != d:
                raise ConfigError(f"critic view has dim {v.shape[-1]}, expected {d}")
        return torch.cat([normalize_view(v, self.normalize) for v in views], -1)

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        return self.net(self.embed(views)).squeeze(-1)


@dataclass
class BoundOutput:
    """``objective``: the differentiable lower bound to ascend (critic) or to use in the task loss;
    ``estimate``: the monitored value (DV for dv/mine, NWJ, InfoNCE, W); ``penalty``: gradient penalty (W-GP)."""

    objective: Tensor
    estimate: Tensor
    penalty: Tensor | None = None


class DependencyEstimator(nn.Module):
    """Critic-based estimate of D(joint || product of marginals) for M views.

    measure: ``dv`` (DV bound, biased gradient), ``mine`` (DV read-out, MINE moving-average gradient through the
    TUBA bound), ``nwj`` (f-divergence), ``infonce``, ``wasserstein`` (KR dual; spectral norm by default, gradient
    penalty weight ``gp_weight``). ``n_negatives`` derangement sets per step (InfoNCE's K).
    """

    def __init__(
        self,
        dims: Sequence[int],
        measure: str = "nwj",
        hidden: int = 256,
        layers: int = 2,
        normalize: str = "layernorm",
        spectral_norm: bool | None = None,
        gp_weight: float = 0.0,
        one_sided_gp: bool = False,
        ema_decay: float = 0.99,
        n_negatives: int = 1,
    ) -> None:
        super().__init__()
        if measure not in MEASURES:
            raise ConfigError(f"measure must be one of {', '.join(MEASURES)}; got {measure!r}")
        if len(dims) < 2:
            raise ConfigError(f"a dependency estimator needs at least 2 views, got {len(dims)}")
        if n_negatives < 1:
            raise ConfigError(f"n_negatives must be >= 1, got {n_negatives}")
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.measure = measure
        spectral = (measure == "wasserstein") if spectral_norm is None else spectral_norm
        self.critic = ConcatCritic(dims, hidden, layers, normalize, spectral)
        self.gp_weight = float(gp_weight)
        self.one_sided_gp = one_sided_gp
        self.ema_decay = ema_decay
        self.n_negatives = int(n_negatives)
        self.register_buffer("log_ema", torch.tensor(float("nan"), dtype=torch.float64))

    def scores(
        self, views: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
        """Critic scores of positives ``(N,)`` and negatives ``(N, K)``, plus the embedded positives and the first
        set of embedded negatives (for the gradient penalty)."""
        x_p = self.critic.embed(views)
        negs = [self.critic.embed(derange(views, generator)) for _ in range(self.n_negatives)]
        n = x_p.shape[0]
        t = self.critic.net(torch.cat([x_p, *negs], 0)).squeeze(-1)
        t_pos, t_neg = t[:n], t[n:].reshape(self.n_negatives, n).T
        return t_pos, t_neg, negs, x_p

    def forward(
        self,
        views: Sequence[Tensor],
        generator: torch.Generator | None = None,
        update_ema: bool = False,
        with_penalty: bool = False,
    ) -> BoundOutput:
        t_pos, t_neg, negs, x_p = self.scores(views, generator)
        penalty = None
        if self.measure == "dv":
            obj = est = dv_bound(t_pos, t_neg)
        elif self.measure == "mine":
            lme = _log_mean_exp(t_neg).detach().to(torch.float64)
            if update_ema:
                if torch.isnan(self.log_ema):
                    self.log_ema.copy_(lme)
                else:
                    g = self.ema_decay
                    self.log_ema.copy_(torch.logaddexp(math.log(g) + self.log_ema, math.log(1 - g) + lme))
            base = lme if torch.isnan(self.log_ema) else self.log_ema
            obj = tuba_bound(t_pos, t_neg, base.clamp(-30.0, 30.0).to(t_pos.dtype))
            est = dv_bound(t_pos, t_neg)
        elif self.measure == "nwj":
            obj = est = nwj_bound(t_pos, t_neg)
        elif self.measure == "infonce":
            obj = est = infonce_bound(t_pos, t_neg)
        else:
            obj = est = wasserstein_dual(t_pos, t_neg)
            if with_penalty and self.gp_weight > 0:
                penalty = gradient_penalty(self.critic.net, x_p, negs[0], self.one_sided_gp, generator)
        return BoundOutput(objective=obj, estimate=est, penalty=penalty)

    def critic_loss(
        self, views: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, BoundOutput]:
        """Loss whose *descent* is the critic's ascent of its bound (plus the gradient penalty, if any)."""
        out = self(views, generator, update_ema=True, with_penalty=True)
        loss = -out.objective
        if out.penalty is not None:
            loss = loss + self.gp_weight * out.penalty
        return loss, out


# ----------------------------------------------------------------------------------------------------------------
# MMD


def pairwise_sq_dists(x: Tensor, y: Tensor) -> Tensor:
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return d2.clamp_min(0.0)


def median_bandwidth(x: Tensor, y: Tensor) -> Tensor:
    """Median pairwise (off-diagonal) distance of the pooled sample, without gradient."""
    with torch.no_grad():
        z = torch.cat([x, y], 0)
        d2 = pairwise_sq_dists(z, z)
        i, j = torch.triu_indices(z.shape[0], z.shape[0], 1, device=z.device)
        return d2[i, j].median().sqrt().clamp_min(1e-12)


def mmd2(
    x: Tensor,
    y: Tensor,
    sigmas: Sequence[float] | Tensor | None = None,
    scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    unbiased: bool = True,
) -> Tensor:
    """MMD^2 with ``k(a, b) = sum_s exp(-|a-b|^2 / (2 sigma_s^2))``.

    ``sigmas`` fixed bandwidths, or ``None`` for ``median * scales`` (median heuristic, detached so the model
    cannot lower the MMD by inflating distances). Unbiased U-statistic by default (can be negative; mean 0 when
    P = Q); ``unbiased=False`` gives the V-statistic. Correction: Shankar (Sec. 2.2) prints un-normalised sums
    including the diagonal and calls the result MMD; this is the normalised MMD^2 of Gretton et al. (2012, Eq. 3-5).
    """
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ConfigError(f"MMD needs at least 2 samples per side, got {n} and {m}")
    if sigmas is None:
        sig = median_bandwidth(x, y) * torch.tensor(list(scales), dtype=x.dtype, device=x.device)
    else:
        sig = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device)
    gam = (1.0 / (2.0 * sig**2)).reshape(-1, 1, 1)

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-gam * pairwise_sq_dists(a, b)[None]).sum(0)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if unbiased:
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        return sxx + syy - 2.0 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2.0 * kxy.mean()


# ----------------------------------------------------------------------------------------------------------------
# Mardia kurtosis


def mahalanobis_sq(zc: Tensor, cov: Tensor, ridge: float | Tensor = 0.0) -> Tensor:
    """``D_i = zc_i^T (S + ridge I)^{-1} zc_i`` through a Cholesky solve (never forms the inverse)."""
    d = cov.shape[0]
    chol = torch.linalg.cholesky(cov + ridge * torch.eye(d, dtype=cov.dtype, device=cov.device))
    y = torch.cholesky_solve(zc.T, chol).T
    return (zc * y).sum(1)


def mardia_b2(z: Tensor, cov: Tensor | None = None, ridge: float = 0.0) -> Tensor:
    """Mardia's ``b_{2,d} = mean_i D_i^2`` (``cov`` default: the batch covariance, 1/n). With a stale ``cov`` it
    scales like c^4 when z is scaled by c (the collapse incentive of Shankar's moving-average form)."""
    zc = z - z.mean(0)
    if cov is None:
        cov = zc.T @ zc / z.shape[0]
    return (mahalanobis_sq(zc, cov, ridge) ** 2).mean()


def mardia_kurtosis(z: Tensor, cov: Tensor | None = None, ridge: float = 0.0) -> Tensor:
    """Scale-invariant Mardia kurtosis ``d^2 mean(D^2) / mean(D)^2``; equals ``b_{2,d}`` with the batch
    covariance (where ``mean D = d`` exactly) and is unchanged when z and ``cov`` are on different scales."""
    zc = z - z.mean(0)
    if cov is None:
        cov = zc.T @ zc / z.shape[0]
    dist = mahalanobis_sq(zc, cov, ridge)
    d = z.shape[1]
    return d**2 * (dist**2).mean() / dist.mean().clamp_min(1e-30) ** 2


class EMAKurtosis(nn.Module):
    """Scale-invariant Mardia kurtosis of a batch with an exponential-moving-average covariance (Shankar Sec. 4.1).

    ``S = decay * S_ema.detach() + (1 - decay) * S_batch`` (S_batch keeps its gradient), ridge
    ``rel_ridge * mean(diag S) + abs_ridge``, and the centred vectors capped at ``cap * sqrt(tr S)``. Corrections
    to Shankar: his EMA has no ``(1 - decay)`` factor and uses a stale covariance in ``mean(D^2)``, which scales like
    c^4 with the features (minimising it shrinks the representation); the ratio form used here is scale-invariant.
    The cap is applied to the same difference vectors in the loss and in the covariance update (he clips only in
    the latter). ``normalize`` divides by the Gaussian value ``d(d+2)``.
    """

    def __init__(
        self,
        dim: int,
        decay: float = 0.9,
        rel_ridge: float = 1e-3,
        abs_ridge: float = 1e-8,
        cap: float | None = 3.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"kurtosis decay must be in [0, 1), got {decay}")
        self.dim, self.decay, self.rel_ridge, self.abs_ridge = dim, decay, rel_ridge, abs_ridge
        self.cap, self.normalize = cap, normalize
        self.register_buffer("cov", torch.zeros(dim, dim))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ConfigError(f"kurtosis expects (N, {self.dim}), got {tuple(z.shape)}")
        zc = z - z.mean(0)
        cov_b = zc.T @ zc / z.shape[0]
        if self.cap is not None:
            radius = self.cap * torch.sqrt(cov_b.diagonal().sum().detach().clamp_min(1e-30))
            zc = zc * (radius / zc.norm(dim=1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
            cov_b = zc.T @ zc / z.shape[0]
        if bool(self.initialized):
            cov = self.decay * self.cov.to(cov_b.dtype) + (1 - self.decay) * cov_b
        else:
            cov = cov_b
        if self.training:
            self.cov = cov.detach().to(self.cov.dtype)
            self.initialized.fill_(True)
        ridge = self.rel_ridge * cov.diagonal().mean().detach() + self.abs_ridge
        dist = mahalanobis_sq(zc, cov, ridge)
        kappa = self.dim**2 * (dist**2).mean() / dist.mean().clamp_min(1e-30) ** 2
        return kappa / (self.dim * (self.dim + 2)) if self.normalize else kappa
