#!/usr/bin/env python
"""Replay every bad input (and every documented path that used to fail) of issue 15 as a subprocess and classify
what a user sees.

    python scripts/replay_bad_inputs.py                 # all cases; resumes: cases already in the raw log are kept
    python scripts/replay_bad_inputs.py --fresh         # start again
    python scripts/replay_bad_inputs.py --only div_     # cases whose name starts with a prefix

Outcome of each case:
  clean_error     exit != 0, no 'Traceback' on stderr, the last stderr line is a meaningful message ('error: ...')
  traceback       exit != 0 with a Python traceback (or Hydra's "Set the environment variable HYDRA_FULL_ERROR")
  other_error     exit != 0, no traceback, but the last stderr line is not a one-line 'error: ...' message
  silent_success  exit 0 on a bad input, without a warning
  warned_success  exit 0 with the expected warning (a finite but exploding run, `optim.lr=1e3`)
  success         exit 0 on a documented path that must work (logger=wandb without an account, debug=limit, ...)
  timeout         killed after --timeout seconds
``as_expected`` compares the outcome with the case's expectation (error -> clean_error, success -> success,
warning -> warned_success) and any extra check (no metrics.json after a diverged run, history kept on a refused
resume, ...). Raw runs are appended to ``<work>/raw.jsonl``; the summary goes to
``docs/results/reliability_replay.json``. Fixtures come from ``tests/data_fixtures.py`` (synthetic MMSA/UR-FUNNY/MNIST
files) and from ``../shared/data/mosi`` (real CMU-MOSI utterance features, copied and corrupted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_MOSI = ROOT.parent / "shared" / "data" / "mosi"
OUT_JSON = ROOT / "docs" / "results" / "reliability_replay.json"

TINY = [
    "data.n_train=128",
    "data.n_valid=32",
    "data.n_test=64",
    "data.seq_len=10",
    "data.min_len=3",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "~callbacks.model_summary",
]
QUICK = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "~callbacks.model_summary"]


@dataclass
class Case:
    name: str
    group: str
    args: list[str]  # after `python`
    expect: str  # error | success | warning
    note: str = ""
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None  # None = ok, else why not
    env: dict[str, str | None] = field(default_factory=dict)  # None removes the variable
    warning: str = ""  # substring of the expected warning (expect == warning)


# -- fixtures ------------------------------------------------------------------------------------------------------
def _copy_mosi(dst: Path) -> Path:
    """A writable copy of ../shared/data/mosi (features copied, so they can be corrupted)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(SHARED_MOSI, dst, copy_function=shutil.copy)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dst.chmod(0o755)
    return dst


def _set_index_label(root: Path, value: str) -> None:
    import csv

    path = root / "mosi_index.csv"
    rows = list(csv.reader(path.open(newline="")))
    rows[1][rows[0].index("label")] = value
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def fx_nan_label(work: Path) -> None:
    _set_index_label(_copy_mosi(work / "mosi_nan_label"), "nan")


def fx_word_label(work: Path) -> None:
    _set_index_label(_copy_mosi(work / "mosi_word_label"), "positive")


def fx_garbage(work: Path) -> None:
    root = _copy_mosi(work / "mosi_garbage")
    (root / "bclstm_utterance_features" / "audio" / "audio_train0.csv").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    )


def fx_cut_row(work: Path) -> None:
    root = _copy_mosi(work / "mosi_cut_row")
    path = root / "bclstm_utterance_features" / "text" / "text_train0.csv"
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\n", len(data) // 2) - len(data) // 200])  # the last row cut in half


def fx_unaligned(work: Path) -> None:
    from tests.data_fixtures import write_mmsa

    (work / "mmsa").mkdir(parents=True, exist_ok=True)
    write_mmsa(work / "mmsa" / "unaligned_50.pkl", aligned=False)
    write_mmsa(work / "mmsa" / "aligned_50.pkl", aligned=True)


def fx_urfunny(work: Path) -> None:
    from tests.data_fixtures import write_urfunny

    (work / "urfunny").mkdir(parents=True, exist_ok=True)
    write_urfunny(work / "urfunny")


def fx_mnist(work: Path) -> None:
    from tests.data_fixtures import mnist_fixture

    (work / "mnist").mkdir(parents=True, exist_ok=True)
    mnist_fixture(work / "mnist", np.random.default_rng(0), gz=True)


def fx_csd(work: Path) -> None:
    from tests.data_fixtures import write_csd_dataset

    (work / "csd").mkdir(parents=True, exist_ok=True)
    write_csd_dataset(work / "csd")  # text/audio/vision/labels.csd and folds.json in that folder


def csd_args(work: Path) -> list[str]:
    """Overrides pointing data=mosi_csd at the fixture written by ``fx_csd``."""
    root = work / "csd"
    names = {"text": "text.csd", "audio": "audio.csd", "vision": "vision.csd", "labels": "labels.csd"}
    return [f"data.sequences.{m}={root / names[m]}" for m in ("text", "audio", "vision")] + [
        f"data.labels={root / names['labels']}",
        f"data.folds={root / 'folds.json'}",
        f"data.cache_dir={root / 'cache'}",
    ]


def fx_base_run(work: Path) -> None:
    """A finished 2-epoch run (checkpoints + csv history) for the resume and truncated-checkpoint cases."""
    run = work / "base_run"
    if (run / "metrics.json").is_file():
        return
    proc = _run([sys.executable, "train.py", *TINY, "logger=csv", f"hydra.run.dir={run}"], {}, 900)
    if proc.returncode != 0:
        raise RuntimeError(f"base run failed: {proc.stderr[-2000:]}")


def fx_resume_copy(work: Path) -> None:
    fx_base_run(work)
    dst = work / "resume_wrong"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(work / "base_run", dst)


def fx_truncated(work: Path) -> None:
    fx_base_run(work)
    src = sorted((work / "base_run" / "checkpoints").glob("*.ckpt"))[0]
    data = src.read_bytes()
    (work / "truncated.ckpt").write_bytes(data[: len(data) // 2])


def fx_optuna(work: Path) -> None:
    (work / "optuna_logs").mkdir(parents=True, exist_ok=True)


# -- checks --------------------------------------------------------------------------------------------------------
def no_metrics(run: str) -> Callable[[Path, subprocess.CompletedProcess], str | None]:
    def check(work: Path, proc: subprocess.CompletedProcess) -> str | None:
        return "metrics.json written from a diverged run" if (work / run / "metrics.json").exists() else None

    return check


def sweep_went_on(work: Path, proc: subprocess.CompletedProcess) -> str | None:
    sweep = work / "sweeps" / "grid_diverged"
    if (sweep / "0" / "metrics.json").exists():
        return "the diverged job wrote metrics.json"
    return None if (sweep / "1" / "metrics.json").is_file() else "the job after the diverged one did not run"


def history_kept(work: Path, proc: subprocess.CompletedProcess) -> str | None:
    run, base = work / "resume_wrong", work / "base_run"
    if not (run / "csv" / "metrics.csv").is_file():
        return "csv/metrics.csv deleted"
    if (run / ".hydra" / "config.yaml").read_text() != (base / ".hydra" / "config.yaml").read_text():
        return ".hydra/config.yaml overwritten"
    return None


def output_has(text: str) -> Callable[[Path, subprocess.CompletedProcess], str | None]:
    def check(work: Path, proc: subprocess.CompletedProcess) -> str | None:
        return None if text in proc.stdout + proc.stderr else f"no {text!r} in the output"

    return check


# -- the cases -----------------------------------------------------------------------------------------------------
def cases(work: Path) -> list[Case]:
    w = str(work)
    run = lambda name: f"hydra.run.dir={w}/runs/{name}"  # noqa: E731
    tr = ["train.py"]
    opt = [
        "-m",
        "hparams_search=optuna_tpe",
        "hydra.sweeper.n_trials=1",
        f"paths.log_dir={w}/optuna_logs",
        *TINY,
        "trainer.max_epochs=1",
    ]
    out = [
        # 1. divergence
        Case(
            "div_lr_1e30",
            "divergence",
            [*tr, "optim.lr=1e30", *TINY, run("div_lr_1e30")],
            "error",
            "NaN loss: used to exit 0 with a test table from NaN predictions",
            check=no_metrics("runs/div_lr_1e30"),
        ),
        Case(
            "div_lr_1e3",
            "divergence",
            [*tr, "optim.lr=1e3", *TINY, run("div_lr_1e3")],
            "warning",
            "finite but exploding (MAE ~1e8): used to give no warning",
            warning="unusually large",
        ),
        Case(
            "div_grid_sweep_one_job_diverges",
            "divergence",
            [*tr, "-m", "optim.lr=1e30,1e-3", *TINY, f"hydra.sweep.dir={w}/sweeps/grid_diverged"],
            "error",
            "the sweep goes on (job 1 finishes), then one line for the failed job",
            check=sweep_went_on,
        ),
        Case(
            "div_nan_label_mosi_index",
            "divergence",
            [*tr, "data=mosi_utterance", f"data.path={w}/mosi_nan_label", *QUICK, run("nan_label")],
            "error",
            "NaN label in mosi_index.csv",
            setup=fx_nan_label,
        ),
        Case(
            "div_negative_lr",
            "divergence",
            [*tr, "optim.lr=-0.001", run("neg_lr")],
            "error",
            "used to train by gradient ascent",
        ),
        Case("div_zero_lr", "divergence", [*tr, "optim.lr=0", run("zero_lr")], "error"),
        Case("div_zero_epochs", "divergence", [*tr, "trainer.max_epochs=0", run("zero_ep")], "error"),
        Case("div_negative_batch_size", "divergence", [*tr, "data.batch_size=-8", run("neg_bs")], "error"),
        # 2. config validation
        Case("val_max_epochs_abc", "validation", [*tr, "trainer.max_epochs=abc", run("v1")], "error"),
        Case("val_batch_size_0", "validation", [*tr, "data.batch_size=0", run("v2")], "error"),
        Case("val_lr_fast", "validation", [*tr, "optim.lr=fast", run("v3")], "error"),
        Case("val_seed_abc", "validation", [*tr, "seed=abc", run("v4")], "error"),
        Case("val_dropout_1.5", "validation", [*tr, "model.dropout=1.5", run("v5")], "error"),
        Case(
            "val_mcan_on_synthetic", "validation", [*tr, "model=mcan", "data=synthetic", run("v6")], "error"
        ),
        Case(
            "val_mdm_weight_abc",
            "validation",
            [*tr, "reg=mdm_kl", "reg.mdm_kl.weight=abc", run("v7")],
            "error",
            check=output_has("reg.mdm_kl.weight"),
        ),
        Case(
            "val_unknown_key",
            "validation",
            [*tr, "optim.lrr=1e-3", run("v8")],
            "error",
            check=output_has("did you mean 'optim.lr'?"),
        ),
        Case(
            "val_ef_lstm_unaligned",
            "validation",
            [*tr, "model=ef_lstm", "data=mosi", f"data.path={w}/mmsa/unaligned_50.pkl", *QUICK, run("v9")],
            "error",
            "used to die with 'Sizes of tensors must match'",
            setup=fx_unaligned,
        ),
        # readers and checkpoints
        Case(
            "reader_mosi_utterance_word_label",
            "readers",
            [*tr, "data=mosi_utterance", f"data.path={w}/mosi_word_label", *QUICK, run("r1")],
            "error",
            setup=fx_word_label,
        ),
        Case(
            "reader_mosi_utterance_garbage",
            "readers",
            [*tr, "data=mosi_utterance", f"data.path={w}/mosi_garbage", *QUICK, run("r2")],
            "error",
            setup=fx_garbage,
        ),
        Case(
            "reader_mosi_utterance_cut_row",
            "readers",
            [*tr, "data=mosi_utterance", f"data.path={w}/mosi_cut_row", *QUICK, run("r3")],
            "error",
            setup=fx_cut_row,
        ),
        Case(
            "ckpt_truncated_eval",
            "readers",
            ["eval.py", f"ckpt_path={w}/truncated.ckpt", run("c1")],
            "error",
            setup=fx_truncated,
        ),
        Case(
            "ckpt_truncated_resume",
            "readers",
            [*tr, f"ckpt_path={w}/truncated.ckpt", *TINY, run("c2")],
            "error",
            setup=fx_truncated,
        ),
        # 4. resume
        Case(
            "resume_wrong_overrides",
            "resume",
            [*tr, "ckpt_path=last", f"hydra.run.dir={w}/resume_wrong", "model=tfn", *TINY, "logger=csv"],
            "error",
            "used to delete csv/metrics.csv and overwrite the config",
            setup=fx_resume_copy,
            check=history_kept,
        ),
        # 3. sweeps (CLI calls)
        Case(
            "optuna_readme_mfn",
            "sweeps",
            [*tr, *opt, "model=mfn", f"hydra.sweep.dir={w}/sweeps/mfn"],
            "success",
            "README's TPE example: Key 'dropout' is not in struct",
            setup=fx_optuna,
        ),
        Case(
            "optuna_tfn_after_mfn",
            "sweeps",
            [*tr, *opt, "model=tfn", f"hydra.sweep.dir={w}/sweeps/tfn"],
            "success",
            "used to continue the mfn study and crash (optimization_results.yaml)",
        ),
        Case(
            "optuna_rerun_finished",
            "sweeps",
            [*tr, *opt, "model=tfn", f"hydra.sweep.dir={w}/sweeps/tfn2"],
            "success",
            "re-running a finished search (the README's way to resume) used to crash",
            check=output_has(" complete, "),
        ),
        # 5. documented paths
        Case(
            "doc_wandb_without_account",
            "documented",
            [*tr, "logger=wandb", *TINY, run("wandb")],
            "success",
            "used to give a 40-line traceback",
            env={"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": f"{w}/home"},
            check=output_has("W&B: no login found"),
        ),
        Case(
            "doc_fast_dev_run",
            "documented",
            [*tr, "trainer.fast_dev_run=true", *TINY, run("fdr")],
            "success",
            "used to need '+'",
        ),
        Case(
            "doc_limit_train_batches",
            "documented",
            [*tr, "trainer.limit_train_batches=5", *TINY, run("ltb")],
            "success",
            "used to need '+'",
        ),
        Case(
            "doc_debug_limit_synthetic",
            "documented",
            [*tr, "debug=limit", "data.n_valid=32", run("dl_syn")],
            "success",
            "used to ask for 0.1 of a single validation batch",
        ),
        Case(
            "doc_debug_limit_digits",
            "documented",
            [*tr, "debug=limit", "data=digits", run("dl_dig")],
            "success",
        ),
        Case(
            "doc_debug_limit_mosi_utterance",
            "documented",
            [*tr, "debug=limit", "data=mosi_utterance", run("dl_mu")],
            "success",
        ),
        Case(
            "doc_debug_limit_mosi_mmsa",
            "documented",
            [
                *tr,
                "debug=limit",
                "data=mosi",
                "model=tfn",
                f"data.path={w}/mmsa/unaligned_50.pkl",
                run("dl_mmsa"),
            ],
            "success",
            setup=fx_unaligned,
        ),
        Case(
            "doc_debug_limit_urfunny",
            "documented",
            [*tr, "debug=limit", "data=urfunny", f"data.path={w}/urfunny", run("dl_urf")],
            "success",
            setup=fx_urfunny,
        ),
        Case(
            "doc_debug_limit_mnist",
            "documented",
            [*tr, "debug=limit", "data=mnist", f"data.path={w}/mnist", "data.n_valid=10", run("dl_mnist")],
            "success",
            setup=fx_mnist,
        ),
        Case(
            "doc_debug_limit_mosi_csd",
            "documented",
            [*tr, "debug=limit", "data=mosi_csd", *csd_args(work), run("dl_csd")],
            "success",
            setup=fx_csd,
        ),
        Case(
            "doc_debug_limit_easyvqa",
            "documented",
            [
                *tr,
                "debug=limit",
                "data=easyvqa",
                "model=mcan",
                "model.hidden=64",
                "model.ff=128",
                "model.layers=1",
                "model.heads=4",
                "model.flat_mlp=64",
                "model.flat_out=64",
                "model.word_dim=32",
                "model.cnn_channels=[8,16,32]",
                "data.image_size=32",
                "data.max_train_images=200",
                "data.max_test_images=100",
                run("dl_vqa"),
            ],
            "success",
        ),
    ]
    return out


# -- running and classifying ---------------------------------------------------------------------------------------
def _run(cmd: list[str], env_changes: dict[str, str | None], timeout: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    env.pop("HYDRA_FULL_ERROR", None)  # as a user runs it
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    if "HOME" in env_changes:
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def classify(rc: int, stdout: str, stderr: str, warning: str = "") -> tuple[str, str]:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if rc == 0:
        if warning and warning in stdout + stderr:
            return "warned_success", last
        return ("success" if not warning else "silent_success"), last
    if "Traceback" in stderr or "HYDRA_FULL_ERROR" in last:
        return "traceback", last
    if last.startswith("error: ") and len(last) > 20:
        return "clean_error", last
    return "other_error", last


def expected_outcome(expect: str) -> str:
    return {"error": "clean_error", "success": "success", "warning": "warned_success"}[expect]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "outputs" / "replay_bad_inputs"))
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", default=str(OUT_JSON))
    args = ap.parse_args()
    work = Path(args.work).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw.jsonl"
    done = {}
    if raw.is_file():
        for line in raw.read_text().splitlines():
            rec = json.loads(line)
            done[rec["name"]] = rec
    all_cases = cases(work)
    for case in all_cases:
        if case.name in done or not case.name.startswith(args.only):
            continue
        t0 = time.time()
        rec = {
            "name": case.name,
            "group": case.group,
            "cmd": "python " + " ".join(case.args),
            "expect": case.expect,
            "note": case.note,
        }
        try:
            if case.setup is not None:
                case.setup(work)
            proc = _run([sys.executable, *case.args], case.env, args.timeout)
            outcome, last = classify(
                proc.returncode, proc.stdout, proc.stderr, case.warning if case.expect == "warning" else ""
            )
            if case.expect == "error" and proc.returncode == 0:
                outcome = "silent_success"
            problem = case.check(work, proc) if case.check is not None else None
            rec.update(
                rc=proc.returncode,
                outcome=outcome,
                last_stderr_line=last[:400],
                check_problem=problem,
                stderr_tail=proc.stderr[-1500:] if outcome != expected_outcome(case.expect) else "",
            )
        except subprocess.TimeoutExpired:
            rec.update(rc=None, outcome="timeout", last_stderr_line="", check_problem=None, stderr_tail="")
        except Exception as exc:  # noqa: BLE001 - a fixture failure is recorded, the replay goes on
            rec.update(
                rc=None,
                outcome="setup_failed",
                last_stderr_line=f"{type(exc).__name__}: {exc}"[:400],
                check_problem=None,
                stderr_tail="",
            )
        rec["as_expected"] = rec["outcome"] == expected_outcome(case.expect) and not rec.get("check_problem")
        rec["seconds"] = round(time.time() - t0, 1)
        with raw.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[case.name] = rec
        print(
            f"{case.name:36s} {rec['outcome']:15s} {'ok' if rec['as_expected'] else 'NOT AS EXPECTED':16s} "
            f"{rec['last_stderr_line'][:110]}",
            flush=True,
        )

    names = [c.name for c in all_cases]
    results = [done[n] for n in names if n in done]
    counts = Counter(r["outcome"] for r in results)
    bad_inputs = [r for r in results if r["expect"] != "success"]
    summary = {
        "cases": len(results),
        "outcomes": dict(sorted(counts.items())),
        "bad_inputs": len(bad_inputs),
        "bad_inputs_clean_error": sum(r["outcome"] == "clean_error" for r in bad_inputs),
        "bad_inputs_traceback": sum(r["outcome"] == "traceback" for r in bad_inputs),
        "bad_inputs_silent_success": sum(r["outcome"] == "silent_success" for r in bad_inputs),
        "documented_paths": len(results) - len(bad_inputs),
        "documented_paths_working": sum(
            r["outcome"] == "success" for r in results if r["expect"] == "success"
        ),
        "as_expected": sum(r["as_expected"] for r in results),
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "script": "scripts/replay_bad_inputs.py",
                "commit": commit,
                "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "summary": summary,
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
