#!/usr/bin/env python
"""EMMA robustness table: baseline vs control vs EMMA, clean / noised / missing modality, mean ± std over seeds.

For each (model, data, seed) it runs ``train.py experiment=emma_pipeline stage.control=true`` (baseline ->
DAE pre-training -> EMMA fine-tuning, plus the control: the same fine-tuning with injected corruptions but
without EMMA) and aggregates the ``metrics.json`` files:

    python scripts/emma_robustness.py --models ef_lstm --data synthetic --seeds 0,1,2 \\
        --extra trainer.max_epochs=10 stage.finetune.max_epochs=8
    python scripts/emma_robustness.py --aggregate-only          # re-build the table from existing runs

Writes docs/results/emma_robustness.json and docs/results/emma_robustness.md. Runs are under
outputs/emma_robustness/<model>_<data>_s<seed>/ (skipped if their metrics.json exists).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mmfusion.utils.runtime import ROOT_DIR

ROOT = ROOT_DIR  # the one root locator (MMFUSION_ROOT overrides it)
RUNS = ROOT / "outputs" / "emma_robustness"
ROWS = ("baseline", "control", "emma")


def run_one(model: str, data: str, seed: int, extra: list[str]) -> Path:
    out = RUNS / f"{model}_{data}_s{seed}"
    if (out / "metrics.json").is_file():
        return out
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=emma_pipeline",
        f"model={model}",
        f"data={data}",
        f"seed={seed}",
        "stage.control=true",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={out}",
        *extra,
    ]
    t0 = time.time()
    res = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    if res.returncode != 0:
        print(res.stdout[-2000:], res.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"run failed: {' '.join(cmd)}")
    print(f"{model} {data} seed {seed}: {time.time() - t0:.0f}s", flush=True)
    return out


def aggregate(dirs: list[Path]) -> dict:
    groups: dict[str, list[dict]] = {}
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        name = d.name.rsplit("_s", 1)[0]
        groups.setdefault(name, []).append(m)
    table = {}
    for name, runs in sorted(groups.items()):
        metric = runs[0]["finetune"]["metric"]
        cols = list(runs[0]["summary"]["baseline"])
        entry = {"metric": metric, "n_seeds": len(runs), "columns": cols, "rows": {}, "alpha": {}}
        for row in ROWS:
            if row not in runs[0]["summary"]:
                continue
            vals = {c: [r["summary"][row][c] for r in runs] for c in cols}
            entry["rows"][row] = {
                c: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                for c, v in vals.items()
            }
        rob = [r["finetune"]["robustness"]["emma"] for r in runs]
        for spec in rob[0]:
            if "alpha" in rob[0][spec]:
                entry["alpha"][spec] = {
                    m: float(np.mean([r[spec]["alpha"][m] for r in rob])) for m in rob[0][spec]["alpha"]
                }
        table[name] = entry
    return table


def markdown(table: dict, extra: list[str]) -> str:
    lines = [
        "# EMMA robustness (test split; mean ± std over seeds)",
        "",
        f"Command per seed: `train.py experiment=emma_pipeline model=<m> data=<d> seed=<s> stage.control=true "
        f"{' '.join(extra)}`.",
        "baseline = reg=none model; control = baseline fine-tuned with the same injected "
        "corruptions, no EMMA; emma = EMMA inserted and fine-tuned the same way.",
        "",
    ]
    for name, e in table.items():
        lines += [
            f"## {name} ({e['n_seeds']} seeds, {e['metric']}; lower is better)"
            if e["metric"] == "MAE"
            else f"## {name} ({e['n_seeds']} seeds, {e['metric']})",
            "",
            "| model | " + " | ".join(e["columns"]) + " |",
            "|---|" + "---|" * len(e["columns"]),
        ]
        for row, vals in e["rows"].items():
            lines.append(
                f"| {row} | "
                + " | ".join(f"{vals[c]['mean']:.3f} ± {vals[c]['std']:.3f}" for c in e["columns"])
                + " |"
            )
        if e["alpha"]:
            mods = list(next(iter(e["alpha"].values())))
            lines += [
                "",
                "EMMA importance weights α (mean over test samples and seeds):",
                "",
                "| condition | " + " | ".join(mods) + " |",
                "|---|" + "---|" * len(mods),
            ]
            for spec, a in e["alpha"].items():
                lines.append(f"| {spec} | " + " | ".join(f"{a[m]:.3f}" for m in mods) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ef_lstm")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for every run")
    ap.add_argument("--aggregate-only", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs/results/emma_robustness"))
    args = ap.parse_args(argv)
    if args.aggregate_only:
        dirs = sorted(p.parent for p in RUNS.glob("*/metrics.json"))
    else:
        dirs = [
            run_one(m, d, int(s), args.extra)
            for m in args.models.split(",")
            for d in args.data.split(",")
            for s in args.seeds.split(",")
        ]
    if not dirs:
        print("no runs found", file=sys.stderr)
        return 2
    table = aggregate(dirs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(
        json.dumps({"extra_overrides": args.extra, "table": table}, indent=2) + "\n"
    )
    Path(args.out + ".md").write_text(markdown(table, args.extra))
    print(markdown(table, args.extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
