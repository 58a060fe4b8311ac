"""Optuna pruning from the per-epoch validation metric (``hparams_search=optuna_tpe`` adds this callback).

The sweeper (``hydra_plugins.mmfusion_sweeper``) hands the running trial over with :func:`set_trial` before it
launches the job in-process; outside a sweep, or with a launcher that runs jobs in other processes, no trial is
set and the callback does nothing. After every validation epoch it reports ``monitor`` to the trial and raises
``optuna.TrialPruned`` when the study's pruner says so; the sweeper records the trial as ``PRUNED``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)

_TRIAL: Any = None


def set_trial(trial: Any) -> None:
    """The ``optuna.Trial`` of the job about to run in this process (``None`` after it)."""
    global _TRIAL
    _TRIAL = trial


def current_trial() -> Any:
    return _TRIAL


class OptunaPruning(pl.Callback):
    """Report ``monitor`` (e.g. ``val/MAE``) to the current Optuna trial after each validation epoch and stop
    the run when the pruner prunes it.

    Args:
        monitor: the logged validation metric the sweep optimises (``optimized_metric``).
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = str(monitor)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trial = current_trial()
        if trial is None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if not math.isfinite(value):
            return  # divergence is the divergence check's business (the trial fails)
        epoch = int(trainer.current_epoch)
        trial.report(value, step=epoch)
        if trial.should_prune():
            import optuna

            msg = f"trial {trial.number} pruned at epoch {epoch}: {self.monitor}={value:.6g}"
            log.info(msg)
            raise optuna.TrialPruned(msg)
