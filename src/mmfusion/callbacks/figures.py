"""Pictures for the loggers: one function to log a matplotlib figure to every attached logger, and a callback
that collects figures from the model and the plug-ins on a fixed validation batch.

The figure hook (any of them may be absent):

* ``plugin.figures(out, batch) -> {name: Figure}`` on each plug-in (``reg``),
* ``model.figures(out, batch) -> {name: Figure}`` on the fusion model,
* built-in renderers: attention maps found in ``out.extras["attention/<pool>"]`` or in the pools' ``last_attention``
  (:func:`mmfusion.plugins.continuous_attention.attention_maps`), and EMMA's importance weights / system energy
  (``out.extras["emma/alpha"|"emma/beta"|"emma/energy"]``).

Figures go to W&B (``wandb.Image``), TensorBoard (``add_figure``) and, always, ``<run>/figures/<name>_e<epoch>.png``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def log_figure(trainer: pl.Trainer, name: str, fig: Any, out_dir: str | Path | None = None) -> Path | None:
    """Log ``fig`` under ``name`` to W&B/TensorBoard loggers and save it as PNG; closes the figure."""
    plt = _plt()
    step = int(trainer.global_step)
    path = None
    try:
        if out_dir is not None:
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
            path = Path(out_dir) / f"{safe}_e{trainer.current_epoch:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=80, bbox_inches="tight")
        for lg in trainer.loggers:
            kind = type(lg).__name__
            if kind == "WandbLogger":
                import wandb

                lg.experiment.log({name: wandb.Image(fig), "trainer/global_step": step})
            elif kind == "TensorBoardLogger":
                lg.experiment.add_figure(name, fig, global_step=step, close=False)
    finally:
        plt.close(fig)
    return path


def attention_figures(model: torch.nn.Module, out: Any) -> dict[str, Any]:
    """First sample's attention of every pool: an image for 2-D grids, a curve over time for 1-D."""
    plt = _plt()
    maps: dict[str, Any] = {}
    extras = getattr(out, "extras", {}) or {}
    for k, v in extras.items():
        if k.startswith("attention/") and isinstance(v, torch.Tensor):
            maps[k.split("/", 1)[1]] = (v, None)
    for n, pool in getattr(model, "pools", {}).items():
        att = getattr(pool, "last_attention", None)
        if n not in maps and isinstance(att, torch.Tensor):
            maps[n] = (att, getattr(pool, "grid_shape", None))
    figs = {}
    for n, (att, grid) in maps.items():
        a = att.detach().float().cpu()[0].reshape(-1)
        fig, ax = plt.subplots(figsize=(3.2, 3.0))
        if grid is not None and int(torch.tensor(grid).prod()) == a.numel():
            im = ax.imshow(a.reshape(*grid).numpy(), cmap="viridis")
            fig.colorbar(im, ax=ax)
        else:
            ax.plot(a.numpy())
            ax.set_xlabel("position")
        ax.set_title(f"attention: {n}")
        figs[f"attention/{n}"] = fig
    return figs


def emma_figures(out: Any, modalities: tuple[str, ...]) -> dict[str, Any]:
    """EMMA: importance weights alpha/beta per modality (box plots) and the system energy histogram."""
    extras = getattr(out, "extras", {}) or {}
    if "emma/alpha" not in extras:
        return {}
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
    for ax, key in zip(axes[:2], ("alpha", "beta")):
        v = extras[f"emma/{key}"].detach().float().cpu().numpy()
        ax.boxplot([v[:, i] for i in range(v.shape[1])], tick_labels=list(modalities)[: v.shape[1]])
        ax.set_title(key)
    axes[2].hist(extras["emma/energy"].detach().float().cpu().reshape(-1).numpy(), bins=20)
    axes[2].set_title("system energy")
    fig.tight_layout()
    return {"emma/weights_energy": fig}


class FigureLogger(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, run the model on the first validation batch and log the
    figures of the hook above (plug-ins', the model's, attention maps, EMMA)."""

    def __init__(self, every_n_epochs: int = 1, out_dir: str | None = None) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.out_dir = out_dir

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            batch_idx != 0
            or trainer.sanity_checking
            or not trainer.is_global_zero
            or trainer.current_epoch % self.every_n_epochs
        ):
            return
        net = pl_module.net
        with torch.no_grad():
            out = net(batch)
        figs: dict[str, Any] = {}
        sources: list[tuple[str, Any]] = [
            ("model", net),
            *[(f"reg/{n}", p) for n, p in pl_module.plugins.items()],
        ]
        for prefix, obj in sources:
            fn = getattr(obj, "figures", None)
            if callable(fn):
                got = fn(out, batch) or {}
                if isinstance(got, Mapping):
                    figs.update({f"{prefix}/{k}": f for k, f in got.items()})
        figs.update(attention_figures(net, out))
        figs.update(emma_figures(out, tuple(net.modalities)))
        out_dir = self.out_dir or str(Path(trainer.default_root_dir) / "figures")
        for name, fig in figs.items():
            log_figure(trainer, f"figures/{name}", fig, out_dir)


def _read_csv_log(csv_path: Path) -> list[dict[str, float]]:
    import csv
    import math

    rows = []
    with Path(csv_path).open(newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    continue
            if "epoch" in row and math.isfinite(row["epoch"]):
                rows.append(row)
    return rows


def per_epoch(rows: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    """Mean of ``key`` over the CSV rows of each epoch that have it (step rows average, epoch rows as is)."""
    acc: dict[int, list[float]] = {}
    for r in rows:
        if key in r:
            acc.setdefault(int(r["epoch"]), []).append(r[key])
    epochs = sorted(acc)
    return epochs, [sum(acc[e]) / len(acc[e]) for e in epochs]


def learning_curve(
    csv_path: str | Path, monitor: str | None, out_png: str | Path, mode: str = "min"
) -> Path | None:
    """``learning_curve.png`` from the CSV log (``csv/metrics.csv``): train loss (mean of the epoch's steps) and
    validation loss per epoch, and the selection metric ``monitor`` per epoch with its best epoch marked.
    Returns the PNG path, or ``None`` (and logs why) when there is no CSV log or nothing per epoch in it.

    Args:
        csv_path: the CSV logger's ``metrics.csv``.
        monitor: the selection metric (e.g. ``val/MAE``), or ``None``.
        out_png: where to write the figure.
        mode: ``min`` or ``max``: which end of ``monitor`` is best.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        log.info("no %s (logger without csv): no learning-curve figure", csv_path)
        return None
    rows = _read_csv_log(csv_path)
    train_key = next((k for k in ("train/loss_epoch", "train/loss") if any(k in r for r in rows)), None)
    series = {
        "train loss": per_epoch(rows, train_key) if train_key else ([], []),
        "val loss": per_epoch(rows, "val/loss"),
    }
    mon = per_epoch(rows, monitor) if monitor and monitor != "val/loss" else ([], [])
    if not any(e for e, _ in series.values()) and not mon[0]:
        log.info("%s has no per-epoch losses: no learning-curve figure", csv_path)
        return None
    plt = _plt()
    n = 2 if mon[0] else 1
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    ax = axes[0][0]
    for name, (e, v) in series.items():
        if e:
            ax.plot(e, v, marker="o", ms=3, label=name)
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("loss")
    if mon[0]:
        ax = axes[0][1]
        ax.plot(mon[0], mon[1], marker="o", ms=3, color="C2", label=monitor)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"selection metric: {monitor}")
        finite = [(v, e) for e, v in zip(*mon) if v == v]
        if finite:
            v, e = (max if str(mode).startswith("max") else min)(finite)
            ax.axvline(e, color="grey", ls=":", lw=1)
            ax.annotate(f"best {v:.4g} (epoch {e})", (e, v), fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def save_learning_curve(trainer: pl.Trainer, out_png: str | Path) -> Path | None:
    """Right after ``fit`` (before the final validate/test add rows): flush the CSV logger and draw
    :func:`learning_curve` with the checkpoint callback's monitor and mode."""
    from lightning.pytorch.loggers import CSVLogger

    lg = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    if lg is None or not trainer.is_global_zero:
        return None
    lg.save()
    cb = trainer.checkpoint_callback
    try:
        return learning_curve(
            lg.experiment.metrics_file_path, getattr(cb, "monitor", None), out_png, getattr(cb, "mode", "min")
        )
    except Exception as e:  # noqa: BLE001 - a figure must never fail a finished run
        log.warning("learning-curve figure not written: %s", e)
        return None
