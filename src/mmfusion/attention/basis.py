"""Gaussian RBF value bases psi_j(t) = N(t; mu_j, Sigma_j) (thesis Sect. 6.2.1; notes sect. 3.3, 3.6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmfusion.errors import ConfigError


class GaussianBasis(nn.Module):
    """N Gaussian RBFs in 1-D (``centres`` (N,), ``variances`` (N,)) or 2-D (``centres`` (N, 2),
    ``covs`` (N, 2, 2)). Constant buffers, no trainable parameters (notes sect. 1.8)."""

    def __init__(self, centres: Tensor, variances: Tensor) -> None:
        super().__init__()
        self.dim = 1 if centres.dim() == 1 else centres.shape[-1]
        self.register_buffer("centres", centres.to(torch.float64), persistent=False)
        self.register_buffer("variances", variances.to(torch.float64), persistent=False)

    @property
    def num(self) -> int:
        return self.centres.shape[0]

    @classmethod
    def grid_2d(cls, num: int = 100, var: float = 1e-3) -> GaussianBasis:
        """sqrt(N) x sqrt(N) centres on linspace(0, 1)^2 ('ij', row-major), Sigma_j = var I (the thesis: N=100,
        var=0.001)."""
        side = math.isqrt(num)
        if side * side != num:
            raise ConfigError(f"2-D basis: num_basis must be a perfect square (e.g. 49, 100), got {num}")
        g = torch.linspace(0, 1, side, dtype=torch.float64)
        rr, cc = torch.meshgrid(g, g, indexing="ij")
        centres = torch.stack([rr.reshape(-1), cc.reshape(-1)], -1)
        covs = var * torch.eye(2, dtype=torch.float64).expand(num, 2, 2).clone()
        return cls(centres, covs)

    @classmethod
    def grid_1d(cls, num: int = 64, stds: tuple[float, ...] = (0.1, 0.5)) -> GaussianBasis:
        """num/len(stds) centres on linspace(0, 1) for each std (quati's IMDB basis: stds 0.1 and 0.5)."""
        per = num // len(stds)
        if per * len(stds) != num or per < 1:
            raise ConfigError(
                f"1-D basis: num_basis={num} must be a positive multiple of len(stds)={len(stds)}"
            )
        mu = torch.linspace(0, 1, per, dtype=torch.float64)
        centres = torch.cat([mu for _ in stds])
        variances = torch.cat([torch.full((per,), s * s, dtype=torch.float64) for s in stds])
        return cls(centres, variances)

    def evaluate(self, t: Tensor) -> Tensor:
        """psi(t): (..., N) for t (...,) in 1-D or (..., 2) in 2-D (float64 math, used for G and plots)."""
        c, v = self.centres.to(t.device), self.variances.to(t.device)
        t = t.to(torch.float64)
        if self.dim == 1:
            return torch.exp(-0.5 * (t[..., None] - c) ** 2 / v) / torch.sqrt(2 * math.pi * v)
        from mmfusion.attention.linalg2 import det2, inv2

        d = t[..., None, :] - c  # (..., N, 2)
        q = torch.einsum("...ni,nij,...nj->...n", d, inv2(v), d)
        return torch.exp(-0.5 * q) / (2 * math.pi * det2(v).sqrt())
