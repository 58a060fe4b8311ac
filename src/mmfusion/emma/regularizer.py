"""EMMA's regulariser ``Omega = sum_k eta_k log alpha_k`` (Werenne 2019, Eq. 20) and its normality oracles eta.

The training loss is ``L(y, y_hat) - lambda * Omega`` (per sample; averaged over the batch here, whereas the
author's code sums, which ties lambda to the batch size).

Oracles for eta (``reg.emma.eta``):

* ``labels`` (default): eta = +1 for a clean mode, -1 for a corrupted one, from ``batch["corrupt"] (B, M)``. This
  is what the final thesis uses (known corruption labels xi). Without labels, all modes count as clean.
* ``laplacian``: the summary's Eq. 11 with the sign fixed: *normal iff Delta V > 0* (a sink of the reconstruction
  field; the summary's Eq. 10 computes -Delta V, so "Delta V < 0 => normal" applied to the true Laplacian is
  inverted). Even fixed, this classifier does not detect inputs far from the data: there all sigmoids saturate,
  sigma' -> 0, so Delta V -> M > 0 and they are called normal (notes §4.3). Kept only as an option.
* ``threshold``: abnormal iff V' exceeds a quantile of the training V' (frozen at calibration).

Corrections: the analysis in Eq. 23-28 assumes d E_l / d theta_i = 0 for l != i, which is false for w_i and b_i
(phi_i enters every E_l); the boxed Eq. 26 is exact only for the gamma_ik. "M' = floor((M+1)/2) normal modes" is a
constraint on the training corruption process (fewer than half the modes corrupted), enforced by
:mod:`mmfusion.callbacks.emma_inject`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmfusion.errors import ConfigError, DataError

ORACLES = ("labels", "laplacian", "threshold")


def eta_from_labels(
    corrupt: Tensor | None,
    shape: tuple[int, int],
    normal: float = 1.0,
    abnormal: float = -1.0,
    device: torch.device | None = None,
) -> Tensor:
    """``(B, M)`` eta from boolean corruption labels (True = corrupted); ``None`` means all clean."""
    if corrupt is None:
        return torch.full(shape, float(normal), device=device)
    if tuple(corrupt.shape) != tuple(shape):
        raise DataError(
            f"EMMA: batch['corrupt'] must have shape (B, M) = {tuple(shape)}, got {tuple(corrupt.shape)}"
        )
    c = corrupt.to(device=device, dtype=torch.bool)
    return torch.where(
        c, torch.tensor(float(abnormal), device=device), torch.tensor(float(normal), device=device)
    )


def eta_from_laplacian(lap: Tensor, normal: float = 1.0, abnormal: float = -1.0) -> Tensor:
    """Corrected Eq. 11: normal iff the Laplacian of V is positive (sink)."""
    return torch.where(
        lap > 0,
        torch.tensor(float(normal), device=lap.device),
        torch.tensor(float(abnormal), device=lap.device),
    )


def eta_from_threshold(
    v_shifted: Tensor, thresholds: Tensor, normal: float = 1.0, abnormal: float = -1.0
) -> Tensor:
    """Abnormal iff ``V'_i > threshold_i`` (thresholds ``(M,)``, e.g. a high quantile of training V')."""
    return torch.where(
        v_shifted > thresholds,
        torch.tensor(float(abnormal), device=v_shifted.device),
        torch.tensor(float(normal), device=v_shifted.device),
    )


def omega(log_alpha: Tensor, eta: Tensor) -> Tensor:
    """``Omega = sum_k eta_k log alpha_k`` per sample (Eq. 20): ``(B, M), (B, M) -> (B,)``."""
    if log_alpha.shape != eta.shape:
        raise ConfigError(f"EMMA omega: log_alpha {tuple(log_alpha.shape)} and eta {tuple(eta.shape)} differ")
    return (eta * log_alpha).sum(-1)
