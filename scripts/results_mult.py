"""MulT on real CMU-MOSI utterance features (``experiment=mosi_mult``) over seeds; resumable.

Each finished seed is appended as one JSON line to ``<out>.jsonl`` (seeds already there are skipped), then
``<out>.md`` is rewritten from all lines: test split, checkpoint selected on validation MAE, mean +- population
std (ddof 0), bc-LSTM protocol (not comparable with published numbers on the standard folds).

    OMP_NUM_THREADS=1 python scripts/results_mult.py --seeds 1,2,3,4,5 --out docs/results/models_mult_mosi_utterance
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from mmfusion.train import train
from mmfusion.utils.runtime import compose_train_cfg

KEYS = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Mult_acc_7", "MAE", "Corr"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--extra", default="", help="extra overrides for every run, comma-separated")
    p.add_argument("--out", default="docs/results/models_mult_mosi_utterance")
    a = p.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    extra = [o for o in a.extra.split(",") if o]
    done = set()
    if jsonl.is_file():
        done = {(r["seed"], tuple(r["extra"])) for r in map(json.loads, jsonl.read_text().splitlines()) if r}
    for s in (int(x) for x in a.seeds.split(",")):
        if (s, tuple(extra)) in done:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ov = [
                "experiment=mosi_mult",
                f"seed={s}",
                "logger=none",
                "trainer.enable_progress_bar=false",
                *extra,
            ]
            result, _ = train(compose_train_cfg(ov, tmp))
        row = {
            "model": "mult",
            "data": "mosi_utterance",
            "seed": s,
            "extra": extra,
            "selection": result["selection"],
            "val": result["val"],
            "test": result["test"],
        }
        with jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({"seed": s, **{k: round(result["test"][k], 4) for k in KEYS}}), flush=True)
    rows = [json.loads(x) for x in jsonl.read_text().splitlines() if x]
    rows = [r for r in rows if r["extra"] == extra]
    seeds = ",".join(str(r["seed"]) for r in rows)
    lines = [
        f"MulT (`experiment=mosi_mult`{', ' + ' '.join(extra) if extra else ''}) on CMU-MOSI utterance features "
        f"(bc-LSTM split), test split, checkpoint selected on validation MAE; mean +- std (population, ddof=0) "
        f"over seeds {seeds}",
        "",
        "| split | " + " | ".join(KEYS) + " |",
        "|---|" + "---|" * len(KEYS),
    ]
    for split in ("val", "test"):
        cells = [
            f"{np.mean([r[split][k] for r in rows]):.3f} +- {np.std([r[split][k] for r in rows]):.3f}"
            for k in KEYS
        ]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    lines += ["", "| seed | " + " | ".join(f"test {k}" for k in KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for r in rows:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r['test'][k]:.4f}" for k in KEYS) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
