"""Deep CCA between the unimodal representations (Andrew, Arora, Bilmes & Livescu, ICML 2013; lecture 4.1,
``shared/seeds/001``, slides "Canonical Correlation Analysis" and "Deep Canonically Correlated Autoencoders").

For every pair of modalities (a, b), each representation goes through its own linear projection to ``o`` dims
(the top layer of Andrew et al.'s view networks; the model's encoders are the layers below), giving centred batch
matrices ``H_1, H_2`` (``m x o``). With (Andrew et al., Sect. 2.1-2.2)::

    S_11 = H_1^T H_1 / (m-1) + r_1 I,   S_22 = H_2^T H_2 / (m-1) + r_2 I,   S_12 = H_1^T H_2 / (m-1)
    T    = S_11^{-1/2} S_12 S_22^{-1/2}
    corr_k(H_1, H_2) = sum of the top-k singular values of T      (k = o: the trace norm ||T||_tr, Eq. 10)

the plug-in returns ``-weight * mean_pairs corr_k`` (correlation is maximised). The top-k form is the one of
Wang et al. (ICML 2015, DCCAE) and the lecture's "sum of the top-k".

Numerics (why the gradients are stable): any whitening ``W`` with ``W S W^T = I`` gives the same singular values
of ``W_1 S_12 W_2^T`` (``W = Q S^{-1/2}`` for an orthogonal Q), so ``S^{-1/2}`` is replaced by ``L^{-1}`` from the
Cholesky factor ``S = L L^T`` (triangular solves; no eigen-decomposition, so no ``1/(lambda_i - lambda_j)``
terms when eigenvalues repeat), and the singular values come from ``torch.linalg.svdvals``, whose gradient
``u_i v_i^T`` needs no singular vectors' gaps. The ridges keep the Cholesky factors well conditioned.

Choices that are ours (docs/regularisers.md): ``ridge_relative`` (default) scales each ridge by the mean variance
of its view, ``r = ridge * tr(H^T H / (m-1)) / o``, so the objective is invariant to rescaling a view (with an
absolute ridge, encoders maximising correlation gain by inflating their outputs); pairs of modalities are
averaged. **Small batches:** a centred batch of ``m`` samples has rank ``<= m - 1``, so at most ``m - 1``
canonical correlations are defined; a batch with ``m <= k`` cannot form the top-k sum: the term is 0 and counted
in ``skipped`` (never a crash). Batches only slightly above ``k`` overestimate the correlations (sample CCA is
biased upwards when ``m`` is close to ``o``); keep ``o`` well below the batch size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfusion.contract import Batch, FusionModel, FusionOutput, ModelInfo, Plugin, PluginLoss
from mmfusion.errors import ConfigError
from mmfusion.plugins.coordination import modality_pairs, skipped, unimodal_views


def cca_from_covariances(s11: Tensor, s12: Tensor, s22: Tensor) -> Tensor:
    """Canonical correlations (singular values of ``S11^{-1/2} S12 S22^{-1/2}``, descending) by Cholesky whitening.

    Args:
        s11, s22: ``(o1, o1)``, ``(o2, o2)`` symmetric positive-definite covariances (ridge already added).
        s12: ``(o1, o2)`` cross-covariance.
    """
    l1 = torch.linalg.cholesky(s11)
    l2 = torch.linalg.cholesky(s22)
    t = torch.linalg.solve_triangular(l1, s12, upper=False)  # L1^{-1} S12
    t = torch.linalg.solve_triangular(l2, t.T, upper=False).T  # L1^{-1} S12 L2^{-T}
    return torch.linalg.svdvals(t)


def batch_covariances(
    h1: Tensor, h2: Tensor, ridge1: float = 0.0, ridge2: float = 0.0, relative: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Ridge-regularised ``S11, S12, S22`` of a batch (Andrew et al. 2013, Sect. 2.2).

    Args:
        h1, h2: ``(m, o1)``, ``(m, o2)`` paired rows, ``m >= 2``.
        ridge1, ridge2: ``r_1, r_2 >= 0``.
        relative: scale each ridge by the mean variance of its view (``tr(S) / o``).
    """
    m = h1.shape[0]
    h1c, h2c = h1 - h1.mean(0), h2 - h2.mean(0)
    s11, s22, s12 = h1c.T @ h1c / (m - 1), h2c.T @ h2c / (m - 1), h1c.T @ h2c / (m - 1)
    eye1 = torch.eye(s11.shape[0], dtype=s11.dtype, device=s11.device)
    eye2 = torch.eye(s22.shape[0], dtype=s22.dtype, device=s22.device)
    r1 = ridge1 * s11.diagonal().mean() if relative else ridge1
    r2 = ridge2 * s22.diagonal().mean() if relative else ridge2
    return s11 + r1 * eye1, s12, s22 + r2 * eye2


def dcca_correlation(
    h1: Tensor, h2: Tensor, k: int | None = None, ridge: float = 1e-3, relative: bool = True
) -> Tensor:
    """``corr_k(H_1, H_2)``: the sum of the top-``k`` canonical correlations of a batch (``k=None``: all).

    Args:
        h1, h2: ``(m, o1)``, ``(m, o2)`` paired rows.
        k: number of correlations summed (``<= min(o1, o2)``).
        ridge: ``r_1 = r_2`` (> 0 for stable gradients).
        relative: ridge relative to each view's mean variance.
    """
    rho = cca_from_covariances(*batch_covariances(h1, h2, ridge, ridge, relative))
    return rho[: (k or rho.numel())].sum()


class DeepCCA(Plugin):
    """Deep CCA coordination between every pair of modalities; ``loss`` returns ``-weight * mean_pairs corr_k``.

    Args:
        weight: multiplier (>= 0) of the (negated) correlation.
        out_dim: ``o``, width of each modality's linear projection.
        k: correlations summed (``null``: ``out_dim``, the trace norm of Andrew et al.).
        ridge: ``r_1 = r_2 > 0``.
        ridge_relative: ridge relative to each view's mean variance (ours) or absolute (Andrew et al.).
        lr, weight_decay: the projections' own AdamW optimiser.
        seed: seed of the projections' initialisation (forked RNG).
    """

    training_only = True

    def __init__(
        self,
        weight: float = 0.03,
        out_dim: int = 8,
        k: int | None = None,
        ridge: float = 1e-3,
        ridge_relative: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if weight < 0:
            raise ConfigError(f"reg.dcca weight must be >= 0, got {weight}")
        if out_dim < 1:
            raise ConfigError(f"reg.dcca out_dim must be >= 1, got {out_dim}")
        k = out_dim if k is None else int(k)
        if not 1 <= k <= out_dim:
            raise ConfigError(f"reg.dcca k must be in [1, out_dim={out_dim}], got {k}")
        if not ridge > 0:
            raise ConfigError(
                f"reg.dcca ridge must be > 0 (it keeps the whitening well conditioned), got {ridge}"
            )
        self.weight, self.out_dim, self.k, self.ridge = float(weight), int(out_dim), k, float(ridge)
        self.ridge_relative, self.lr, self.weight_decay, self.seed = (
            bool(ridge_relative),
            lr,
            weight_decay,
            seed,
        )
        self.proj = nn.ModuleDict()
        self.modalities: tuple[str, ...] = ()

    @property
    def min_batch_size(self) -> int:
        """``k + 1``: a centred batch of m samples has at most m - 1 canonical correlations."""
        return self.k + 1

    def attach(self, model: FusionModel, info: ModelInfo) -> None:
        if len(info.modalities) < 2:
            raise ConfigError(f"reg.dcca needs >= 2 modalities, the model has {list(info.modalities)}")
        self.modalities = tuple(info.modalities)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.proj.update({m: nn.Linear(info.unimodal_dims[m], self.out_dim) for m in self.modalities})

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        if not self.modalities:
            raise RuntimeError("DeepCCA plug-in used before attach()")
        return [
            torch.optim.AdamW(
                self.proj.parameters(), lr=self.lr, weight_decay=self.weight_decay, foreach=True
            )
        ]

    def correlations(self, out: FusionOutput) -> dict[tuple[str, str], Tensor]:
        """``corr_k`` per pair of modalities (float32; the batch must have more than ``k`` samples)."""
        uni = unimodal_views(out, self.modalities, "dcca")
        with torch.autocast(device_type=out.fused.device.type, enabled=False):  # Cholesky/SVD in float32
            h = {m: self.proj[m](u) for m, u in uni.items()}
            return {
                (a, b): dcca_correlation(h[a], h[b], self.k, self.ridge, self.ridge_relative)
                for a, b in modality_pairs(self.modalities)
            }

    def loss(self, out: FusionOutput, batch: Batch, stage: str) -> PluginLoss | None:
        if out.fused.shape[0] <= self.k:  # rank <= m - 1 < k: the top-k sum is not defined
            return skipped(out)
        corr = torch.stack(list(self.correlations(out).values())).mean()
        return PluginLoss(
            value=-self.weight * corr, logs={"corr": corr.detach(), "corr_per_dim": corr.detach() / self.k}
        )

    def after_backward(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """The projections ascend the same correlation (their gradients come from the task backward)."""
        opt = optimizers[0]
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def diagnostics(self, out: FusionOutput, batch: Batch) -> dict[str, Tensor | float]:
        if out.fused.shape[0] <= self.k:
            return {}
        return {f"corr_{a}_{b}": v for (a, b), v in self.correlations(out).items()}
