#!/usr/bin/env python
"""Benchmarks -> JSON. ``python scripts/benchmark.py --suite core --models ef_lstm --regs none --out f.json``.

Suites: ``core`` (training step of any model x plug-in; ``mmfusion.bench.train_step``) and every module
``mmfusion.bench.<suite>`` exposing ``run(args) -> list[dict]`` (models, plugins, attention, emma, data, ...).
Each row holds the median time of repeated steps after warm-up, samples/s and peak memory; the file also records
the environment (torch version, threads, device).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

from mmfusion.bench.core import environment


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--suite", nargs="+", default=["core"], help="core and/or module names under mmfusion.bench"
    )
    p.add_argument("--models", nargs="+", default=["ef_lstm"])
    p.add_argument(
        "--regs", nargs="+", default=["none"], help="plug-ins, '+'-joined to stack, 'none' for baseline"
    )
    p.add_argument("--shapes", nargs="+", default=["mosi"], help="mosi, mosei, mosi_bert, mosei_bert")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default="outputs/benchmark.json")
    args, extra = p.parse_known_args(argv)
    args.extra = extra
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for suite in args.suite:
        name = "train_step" if suite == "core" else suite
        try:
            mod = importlib.import_module(f"mmfusion.bench.{name}")
        except ModuleNotFoundError:
            print(
                f"error: unknown benchmark suite {suite!r} (no module mmfusion.bench.{name})", file=sys.stderr
            )
            return 2
        rows.extend(mod.run(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"environment": environment(), "args": {k: v for k, v in vars(args).items()}, "rows": rows},
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
