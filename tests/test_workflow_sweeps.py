"""Sweeps as users run them: a joblib-parallel grid with W&B offline (grouped, tagged), the result table over
seeds, offline W&B export, Optuna with SQLite (failed trials, resume), SLURM launcher config."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import get_class

from .conftest import CLI_TINY, ROOT, compose_cfg, run_cli

sys.path.insert(0, str(ROOT / "scripts"))
import make_table  # noqa: E402
import wandb_sync  # noqa: E402

TINY = CLI_TINY


@pytest.mark.slow
def test_joblib_grid_wandb_groups_tags_and_table(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "train.py",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "model=ef_lstm",
            "reg=none",
            "seed=1,2",
            "logger=wandb",
            f"hydra.sweep.dir={sweep}",
            *TINY,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib" in proc.stdout + proc.stderr
    runs = {}
    for job in ("0", "1"):
        (exported,) = wandb_sync.export(sweep / job, tmp_path / "export" / job)
        info = json.loads((exported / "run.json").read_text())
        summary = json.loads((exported / "summary.json").read_text())
        runs[job] = info
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert summary["test/MAE"] == pytest.approx(metrics["test"]["MAE"], rel=1e-5)
        with (exported / "history.csv").open() as f:
            assert any(row.get("val/MAE") for row in csv.DictReader(f))  # per-epoch metrics in the history
    assert runs["0"]["id"] != runs["1"]["id"]  # one W&B run per job
    group = runs["0"]["group"]
    assert group and group == runs["1"]["group"] and group.endswith(sweep.name)  # grouped by sweep
    for job, seed in (("0", 1), ("1", 2)):
        tags = set(runs[job]["tags"])
        assert {"model:ef_lstm", "reg:none", "data:synthetic", f"seed:{seed}"} <= tags, tags
    # the paper-style table over the two seeds
    assert make_table.main([str(sweep), "--out", str(tmp_path / "table"), "--published"]) == 0
    maes = [json.loads((sweep / j / "metrics.json").read_text())["test"]["MAE"] for j in ("0", "1")]
    with (tmp_path / "table.csv").open() as f:
        (row,) = [r for r in csv.DictReader(f) if r["source"] == "ours"]
    assert row["model"] == "ef_lstm" and row["n_seeds"] == "2"
    assert float(row["MAE mean"]) == pytest.approx(np.mean(maes))
    assert float(row["MAE std"]) == pytest.approx(np.std(maes, ddof=1))
    md = (tmp_path / "table.md").read_text()
    assert "Acc-2 has0" in md and "Acc-2 non0" in md and " ± " in md


def _fake_run(d: Path, model: str, reg: str, seed: int, lr: str, metrics: dict) -> None:
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  runtime:\n    choices:\n      model: {model}\n      reg: {reg}\n      data: mosi\n"
        f"  overrides:\n    task: [model={model}, reg={reg}, seed={seed}, optim.lr={lr}, data.n_train=10]\n"
    )
    (d / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
    (d / "metrics.json").write_text(json.dumps({"test": metrics, "val": metrics}))


def test_make_table_groups_and_published(tmp_path):
    keys = ["Mult_acc_7", "Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score", "MAE", "Corr"]
    vals = {}
    for i, (model, reg, seed, lr) in enumerate(
        [
            ("mfn", "none", 1, "0.001"),
            ("mfn", "none", 2, "0.001"),
            ("mfn", "none", 3, "0.001"),
            ("mfn", "none", 1, "0.01"),
            ("mfn", "synergy_mmd", 1, "0.001"),
        ]
    ):
        m = {k: 0.1 * (i + 1) + 0.01 * j for j, k in enumerate(keys)}
        vals[(model, reg, seed, lr)] = m
        _fake_run(tmp_path / "runs" / str(i), model, reg, seed, lr, m)
    runs = make_table.collect_folder(tmp_path / "runs", "test")
    rows, cols, varying = make_table.aggregate(runs)
    assert varying == ["optim.lr"]  # data.n_train is the same everywhere: not a variant
    (base,) = [r for r in rows if r["reg"] == "none" and r["variant"] == "optim.lr=0.001"]
    acc7 = [vals[("mfn", "none", s, "0.001")]["Mult_acc_7"] * 100 for s in (1, 2, 3)]
    assert base["n"] == 3 and base["stats"]["Acc-7"][0] == pytest.approx(np.mean(acc7))
    assert base["stats"]["Acc-7"][1] == pytest.approx(np.std(acc7, ddof=1))
    single = [r for r in rows if r["variant"] == "optim.lr=0.01"][0]
    assert math.isnan(single["stats"]["MAE"][1])
    pub = make_table.published_rows(rows, ROOT / "scripts" / "published_results.json")
    assert {(p["reg"], p["source"].split()[0]) for p in pub} == {
        ("none", "Shankar"),
        ("synergy_mmd", "Shankar"),
        ("none", "Colombo"),
    }
    mfn_none = [p for p in pub if p["reg"] == "none" and p["source"].startswith("Shankar")][0]
    assert mfn_none["values"] == {"Acc_7": 31.3, "Acc_2": 76.6, "MAE": 1.01, "Corr": 0.62}
    md, records = make_table.render(rows, cols, pub)
    assert "published: Shankar (synergy) Tab. 2" in md and "mfn (MFN)" in md
    assert make_table.main([str(tmp_path / "nope")]) == 2


def test_make_table_vqa_columns(tmp_path):
    for i, seed in enumerate((1, 2)):
        _fake_run(
            tmp_path / str(i),
            "mcan",
            "cont_softmax",
            seed,
            "0.001",
            {"vqa_acc": 60.0 + seed, "vqa_acc_yesno": 80.0 + seed, "vqa_acc_number": 40.0, "loss": 1.0},
        )
    rows, cols, _ = make_table.aggregate(make_table.collect_folder(tmp_path, "test"))
    assert [c[0] for c in cols] == ["VQA acc", "VQA number", "VQA yesno"]
    assert rows[0]["stats"]["VQA acc"][:2] == pytest.approx((61.5, np.std([61.0, 62.0], ddof=1)))


STUDY = "synergy_optuna-model=ef_lstm-data=synthetic-reg=none"


@pytest.mark.slow
def test_optuna_sqlite_failed_trials_and_resume(tmp_path):
    """Grid of 4 (2 of them fail: min_len > seq_len); 3 trials, then the same command with n_trials=4 resumes
    the stored study and runs the one missing point; a third run of the finished study runs nothing, prints
    "complete, 4 trials, best ..." and exits 0."""
    import optuna

    common = [
        "train.py",
        "-m",
        "hparams_search=synergy_optuna",
        "hydra.sweeper.params=null",
        "model=ef_lstm",
        "optim.lr=choice(0.001,0.003)",
        "data.min_len=choice(3,50)",
        f"paths.log_dir={tmp_path}",
        "logger=none",
        *[a for a in TINY if not a.startswith("data.min_len")],
    ]
    p1 = run_cli([*common, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path / 's1'}"])
    assert p1.returncode == 0, p1.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'optuna' / 'studies.db'}"
    assert optuna.get_all_study_names(storage) == [STUDY]  # named after the search and the run's choices
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert len(study.trials) == 3
    p2 = run_cli([*common, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={tmp_path / 's2'}"])
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert len([p for p in (tmp_path / "s2").iterdir() if p.name.isdigit()]) == 1  # one more job
    assert (tmp_path / "s2" / "3").is_dir()  # job folders are numbered by trial
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert len(trials) == 4
    assert {(t.params["optim.lr"], t.params["data.min_len"]) for t in trials} == {
        (0.001, 3),
        (0.003, 3),
        (0.001, 50),
        (0.003, 50),
    }  # the whole grid, no repeats
    for t in trials:  # the failing points are stored as FAIL, the others with the run's validation MAE
        expected = (
            optuna.trial.TrialState.FAIL
            if t.params["data.min_len"] == 50
            else optuna.trial.TrialState.COMPLETE
        )
        assert t.state == expected
    maes = sorted(json.loads(f.read_text())["val"]["MAE"] for f in tmp_path.glob("s[12]/*/metrics.json"))
    assert sorted(t.value for t in trials if t.value is not None) == pytest.approx(maes)
    best = (tmp_path / "s2" / "optimization_results.yaml").read_text()
    assert f"best_value: {min(maes)}" in best
    # the finished study: nothing runs, a summary line, exit 0 (hydra-optuna-sweeper 1.3 crashed here)
    p3 = run_cli([*common, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={tmp_path / 's3'}"])
    assert p3.returncode == 0, p3.stderr[-3000:]
    out = p3.stdout + p3.stderr
    assert f"study {STUDY} complete, 4 trials, best val/MAE = {min(maes):.6g}" in out
    assert not [p for p in (tmp_path / "s3").iterdir() if p.name.isdigit()]
    # another model is another study: it does not continue (nor report) the ef_lstm study
    p4 = run_cli(
        [
            *[a if a != "model=ef_lstm" else "model=lfn" for a in common],
            "hydra.sweeper.n_trials=1",
            "data.min_len=3",
            f"hydra.sweep.dir={tmp_path / 's4'}",
        ]
    )
    assert p4.returncode == 0, p4.stderr[-3000:]
    assert sorted(optuna.get_all_study_names(storage)) == sorted([STUDY, STUDY.replace("ef_lstm", "lfn")])
    assert len(optuna.load_study(study_name=STUDY.replace("ef_lstm", "lfn"), storage=storage).trials) == 1


def test_objective_reports_worst_value_for_nan():
    from omegaconf import OmegaConf

    from mmfusion.utils.runtime import objective

    cfg = OmegaConf.create({"optimized_metric": "val/MAE", "data": {"task": {"mode": "min"}}})
    assert objective({"val": {"MAE": 0.5}}, cfg) == 0.5
    assert objective({"val": {"MAE": float("nan")}}, cfg) == math.inf
    cfg.optimized_metric, cfg.data.task.mode = "val/Corr", "max"
    assert objective({"val": {"Corr": float("nan")}}, cfg) == -math.inf


def test_launcher_and_search_configs_compose(tmp_path):
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], tmp_path)
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_.endswith("SlurmLauncher")
        and get_class(launcher._target_).__name__ == "SlurmLauncher"
    )
    assert launcher.partition == "gpu" and launcher.timeout_min == 240 and launcher.gpus_per_node == 1
    assert str(launcher.submitit_folder).endswith(".submitit/%j")
    cfg = compose_cfg(["hydra/launcher=joblib"], tmp_path)
    assert get_class(cfg.hydra.launcher._target_).__name__ == "JoblibLauncher"
    for name, n in (("synergy_optuna", 10), ("optuna_tpe", 20)):
        cfg = compose_cfg([f"hparams_search={name}"], tmp_path)
        sw = cfg.hydra.sweeper
        assert get_class(sw._target_).__name__ == "ResumableOptunaSweeper"
        assert sw.direction == "minimize" and sw.n_trials == n and sw.max_failure_rate == 1.0
        assert sw.study_name is None  # derived from the search and the run's choices
        assert str(sw.storage) == f"sqlite:///{tmp_path / 'optuna' / 'studies.db'}"
        assert cfg.hydra.mode is None or str(cfg.hydra.mode) != "RunMode.MULTIRUN"  # -m stays on the CLI
    cfg = compose_cfg(["hparams_search=synergy_optuna"], tmp_path)
    assert dict(cfg.hydra.sweeper.params) == {
        "data.batch_size": "choice(32, 64)",
        "optim.lr": "choice(1.0e-2, 5.0e-3, 1.0e-3, 5.0e-4, 1.0e-4)",
    }
    assert cfg.optim.grad_clip_val == 5.0
