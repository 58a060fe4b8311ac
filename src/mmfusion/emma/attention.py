"""Attention step: ``beta_i = ReLU(tanh(G alpha_i - b))``, ``m'_i = beta_i m_i`` (Werenne 2019, Eq. 2, 17-19).

One gain ``G > 0`` and one bias ``b > 0`` shared by all modalities (the summary's interpretability/symmetry
argument), both parametrised by softplus (no clipping). Mode i is masked (beta_i = 0) iff ``G alpha_i <= b``, i.e.
with alpha = softmax(-tau E) and Z = sum_j exp(-tau E_j)::

    E_i >= (log(G / b) - log Z) / tau          (Eq. 19, for tau > 0)

Correction: the summary says that at coldness 0 "the inequality is never verified and there is no masking". The
division by tau is invalid at tau = 0; there every alpha_i = 1/M and beta_i = relu(tanh(G/M - b)) is the same for
all modes: all are masked if b >= G/M, none otherwise (:func:`masked_at_zero_coldness`).

Capacity (full thesis): the area under beta on alpha in [0, 1] is ``(1/G) log cosh(G - b)`` for G >= b (0
otherwise); the thesis' ``(1/G) log[cosh(G - b)/cosh(-b)]`` integrates the un-rectified tanh. As in the author's code,
training may penalise the proxy ``G - b`` (``capacity_weight``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.emma.composition import inv_softplus
from mmfusion.errors import ConfigError


class AttentionStep(nn.Module):
    """``alpha (B, M) -> beta (B, M)`` with shared learned ``G, b > 0``.

    Default init ``G = 4M, b = 1``: at uniform weights beta = tanh(3) = 0.995, so inserting EMMA into a trained
    model barely changes it, and a mode is masked once alpha_i <= 1/(4M). (The author's code starts at G = 1,
    b = 0, which scales every mode by about tanh(1/M) at insertion.)
    """

    def __init__(self, n_modalities: int, gain_init: float | None = None, bias_init: float = 1.0) -> None:
        super().__init__()
        gain = float(gain_init) if gain_init is not None else 4.0 * n_modalities
        if gain <= 0 or bias_init <= 0:
            raise ConfigError(f"EMMA attention: gain_init and bias_init must be > 0, got {gain}, {bias_init}")
        self.gain_raw = nn.Parameter(inv_softplus(torch.tensor(gain)))
        self.bias_raw = nn.Parameter(inv_softplus(torch.tensor(float(bias_init))))

    @property
    def gain(self) -> Tensor:
        return F.softplus(self.gain_raw)

    @property
    def bias(self) -> Tensor:
        return F.softplus(self.bias_raw)

    def forward(self, alpha: Tensor) -> Tensor:
        return torch.relu(torch.tanh(self.gain * alpha - self.bias))

    def capacity(self) -> Tensor:
        return capacity(self.gain, self.bias)


def masking_threshold(gain: float | Tensor, bias: float | Tensor, log_z: Tensor, coldness: float) -> Tensor:
    """Energy above which a mode is masked (Eq. 19): ``(log(G/b) - log Z) / tau``; ``tau`` must be > 0."""
    if coldness <= 0:
        raise ConfigError(
            "Eq. 19's threshold divides by the coldness; it is undefined at tau = 0 "
            "(use masked_at_zero_coldness)"
        )
    return (torch.log(torch.as_tensor(gain) / torch.as_tensor(bias)) - log_z) / coldness


def masked_at_zero_coldness(gain: float, bias: float, n_modalities: int) -> bool:
    """At tau = 0 every alpha_i = 1/M: all modes are masked iff ``b >= G/M`` (else none is)."""
    return bias >= gain / n_modalities


def capacity(gain: Tensor | float, bias: Tensor | float) -> Tensor:
    """Area under ``beta(alpha) = relu(tanh(G alpha - b))`` on [0, 1]: ``(1/G) log cosh(G - b)`` if G >= b else 0."""
    g, b = torch.as_tensor(gain, dtype=torch.float64), torch.as_tensor(bias, dtype=torch.float64)
    x = (g - b).clamp_min(0)
    log_cosh = x + F.softplus(-2 * x) - math.log(2.0)  # stable log cosh for x >= 0
    return log_cosh / g
