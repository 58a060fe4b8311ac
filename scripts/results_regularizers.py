"""Results table of the loss plug-ins: reg x model x data, several seeds, clean test and text dropped at test time.

Every run trains with the real configs (in-process Hydra compose), selects the checkpoint on validation MAE and
tests it twice: on clean data and with ``drop_text`` (the text features zeroed at test time only). Each finished
run is appended to ``<out>/regularizers_runs.jsonl`` (re-running skips finished runs), and the aggregate is
written to ``<out>/regularizers.json`` and ``<out>/regularizers.md`` (mean +- std over seeds; Welch t-test of
each regulariser against ``reg=none`` on the same model/data/test condition); only runs with ``--epochs`` enter the
aggregate.

Each run also records the loss plug-in's gradient influence (``||grad term|| / ||grad L_task||`` and the cosine,
measured every ``--influence-every`` steps; the row holds the mean over the second half of training, i.e. after any
warm-up) and its last validation diagnostics (MDM: critic estimate and Gaussian TC probe).

    OMP_NUM_THREADS=1 nohup python scripts/results_regularizers.py --seeds 0,1,2,3,4 --epochs 3 &
    python scripts/results_regularizers.py --aggregate-only
    # the lambda sweep behind the MDM default (validation MAE selects; raw runs regularizers_sweep_runs.jsonl):
    python scripts/results_regularizers.py --name regularizers_sweep --models ef_lstm --datas synthetic \
        --seeds 0,1,2 --regs mdm_kl@weight=0.0,mdm_kl@weight=0.05,mdm_kl@weight=0.1,mdm_kl@weight=0.2,mdm_kl@weight=0.5
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REGS = ["none", "synergy_mmd", "synergy_kl", "mdm_kl", "mdm_f", "mdm_wasserstein"]
# zero-weight controls: the plug-in is built and its own networks train, nothing reaches the task loss
CONTROLS = ["mdm_kl@weight=0.0", "synergy_mmd@beta=0.0"]
METRICS = ["MAE", "Corr", "Has0_acc_2", "Mult_acc_7"]
DATA_OVERRIDES = {
    # half of MOSI's training size and 20 instead of 50 steps, to fit the shared-CPU budget (dims, valid/test as MOSI)
    "synthetic": ["data.n_train=640", "data.seq_len=20", "data.min_len=5"],
    "mosi_utterance": [],
}
MODEL_OVERRIDES = {
    # TFN's fused vector is (text_out+1)(hidden+1)^2 = 70785-dim with the default widths (9.3M parameters in the
    # post-fusion layer); the table uses narrower sub-networks (17*9*9 = 1377) to fit the CPU budget.
    "tfn": ["model.hidden=8", "model.text_out=16"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--regs", default=",".join(REGS + CONTROLS))
    p.add_argument("--models", default="ef_lstm,tfn,lfn,mfn")
    p.add_argument("--datas", default="synthetic,mosi_utterance")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--corrupt", default="drop_text")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument(
        "--name", default="regularizers", help="output files <name>_runs.jsonl, <name>.json, <name>.md"
    )
    p.add_argument("--influence-every", type=int, default=5)
    p.add_argument("--aggregate-only", action="store_true")
    return p.parse_args(argv)


def plugin_record(module: Any) -> dict[str, Any]:
    """Influence (mean over the second half of the measured steps) and the last validation diagnostics."""
    rec: dict[str, Any] = {}
    hist = module.influence_history
    half = hist[len(hist) // 2 :]
    for name in module.plugins:
        vals = {k: [r[f"{name}/{k}"] for r in half if f"{name}/{k}" in r] for k in ("influence", "cosine")}
        rec[name] = {k: float(np.mean(v)) for k, v in vals.items() if v}
        rec[name].update(module.plugin_diagnostics.get(name, {}))
        rec[name]["skipped_batches"] = int(module.skipped_batches.get(name, 0))
    return rec


def run_one(
    data: str, model: str, reg: str, seed: int, epochs: int, corrupt: str, influence_every: int = 5
) -> dict[str, Any]:
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from mmfusion.train import train
    from mmfusion.utils.runtime import compose_train_cfg

    torch.set_num_threads(1)
    out_dir = Path(tempfile.mkdtemp(prefix="mmf_reg_"))
    # "mdm_kl@weight=0" = reg=mdm_kl with reg.mdm_kl.weight=0 (controls, e.g. the RNG-stream effect of a plug-in)
    reg_name, _, reg_kv = reg.partition("@")
    reg_overrides = [f"reg.{reg_name}.{kv}" for kv in reg_kv.split(",") if kv]
    overrides = [
        f"data={data}",
        f"model={model}",
        f"reg={reg_name}",
        *reg_overrides,
        f"seed={seed}",
        f"trainer.max_epochs={epochs}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "~callbacks.model_summary",
        f"callbacks.plugin_influence.every_n_steps={influence_every}",
        *DATA_OVERRIDES.get(data, []),
        *MODEL_OVERRIDES.get(model, []),
    ]
    try:
        cfg = compose_train_cfg(overrides, out_dir)
        t0 = time.perf_counter()
        result, objs = train(cfg)
        trainer, module, dm = objs["trainer"], objs["module"], objs["datamodule"]
        module.test_corruption = corrupt
        trainer.test(
            module, datamodule=dm, ckpt_path=result.get("best_ckpt") or None, verbose=False, weights_only=True
        )
        corrupted = dict(module.last_metrics.get("test", {}))
        return {
            "plugin": plugin_record(module),
            "data": data,
            "model": model,
            "reg": reg,
            "seed": seed,
            "epochs": epochs,
            "overrides": overrides,
            "clean": {k: float(v) for k, v in result["test"].items()},
            corrupt: {k: float(v) for k, v in corrupted.items()},
            "val": {k: float(v) for k, v in result["val"].items()},
            "seconds": time.perf_counter() - t0,
        }
    finally:
        GlobalHydra.instance().clear()
        shutil.rmtree(out_dir, ignore_errors=True)


def finished(runs_path: Path) -> set[tuple]:
    if not runs_path.is_file():
        return set()
    rows = [json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()]
    return {(r["data"], r["model"], r["reg"], r["seed"], r["epochs"]) for r in rows}


def welch_p(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def aggregate(runs: list[dict], corrupt: str) -> dict[str, Any]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["data"], r["model"], r["reg"]), []).append(r)
    table = []

    def order(key: tuple) -> tuple:
        name = key[2].partition("@")[0]
        return key[0], key[1], REGS.index(name) if name in REGS else 99, key[2]

    for (data, model, reg), rs in sorted(groups.items(), key=lambda kv: order(kv[0])):
        row: dict[str, Any] = {
            "data": data,
            "model": model,
            "reg": reg,
            "seeds": sorted(r["seed"] for r in rs),
        }
        base = groups.get((data, model, "none"), [])
        for cond in (
            "val",
            "clean",
            corrupt,
        ):  # val: the selected checkpoint's validation metrics (selection)
            for m in METRICS:
                vals = [r[cond][m] for r in rs if m in r.get(cond, {})]
                if not vals:
                    continue
                row[f"{cond}/{m}"] = {
                    "mean": float(np.mean(vals)),
                    "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                    "n": len(vals),
                }
                if reg != "none" and base:
                    bvals = [r[cond][m] for r in base if m in r.get(cond, {})]
                    row[f"{cond}/{m}"]["delta_vs_none"] = float(np.mean(vals) - np.mean(bvals))
                    row[f"{cond}/{m}"]["p_vs_none"] = welch_p(vals, bvals)
        infl = influence_cell(rs)
        if infl is not None:
            row["influence"] = infl
        diag = [v for r in rs for v in r.get("plugin", {}).values()]
        for key in ("tc_probe", "critic_estimate"):
            vals = [d[key] for d in diag if d.get(key) is not None and np.isfinite(d[key])]
            if vals:
                row[key] = {
                    "mean": float(np.mean(vals)),
                    "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                }
        table.append(row)
    return {"corruption": corrupt, "metrics": METRICS, "rows": table, "n_runs": len(runs)}


def influence_cell(rs: list[dict]) -> dict[str, float] | None:
    vals = [
        v.get("influence") for r in rs for v in r.get("plugin", {}).values() if v.get("influence") is not None
    ]
    return (
        {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
        if vals
        else None
    )


def markdown(agg: dict[str, Any]) -> str:
    corrupt = agg["corruption"]
    lines = [
        f"Mean ± std over seeds (n = number of seeds). val MAE: validation split, checkpoint selected on it; the "
        f"other columns are the test split. `{corrupt}`: text features zeroed at test time only. MAE lower is "
        "better; Corr, Acc2 (has-0) higher. Δ vs `none` in brackets, * where Welch p < 0.05. influence: "
        "||grad term|| / ||grad task loss|| over the second half of training.",
        "",
    ]
    head = (
        "| data | model | reg | n | val MAE | MAE | Corr | Acc2 | " + f"MAE ({corrupt}) | Corr ({corrupt}) | "
        f"Acc2 ({corrupt}) | influence |"
    )
    lines += [head, "|" + "---|" * 12]

    def cell(row: dict, key: str, pct: bool = False) -> str:
        if key not in row:
            return "–"
        v = row[key]
        s = 100.0 if pct else 1.0
        txt = f"{s * v['mean']:.{1 if pct else 3}f} ± {s * v['std']:.{1 if pct else 3}f}"
        if "delta_vs_none" in v:
            star = "*" if v.get("p_vs_none") is not None and v["p_vs_none"] < 0.05 else ""
            txt += f" ({s * v['delta_vs_none']:+.{1 if pct else 3}f}{star})"
        return txt

    def infl(row: dict) -> str:
        v = row.get("influence")
        return "–" if v is None else f"{v['mean']:.2f} ± {v['std']:.2f}"

    for r in agg["rows"]:
        n = r.get("clean/MAE", {}).get("n", 0)
        lines.append(
            f"| {r['data']} | {r['model']} | {r['reg']} | {n} | {cell(r, 'val/MAE')} | {cell(r, 'clean/MAE')} | "
            f"{cell(r, 'clean/Corr')} | {cell(r, 'clean/Has0_acc_2', True)} | {cell(r, f'{corrupt}/MAE')} | "
            f"{cell(r, f'{corrupt}/Corr')} | {cell(r, f'{corrupt}/Has0_acc_2', True)} | {infl(r)} |"
        )
    return "\n".join(lines) + "\n"


def delta_markdown(agg: dict[str, Any]) -> str:
    """Compact view: per (data, model), Δ test MAE vs ``none`` (clean / corrupted) of every plug-in, with its
    influence in brackets and * where Welch p < 0.05 (the table ``docs/regularisers.md`` quotes)."""
    corrupt = agg["corruption"]
    regs = list(dict.fromkeys(r["reg"] for r in agg["rows"] if r["reg"] != "none"))
    lines = [
        f"| data | model | n | `none` MAE (clean / {corrupt}) | " + " | ".join(f"`{g}`" for g in regs) + " |",
        "|" + "---|" * (4 + len(regs)),
    ]
    for data, model in dict.fromkeys((r["data"], r["model"]) for r in agg["rows"]):
        rows = {r["reg"]: r for r in agg["rows"] if r["data"] == data and r["model"] == model}
        base = rows.get("none")
        if base is None:
            continue
        cells = []
        for g in regs:
            r = rows.get(g)
            if r is None or "delta_vs_none" not in r.get("clean/MAE", {}):
                cells.append("–")
                continue
            parts = []
            for cond in ("clean", corrupt):
                v = r[f"{cond}/MAE"]
                star = "*" if v.get("p_vs_none") is not None and v["p_vs_none"] < 0.05 else ""
                parts.append(f"{v['delta_vs_none']:+.3f}{star}")
            infl = r.get("influence")
            cells.append(" / ".join(parts) + (f" ({infl['mean']:.2g})" if infl and infl["mean"] > 0 else ""))
        n = base["clean/MAE"]["n"]
        lines.append(
            f"| {data} | {model} | {n} | {base['clean/MAE']['mean']:.3f} / {base[f'{corrupt}/MAE']['mean']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / f"{args.name}_runs.jsonl"
    runs = (
        [json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()]
        if runs_path.is_file()
        else []
    )
    done = {(r["data"], r["model"], r["reg"], r["seed"], r["epochs"]) for r in runs}
    if not args.aggregate_only:
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
        # seeds outermost: if the budget runs out, every configuration has the same number of seeds
        for seed in [int(s) for s in args.seeds.split(",")]:
            for data in args.datas.split(","):
                for model in args.models.split(","):
                    for reg in args.regs.split(","):
                        if (data, model, reg, seed, args.epochs) in done | finished(runs_path):
                            continue  # also skips runs finished meanwhile by a parallel worker
                        try:
                            r = run_one(
                                data, model, reg, seed, args.epochs, args.corrupt, args.influence_every
                            )
                        except Exception as e:  # noqa: BLE001 - report, skip, retry on the next invocation
                            print(f"FAILED {data} {model} {reg} seed={seed}: {e!r}"[:500], flush=True)
                            continue
                        with runs_path.open("a") as f:
                            f.write(json.dumps(r) + "\n")
                        runs = [
                            json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()
                        ]
                        print(
                            f"{data} {model} {reg} seed={seed}: MAE {r['clean']['MAE']:.3f} "
                            f"({args.corrupt} {r[args.corrupt]['MAE']:.3f}) in {r['seconds']:.0f}s",
                            flush=True,
                        )
                        agg = aggregate([r for r in runs if r["epochs"] == args.epochs], args.corrupt)
                        (args.out / f"{args.name}.json").write_text(json.dumps(agg, indent=1))
                        (args.out / f"{args.name}.md").write_text(markdown(agg))
    # the final aggregate holds only the --seeds given (e.g. the seeds every configuration has finished)
    seeds = {int(s) for s in args.seeds.split(",")}
    agg = aggregate([r for r in runs if r["epochs"] == args.epochs and r["seed"] in seeds], args.corrupt)
    (args.out / f"{args.name}.json").write_text(json.dumps(agg, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(agg) + "\n" + delta_markdown(agg))
    print(markdown(agg) + "\n" + delta_markdown(agg))


if __name__ == "__main__":
    main()
