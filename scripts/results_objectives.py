"""Results table of the lecture-4.1 representation objectives (issue 17, item 7): reg in {none, contrastive, dcca,
autoencoder} x model in {ef_lstm, tfn} x data in {synthetic, mosi_utterance}, 5 seeds, clean test and ``drop_text``
(text features zeroed at test time only), at the shipped configs.

The protocol and the machinery are those of ``scripts/results_regularizers.py`` (imported: same data/model
overrides, epochs, validation-MAE checkpoint selection, Welch t-test against ``reg=none``); only the plug-in list
and the output files differ. Each finished run is appended to ``<out>/objectives_runs.jsonl`` (re-running skips
finished runs; seeds are the outermost loop, so an interrupted job leaves every configuration with the same
number of seeds), and the aggregate is written to ``<out>/objectives.json`` and ``<out>/objectives.md``.

    OMP_NUM_THREADS=1 nohup python scripts/results_objectives.py > /tmp/objectives.log 2>&1 &
    python scripts/results_objectives.py --aggregate-only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_regularizers as rr  # noqa: E402  (the shared machinery)

REGS = ["none", "contrastive", "dcca", "autoencoder"]
# ablations, e.g. --regs "autoencoder@modality_dropout=0.0,dcca@weight=0.01" (reg.<name>.<key>=<value>), are
# sorted after their plug-in in the table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--regs", default=",".join(REGS))
    p.add_argument("--models", default="ef_lstm,tfn")
    p.add_argument("--datas", default="synthetic,mosi_utterance")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--corrupt", default="drop_text")
    p.add_argument("--out", type=Path, default=rr.ROOT / "docs" / "results")
    p.add_argument("--aggregate-only", action="store_true")
    return p.parse_args(argv)


def load(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def write(out: Path, runs: list[dict], epochs: int, corrupt: str, total: int) -> str:
    agg = rr.aggregate([r for r in runs if r["epochs"] == epochs], corrupt)

    def order(r: dict) -> tuple:
        name = r["reg"].partition("@")[0]
        return r["data"], r["model"], REGS.index(name) if name in REGS else 99, r["reg"]

    agg["rows"].sort(key=order)
    agg["runs_done"], agg["runs_planned"] = sum(r["epochs"] == epochs for r in runs), total
    (out / "objectives.json").write_text(json.dumps(agg, indent=1))
    head = (
        f"Representation objectives (lecture 4.1), {epochs} epochs, checkpoint selected on validation MAE, "
        f"test split. Runs done: {agg['runs_done']}/{total}.\n\n"
    )
    md = head + rr.markdown(agg)
    (out / "objectives.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    runs_path = a.out / "objectives_runs.jsonl"
    seeds, datas, models, regs = (
        [int(s) for s in a.seeds.split(",")],
        a.datas.split(","),
        a.models.split(","),
        a.regs.split(","),
    )
    planned = {(d, m, r, s, a.epochs) for s in seeds for d in datas for m in models for r in regs}
    total = len(
        planned
        | {
            (r["data"], r["model"], r["reg"], r["seed"], r["epochs"])
            for r in load(runs_path)
            if r["epochs"] == a.epochs
        }
    )
    if not a.aggregate_only:
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
        for seed in seeds:
            for data in datas:
                for model in models:
                    for reg in regs:
                        done = {
                            (r["data"], r["model"], r["reg"], r["seed"], r["epochs"]) for r in load(runs_path)
                        }
                        if (data, model, reg, seed, a.epochs) in done:
                            continue
                        try:
                            r = rr.run_one(data, model, reg, seed, a.epochs, a.corrupt)
                        except Exception as e:  # noqa: BLE001 - report, skip, retry on the next invocation
                            print(f"FAILED {data} {model} {reg} seed={seed}: {e!r}"[:500], flush=True)
                            continue
                        with runs_path.open("a") as f:
                            f.write(json.dumps(r) + "\n")
                        print(
                            f"{data} {model} {reg} seed={seed}: MAE {r['clean']['MAE']:.3f} "
                            f"({a.corrupt} {r[a.corrupt]['MAE']:.3f}) in {r['seconds']:.0f}s",
                            flush=True,
                        )
                        write(a.out, load(runs_path), a.epochs, a.corrupt, total)
    print(write(a.out, load(runs_path), a.epochs, a.corrupt, total))


if __name__ == "__main__":
    main()
