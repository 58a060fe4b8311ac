"""Exact resume (``ckpt_path=last``) and a preemption simulator to test it.

Lightning already checkpoints the model, every optimiser returned by ``configure_optimizers`` (the plug-ins'
auxiliary ones included), the schedulers, the loop counters and the train loader's position
(:class:`mmfusion.data.base.ResumableDataLoader`). What it does not save is the random state: dropout masks and
plug-ins' negative sampling after a resume would differ from an uninterrupted run. :class:`ExactResume` stores
the torch / numpy / python (and CUDA) generator states in its callback state and restores them just before
training continues. It also writes the W&B run id next to the checkpoints (``checkpoints/wandb_run_id.txt``), which
``train.py`` reads on ``ckpt_path=...`` to continue the same W&B run. With :class:`ResumableCSVLogger` (the default
``logger=csv``) the CSV log's history survives: an interrupted-and-resumed run has the same rows in
``csv/metrics.csv`` as an uninterrupted one (Lightning's CSV logger deletes an existing ``metrics.csv``).

:func:`check_resume` refuses a resume whose config changes the run's model, data or plug-ins (one line, exit 2,
before any file is written); :class:`ResumeGuard` runs it as a Hydra callback, before Hydra saves the new
``.hydra/config.yaml``.
"""

from __future__ import annotations

import csv
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
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from mmfusion.errors import ConfigError

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id.txt"


def rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
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


class KeepingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is not deleted when the writer is created. At the
    first save of metrics: a resumed run (``resumed`` set when the checkpoint is loaded) keeps the rows logged
    before the first step it logs itself (``step <`` that step) and appends after them; a fresh run replaces the
    file as Lightning does."""

    resumed: bool = False
    _prepared: bool = False

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        pass

    def _prepare_file(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if not self.resumed:
            path.unlink()  # a fresh run in a folder with an old log: start over (Lightning's behaviour)
            return
        first = min(int(m["step"]) for m in self.metrics)  # the first step the resumed run logs (again)
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if not r.get("step") or int(float(r["step"])) < first]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        self.metrics_keys = sorted(keys)
        if self.metrics_keys != keys:
            self._rewrite_with_new_header(self.metrics_keys)

    def save(self) -> None:
        if not self._prepared and self.metrics:
            self._prepared = True
            self._prepare_file()
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` (configs/logger/csv.yaml) whose history survives a resume: rows are flushed at every logging
    step (``flush_logs_every_n_steps=1``), so a killed run's file holds every row it logged, and a resumed run keeps
    the rows before its checkpoint's position (:class:`KeepingExperimentWriter`) instead of deleting the file.
    Rows the killed process logged after its checkpoint are logged again, identically, by the resumed run."""

    def __init__(self, *args: Any, flush_logs_every_n_steps: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, flush_logs_every_n_steps=flush_logs_every_n_steps, **kwargs)

    @property
    def experiment(self) -> KeepingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class ExactResume(pl.Callback):
    """Checkpoint the RNG states (restored at ``on_train_start`` of a resumed fit), tell a
    :class:`ResumableCSVLogger` where the resumed run continues, and persist the W&B run id."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, ResumableCSVLogger):
                lg.experiment.resumed = True
                log.info(
                    "resume: %s keeps the rows logged before the resumed position",
                    lg.experiment.metrics_file_path,
                )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(
                self._pending
            )  # after setup, data loading and sanity checks: training continues from here
            self._pending = None
        if trainer.is_global_zero:
            run_id, ckpt_dir = wandb_run_id(trainer), checkpoint_dir(trainer)
            if run_id and ckpt_dir is not None:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                (ckpt_dir / WANDB_ID_FILE).write_text(run_id + "\n")


class LinkedModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is a relative symlink to the top-k checkpoint saved at the same
    step, instead of a second copy of the same weights (a TFN checkpoint is 113 MB): at an epoch that improves
    the monitor, ``epoch_XXX.ckpt`` is written once and ``last.ckpt`` links to it; at an epoch that does not,
    ``last.ckpt`` is written as a file (it is the resume point, newer than the best). Unlike Lightning's
    ``save_last="link"``, ``last.ckpt`` always holds the newest epoch. A link is never written through."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_last"] = "link" if kwargs.get("save_last", True) else False
        super().__init__(*args, **kwargs)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if not self.save_last:
            return
        last = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        saved = self._last_checkpoint_saved
        fresh = (
            bool(saved)
            and self._last_global_step_saved == trainer.global_step
            and self.save_top_k != 0
            and os.path.abspath(saved) != os.path.abspath(last)
            and os.path.isfile(saved)
        )
        if not fresh:
            if trainer.is_global_zero and os.path.islink(last):
                os.remove(last)  # torch.save would write through the link into the best checkpoint
            previous, self.last_model_path = self.last_model_path, last
            self._save_checkpoint(trainer, last)
            if previous and self._should_remove_checkpoint(trainer, previous, last):
                self._remove_checkpoint(trainer, previous)
            return
        super()._save_last_checkpoint(trainer, monitor_candidates)


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
        super().__init__(
            dirpath=dirpath,
            every_n_train_steps=every_n_train_steps,
            save_top_k=0,
            save_last=True,
            monitor=None,
        )


class SimulatedPreemption(pl.Callback):
    """Kill this process (SIGKILL, no clean-up, like a preempted job) when a training batch starts at
    ``global_step >= at_step``. Only for testing resume: ``+callbacks.preempt._target_=...SimulatedPreemption``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = int(at_step)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.at_step:
            log.warning(
                "SimulatedPreemption: killing pid %d at global_step %d", os.getpid(), trainer.global_step
            )
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


# -- refuse a resume that changes the run -------------------------------------------------------------------------
DATA_FREE_KEYS = ("num_workers", "pin_memory", "persistent_workers")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def run_differences(stored: Any, cfg: Any) -> list[str]:
    """``key: stored -> new`` for every model/reg key and every data key (but loader settings) that differs."""
    from omegaconf import OmegaConf

    def part(c: Any, k: str) -> dict[str, Any]:
        v = c.get(k) if c is not None else None
        if v is None:
            return {}
        v = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        return _flat(v, f"{k}.") if isinstance(v, dict) else {k: v}

    diffs = []
    for group in ("model", "data", "reg"):
        a, b = part(stored, group), part(cfg, group)
        for key in sorted(set(a) | set(b)):
            if group == "data" and key.split(".")[-1] in DATA_FREE_KEYS:
                continue
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                diffs.append(f"{key}: {a.get(key, '<absent>')} -> {b.get(key, '<absent>')}")
    return diffs


def find_resume_checkpoint(ckpt: Any, run_dir: str | Path) -> str | None:
    """The checkpoint ``ckpt_path`` names (``last``/``auto``: the newest ``last*.ckpt`` under ``run_dir``)."""
    if ckpt in (None, "", "null"):
        return None
    if ckpt in ("last", "auto"):
        cands = sorted(Path(run_dir).glob("**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
        return str(cands[-1]) if cands else None
    return str(ckpt) if Path(str(ckpt)).is_file() else None


def check_resume(cfg: Any, run_dir: str | Path) -> None:
    """Raise a one-line :class:`ConfigError` if ``cfg`` (with ``ckpt_path`` set) changes the model, data or
    plug-ins of the run stored in the checkpoint it resumes."""
    path = find_resume_checkpoint(cfg.get("ckpt_path"), run_dir)
    if path is None:
        return
    from mmfusion.evaluation.checkpoints import read_checkpoint

    _, stored = read_checkpoint(path)
    diffs = run_differences(stored, cfg)
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ConfigError(
            f"ckpt_path={cfg.get('ckpt_path')}: this config changes the run stored in {path}: "
            f"{'; '.join(diffs[:3])}{more}; resume with the run's own model/data/reg overrides "
            "(see its .hydra/overrides.yaml), or drop ckpt_path to start a new run"
        )


class ResumeGuard(HydraCallback):
    """Hydra callback: :func:`check_resume` before the job starts (and before Hydra overwrites the run's
    ``.hydra/`` files); one line on stderr and exit 2 when the resume would change the run."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from mmfusion.errors import MMFusionError

        if config.get("ckpt_path") in (None, "", "null") or "model" not in config:
            return
        try:
            check_resume(config, str(config.hydra.run.dir))
        except MMFusionError as e:
            import sys

            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
