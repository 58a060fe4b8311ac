"""Divergence is an error: a non-finite training loss, or a non-finite validation/test loss or selection metric,
stops the run with one line naming the step, the value and the likely cause.

``train.py`` always adds :class:`DivergenceGuard` (it is not a config option): a diverged run must never end with
exit 0 and a test table or ``metrics.json`` computed from NaN predictions. The raised
:class:`~mmfusion.errors.DivergenceError` is a bad-input error (``MMFusionError``): the CLI prints
``error: <line>`` and exits 2; in a multirun the job fails and the sweep records the trial as failed and goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from mmfusion.errors import DivergenceError

log = logging.getLogger(__name__)
GROWTH_WARNING = 1e3  # a finite val/loss this many times the first training loss is logged as a warning


def nonfinite_entries(batch: Any, prefix: str = "batch") -> list[str]:
    """``["batch['y'] (3 of 32 values)", ...]``: the floating tensors of a (nested) batch with NaN/inf values."""
    found: list[str] = []
    if isinstance(batch, Mapping):
        for k, v in batch.items():
            found += nonfinite_entries(v, f"{prefix}[{k!r}]")
    elif isinstance(batch, Tensor) and batch.is_floating_point():
        bad = int((~torch.isfinite(batch)).sum())
        if bad:
            found.append(f"{prefix} ({bad} of {batch.numel()} values)")
    return found


def likely_cause(pl_module: pl.LightningModule, batch: Any = None) -> str:
    """The data when the batch holds NaN/inf, else the learning rate (and the plug-ins, if any)."""
    bad = nonfinite_entries(batch) if batch is not None else []
    if bad:
        return (
            f"non-finite values in the data: {', '.join(bad[:3])}; check the data files and their sanitising"
        )
    lr = getattr(pl_module, "lr", None)
    plugins = list(getattr(pl_module, "plugins", {}) or {})
    extra = f" or a plug-in's weight/lr (reg: {', '.join(plugins)})" if plugins else ""
    return (
        f"the learning rate is too high (optim.lr={lr:g}){extra}; lower optim.lr or set optim.grad_clip_val"
        if isinstance(lr, int | float)
        else f"the learning rate is too high{extra}; lower optim.lr"
    )


def _loss_value(outputs: Any) -> Tensor | None:
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, Tensor) else None


class DivergenceGuard(pl.Callback):
    """Raises :class:`DivergenceError` on a non-finite training loss (every step) and on a non-finite
    validation/test loss or monitored metric (end of each evaluation, from the module's whole-split metrics).
    A finite validation loss ``GROWTH_WARNING`` times the first training loss is logged once as a warning (a run
    exploding without reaching inf, e.g. ``optim.lr=1e3``)."""

    def __init__(self) -> None:
        self.first_loss: float | None = None
        self.warned = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _loss_value(outputs)
        if loss is None:
            return
        if bool(torch.isfinite(loss).all()):
            if self.first_loss is None:
                self.first_loss = float(loss.float().mean())
            return
        raise DivergenceError(
            f"training diverged at epoch {trainer.current_epoch}, step {trainer.global_step} (batch {batch_idx}): "
            f"train/loss = {float(loss.float().mean())}; likely cause: {likely_cause(pl_module, batch)}"
        )

    def _check_eval(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        metrics = (getattr(pl_module, "last_metrics", None) or {}).get(stage) or {}
        task = getattr(pl_module, "task", None)
        monitor = str(getattr(task, "monitor", "")).split("/", 1)[-1]
        checked = {"loss": metrics.get("loss"), monitor: metrics.get(monitor)}
        bad = {k: v for k, v in checked.items() if isinstance(v, int | float) and not math.isfinite(v)}
        if not bad:
            self._warn_growth(metrics.get("loss"), trainer, pl_module, stage)
            return
        values = ", ".join(f"{stage}/{k} = {v}" for k, v in bad.items())
        when = (
            f"after epoch {trainer.current_epoch}, step {trainer.global_step}"
            if trainer.state.fn == "fit"
            else "on the evaluated checkpoint"
        )
        raise DivergenceError(
            f"{'validation' if stage == 'val' else 'test'} predictions are not finite {when}: "
            f"{values}; likely cause: {likely_cause(pl_module)}"
        )

    def _warn_growth(self, loss: Any, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        first = self.first_loss
        if self.warned or stage != "val" or not isinstance(loss, int | float) or not first or first <= 0:
            return
        if loss > GROWTH_WARNING * first:
            self.warned = True
            log.warning(
                "%s/loss = %.4g after epoch %d is %.3g x the first training loss (%.4g): the run is "
                "diverging; likely cause: %s",
                stage,
                loss,
                trainer.current_epoch,
                loss / first,
                first,
                likely_cause(pl_module),
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_eval(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_eval(trainer, pl_module, "test")
