"""Tied-weight denoising autoencoder of one modality (Werenne 2019, Eq. 3-5; Vincent et al. 2008).

    h = sigmoid(W z + b_h),  r(z) = W^T h + b_r,   loss = ||r(z + eps) - z||^2,  eps ~ N(0, sigma_n^2 I)

with ``z`` the modality's feature vector, standardised per feature with statistics frozen at fit time
(``shift``/``scale`` buffers; identity by default). Standardising is our addition: encoder outputs of different
modalities live on different scales, and one corruption level sigma_n only makes sense on a common scale. All
energies (:mod:`mmfusion.emma.energy`) are functions of ``z``. Tied weights are what makes the reconstruction field
conservative, so that the potential energy exists (Kamyshanska & Memisevic 2015; seed Eq. 7 / Appendix A).

Correction (author's public code, ``data.py::apply_corruption``): the noise there is written into the clean
training array through a shared numpy view, so the AEs were fit on partly corrupted data. Here corruption always
creates a new tensor.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.errors import ConfigError, DataError


class TiedDAE(nn.Module):
    """Tied-weight sigmoid/linear DAE: ``W`` is ``(hidden, dim)``; rows ``W_k`` are the hidden units' filters."""

    def __init__(self, dim: int, hidden: int, noise_std: float = 0.1, seed: int | None = None) -> None:
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ConfigError(f"TiedDAE: dim and hidden must be >= 1, got dim={dim}, hidden={hidden}")
        if noise_std < 0:
            raise ConfigError(f"TiedDAE: noise_std must be >= 0, got {noise_std}")
        self.dim, self.hidden, self.noise_std = int(dim), int(hidden), float(noise_std)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        a = math.sqrt(6.0 / (dim + hidden))
        self.W = nn.Parameter((torch.rand(hidden, dim, generator=g) * 2 - 1) * a)
        self.b_h = nn.Parameter(torch.zeros(hidden))
        self.b_r = nn.Parameter(torch.zeros(dim))
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    # -- standardisation (frozen at fit time) ---------------------------------------------------------------------
    def standardize(self, m: Tensor) -> Tensor:
        if m.shape[-1] != self.dim:
            raise DataError(
                f"TiedDAE: expected features of size {self.dim} in the last axis, got shape {tuple(m.shape)}"
            )
        return (m - self.shift) / self.scale

    def set_standardization(self, x: Tensor, eps: float = 1e-6) -> None:
        """Per-feature mean/std of the training representations ``x (N, dim)``; constant features get scale 1."""
        std = x.std(0, unbiased=False)
        self.shift.copy_(x.mean(0))
        self.scale.copy_(torch.where(std > eps, std, torch.ones_like(std)))

    # -- Eq. 3-4 ------------------------------------------------------------------------------------------------
    def pre_activation(self, z: Tensor) -> Tensor:
        """``a = W z + b_h`` (..., hidden), on standardised input."""
        return F.linear(z, self.W, self.b_h)

    def reconstruct(self, z: Tensor) -> Tensor:
        """``r(z) = W^T sigmoid(W z + b_h) + b_r`` (Eq. 3-4), on standardised input."""
        return torch.sigmoid(self.pre_activation(z)) @ self.W + self.b_r

    def forward(self, m: Tensor) -> Tensor:
        """Reconstruction of a raw (unstandardised) input, returned in standardised coordinates."""
        return self.reconstruct(self.standardize(m))

    # -- Eq. 5 --------------------------------------------------------------------------------------------------
    def corrupt(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gaussian corruption ``z + eps`` (a new tensor; never in place)."""
        if self.noise_std == 0:
            return z.clone()
        eps = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return z + self.noise_std * eps

    def loss(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Denoising loss (Eq. 5): squared error summed over features, mean over the batch."""
        return (self.reconstruct(self.corrupt(z, generator)) - z).pow(2).sum(-1).mean()


@dataclass
class FitReport:
    """What :func:`fit_dae` did: final training/validation losses and the wall time."""

    train_loss: float
    val_loss: float | None
    epochs: int
    seconds: float
    history: list[float] = field(default_factory=list)


def fit_dae(
    x: Tensor,
    hidden: int,
    noise_std: float = 0.1,
    *,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    standardize: bool = True,
    x_val: Tensor | None = None,
    seed: int = 0,
) -> tuple[TiedDAE, FitReport]:
    """Train one DAE on clean representations ``x (N, dim)`` with Adam (minibatches, reshuffled each epoch).

    Returns the DAE in eval mode with ``requires_grad=False`` (it is frozen afterwards, as in the thesis).
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise DataError(
            f"fit_dae: expected training representations of shape (N>=2, dim), got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise DataError("fit_dae: training representations contain NaN/inf")
    x = x.detach().float()
    dae = TiedDAE(x.shape[1], hidden, noise_std, seed=seed)
    if standardize:
        dae.set_standardization(x)
    z = dae.standardize(x)
    zv = dae.standardize(x_val.detach().float()) if x_val is not None else None
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(dae.parameters(), lr=lr, weight_decay=weight_decay)
    n, bs = z.shape[0], min(batch_size, z.shape[0])
    t0, history = time.perf_counter(), []
    dae.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, bs):
            zb = z[perm[i : i + bs]]
            loss = dae.loss(zb, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * zb.shape[0]
        history.append(total / n)
    dae.eval()
    dae.requires_grad_(False)
    with torch.no_grad():
        gv = torch.Generator().manual_seed(seed + 1)
        val = float(dae.loss(zv, gv)) if zv is not None else None
    return dae, FitReport(
        history[-1] if history else float("nan"), val, epochs, time.perf_counter() - t0, history
    )
