"""Potential energy of a tied-weight DAE, its gradient and its Laplacian (Werenne 2019, Eq. 8-11; Kamyshanska &
Memisevic 2015). All quantities are per sample and functions of the standardised input ``z`` (see
:class:`mmfusion.emma.dae.TiedDAE`); ``a = W z + b_h``, ``W_k`` the k-th row of ``W``, ``M = dim``::

    V(z)    = -sum_k softplus(a_k) + 1/2 ||z - b_r||^2                 (Eq. 8, last line; + const)
    grad V  = z - r(z)                                                 (so r(z) - z = -grad V is the force)
    Delta V = tr Hess V = M - sum_k sigma'(a_k) ||W_k||^2               (Laplacian of V)
    div(r - z) = sum_k sigma'(a_k) ||W_k||^2 - M = -Delta V             (what the summary's Eq. 10 computes)

Corrections to the summary (see ``shared/notes/regularizers.md`` §4.2):

* Eq. 8, middle line: ``-1/2 ||m + b_r||^2`` has two sign errors; the last line (used here) is right.
* Appendix C, Eq. 34: the gradient is ``z - r(z)``, not ``r(z) - z``, and keeps both biases; Eq. 35 evaluates
  sigma' at ``W z + b_h``, not at ``z``.
* **Eq. 10 is -Delta V, not Delta V**: ``Tr[W^T diag(sigma'(a)) W] - M`` is the divergence of the reconstruction
  field (negative at a sink). The Laplacian of V is *positive* at an energy minimum. :func:`laplacian` returns the
  true Laplacian, :func:`div_field` the summary's quantity.
* Batch independence: the author's code takes the Frobenius norm of the whole batch in the quadratic term, so a
  sample's energy depends on the other samples. Here the norm is per sample (``sum(-1)``).
* Overflow: ``log(1 + exp(a))`` is ``inf`` at a = 100 in float32; :func:`torch.nn.functional.softplus` is used.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mmfusion.emma.dae import TiedDAE


def _z(dae: TiedDAE, m: Tensor, standardized: bool) -> Tensor:
    return m if standardized else dae.standardize(m)


def potential(dae: TiedDAE, m: Tensor, *, standardized: bool = False) -> Tensor:
    """Potential energy ``V`` (Eq. 8) of each sample: ``(..., dim) -> (...)``. Batch-independent, overflow-safe."""
    z = _z(dae, m, standardized)
    return -F.softplus(dae.pre_activation(z)).sum(-1) + 0.5 * (z - dae.b_r).pow(2).sum(-1)


def grad_potential(dae: TiedDAE, m: Tensor, *, standardized: bool = False) -> Tensor:
    """Closed-form ``dV/dz = z - r(z)`` (corrected Eq. 34), ``(..., dim)``."""
    z = _z(dae, m, standardized)
    return z - dae.reconstruct(z)


def laplacian(dae: TiedDAE, m: Tensor, *, standardized: bool = False) -> Tensor:
    """Laplacian ``Delta V = M - sum_k sigma'(a_k) ||W_k||^2`` (the trace of the Hessian of V), ``(...)``.

    Positive at an energy minimum (a sink of the reconstruction field), negative at a source/ridge.
    """
    z = _z(dae, m, standardized)
    s = dae.pre_activation(z).sigmoid()
    return dae.dim - (s * (1 - s)) @ dae.W.pow(2).sum(-1)


def div_field(dae: TiedDAE, m: Tensor, *, standardized: bool = False) -> Tensor:
    """Divergence of the reconstruction field ``div(r(z) - z) = -Delta V``: the quantity of the summary's Eq. 10."""
    return -laplacian(dae, m, standardized=standardized)
