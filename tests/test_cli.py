"""The command line as a user runs it: one-line errors, multirun, W&B offline, DDP on CPU processes."""

from __future__ import annotations

import json

import pytest

from .conftest import CLI_TINY, run_cli

TINY = CLI_TINY


def _one_line_error(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


def test_unknown_choice_lists_valid_ones():
    msg = _one_line_error(run_cli(["train.py", "model=nope"]))
    assert "unknown model 'nope'" in msg and "ef_lstm" in msg
    msg = _one_line_error(run_cli(["train.py", "-m", "reg=none,nonexistent_reg"]))
    assert "unknown reg 'nonexistent_reg'" in msg and "none" in msg


def test_missing_data_path_is_one_line(tmp_path):
    msg = _one_line_error(
        run_cli(
            [
                "train.py",
                "data=mosi_utterance",
                f"data.path={tmp_path / 'nope'}",
                f"hydra.run.dir={tmp_path / 'run'}",
            ]
        )
    )
    assert str(tmp_path / "nope") in msg and "not found" in msg


def test_eval_missing_checkpoint_is_one_line(tmp_path):
    msg = _one_line_error(
        run_cli(["eval.py", f"ckpt_path={tmp_path / 'x.ckpt'}", f"hydra.run.dir={tmp_path}"])
    )
    assert "x.ckpt" in msg


@pytest.mark.slow
def test_multirun_with_wandb_offline_gives_one_run_per_job(tmp_path):
    proc = run_cli(
        [
            "train.py",
            "-m",
            "model=ef_lstm",
            "reg=none",
            "seed=1,2",
            "logger=wandb",
            f"hydra.sweep.dir={tmp_path}",
            *TINY,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = []
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / job / "metrics.json").read_text())
        assert "MAE" in metrics["test"]
        offline = list((tmp_path / job / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, f"job {job}: {offline}"
        runs.append(offline[0].name.split("-")[-1])
    assert runs[0] != runs[1]  # each job has its own W&B run (wandb.finish between jobs)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    proc = run_cli(["train.py", "trainer=ddp_cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path}", *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"MAE", "Corr", "Has0_acc_2", "Non0_acc_2"}
    assert (tmp_path / "train_ddp_process_1.log").exists()  # the second rank really ran
