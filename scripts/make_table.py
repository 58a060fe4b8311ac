#!/usr/bin/env python
"""Aggregate runs into a paper-style table: mean ± std over seeds, Markdown + CSV.

    python scripts/make_table.py outputs/multirun/2026-11-21/18-40-00-123456            # a multirun folder
    python scripts/make_table.py outputs/multirun/... outputs/2026-11-21/... --out docs/results/mosi
    python scripts/make_table.py wandb:<entity>/<project>:<group>                         # a W&B sweep group
    python scripts/make_table.py <folder> --published                                     # + the seeds' numbers

A run is a folder with ``metrics.json`` (written by ``train.py``) and ``.hydra/``; runs are grouped by the
``model``, ``reg`` and ``data`` choices plus every other override whose value differs between runs (except
``seed``), and aggregated over seeds (std with ddof=1; "±" is omitted for a single seed). Sentiment regression:
Acc-7, Acc-2 in both conventions (has0: negative < 0 <= positive; non0: zero labels excluded), F1 for both, MAE,
Corr; accuracies and F1 in percent. VQA: overall and per-answer-type accuracy. Other tasks: their summary keys.
``--published`` adds the seed papers' numbers (``scripts/published_results.json``) for the same (data, model,
reg), labelled with their source; the papers do not state their Acc-2 convention, shown in its own column.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmfusion.utils.report import write_csv

HERE = Path(__file__).resolve().parent
SENTIMENT = [
    ("Acc-7", "Mult_acc_7", 100),
    ("Acc-2 has0", "Has0_acc_2", 100),
    ("Acc-2 non0", "Non0_acc_2", 100),
    ("F1 has0", "Has0_F1_score", 100),
    ("F1 non0", "Non0_F1_score", 100),
    ("MAE", "MAE", 1),
    ("Corr", "Corr", 1),
]
GROUP_KEYS = ("model", "reg", "data")
IGNORED_OVERRIDES = (
    "seed",
    "hydra",
    "paths",
    "logger",
    "callbacks",
    "trainer.enable_progress_bar",
    "tags",
    "hparams_search",
    "ckpt_path",
)


class TableError(Exception):
    pass


# -- collecting runs ---------------------------------------------------------------------------------------------
def _override_items(overrides: Iterable[str]) -> dict[str, str]:
    out = {}
    for o in overrides:
        key, _, value = str(o).partition("=")
        key = key.lstrip("+~")
        if key in GROUP_KEYS or any(
            key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in IGNORED_OVERRIDES
        ):
            continue
        out[key] = value
    return out


def read_run(run_dir: Path, split: str) -> dict[str, Any] | None:
    mfile = run_dir / "metrics.json"
    if not mfile.is_file():
        return None
    metrics = json.loads(mfile.read_text()).get(split)
    if not metrics:
        return None
    hydra_dir = run_dir / ".hydra"
    choices: dict[str, Any] = {}
    overrides: list[str] = []
    seed = None
    if (hydra_dir / "hydra.yaml").is_file():
        h = yaml.safe_load((hydra_dir / "hydra.yaml").read_text())["hydra"]
        choices = h.get("runtime", {}).get("choices", {}) or {}
        overrides = list(h.get("overrides", {}).get("task", []) or [])
    if (hydra_dir / "config.yaml").is_file():
        seed = yaml.safe_load((hydra_dir / "config.yaml").read_text()).get("seed")
    return {
        "dir": str(run_dir),
        "model": str(choices.get("model", "?")),
        "reg": str(choices.get("reg", "?")),
        "data": str(choices.get("data", "?")),
        "seed": seed,
        "overrides": _override_items(overrides),
        "metrics": metrics,
    }


def collect_folder(folder: Path, split: str) -> list[dict[str, Any]]:
    if not folder.exists():
        raise TableError(f"{folder}: no such folder")
    files = [
        f for f in sorted(folder.rglob("metrics.json")) if f.parent.parent.name != "eval"
    ]  # eval.py's results
    runs = [r for f in files if (r := read_run(f.parent, split)) is not None]
    if not runs:
        raise TableError(f"{folder}: no run with metrics.json (split {split!r}) below this folder")
    return runs


def collect_wandb(spec: str, split: str) -> list[dict[str, Any]]:
    """``wandb:<entity>/<project>:<group>`` through the W&B API (needs network and a login)."""
    import wandb

    path, _, group = spec[len("wandb:") :].partition(":")
    if not path or not group:
        raise TableError(f"{spec}: expected wandb:<entity>/<project>:<group>")
    runs = []
    for r in wandb.Api().runs(path, filters={"group": group}):
        tags = dict(t.split(":", 1) for t in r.tags if ":" in t)
        metrics = {
            k.split("/", 1)[1]: v
            for k, v in r.summary.items()
            if k.startswith(f"{split}/") and isinstance(v, (int, float))
        }
        if metrics:
            runs.append(
                {
                    "dir": r.url,
                    "model": tags.get("model", "?"),
                    "reg": tags.get("reg", "?"),
                    "data": tags.get("data", "?"),
                    "seed": r.config.get("seed"),
                    "overrides": {},
                    "metrics": metrics,
                }
            )
    if not runs:
        raise TableError(f"{spec}: no run with {split}/* metrics in this group")
    return runs


# -- aggregation -------------------------------------------------------------------------------------------------
def columns_for(runs: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    keys = set.intersection(*(set(r["metrics"]) for r in runs))
    if "MAE" in keys and "Corr" in keys:
        return [c for c in SENTIMENT if c[1] in keys]
    if "vqa_acc" in keys:
        return [("VQA acc", "vqa_acc", 1)] + [
            (f"VQA {k[8:]}", k, 1) for k in sorted(keys) if k.startswith("vqa_acc_")
        ]
    return [(k, k, 1) for k in sorted(keys) if k != "loss"]


def aggregate(
    runs: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[tuple[str, str, float]], list[str]]:
    """Group runs; return rows with per-column (mean, std, n), the columns and the variant keys."""
    varying = sorted(
        {k for r in runs for k in r["overrides"] if len({str(x["overrides"].get(k)) for x in runs}) > 1}
    )
    cols = columns_for(runs)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        key = (r["model"], r["reg"], r["data"], *[str(r["overrides"].get(k, "")) for k in varying])
        groups.setdefault(key, []).append(r)
    rows = []
    for key, rs in groups.items():
        row: dict[str, Any] = {
            "model": key[0],
            "reg": key[1],
            "data": key[2],
            "variant": " ".join(f"{k}={v}" for k, v in zip(varying, key[3:])),
            "seeds": sorted((r["seed"] for r in rs), key=str),
            "n": len(rs),
            "stats": {},
        }
        for name, k, scale in cols:
            vals = np.array([float(r["metrics"][k]) * scale for r in rs], dtype=float)
            std = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
            row["stats"][name] = (float(vals.mean()), std, len(vals))
        rows.append(row)
    rows.sort(key=lambda r: (r["data"], r["model"], r["reg"], r["variant"]))
    return rows, cols, varying


def fmt(mean: float, std: float, scale: float) -> str:
    digits = 1 if scale == 100 else 3
    if math.isnan(mean):
        return "nan"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def published_rows(rows: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    pub = json.loads(path.read_text())
    have = {(r["data"], r["model"], r["reg"]) for r in rows}
    out = []
    for p in pub["rows"]:
        if (p["data"], p["model"], p["reg"]) in have:
            vals = dict(zip(pub["columns"], p["values"]))
            out.append(
                {
                    "model": p["model"],
                    "reg": p["reg"],
                    "data": p["data"],
                    "source": p["source"],
                    "paper_model": p["paper_model"],
                    "values": vals,
                }
            )
    return out


def without_published(rows: list[dict[str, Any]], path: Path) -> tuple[list[str], list[str]]:
    """(our ``data/model/reg`` groups with no published row, the ``data/model/reg`` groups the file covers)."""
    pub = json.loads(path.read_text())
    covered = sorted({f"{p['data']}/{p['model']}/{p['reg']}" for p in pub["rows"]})
    ours = sorted({f"{r['data']}/{r['model']}/{r['reg']}" for r in rows})
    return [g for g in ours if g not in covered], covered


def render(rows, cols, published=None) -> tuple[str, list[dict[str, Any]]]:
    """Markdown text and CSV records."""
    has_variant = any(r["variant"] for r in rows)
    head = ["source", "data", "model", "reg"] + (["variant"] if has_variant else []) + ["seeds"]
    names = [c[0] for c in cols]
    pub_col = bool(published)
    md_cols = head + names + (["Acc-2 (paper)"] if pub_col else [])
    lines = ["| " + " | ".join(md_cols) + " |", "|" + "|".join("---" for _ in md_cols) + "|"]
    records = []
    scale = {c[0]: c[2] for c in cols}
    for r in rows:
        cells = (
            ["ours", r["data"], r["model"], r["reg"]]
            + ([r["variant"]] if has_variant else [])
            + [str(r["n"])]
        )
        cells += [fmt(*r["stats"][n][:2], scale[n]) for n in names] + (["—"] if pub_col else [])
        lines.append("| " + " | ".join(cells) + " |")
        rec = {
            "source": "ours",
            "data": r["data"],
            "model": r["model"],
            "reg": r["reg"],
            "variant": r["variant"],
            "n_seeds": r["n"],
            "seeds": " ".join(map(str, r["seeds"])),
        }
        for n in names:
            rec[f"{n} mean"], rec[f"{n} std"] = r["stats"][n][0], r["stats"][n][1]
        records.append(rec)
    for p in published or []:
        v = p["values"]
        paper = {"Acc-7": f"{v['Acc_7']:.1f}", "MAE": f"{v['MAE']:.2f}", "Corr": f"{v['Corr']:.2f}"}
        cells = [f"published: {p['source']}", p["data"], f"{p['model']} ({p['paper_model']})", p["reg"]]
        cells += (
            ([""] if has_variant else []) + ["—"] + [paper.get(n, "—") for n in names] + [f"{v['Acc_2']:.1f}"]
        )
        lines.append("| " + " | ".join(cells) + " |")
        records.append(
            {
                "source": f"published: {p['source']}",
                "data": p["data"],
                "model": p["model"],
                "reg": p["reg"],
                "Acc-7 mean": v["Acc_7"],
                "Acc-2 (paper) mean": v["Acc_2"],
                "MAE mean": v["MAE"],
                "Corr mean": v["Corr"],
            }
        )
    return "\n".join(lines) + "\n", records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help="multirun/run folders, or wandb:<entity>/<project>:<group>")
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument(
        "--out",
        default=None,
        help="output prefix (writes <out>.md and <out>.csv); default: <first folder>/table",
    )
    ap.add_argument("--published", action="store_true", help="add the seed papers' numbers (labelled)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    try:
        runs = []
        for s in args.sources:
            runs += (
                collect_wandb(s, args.split)
                if s.startswith("wandb:")
                else collect_folder(Path(s), args.split)
            )
        rows, cols, _ = aggregate(runs)
        pub = published_rows(rows, HERE / "published_results.json") if args.published else None
        md, records = render(rows, cols, pub)
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    title = args.title or f"{args.split.upper()} split, mean ± std over seeds ({len(runs)} runs)"
    text = f"### {title}\n\n{md}"
    if pub:
        text += "\nPublished rows are copied from the papers (not re-run); their Acc-2 convention is not stated.\n"
    if args.published:
        missing, covered = without_published(rows, HERE / "published_results.json")
        if missing:
            note = (
                f"No published numbers apply to {', '.join(missing)} (data/model/reg); "
                f"scripts/published_results.json has {', '.join(covered)}."
            )
            text += f"\n{note}\n"
            print(f"--published: {note}", file=sys.stderr)
    out = (
        Path(args.out)
        if args.out
        else (Path(args.sources[0]) / "table" if not args.sources[0].startswith("wandb:") else Path("table"))
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    write_csv(out.with_suffix(".csv"), records)
    print(text)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
