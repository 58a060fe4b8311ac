"""Sentiment baselines on real CMU-MOSI utterance features: ``experiment=mosi_<model>`` over seeds, mean +- std.

Runs in-process through the config system (checkpoint selected on validation MAE, tested once) and writes
``<out>.json`` and a Markdown table ``<out>.md`` (test split, bc-LSTM protocol; not comparable with published
numbers on the standard folds, see shared/data/README.md).

    python scripts/results_models.py --seeds 1,2,3 --out docs/results/models_mosi_utterance
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
    p.add_argument("--models", default="ef_lstm,tfn,lfn,mfn,magbert")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--extra", default="", help="extra overrides for every run, comma-separated")
    p.add_argument("--magbert-extra", default="", help="extra overrides for MAG-BERT runs, comma-separated")
    p.add_argument("--out", default="docs/results/models_mosi_utterance")
    p.add_argument(
        "--merge", action="store_true", help="replace only these models' rows in an existing <out>.json"
    )
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.models.split(","):
            for s in a.seeds.split(","):
                ov = [f"experiment=mosi_{m}", f"seed={s}", "logger=none", "trainer.enable_progress_bar=false"]
                ov += [o for o in a.extra.split(",") if o]
                if m == "magbert":
                    ov += [o for o in a.magbert_extra.split(",") if o]
                result, _ = train(compose_train_cfg(ov, f"{tmp}/{m}_{s}"))
                rows.append(
                    {
                        "model": m,
                        "seed": int(s),
                        "overrides": ov[:2] + ov[4:],
                        "val": result["val"],
                        "test": result["test"],
                    }
                )
                print(
                    json.dumps({"model": m, "seed": s, **{k: round(result["test"][k], 4) for k in KEYS}}),
                    flush=True,
                )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ran = a.models.split(",")
    if a.merge and out.with_suffix(".json").is_file():
        kept = [r for r in json.loads(out.with_suffix(".json").read_text()) if r["model"] not in ran]
        rows = kept + rows
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    lines = [
        "CMU-MOSI utterance features (bc-LSTM split), test, mean +- std (population, ddof=0) over seeds "
        + a.seeds,
        "",
        "| model | " + " | ".join(KEYS) + " |",
        "|---|" + "---|" * len(KEYS),
    ]
    for m in dict.fromkeys(x["model"] for x in rows):
        r = [x["test"] for x in rows if x["model"] == m]
        cells = [f"{np.mean([x[k] for x in r]):.3f} +- {np.std([x[k] for x in r]):.3f}" for k in KEYS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
