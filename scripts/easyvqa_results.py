"""easy-VQA results table: an ``experiment=easyvqa_mcan*`` recipe with reg in none|cont_softmax|cont_sparsemax|mca
over seeds.

Each run is ``python train.py experiment=<recipe> reg=<reg> seed=<seed>`` in its own folder; the test metrics of
the checkpoint selected on validation (``val/vqa_acc``), the validation metrics of that checkpoint and the wall
time are appended to a JSONL (default ``docs/results/easyvqa_runs.jsonl``); the table (mean +- std over the
finished seeds, one block per recipe) goes to ``<table>.md`` and ``.json``. Runs already in the JSONL are skipped
(resumable). Several recipes in one call share one pool of workers; :func:`select_recipe` then picks the recipe
by validation accuracy only (the test columns are never looked at for that).

    nice -n 10 python scripts/easyvqa_results.py --seeds 0 1 2 --jobs 2                  # CPU, the default recipe
    python scripts/easyvqa_results.py --experiment easyvqa_mcan easyvqa_mcan_deep --device cuda --jobs 12 \
        --jsonl runs.jsonl --table out/easyvqa --keep-ckpt out/ckpt --deadline-min 8   # a GPU campaign
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mmfusion.utils.runtime import ROOT_DIR
from mmfusion.utils.safe_load import load_checkpoint

ROOT = ROOT_DIR  # the one root locator (MMFUSION_ROOT overrides it)
OUT = ROOT / "docs" / "results"
REGS = ("none", "cont_softmax", "cont_sparsemax", "mca")
DEFAULT_RECIPE = "easyvqa_mcan"
KEYS = ("vqa_acc", "vqa_acc_yesno", "vqa_acc_shape", "vqa_acc_color")


def recipe_of(row: dict) -> str:
    return row.get("recipe", DEFAULT_RECIPE)  # rows written before recipes were named ran the default


def run_one(
    recipe: str,
    reg: str,
    seed: int,
    run_root: Path,
    extra: list[str],
    device: str = "cpu",
    threads: int = 1,
    timeout_s: float | None = None,
) -> dict:
    run_dir = run_root / f"{recipe}_{reg}_s{seed}"
    cmd = [
        sys.executable,
        "train.py",
        f"experiment={recipe}",
        f"reg={reg}",
        f"seed={seed}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *(["trainer.accelerator=gpu"] if device == "cuda" else []),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.time()
    row = {"recipe": recipe, "reg": reg, "seed": seed, "device": device, "cmd": " ".join(cmd[1:])}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, err, rc = str(e.stdout or ""), str(e.stderr or ""), "timeout"
    row["wall_s"] = round(time.time() - t0, 1)
    row["returncode"] = rc
    (run_root / f"{recipe}_{reg}_s{seed}.log").write_text(str(out)[-20000:] + "\n" + str(err)[-20000:])
    mfile = run_dir / "metrics.json"
    if rc == 0 and mfile.is_file():
        m = json.loads(mfile.read_text())
        row["test"] = m.get("test", {})
        row["val"] = m.get("val", m.get("best_val", {}))
        row["best_ckpt"] = m.get("best_ckpt") or next(
            (str(p) for p in sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))), None
        )
    return row


def keep_weights(row: dict, folder: Path) -> None:
    """Copy the selected checkpoint without optimiser/loop state (weights + run config: enough for
    ``mmfusion.evaluation.checkpoints.load_trained``), as ``<recipe>_<reg>_s<seed>.ckpt``."""
    import torch

    if not row.get("best_ckpt"):
        return
    ckpt = load_checkpoint(row["best_ckpt"], "best checkpoint")
    keep = {k: ckpt[k] for k in ("state_dict", "mmfusion_cfg", "epoch", "global_step") if k in ckpt}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(keep, folder / f"{row['recipe']}_{row['reg']}_s{row['seed']}.ckpt")


def table(rows: list[dict]) -> tuple[str, dict]:
    summary: dict[str, dict] = {}
    lines = [
        "| recipe | reg | seeds | "
        + " | ".join(f"test {k}" for k in KEYS)
        + " | val vqa_acc (min) | test vqa_acc per seed | wall time / run |",
        "|---|---|---|" + "---|" * len(KEYS) + "---|---|---|",
    ]
    recipes = list(dict.fromkeys(recipe_of(r) for r in rows))
    for recipe in recipes:
        for reg in REGS:
            ok = [r for r in rows if recipe_of(r) == recipe and r["reg"] == reg and r.get("test")]
            if not ok:
                continue
            ok.sort(key=lambda r: r["seed"])
            cells, s = (
                [],
                {"seeds": [r["seed"] for r in ok], "device": sorted({r.get("device", "cpu") for r in ok})},
            )
            for k in KEYS:
                v = np.array([r["test"].get(k, np.nan) for r in ok], dtype=float)
                sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
                s[k] = {"mean": float(v.mean()), "std": sd, "values": v.tolist()}
                cells.append(f"{v.mean():.2f} ± {sd:.2f}" if len(v) > 1 else f"{v.mean():.2f}")
            val = [r.get("val", {}).get("vqa_acc", float("nan")) for r in ok]
            s["val_vqa_acc"] = val
            wall = np.mean([r["wall_s"] for r in ok]) / 60
            s["wall_min"] = float(wall)
            summary.setdefault(recipe, {})[reg] = s
            per_seed = ", ".join(f"{r['seed']}: {r['test']['vqa_acc']:.2f}" for r in ok)
            lines.append(
                f"| {recipe} | {reg} | {len(ok)} | "
                + " | ".join(cells)
                + f" | {min(val):.2f} | {per_seed} | {wall:.1f} min |"
            )
    return "\n".join(lines) + "\n", summary


def select_recipe(rows: list[dict], seeds: list[int]) -> str | None:
    """The recipe whose WORST validation accuracy over every reg x seed is highest, among the recipes that
    finished all of them (the goal is every type on every seed; test metrics play no part)."""
    best, best_val = None, -1.0
    for recipe in dict.fromkeys(recipe_of(r) for r in rows):
        val = {
            (r["reg"], r["seed"]): r["val"]["vqa_acc"]
            for r in rows
            if recipe_of(r) == recipe and r.get("val", {}).get("vqa_acc") is not None
        }
        if not all((reg, s) in val for reg in REGS for s in seeds):
            continue
        worst = min(val[(reg, s)] for reg in REGS for s in seeds)
        if worst > best_val:
            best, best_val = recipe, worst
    return best


def write_table(jl: Path, out: Path, seeds: list[int] | None = None) -> str:
    """``<out>.md`` / ``<out>.json`` from every run in the jsonl; returns the Markdown."""
    rows = [json.loads(line) for line in jl.read_text().splitlines() if line.strip()]
    md, summary = table(rows)
    if seeds is not None:
        summary["selected_on_validation"] = select_recipe(rows, seeds)
        md += f"\nrecipe selected on validation (worst reg x seed): {summary['selected_on_validation']}\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from the jsonl, run nothing")
    ap.add_argument("--experiment", nargs="+", default=[DEFAULT_RECIPE], help="recipes (experiment configs)")
    ap.add_argument("--regs", nargs="+", default=list(REGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per run")
    ap.add_argument("--run-root", default=str(ROOT / "outputs" / "easyvqa_results"))
    ap.add_argument("--jsonl", default=str(OUT / "easyvqa_runs.jsonl"))
    ap.add_argument("--table", default=str(OUT / "easyvqa"), help="table path without suffix (.md, .json)")
    ap.add_argument("--keep-ckpt", default=None, help="folder for weights-only copies of the selected ckpts")
    ap.add_argument("--deadline-min", type=float, default=None, help="stop (and kill) runs after this long")
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    args = ap.parse_args(argv)
    run_root, jl, out = Path(args.run_root), Path(args.jsonl), Path(args.table)
    run_root.mkdir(parents=True, exist_ok=True)
    jl.parent.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        print(write_table(jl, out, args.seeds))
        return 0
    rows = [json.loads(x) for x in jl.read_text().splitlines() if x.strip()] if jl.is_file() else []
    done = {(recipe_of(r), r["reg"], r["seed"]) for r in rows if r.get("test")}
    todo = [
        (e, s, r)
        for e in args.experiment
        for s in args.seeds
        for r in args.regs
        if (e, r, s) not in done  # recipe-major, then seed-major: a recipe's runs finish together
    ]
    t_end = time.time() + 60 * args.deadline_min if args.deadline_min else None

    def work(item):
        recipe, seed, reg = item
        left = None if t_end is None else t_end - time.time()
        if left is not None and left < 30:
            return
        row = run_one(recipe, reg, seed, run_root, args.extra, args.device, args.threads, left)
        if args.keep_ckpt:
            keep_weights(row, Path(args.keep_ckpt))
        with jl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        write_table(jl, out, args.seeds)
        print(
            f"{recipe} {reg} seed {seed}: rc={row['returncode']} val {row.get('val', {}).get('vqa_acc')} "
            f"test {row.get('test', {}).get('vqa_acc')} ({row['wall_s']:.0f}s)",
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        list(ex.map(work, todo))
    if jl.is_file():
        print(write_table(jl, out, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
