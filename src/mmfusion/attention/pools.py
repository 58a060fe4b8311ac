"""Continuous attention pools with the AttFlat interface (thesis Fig. 6.3; Sect. 6.2-6.3).

``forward(x (B, L, D), mask (B, L) bool, True = valid) -> (B, out_dim)``:
discrete scores MLP(D -> mid -> 1) and masked softmax p over the L cells (as AttFlat); a continuous density fitted
to p (moment matching, Alg. 2, or weighted EM for MCA); r = E_density[psi] (``continuous``); context
c = B r = X^T G r (``value_function``); ``linear_merge`` Linear(D -> out_dim). Same submodule names as AttFlat
(``mlp``, ``linear_merge``), so checkpoints transfer between discrete, continuous and MCA pools; no extra trainable
parameters (notes sect. 1.8). 2-D when ``grid_shape`` = (h, w) (row-major), 1-D otherwise (right-padded
sequences; the positions and G follow each sequence's true length). The density fit and the transform run in
``compute_dtype`` (float32 or float64) with autocast disabled (notes sect. 5 item 6).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfusion.attention.attflat import ScoreMLP, check_pool_input, masked_softmax
from mmfusion.attention.basis import GaussianBasis
from mmfusion.attention.continuous import (
    continuous_softmax,
    continuous_sparsemax,
    gaussian_density,
    paraboloid_density,
)
from mmfusion.attention.mca import criterion, random_init, region_init, weighted_em
from mmfusion.attention.moments import (
    grid_positions,
    moments_1d,
    moments_2d,
    sequence_positions,
    sparsemax_sigma2_1d,
    sparsemax_sigma_2d,
)
from mmfusion.attention.value_function import ValueFunction
from mmfusion.errors import ConfigError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ContinuousPool(nn.Module):
    """Base class: subclasses implement :meth:`fit_and_transform` (p -> r, and the density for plots)."""

    density_kind = "gaussian"

    def __init__(
        self,
        in_dim: int,
        mid_dim: int = 512,
        out_dim: int = 1024,
        glimpses: int = 1,
        dropout: float = 0.1,
        grid_shape: tuple[int, int] | None = None,
        num_basis: int | None = None,
        basis_var: float = 1e-3,
        basis_stds: tuple[float, ...] = (0.1, 0.5),
        ridge: float = 0.01,
        padding: bool = True,
        var_floor: float = 1e-6,
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if glimpses != 1:
            raise ConfigError(
                f"{name}: continuous attention needs glimpses=1 (as the thesis), got {glimpses}"
            )
        if compute_dtype not in _DTYPES:
            raise ConfigError(f"{name}: compute_dtype must be one of {list(_DTYPES)}, got {compute_dtype!r}")
        self.in_dim, self.mid_dim, self.out_dim, self.glimpses = in_dim, mid_dim, out_dim, 1
        self.grid_shape = tuple(grid_shape) if grid_shape is not None else None
        self.var_floor, self.cdtype = var_floor, _DTYPES[compute_dtype]
        self.mlp = ScoreMLP(in_dim, mid_dim, 1, dropout)
        self.linear_merge = nn.Linear(in_dim, out_dim)
        if self.grid_shape is not None:
            basis = GaussianBasis.grid_2d(num_basis or 100, basis_var)
            self.register_buffer("positions", grid_positions(*self.grid_shape), persistent=False)
        else:
            basis = GaussianBasis.grid_1d(num_basis or 64, tuple(basis_stds))
        self.value = ValueFunction(basis, self.grid_shape, ridge, padding)
        self.last_attention: Tensor | None = None
        self.last_params: dict[str, Tensor] | None = None

    @property
    def basis(self) -> GaussianBasis:
        return self.value.basis

    # ------------------------------------------------------------------------------------------------
    def _points(self, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Positions (B, L, d) in compute dtype and, in 1-D, the true lengths."""
        b, l = mask.shape
        if self.grid_shape is not None:
            if l != self.positions.shape[0]:
                raise ConfigError(
                    f"{type(self).__name__}: grid_shape {self.grid_shape} needs L="
                    f"{self.positions.shape[0]} positions, got L={l}"
                )
            return self.positions.to(self.cdtype)[None].expand(b, l, 2), None
        lengths = mask.sum(1)
        return sequence_positions(lengths, l, self.cdtype)[..., None], lengths

    def unimodal(self, p: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Moment matching (Alg. 2): mean (B, d) and covariance (B, d, d) of p at the positions x."""
        if x.shape[-1] == 2:
            return moments_2d(p, x[0], self.var_floor)
        mu, var = moments_1d(p, x[..., 0], self.var_floor)
        return mu[:, None], var[:, None, None]

    def fit_and_transform(self, p: Tensor, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def forward(self, xv: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = check_pool_input(xv, mask, self.in_dim, type(self).__name__)
        p = masked_softmax(self.mlp(xv), mask[..., None], dim=1)[..., 0]
        self.last_attention = p.detach()[..., None]
        with torch.autocast(device_type=xv.device.type, enabled=False):
            pts, lengths = self._points(mask)
            r, params = self.fit_and_transform(p.to(self.cdtype), pts)
            w = self.value.weights(r, lengths, xv.shape[1])
        self.last_params = {k: v.detach() for k, v in params.items()}
        ctx = torch.einsum("bl,bld->bd", w.to(xv.dtype), xv.masked_fill(~mask[..., None], 0))
        return self.linear_merge(ctx)

    def density(self, t: Tensor) -> Tensor:
        """Density of the last call at points t (P, d) -> (B, P) (mixture of ``last_params``), for plots."""
        if self.last_params is None:
            raise RuntimeError("density(): call the pool first")
        pi, mu, sigma = (self.last_params[k] for k in ("pi", "mu", "sigma"))
        t = t.to(mu)
        if mu.shape[-1] == 1:
            tt, mu, sigma = t[..., 0], mu[..., 0], sigma[..., 0, 0]
        else:
            tt = t
        fn = paraboloid_density if self.density_kind == "paraboloid" else gaussian_density
        dens = torch.stack(
            [fn(tt.expand(mu.shape[0], *tt.shape), mu[:, k], sigma[:, k]) for k in range(mu.shape[1])], 1
        )
        return (pi[..., None] * dens).sum(1)


def _transform(kind: str, mu: Tensor, sigma: Tensor, basis: GaussianBasis, n_angles: int) -> Tensor:
    """r for mu (B, d), sigma (B, d, d) (1-D: scalar variance)."""
    if mu.shape[-1] == 1:
        mu, sigma = mu[:, 0], sigma[:, 0, 0]
    if kind == "paraboloid":
        return continuous_sparsemax(mu, sigma, basis, n_angles)
    return continuous_softmax(mu, sigma, basis)


def _unimodal_params(mu: Tensor, sigma: Tensor) -> dict[str, Tensor]:
    return {"pi": torch.ones_like(mu[:, :1]), "mu": mu[:, None], "sigma": sigma[:, None]}


class ContinuousSoftmaxPool(ContinuousPool):
    """Continuous softmax: the Gaussian N(mu, V) with the discrete mean and covariance (Theorem 1, alpha = 1)."""

    def fit_and_transform(self, p: Tensor, x: Tensor):
        mu, v = self.unimodal(p, x)
        return _transform("gaussian", mu, v, self.basis, 0), _unimodal_params(mu, v)


class ContinuousSparsemaxPool(ContinuousPool):
    """Continuous sparsemax: truncated parabola/paraboloid with the discrete mean and covariance (Eqs. 4.3, 4.6);
    2-D via the angular reduction with ``n_angles`` distinct angles (default 100)."""

    density_kind = "paraboloid"

    def __init__(self, *args, n_angles: int = 100, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if n_angles < 8:
            raise ConfigError(f"ContinuousSparsemaxPool: n_angles must be >= 8, got {n_angles}")
        self.n_angles = n_angles

    def fit_and_transform(self, p: Tensor, x: Tensor):
        mu, v = self.unimodal(p, x)
        sigma = sparsemax_sigma_2d(v) if x.shape[-1] == 2 else sparsemax_sigma2_1d(v)
        return _transform("paraboloid", mu, sigma, self.basis, self.n_angles), _unimodal_params(mu, sigma)


class MCAPool(ContinuousPool):
    """Multimodal continuous attention (Sects. 5.2-5.3, 6.3): a K-component Gaussian mixture fitted to p by
    ``n_iter`` weighted EM steps from the region-based init (K-MCA); context = sum_k pi_k B r_k (Eq. 5.5).

    ``select_k=True`` enables test-MCA in eval mode: candidates K=1 (moment matching) and K = 2..k_max with
    ``n_inits`` random inits each (a private generator seeded with ``seed``; the global RNG is untouched),
    ``eval_iter`` EM steps, per-example argmin of Eq. 5.20 with penalty ``lam``; ``k_histogram`` counts the
    selected K (index K-1). ``train_random_k=True`` is the ICCV-W code's training mode instead of K-MCA: per batch
    K ~ U{1..k} (K = 1: moment matching), random init (global RNG, so ``seed`` makes runs reproducible).
    """

    def __init__(
        self,
        *args,
        k: int = 2,
        n_iter: int = 5,
        init: str = "region",
        select_k: bool = False,
        k_max: int = 5,
        n_inits: int = 3,
        lam: float = 5.0,
        eval_iter: int = 10,
        seed: int = 222,
        train_random_k: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if k < 1 or k_max < 1 or n_iter < 0 or n_inits < 1:
            raise ConfigError(
                f"MCAPool: need k>=1, k_max>=1, n_iter>=0, n_inits>=1; got k={k}, k_max={k_max}, "
                f"n_iter={n_iter}, n_inits={n_inits}"
            )
        if init not in ("region", "random"):
            raise ConfigError(f"MCAPool: init must be 'region' or 'random', got {init!r}")
        self.k, self.n_iter, self.init, self.select_k = k, n_iter, init, select_k
        self.k_max, self.n_inits, self.lam, self.eval_iter, self.seed = k_max, n_inits, lam, eval_iter, seed
        self.train_random_k = train_random_k
        self.register_buffer("k_histogram", torch.zeros(max(k_max, k), dtype=torch.long), persistent=False)
        self._gen = torch.Generator().manual_seed(seed)

    def fit(
        self, p: Tensor, x: Tensor, k: int, n_iter: int, init: str, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        mu1, v1 = self.unimodal(p, x)
        if k == 1:
            return torch.ones_like(p[:, :1]), mu1[:, None], v1[:, None]
        if init == "region":
            pi, mu, sigma = region_init(x, p, k, self.grid_shape, self.var_floor)
        else:
            pi, mu, sigma = random_init(p.shape[0], k, x.shape[-1], generator, p)
        return weighted_em(x, p, pi, mu, sigma, n_iter, self.var_floor)

    def select(self, p: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """test-MCA: the candidate with the smallest Eq. 5.20 per example, padded to k_max components (pi=0)."""
        self._gen.manual_seed(self.seed)  # the same inits at every call (the reference draws them once)
        b, d, kmax = p.shape[0], x.shape[-1], self.k_max
        cands = [self.fit(p, x, 1, 0, "region")]
        cands += [
            self.fit(p, x, k, self.eval_iter, "random", self._gen)
            for k in range(2, kmax + 1)
            for _ in range(self.n_inits)
        ]
        crit = torch.stack([criterion(x, p, *c, self.lam) for c in cands], -1)  # (B, C)
        best = crit.argmin(-1)
        eye = torch.eye(d, dtype=p.dtype, device=p.device)
        pis, mus, sigmas = [], [], []
        for pi, mu, sigma in cands:
            pad = kmax - pi.shape[1]
            pis.append(torch.cat([pi, pi.new_zeros(b, pad)], 1))
            mus.append(torch.cat([mu, mu.new_full((b, pad, d), 0.5)], 1))
            sigmas.append(torch.cat([sigma, eye.expand(b, pad, d, d)], 1))
        ar = torch.arange(b, device=p.device)
        ks = torch.tensor([1] + [k for k in range(2, kmax + 1) for _ in range(self.n_inits)], device=p.device)
        self.k_histogram += torch.bincount(ks[best] - 1, minlength=self.k_histogram.numel())[
            : self.k_histogram.numel()
        ]
        return torch.stack(pis, 1)[ar, best], torch.stack(mus, 1)[ar, best], torch.stack(sigmas, 1)[ar, best]

    def fit_and_transform(self, p: Tensor, x: Tensor):
        if self.select_k and not self.training:
            pi, mu, sigma = self.select(p, x)
        elif self.train_random_k and self.training:
            k = int(torch.randint(1, self.k + 1, ()).item())
            pi, mu, sigma = self.fit(p, x, k, self.n_iter, "random")
        else:
            pi, mu, sigma = self.fit(p, x, self.k, self.n_iter, self.init)
        b, k = pi.shape
        rk = _transform(
            "gaussian", mu.reshape(b * k, -1), sigma.reshape(b * k, *sigma.shape[-2:]), self.basis, 0
        )
        r = (pi[..., None] * rk.reshape(b, k, -1)).sum(1)  # Eq. 5.4: r = sum_k pi_k r_k
        return r, {"pi": pi, "mu": mu, "sigma": sigma}

    def reset_histogram(self) -> None:
        self.k_histogram.zero_()
