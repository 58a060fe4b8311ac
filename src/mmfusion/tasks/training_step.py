"""The one training step of mmfusion, Lightning-free: what ``FusionModule`` runs every batch and what the
benchmarks and plug-in tests time and call (the plug-in contract's order, :class:`mmfusion.contract.Plugin`).

1. ``out = net(batch)`` (gates / replaced pools installed by plug-ins act inside the model);
2. each active plug-in's ``inner_step`` (its own optimisers, detached inputs);
3. ``loss = task_loss(out.prediction, y) + sum(plugin.loss(...).value)``;
4. every optimiser zeroed, one ``backward``, clipping of the task model's gradients, the task optimiser's step;
5. each active plug-in's ``after_backward`` (plug-ins that train jointly on the same loss step their optimisers).

A plug-in whose term cannot be formed on a batch smaller than its ``min_batch_size`` (a loader's incomplete last
batch) takes no part in the step and is counted in ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmfusion.contract import Batch, FusionModel, Plugin


@dataclass
class StepResult:
    """What one step returns.

    Args:
        loss: the total loss (task + plug-in terms), detached.
        task_loss: the task loss alone, detached.
        logs: ``train/reg/<name>/<key>`` values of the plug-ins' inner steps and terms (tensors or floats).
    """

    loss: Tensor
    task_loss: Tensor
    logs: dict[str, Any] = field(default_factory=dict)


def active_plugins(
    plugins: Mapping[str, Plugin], batch: Batch, skipped: MutableMapping[str, int] | None = None
) -> dict[str, Plugin]:
    """The plug-ins whose term can be formed on ``batch`` (``len >= min_batch_size``); the others are counted in
    ``skipped`` (cumulative, per plug-in name)."""
    n = int(batch["y"].shape[0])
    active = {}
    for name, p in plugins.items():
        if n >= p.min_batch_size:
            active[name] = p
        elif skipped is not None:
            skipped[name] = skipped.get(name, 0) + 1
    return active


def clip_by(
    grad_clip_val: float | None, algorithm: str = "norm"
) -> Callable[[torch.optim.Optimizer], None] | None:
    """A clipping function on an optimiser's parameters (by norm or value); ``None`` when clipping is off."""
    if not grad_clip_val:
        return None

    def clip(opt: torch.optim.Optimizer) -> None:
        params = [p for g in opt.param_groups for p in g["params"]]
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, grad_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, grad_clip_val)

    return clip


def training_step(
    net: FusionModel,
    task_loss: Callable[[Tensor, Tensor], Tensor],
    plugins: Mapping[str, Plugin],
    batch: Batch,
    task_optimizer: torch.optim.Optimizer,
    plugin_optimizers: Mapping[str, Sequence[torch.optim.Optimizer]] | None = None,
    backward: Callable[[Tensor], None] | None = None,
    clip: Callable[[torch.optim.Optimizer], None] | None = None,
    before_backward: Callable[[Tensor, dict[str, Tensor]], None] | None = None,
    skipped: MutableMapping[str, int] | None = None,
) -> StepResult:
    """One full optimisation step of a fusion model with its plug-ins.

    Args:
        net: the fusion model (its gate and pools may have been installed by plug-ins).
        task_loss: ``(prediction, target) -> scalar`` (``Task.loss``).
        plugins: ``{name: plug-in}`` in the order their hooks run.
        batch: the batch dict (``x``, ``lengths``, ``y``, ...).
        task_optimizer: the optimiser of the task model's parameters (never holds plug-in parameters).
        plugin_optimizers: ``{name: [optimisers]}`` of the plug-ins that own some (missing names: none).
        backward: how to backpropagate a loss (Lightning's ``manual_backward`` in training); default
            ``loss.backward()``.
        clip: clipping of the task model's gradients, called with ``task_optimizer`` after the backward
            (:func:`clip_by`, or Lightning's ``clip_gradients``); ``None``: no clipping.
        before_backward: called with ``(task_loss, {name: term})`` before the backward, when some term exists
            (the gradient-influence diagnostic).
        skipped: counts of batches each plug-in skipped (updated in place).

    Returns:
        :class:`StepResult`.
    """
    backward = backward or (lambda loss: loss.backward())
    own = {name: list((plugin_optimizers or {}).get(name, ())) for name in plugins}
    out = net(batch)
    logs: dict[str, Any] = {}
    active = active_plugins(plugins, batch, skipped)
    for name, p in active.items():
        inner = p.inner_step(out, batch, own[name], backward)
        logs.update({f"train/reg/{name}/{k}": v for k, v in inner.items()})
    task = task_loss(out.prediction, batch["y"])
    loss = task
    terms: dict[str, Tensor] = {}
    for name, p in active.items():
        term = p.loss(out, batch, "train")
        if term is not None:
            loss = loss + term.value
            terms[name] = term.value
            logs[f"train/reg/{name}/loss"] = term.value.detach()
            logs.update({f"train/reg/{name}/{k}": v for k, v in term.logs.items()})
    if terms and before_backward is not None:
        before_backward(task, terms)
    for opt in [task_optimizer, *(o for opts in own.values() for o in opts)]:
        opt.zero_grad(set_to_none=True)
    backward(loss)
    if clip is not None:
        clip(task_optimizer)
    task_optimizer.step()
    for name, p in active.items():
        p.after_backward(own[name])
    return StepResult(loss.detach(), task.detach(), logs)


__all__ = ["StepResult", "active_plugins", "clip_by", "training_step"]
