"""easy-VQA results table: ``experiment=easyvqa_mcan`` with reg in none|cont_softmax|cont_sparsemax|mca over seeds.

Each run is ``python train.py experiment=easyvqa_mcan reg=<reg> seed=<seed>`` in its own folder; the test metrics
of the checkpoint selected on validation (``val/vqa_acc``) and the wall time are appended to
``docs/results/easyvqa_runs.jsonl``; the table (mean +- std over the finished seeds) goes to
``docs/results/easyvqa.md`` and ``.json``. Runs already in the jsonl are skipped (resumable).

    nice -n 10 python scripts/easyvqa_results.py --seeds 0 1 2 --jobs 2
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

ROOT = ROOT_DIR  # the one root locator (MMFUSION_ROOT overrides it)
OUT = ROOT / "docs" / "results"
REGS = ("none", "cont_softmax", "cont_sparsemax", "mca")


def run_one(reg: str, seed: int, run_root: Path, extra: list[str]) -> dict:
    run_dir = run_root / f"{reg}_s{seed}"
    cmd = [
        sys.executable,
        "train.py",
        "experiment=easyvqa_mcan",
        f"reg={reg}",
        f"seed={seed}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    (run_root / f"{reg}_s{seed}.log").write_text(proc.stdout[-20000:] + "\n" + proc.stderr[-20000:])
    row = {
        "reg": reg,
        "seed": seed,
        "wall_s": round(wall, 1),
        "returncode": proc.returncode,
        "cmd": " ".join(cmd[1:]),
    }
    mfile = run_dir / "metrics.json"
    if proc.returncode == 0 and mfile.is_file():
        m = json.loads(mfile.read_text())
        row["test"] = m.get("test", {})
        row["val"] = m.get("val", m.get("best_val", {}))
    return row


def table(rows: list[dict]) -> tuple[str, dict]:
    keys = ["vqa_acc", "vqa_acc_yesno", "vqa_acc_shape", "vqa_acc_color"]
    summary: dict[str, dict] = {}
    lines = [
        "| reg | seeds | "
        + " | ".join(f"test {k}" for k in keys)
        + " | test vqa_acc per seed | wall time / run |",
        "|---|---|" + "---|" * len(keys) + "---|---|",
    ]
    for reg in REGS:
        ok = [r for r in rows if r["reg"] == reg and r.get("test")]
        if not ok:
            continue
        cells, s = [], {"seeds": [r["seed"] for r in ok]}
        for k in keys:
            v = np.array([r["test"].get(k, np.nan) for r in ok], dtype=float)
            sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            s[k] = {"mean": float(v.mean()), "std": sd, "values": v.tolist()}
            cells.append(f"{v.mean():.2f} ± {sd:.2f}" if len(v) > 1 else f"{v.mean():.2f}")
        wall = np.mean([r["wall_s"] for r in ok]) / 60
        s["wall_min"] = float(wall)
        summary[reg] = s
        per_seed = ", ".join(f"{r['seed']}: {r['test']['vqa_acc']:.2f}" for r in ok)
        lines.append(f"| {reg} | {len(ok)} | " + " | ".join(cells) + f" | {per_seed} | {wall:.0f} min |")
    return "\n".join(lines) + "\n", summary


def write_table(jl: Path) -> str:
    """easyvqa.{md,json} from every run in the jsonl; returns the Markdown."""
    md, summary = table([json.loads(line) for line in jl.read_text().splitlines()])
    (OUT / "easyvqa.md").write_text(md)
    (OUT / "easyvqa.json").write_text(json.dumps(summary, indent=1))
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--table-only", action="store_true", help="rewrite easyvqa.{md,json} from the jsonl, run nothing"
    )
    ap.add_argument("--regs", nargs="+", default=list(REGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--run-root", default=str(ROOT / "outputs" / "easyvqa_results"))
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    run_root = Path(args.run_root)
    run_root.mkdir(parents=True, exist_ok=True)
    jl = OUT / "easyvqa_runs.jsonl"
    if args.table_only:
        print(write_table(jl))
        return 0
    done = (
        {(r["reg"], r["seed"]) for r in map(json.loads, jl.read_text().splitlines())}
        if jl.is_file()
        else set()
    )
    todo = [(s, r) for s in args.seeds for r in args.regs if (r, s) not in done]  # seed-major: all regs first

    def work(item):
        seed, reg = item
        row = run_one(reg, seed, run_root, args.extra)
        with jl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        write_table(jl)
        print(
            f"{reg} seed {seed}: rc={row['returncode']} {row.get('test', {}).get('vqa_acc')} "
            f"({row['wall_s']:.0f}s)",
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        list(ex.map(work, todo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
