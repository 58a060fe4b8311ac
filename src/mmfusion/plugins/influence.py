"""Influence of loss plug-in terms on the task model: gradient-norm ratio and cosine against the task loss.

For a plug-in term ``R`` (as added to the loss, i.e. already weighted and signed) and the task loss ``L``, over
the task model's parameters ``theta``::

    influence(R) = ||grad_theta R|| / ||grad_theta L||
    cosine(R)    = <grad_theta R, grad_theta L> / (||grad_theta R|| ||grad_theta L||)

``influence`` << 0.1 means the term barely moves the model (inert); >> 1 means it dominates the task. ``cosine``
near +1 means it pushes where the task pushes anyway (redundant), near -1 that it fights the task, near 0 that it
acts on directions the task does not care about. Generic: works for any plug-in that returns a ``PluginLoss``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def _flat_grad(value: Tensor, params: Sequence[Tensor]) -> Tensor | None:
    if not value.requires_grad:
        return None
    grads = torch.autograd.grad(
        value, list(params), retain_graph=True, allow_unused=True, materialize_grads=True
    )
    return torch.cat([g.reshape(-1).float() for g in grads]) if grads else None


def gradient_influence(
    task_loss: Tensor, terms: Mapping[str, Tensor], params: Sequence[Tensor]
) -> dict[str, dict[str, float]]:
    """``{name: {"influence": ratio, "cosine": cos}}`` for each term; the graph is retained for the real backward.

    Args:
        task_loss: the task loss (scalar, with graph).
        terms: the plug-in terms as they enter the loss (scalars, with graph).
        params: the task model's parameters (those the task optimiser steps).
    A term with no gradient path to ``params`` gets influence 0 and cosine 0; a task loss with a zero gradient
    gives ``inf``/``nan`` (reported as is: there is nothing to compare against).
    """
    params = [p for p in params if p.requires_grad]
    g_task = _flat_grad(task_loss, params)
    task_norm = float(g_task.norm()) if g_task is not None else 0.0
    out: dict[str, dict[str, float]] = {}
    for name, value in terms.items():
        g = _flat_grad(value, params)
        if g is None:
            out[name] = {"influence": 0.0, "cosine": 0.0}
            continue
        norm = float(g.norm())
        if g_task is None or task_norm == 0.0:
            out[name] = {"influence": math.inf if norm > 0 else math.nan, "cosine": math.nan}
            continue
        cos = float((g * g_task).sum()) / (norm * task_norm) if norm > 0 else 0.0
        out[name] = {"influence": norm / task_norm, "cosine": cos}
    return out
