"""Experiment 1 (Werenne 2019, Sect. 5.1, Table 1): tied DAEs with 8 hidden units on 2-D manifolds.

For each manifold: the reconstruction field ``r(m) - m`` (= -grad V), the potential energy (shown as
``V' = V - V_min + e``, Eq. 13, on a log colour scale) and the reconstruction norm ``||r(m) - m||`` (log scale) on a
grid; plus the mean potential on the manifold (held-out noisy samples) vs off it (grid points farther than
``off_distance`` from the noiseless curve) and the ROC-AUC of V separating the two. The figure shows V minus its
grid minimum (V is defined up to a constant; the thesis plots it on a log scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mmfusion.data.manifolds import Manifolds, distance_to_curve
from mmfusion.emma.dae import TiedDAE, fit_dae
from mmfusion.emma.energy import grad_potential, potential


@dataclass
class ManifoldResult:
    kind: str
    dae: TiedDAE
    train: np.ndarray
    grid_x: np.ndarray
    grid_y: np.ndarray
    field: np.ndarray  # (G, G, 2): r(m) - m
    potential: np.ndarray  # (G, G): V
    v_min: float  # lowest training V (Eq. 13's V_min)
    stats: dict[str, Any]


def run_manifold(
    data: Manifolds,
    kind: str,
    *,
    hidden: int = 8,
    noise_std: float = 0.05,
    epochs: int = 600,
    batch_size: int = 256,
    lr: float = 3e-2,
    grid: int = 41,
    off_distance: float = 0.3,
    seed: int = 0,
) -> ManifoldResult:
    torch.manual_seed(seed)
    train = data.sample(kind, "train")
    test = data.sample(kind, "test")
    dae, rep = fit_dae(
        torch.from_numpy(train),
        hidden,
        noise_std,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        standardize=False,
        seed=seed,
    )
    e = data.extent
    gx, gy = np.meshgrid(np.linspace(-e, e, grid), np.linspace(-e, e, grid))
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
    with torch.no_grad():
        v_grid = potential(dae, pts).numpy()
        field = (-grad_potential(dae, pts)).numpy()  # r(m) - m
        v_train = potential(dae, torch.from_numpy(train)).numpy()
        v_test = potential(dae, torch.from_numpy(test)).numpy()
    dist = distance_to_curve(kind, pts.numpy())
    off = v_grid[dist > off_distance]
    scores = np.concatenate([v_test, off])
    labels = np.concatenate([np.zeros(len(v_test)), np.ones(len(off))])
    stats = {
        "hidden": hidden,
        "noise_std": noise_std,
        "epochs": epochs,
        "n_train": len(train),
        "final_train_loss": rep.train_loss,
        "fit_seconds": rep.seconds,
        "mean_potential_on": float(v_test.mean()),
        "mean_potential_off": float(off.mean()),
        "n_off_points": int(len(off)),
        "off_distance": off_distance,
        "auc_on_vs_off": float(roc_auc_score(labels, scores)),
        "mean_recon_norm_on": float(
            np.linalg.norm((-grad_potential(dae, torch.from_numpy(test))).detach().numpy(), axis=1).mean()
        ),
        "mean_recon_norm_off": float(np.linalg.norm(field, axis=1)[dist > off_distance].mean()),
    }
    return ManifoldResult(
        kind,
        dae,
        train,
        gx,
        gy,
        field.reshape(grid, grid, 2),
        v_grid.reshape(grid, grid),
        float(v_train.min()),
        stats,
    )


def plot_results(results: list[ManifoldResult], path: str) -> None:
    """Table 1 of the seed: one row per manifold; field, potential (log), reconstruction norm (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(len(results), 3, figsize=(12, 3.8 * len(results)), squeeze=False)
    for row, r in zip(axes, results):
        sub = slice(None, None, 2)
        row[0].quiver(
            r.grid_x[sub, sub],
            r.grid_y[sub, sub],
            r.field[sub, sub, 0],
            r.field[sub, sub, 1],
            angles="xy",
            color="k",
            width=0.003,
        )
        row[0].scatter(r.train[:400, 0], r.train[:400, 1], s=2, c="tab:red", alpha=0.5)
        row[0].set_title(f"{r.kind}: reconstruction field r(m) - m")
        span = float(r.potential.max() - r.potential.min())
        vp = r.potential - r.potential.min() + 1e-3 * span  # V up to a constant, on a log colour scale
        im = row[1].pcolormesh(
            r.grid_x, r.grid_y, vp, norm=LogNorm(vmin=vp.min(), vmax=vp.max()), shading="auto", cmap="viridis"
        )
        row[1].set_title("potential V - min V (log)")
        fig.colorbar(im, ax=row[1])
        norm = np.linalg.norm(r.field, axis=-1) + 1e-12
        im = row[2].pcolormesh(
            r.grid_x,
            r.grid_y,
            norm,
            norm=LogNorm(vmin=norm.min(), vmax=norm.max()),
            shading="auto",
            cmap="magma",
        )
        row[2].set_title("reconstruction norm ||r(m) - m|| (log)")
        fig.colorbar(im, ax=row[2])
        for ax in row:
            ax.set_aspect("equal")
            ax.set_xlim(r.grid_x.min(), r.grid_x.max())
            ax.set_ylim(r.grid_y.min(), r.grid_y.max())
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
