"""Composition step: modal energies, system energy and Gibbs importance weights (Werenne 2019, Eq. 12-16).

    V'_i  = max(e, V_i - V_min^(i) + e)                                  (Eq. 13; V_min frozen after DAE training)
    phi_i = w_i V'_i + b_i,            w_i > 0, b_i >= 0                  (Eq. 13)
    E_ij  = phi_i^gamma_ij phi_j^(1 - gamma_ij),   gamma_ij in [0, 1]      (Eq. 14, computed in the log domain)
    E_i   = phi_i + sum_{j != i} w_ij E_ij,        w_ij in [-1, 1]         (author's final thesis + code; default)
    E_i   = sum_k E_ik with gamma_ij = gamma_ji, E_ii = phi_i             (summary's Eq. 15; ``form="summary"``)
    S     = sum_i E_i                                                     (system energy)
    alpha = softmax(-tau E)                                               (Eq. 16, coldness tau >= 0)

Corrections / choices (``shared/notes/regularizers.md`` §4.2, §4.4):

* The summary requires gamma_ij = gamma_ji for the "switch" property; the final thesis and its code use independent
  (asymmetric) gamma_ij and add coupling weights w_ij on the off-diagonal terms, arguing that asymmetry is needed
  ("if A fails B takes over"). That is the default; the symmetric summary form is ``form="summary"``.
* Appendix D's Eq. 37 has a sign error (``log phi_i - log phi_j``, not ``+``); autograd makes it moot.
* Constraints are enforced by parametrisation (softplus, sigmoid, tanh), not by clipping after each step as in the
  author's code (``WeightClipper``): w_i = 1e-6 + softplus(.), b_i = softplus(.), gamma = sigmoid(.), w_ij = tanh(.).
* Eq. 19's claim that coldness 0 means "no masking" is wrong: tau = 0 gives alpha_i = 1/M for every mode
  (see :mod:`mmfusion.emma.attention`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.errors import ConfigError, DataError

E = math.e
W_FLOOR = 1e-6  # w_i = W_FLOOR + softplus(.): strictly positive even where softplus underflows


def inv_softplus(x: Tensor) -> Tensor:
    """Inverse of softplus for x > 0 (stable: ``x + log(-expm1(-x))``)."""
    return x + torch.log(-torch.expm1(-x))


def gibbs_weights(energies: Tensor, coldness: float | Tensor) -> Tensor:
    """Importance weights ``alpha_i = exp(-tau E_i) / Z`` over the last axis (Eq. 16), via a stable softmax."""
    if float(coldness) < 0:
        raise ConfigError(f"EMMA coldness must be >= 0, got {float(coldness)}")
    return torch.softmax(-coldness * energies, dim=-1)


def shifted_potential(v: Tensor, v_min: Tensor) -> Tensor:
    """``V' = max(e, V - V_min + e)`` (Eq. 13): the lowest training energy maps to e, never below e."""
    return torch.clamp_min(v - v_min + E, E)


class Composition(nn.Module):
    """Maps per-modality potential energies ``V (B, M)`` to ``phi``, modal energies ``E``, system energy ``S`` and
    importance weights ``alpha`` (all batch-independent per sample)."""

    def __init__(
        self,
        n_modalities: int,
        coldness: float = 1.0,
        form: str = "thesis",
        w_init: float = 1.0,
        b_init: float = 0.01,
        gamma_init: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n_modalities < 1:
            raise ConfigError(f"EMMA needs at least one modality, got {n_modalities}")
        if form not in ("thesis", "summary"):
            raise ConfigError(f"reg.emma.form must be 'thesis' or 'summary', got {form!r}")
        if coldness < 0:
            raise ConfigError(f"reg.emma.coldness must be >= 0, got {coldness}")
        if not 0.0 < gamma_init < 1.0 or w_init <= W_FLOOR or b_init <= 0:
            raise ConfigError(
                "EMMA init: need 0 < gamma_init < 1, w_init > 0, b_init > 0 "
                f"(got {gamma_init}, {w_init}, {b_init})"
            )
        M = int(n_modalities)
        self.M, self.form, self.coldness = M, form, float(coldness)
        self.register_buffer("v_min", torch.zeros(M))
        self.w_raw = nn.Parameter(inv_softplus(torch.full((M,), float(w_init) - W_FLOOR)))
        self.b_raw = nn.Parameter(inv_softplus(torch.full((M,), float(b_init))))
        g0 = math.log(gamma_init / (1 - gamma_init))
        self.gamma_raw = nn.Parameter(torch.full((M, M), g0))
        if form == "thesis" and M > 1:
            # author's init: w_ij ~ U(-1/(M-1), 1/(M-1)); stored as atanh so that tanh maps back
            gen = torch.Generator().manual_seed(seed)
            c = (torch.rand(M, M, generator=gen) * 2 - 1) / (M - 1)
            self.coupling_raw = nn.Parameter(torch.atanh(c.clamp(-0.999, 0.999)))
        else:
            self.register_parameter("coupling_raw", None)
        self.register_buffer("offdiag", 1.0 - torch.eye(M))

    # -- constrained parameters ------------------------------------------------------------------------------
    @property
    def w(self) -> Tensor:
        return W_FLOOR + F.softplus(self.w_raw)

    @property
    def b(self) -> Tensor:
        return F.softplus(self.b_raw)

    @property
    def gamma(self) -> Tensor:
        g = torch.sigmoid(self.gamma_raw)
        if self.form == "summary":  # symmetric gamma_ij = gamma_ji from the upper triangle
            up = torch.triu(g, 1)
            g = up + up.T + torch.diag(torch.diagonal(g))
        return g

    @property
    def coupling(self) -> Tensor:
        if self.coupling_raw is None:
            return self.offdiag
        return torch.tanh(self.coupling_raw) * self.offdiag

    # -- calibration --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, v_train: Tensor, unit_scale: bool = True) -> None:
        """Freeze ``V_min`` from the training energies ``(N, M)`` (Eq. 13). With ``unit_scale``, also initialise
        ``w_i = 1 / mean_train(V'_i)`` so that phi_i averages about 1 on normal data whatever the DAE's energy
        scale (an initialisation only; w_i stays learned)."""
        if v_train.ndim != 2 or v_train.shape[1] != self.M:
            raise DataError(
                f"EMMA calibrate: expected training energies of shape (N, {self.M}), "
                f"got {tuple(v_train.shape)}"
            )
        self.v_min.copy_(v_train.min(0).values.to(self.v_min))
        if unit_scale:
            mean = shifted_potential(v_train.to(self.v_min), self.v_min).mean(0)
            self.w_raw.copy_(inv_softplus((1.0 / mean).clamp_min(10 * W_FLOOR) - W_FLOOR).to(self.w_raw))

    # -- Eq. 13-16 ----------------------------------------------------------------------------------------------
    def phi(self, v: Tensor) -> Tensor:
        """``phi_i = w_i V'_i + b_i`` (Eq. 13), ``(B, M)``, strictly positive."""
        return self.w * shifted_potential(v, self.v_min) + self.b

    def modal_energies(self, phi: Tensor) -> Tensor:
        """``E (B, M)`` from ``phi (B, M)`` (Eq. 14-15, form-dependent; see the module docstring)."""
        if phi.ndim != 2 or phi.shape[1] != self.M:
            raise DataError(f"EMMA: expected energies of shape (B, {self.M}), got {tuple(phi.shape)}")
        logp = phi.log()
        g = self.gamma
        # partial energies E_ij = exp(gamma_ij log phi_i + (1 - gamma_ij) log phi_j), shape (B, M, M)
        partial = torch.exp(g * logp[:, :, None] + (1 - g) * logp[:, None, :])
        return phi + (self.coupling * partial).sum(-1)

    def forward(self, v: Tensor) -> dict[str, Tensor]:
        phi = self.phi(v)
        energies = self.modal_energies(phi)
        return {
            "phi": phi,
            "E": energies,
            "S": energies.sum(-1),
            "alpha": gibbs_weights(energies, self.coldness),
        }
