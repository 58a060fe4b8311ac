"""Results are easy to find: a run prints its folder and metrics.json, writes a learning curve from its CSV log,
keeps one copy of each checkpoint; eval.py writes beside the trained run; a multirun ends with a table of its
jobs (mean +- sample std over seeds); make_table --published says when no published numbers apply."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from mmfusion.callbacks.figures import learning_curve, per_epoch
from mmfusion.utils.summary import collect_jobs, summary_tables

from .conftest import ROOT, SMALL_DATA, run_cli

sys.path.insert(0, str(ROOT / "scripts"))
import make_table  # noqa: E402

TINY = [
    *SMALL_DATA,
    "trainer.enable_progress_bar=false",
    "~callbacks.model_summary",
    "~callbacks.early_stopping",
    "trainer.log_every_n_steps=1",
]


def _job(sweep: Path, n: int, overrides: list[str], metrics: dict | None) -> None:
    d = sweep / str(n)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))


def test_multirun_summary_table(tmp_path):
    vals = {
        (lr, s): (0.5 + lr * 10 + 0.01 * s, 0.6 + lr * 10 + 0.02 * s)
        for lr in (0.001, 0.003)
        for s in (1, 2, 3)
    }
    n = 0
    for (lr, s), (v, t) in vals.items():
        failed = (lr, s) == (0.003, 3)
        _job(
            tmp_path,
            n,
            [f"optim.lr={lr}", f"seed={s}", "model=tfn"],
            None if failed else {"selection": "val/MAE (min)", "val": {"MAE": v}, "test": {"MAE": t}},
        )
        n += 1
    jobs = collect_jobs(tmp_path)
    assert [j["job"] for j in jobs] == list(range(6))
    table = summary_tables(jobs)
    lines = table.splitlines()
    assert lines[0] == "| job | optim.lr | seed | val MAE | test MAE | status |"  # model does not vary
    assert f"| 0 | 0.001 | 1 | {vals[(0.001, 1)][0]:.4f} | {vals[(0.001, 1)][1]:.4f} | ok |" in lines
    assert "| 5 | 0.003 | 3 | — | — | failed |" in lines
    v = [vals[(0.001, s)][0] for s in (1, 2, 3)]
    t = [vals[(0.001, s)][1] for s in (1, 2, 3)]
    assert statistics.stdev(v) == pytest.approx(np.std(v, ddof=1))
    assert (
        f"| 0.001 | 3 | {np.mean(v):.4f} ± {np.std(v, ddof=1):.4f} | {np.mean(t):.4f} ± {np.std(t, ddof=1):.4f} |"
        in lines
    )
    v2 = [vals[(0.003, s)][0] for s in (1, 2)]  # the failed seed is left out
    assert any(ln.startswith(f"| 0.003 | 2 | {np.mean(v2):.4f} ± {np.std(v2, ddof=1):.4f}") for ln in lines)


def test_learning_curve_from_csv(tmp_path):
    f = tmp_path / "metrics.csv"
    rows = [
        {"epoch": 0, "step": 0, "train/loss": 2.0},
        {"epoch": 0, "step": 1, "train/loss": 1.0},
        {"epoch": 0, "step": 1, "val/loss": 1.4, "val/MAE": 1.2},
        {"epoch": 1, "step": 2, "train/loss": 0.8},
        {"epoch": 1, "step": 3, "train/loss": 0.6},
        {"epoch": 1, "step": 3, "val/loss": 1.1, "val/MAE": 0.9},
    ]
    with f.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["epoch", "step", "train/loss", "val/MAE", "val/loss"])
        w.writeheader()
        w.writerows(rows)
    from mmfusion.callbacks.figures import _read_csv_log

    parsed = _read_csv_log(f)
    assert per_epoch(parsed, "train/loss") == ([0, 1], [1.5, pytest.approx(0.7)])
    assert per_epoch(parsed, "val/MAE") == ([0, 1], [1.2, 0.9])
    png = learning_curve(f, "val/MAE", tmp_path / "lc.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert learning_curve(tmp_path / "nope.csv", "val/MAE", tmp_path / "x.png") is None


def _regular_files(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.is_file() and not p.is_symlink()]


@pytest.mark.slow
def test_run_prints_paths_writes_curve_links_checkpoint_and_eval_goes_beside(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(["train.py", *TINY, "trainer.max_epochs=3", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"run folder: {run}\nmetrics:    {run / 'metrics.json'}" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    ck = run / "checkpoints"
    files = _regular_files(ck)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert len(set(digests)) == len(digests)  # no checkpoint stored twice
    best = Path(metrics["best_ckpt"])
    last = ck / "last.ckpt"
    import torch

    best_epoch = torch.load(best, map_location="cpu", weights_only=True)["epoch"]
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2  # last = newest epoch
    if best_epoch == 2:  # the newest epoch is the best: last.ckpt links to it
        assert last.is_symlink() and os.readlink(last) == best.name
    else:
        assert not last.is_symlink()
    # eval: results beside the trained run, folder and metrics.json printed
    proc = run_cli(["eval.py", f"ckpt_path={best}", "trainer.enable_progress_bar=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ev,) = (run / "eval").iterdir()
    assert f"results folder: {ev}\nmetrics:        {ev / 'metrics.json'}" in proc.stdout
    res = json.loads((ev / "metrics.json").read_text())
    assert res["metrics"]["MAE"] == pytest.approx(
        metrics["test"]["MAE"], rel=1e-6
    )  # same checkpoint, same split
    # make_table on the run folder ignores the eval/ result and says no published numbers apply to synthetic data
    assert make_table.main([str(run), "--out", str(tmp_path / "t"), "--published"]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "No published numbers apply to synthetic/ef_lstm/none" in md
    assert "mosi/mfn/none" in md  # what the file does cover
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [r["source"] for r in rows] == ["ours"] and rows[0]["n_seeds"] == "1"


@pytest.mark.slow
def test_multirun_ends_with_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "train.py",
            "-m",
            "seed=1,2",
            *TINY,
            "trainer.max_epochs=1",
            "logger=none",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    maes = [json.loads((sweep / j / "metrics.json").read_text())["test"]["MAE"] for j in ("0", "1")]
    saved = (sweep / "summary.md").read_text()
    assert f"multirun: 2 jobs in {sweep}" in proc.stdout and saved.strip() in proc.stdout
    assert "| 2 | " in saved and f"{np.mean(maes):.4f} ± {np.std(maes, ddof=1):.4f}" in saved
