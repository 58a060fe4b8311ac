"""Training diagnostics for W&B / TensorBoard / CSV: gradient norms per epoch, the loss plug-ins' gradient
influence, and predicted-vs-true scatter.

(The resolved config is logged as hyper-parameters by ``runtime.log_run_info``; the plug-ins' own scalars go out
as ``train/reg/<name>/...`` and ``val/reg/<name>/...`` from the Lightning module.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from mmfusion.callbacks.figures import _plt, log_figure


def _sq_norms(module: torch.nn.Module, depth: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, p in module.named_parameters():
        if p.grad is None:
            continue
        key = ".".join(name.split(".")[:depth])
        out[key] = out.get(key, 0.0) + float(p.grad.detach().float().pow(2).sum())
    return out


class GradNormMonitor(pl.Callback):
    """Per-epoch mean L2 norm of the gradients (as the optimiser sees them) of the task model, total and per sub-module
    (``depth`` levels of the parameter names), and of each plug-in's parameters: ``grad_norm/<part>``.

    Norms are measured in ``on_before_optimizer_step`` of the task optimiser (optimiser 0), i.e. on the gradients
    of the one backward of the step, plug-in losses included, after any clipping.
    """

    def __init__(self, depth: int = 2) -> None:
        self.depth = int(depth)
        self._sums: dict[str, float] = {}
        self._n = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums, self._n = {}, 0

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        opts = trainer.optimizers
        if not opts or optimizer is not opts[0] and getattr(optimizer, "optimizer", None) is not opts[0]:
            return
        sq = _sq_norms(pl_module.net, self.depth)
        norms = {f"net/{k}": math.sqrt(v) for k, v in sq.items()}
        norms["net/total"] = math.sqrt(sum(sq.values()))
        for name, p in pl_module.plugins.items():
            s = _sq_norms(p, 1)
            if s:
                norms[f"reg/{name}"] = math.sqrt(sum(s.values()))
        for k, v in norms.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._n += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._n:
            pl_module.log_dict(
                {f"grad_norm/{k}": v / self._n for k, v in self._sums.items()}, on_epoch=True, on_step=False
            )


class PluginInfluence(pl.Callback):
    """Turns on the loss plug-ins' influence diagnostic: every ``every_n_steps`` training steps the module measures,
    for each plug-in term R, ``||grad R|| / ||grad L_task||`` and the cosine of the two gradients over the task
    model's parameters (one extra backward per term on those steps), logged as ``train/reg/<name>/influence`` and
    ``train/reg/<name>/cosine`` (epoch means of the measured steps). How to read it: docs/regularisers.md."""

    def __init__(self, every_n_steps: int = 20) -> None:
        if int(every_n_steps) < 0:
            raise ValueError(f"PluginInfluence every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if hasattr(pl_module, "influence_every"):
            pl_module.influence_every = self.every_n_steps


class PredictionScatter(pl.Callback):
    """Regression: scatter of predicted vs true values on the whole validation split (and on test), with the
    identity line; logged as a figure ``figures/pred_vs_true/<split>`` every ``every_n_epochs``."""

    def __init__(self, every_n_epochs: int = 1, max_points: int = 2000) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.max_points = int(max_points)
        self._buf: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"val": [], "test": []}

    def _collect(self, stage: str, pl_module: pl.LightningModule, batch: Any) -> None:
        with torch.no_grad():
            pred = pl_module.net(batch).prediction.detach().float().cpu()
        y = batch["y"].detach().float().cpu()
        if pred.ndim == 2 and pred.shape[1] == 1 and y.ndim == 1:  # regression only
            self._buf[stage].append((pred[:, 0].numpy(), y.numpy()))

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0:
            self._collect("val", pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect("test", pl_module, batch)

    def _flush(self, stage: str, trainer: pl.Trainer) -> None:
        buf, self._buf[stage] = self._buf[stage], []
        if not buf or not trainer.is_global_zero:
            return
        pred = np.concatenate([b[0] for b in buf])[: self.max_points]
        y = np.concatenate([b[1] for b in buf])[: self.max_points]
        plt = _plt()
        fig, ax = plt.subplots(figsize=(3.4, 3.4))
        ax.scatter(y, pred, s=6, alpha=0.5)
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        corr = float(np.corrcoef(pred, y)[0, 1]) if pred.std() > 0 and y.std() > 0 else float("nan")
        ax.set_title(f"{stage} (epoch {trainer.current_epoch}, r={corr:.3f})")
        log_figure(trainer, f"figures/pred_vs_true/{stage}", fig, Path(trainer.default_root_dir) / "figures")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._flush("val", trainer)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._flush("test", trainer)
