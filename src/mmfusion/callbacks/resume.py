"""Exact resume (``ckpt_path=last``) and a preemption simulator to test it.

Lightning already checkpoints the model, every optimiser returned by ``configure_optimizers`` (the plug-ins'
auxiliary ones included), the schedulers, the loop counters and the train loader's position
(:class:`mmfusion.data.base.ResumableDataLoader`). What it does not save is the random state: dropout masks and
plug-ins' negative sampling after a resume would differ from an uninterrupted run. :class:`ExactResume` stores
the torch / numpy / python (and CUDA) generator states in its callback state and restores them just before
training continues. It also writes the W&B run id next to the checkpoints (``checkpoints/wandb_run_id.txt``), which
``train.py`` reads on ``ckpt_path=...`` to continue the same W&B run.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id.txt"


def rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True)
    states: dict[str, Any] = {"torch": torch.get_rng_state(),
                              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                                        float(gauss)],
                              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint_dir(trainer: pl.Trainer) -> Path | None:
    cb = trainer.checkpoint_callback
    return Path(cb.dirpath) if cb is not None and getattr(cb, "dirpath", None) else None


def wandb_run_id(trainer: pl.Trainer) -> str | None:
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            return str(lg.experiment.id)
    return None


class ExactResume(pl.Callback):
    """Checkpoint the RNG states (restored at ``on_train_start`` of a resumed fit) and persist the W&B run id."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)  # after setup, data loading and sanity checks: training continues from here
            self._pending = None
        if trainer.is_global_zero:
            run_id, ckpt_dir = wandb_run_id(trainer), checkpoint_dir(trainer)
            if run_id and ckpt_dir is not None:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                (ckpt_dir / WANDB_ID_FILE).write_text(run_id + "\n")


class StepCheckpoint(ModelCheckpoint):
    """Mid-epoch checkpoint every ``every_n_train_steps`` optimiser steps, for preemptible jobs: only
    ``last-step.ckpt``, overwritten each time (``ckpt_path=last`` picks the newest ``last*.ckpt``). Model
    selection stays with the validation-monitored ``model_checkpoint``. Under manual optimisation Lightning's
    step counter counts every optimiser step (plug-ins' auxiliary optimisers included)."""

    CHECKPOINT_NAME_LAST = "last-step"

    def __init__(self, dirpath: str, every_n_train_steps: int = 100) -> None:
        # Lightning warns that a manual-optimisation step checkpoint holds the state AFTER the step: that is what
        # an exact resume needs (weights after step k + the loader positioned at batch k + 1)
        warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=0, save_last=True,
                         monitor=None)


class SimulatedPreemption(pl.Callback):
    """Kill this process (SIGKILL, no clean-up, like a preempted job) when a training batch starts at
    ``global_step >= at_step``. Only for testing resume: ``+callbacks.preempt._target_=...SimulatedPreemption``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = int(at_step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step >= self.at_step:
            log.warning("SimulatedPreemption: killing pid %d at global_step %d", os.getpid(), trainer.global_step)
            os.kill(os.getpid(), signal.SIGKILL)


def previous_wandb_id(ckpt_path: str | None) -> str | None:
    """The W&B run id saved next to a checkpoint by :class:`ExactResume`, if any."""
    if not ckpt_path:
        return None
    f = Path(ckpt_path).parent / WANDB_ID_FILE
    if not f.is_file():
        return None
    return f.read_text().strip() or None


def continue_wandb_run(cfg: Any, ckpt_path: str | None) -> None:
    """On resume, point ``logger.wandb`` at the saved run id (``resume: allow``) unless an id is set already."""
    run_id = previous_wandb_id(ckpt_path)
    wb = (cfg.get("logger") or {}).get("wandb")
    if run_id and wb is not None and not wb.get("id"):
        from omegaconf import open_dict

        with open_dict(wb):
            wb.id = run_id
            wb.resume = "allow"
        log.info("resuming W&B run %s", run_id)
