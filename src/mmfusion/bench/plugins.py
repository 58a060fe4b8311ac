"""Plug-in overhead: training-step time with a loss plug-in divided by the time without it (same model, batch).

MOSI sizes (aligned 50 steps; text 300 / audio 74 / vision 47 features), batch 32. One step = forward, the
plug-in's inner steps, task + plug-in loss, backward, clipping, optimiser steps (the contract's order,
:func:`mmfusion.tasks.training_step.training_step`, the step ``FusionModule`` runs). Targets (issue 3): synergy <= 1.5x, MDM with
unroll 1 <= 1.5x, MDM time linear in ``unroll`` (we fit ``extra = a + b * unroll`` on the minima and report R^2). Steps with and
without the plug-in alternate; on CPU the ratio uses the thread's CPU time (stable on a machine shared with other
jobs; run with ``OMP_NUM_THREADS=1``), on GPU the synchronised wall time.

    python -m mmfusion.bench.plugins --models ef_lstm,tfn --out docs/results/bench_plugins.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmfusion.bench.core import environment, paired_times, random_sentiment_batch
from mmfusion.contract import FusionModel, ModelInfo, Plugin
from mmfusion.data.synthetic import MOSI_DIMS
from mmfusion.tasks.training_step import clip_by, training_step

ROOT = Path(__file__).resolve().parents[3]
REGS = ("synergy_mmd", "synergy_kl", "mdm_kl", "mdm_f", "mdm_wasserstein")


def make_model(name: str, device: str) -> FusionModel:
    cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml")
    return instantiate(cfg, input_dims=dict(MOSI_DIMS), output_dim=1).to(device)


def make_plugin(reg: str, model: FusionModel, device: str, **overrides: Any) -> tuple[Plugin, list]:
    cfg = OmegaConf.load(ROOT / "configs" / "reg" / f"{reg}.yaml")[reg]
    for k, v in overrides.items():
        cfg[k] = v
    plugin: Plugin = instantiate(cfg)
    plugin.attach(model, ModelInfo(model.modalities, dict(model.unimodal_dims), int(model.fused_dim)))
    plugin.to(device)
    return plugin, plugin.configure_optimizers()


def make_step(
    model_name: str, reg: str | None, device: str, batch: dict, **overrides: Any
) -> Callable[[], Any]:
    """One training step of ``model_name`` (+ ``reg``) on ``batch``, as a closure."""
    torch.manual_seed(0)
    model = make_model(model_name, device)
    model.train()
    plugins, opts = {}, {}
    if reg is not None:
        plugin, popts = make_plugin(reg, model, device, **overrides)
        plugin.train()
        plugins, opts = {reg: plugin}, {reg: popts}
    task_opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def l1(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(p.reshape(-1), y)

    return lambda: training_step(model, l1, plugins, batch, task_opt, opts, clip=clip_by(5.0))


def _as_list(v: Any) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` (``scripts/benchmark.py`` passes lists) -> ``["a", "b"]``."""
    items = v if isinstance(v, (list, tuple)) else [v]
    return [m for item in items for m in str(item).split(",") if m]


def run(args: Any) -> list[dict]:
    """Rows for ``scripts/benchmark.py --suite plugins`` (reads ``models``, ``device``, ``repeats``, ``warmup``,
    ``batch_sizes``/``batch_size``, ``seq_len``, ``max_unroll`` from ``args`` when present)."""
    device = getattr(args, "device", "cpu") or "cpu"
    models = _as_list(getattr(args, "models", None) or "ef_lstm,tfn")
    repeats, warmup = int(getattr(args, "repeats", 20)), int(getattr(args, "warmup", 3))
    batch_size = int(getattr(args, "batch_size", None) or (getattr(args, "batch_sizes", None) or [32])[0])
    seq_len = int(getattr(args, "seq_len", 50))
    max_unroll = int(getattr(args, "max_unroll", 4))
    batch = random_sentiment_batch(batch_size, seq_len, device)
    rows: list[dict] = []
    for model_name in models:
        base = make_step(model_name, None, device, batch)
        configs: list[tuple[str, dict]] = [(r, {}) for r in REGS]
        configs += [("mdm_kl", {"unroll": u}) for u in range(2, max_unroll + 1)]
        for reg, ov in configs:
            t = paired_times(base, make_step(model_name, reg, device, batch, **ov), repeats, warmup, device)
            unroll = ov.get("unroll", 1) if reg.startswith("mdm") else None
            # the ratio uses thread-CPU time on CPU (robust to other jobs on the machine), wall time on GPU
            kind = "cpu" if torch.device(device).type == "cpu" else "wall"
            ta, tb = t[f"base_{kind}"], t[kind]
            rows.append(
                {
                    "suite": "plugins",
                    "model": model_name,
                    "reg": reg,
                    "unroll": unroll,
                    "timing": kind,
                    "median_ms": float(np.median(tb)),
                    "base_median_ms": float(np.median(ta)),
                    "ratio": float(np.median(tb) / np.median(ta)),
                    "ratio_p25": float(np.percentile(tb / ta, 25)),
                    "ratio_p75": float(np.percentile(tb / ta, 75)),
                    # noise on a shared machine only adds time: the ratio of minima is the least disturbed
                    "ratio_min": float(tb.min() / ta.min()),
                    "min_ms": float(tb.min()),
                    "base_min_ms": float(ta.min()),
                    "wall_median_ms": float(np.median(t["wall"])),
                    "base_wall_median_ms": float(np.median(t["base_wall"])),
                    "repeats": repeats,
                    "batch": batch_size,
                    "seq_len": seq_len,
                    "device": device,
                }
            )
        # linearity of MDM in unroll: fit the extra time over the paired baseline against unroll
        pts = [
            (r["unroll"], r["min_ms"] - r["base_min_ms"])
            for r in rows
            if r["model"] == model_name and r["reg"] == "mdm_kl"
        ]
        u, t = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
        slope, icpt = np.polyfit(u, t, 1)
        r2 = 1 - ((t - (icpt + slope * u)) ** 2).sum() / max(((t - t.mean()) ** 2).sum(), 1e-12)
        rows.append(
            {
                "suite": "plugins",
                "model": model_name,
                "reg": "mdm_kl_unroll_fit",
                "slope_ms": float(slope),
                "intercept_ms": float(icpt),
                "r2": float(r2),
                "extra_ms": t.tolist(),
                "unrolls": u.tolist(),
                "device": device,
            }
        )
    env = environment()
    for r in rows:
        r["env"] = env
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="plug-in overhead benchmark")
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="ef_lstm,tfn")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=50)
    p.add_argument("--max-unroll", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "bench_plugins.json")
    args = p.parse_args(argv)
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    for r in rows:
        if "ratio" in r:
            print(
                f"{r['model']:8s} {r['reg']:16s} unroll={r['unroll']} {r['median_ms']:8.2f} ms vs "
                f"{r['base_median_ms']:8.2f} ms  x{r['ratio']:.2f} (median)  x{r['ratio_min']:.2f} (min)"
            )
        else:
            print(
                f"{r['model']:8s} MDM extra time = {r['slope_ms']:.2f} ms/unroll + {r['intercept_ms']:.2f} ms, "
                f"R^2 {r['r2']:.3f}"
            )


if __name__ == "__main__":
    main()
