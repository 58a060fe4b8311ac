"""A framework-free training step that follows the plug-in contract's order of calls
(:class:`mmfusion.contract.Plugin`): forward -> ``inner_step`` -> task loss + plug-in losses -> one backward ->
clip -> task optimiser step -> ``after_backward``. Used by the plug-in tests, the toy script and the overhead
benchmark so they do not depend on Lightning; :mod:`mmfusion.module` is the production version."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from mmfusion.contract import Batch, FusionModel, Plugin


def training_step(model: FusionModel, plugins: Mapping[str, Plugin], batch: Batch,
                  task_loss: Callable[[Tensor, Tensor], Tensor], task_opt: torch.optim.Optimizer,
                  plugin_opts: Mapping[str, list[torch.optim.Optimizer]], clip: float | None = None
                  ) -> dict[str, float]:
    out = model(batch)
    logs: dict[str, float] = {}
    n = int(batch["y"].shape[0])
    plugins = {name: p for name, p in plugins.items() if n >= p.min_batch_size}  # small batch: no term (module)
    for name, p in plugins.items():
        for k, v in p.inner_step(out, batch, plugin_opts[name], lambda loss: loss.backward()).items():
            logs[f"{name}/{k}"] = float(torch.as_tensor(v).detach())
    loss = task_loss(out.prediction, batch["y"])
    logs["task_loss"] = float(loss.detach())
    for name, p in plugins.items():
        pl = p.loss(out, batch, "train")
        if pl is not None:
            loss = loss + pl.value
            logs.update({f"{name}/{k}": float(torch.as_tensor(v).detach()) for k, v in pl.logs.items()})
    task_opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    task_opt.step()
    for name, p in plugins.items():
        p.after_backward(plugin_opts[name])
    logs["loss"] = float(loss.detach())
    return logs
