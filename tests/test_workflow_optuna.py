"""mmfusion's Optuna sweeper (hydra_plugins.mmfusion_sweeper, Optuna >= 4): search-space grammar, study names,
stale trials of a killed sweep, pruning, failed (diverged) trials, and every search config in
configs/hparams_search/ run for one trial with every model it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.mmfusion_sweeper.resumable_optuna import (
    _outcome,
    distribution,
    fail_stale_trials,
    finished_trials,
    study_name_for,
)
from mmfusion.callbacks.pruning import OptunaPruning, set_trial
from mmfusion.errors import ConfigError, DivergenceError

from .conftest import SMALL_DATA, run_cli

TINY = [
    *SMALL_DATA,
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "~callbacks.model_summary",
    "logger=none",
]


def _dist(line: str):
    (o,) = OverridesParser.create().parse_overrides([line])
    return distribution(o)


def test_search_space_grammar():
    assert _dist("a=tag(log, interval(1e-5, 1e-2))") == FloatDistribution(1e-5, 1e-2, log=True)
    assert _dist("a=interval(0.0, 0.5)") == FloatDistribution(0.0, 0.5)
    assert _dist("a=int(interval(2, 8))") == IntDistribution(2, 8)
    assert _dist("a=choice(16, 32, 64)") == CategoricalDistribution([16, 32, 64])
    assert _dist("a=x,y") == CategoricalDistribution(["x", "y"])
    assert _dist("a=range(2, 10, 2)") == IntDistribution(2, 8, step=2)  # Python's exclusive stop
    assert _dist("a=3") == "3"  # a plain value is a fixed override
    with pytest.raises(ConfigError, match="range"):
        _dist("a=range(0.1, 1.0, 0.1)")


def test_study_name_from_search_and_choices():
    ch = {"model": "mfn", "data": "mosi", "reg": "none", "hparams_search": "optuna_tpe"}
    assert study_name_for("optuna_tpe", ch, {}) == "optuna_tpe-model=mfn-data=mosi-reg=none"
    assert study_name_for("optuna_tpe", {**ch, "model": "tfn"}, {}) != study_name_for("optuna_tpe", ch, {})
    assert study_name_for("optuna_tpe", {**ch, "reg": ["mdm_kl", "synergy_mmd"]}, {}).endswith(
        "reg=mdm_kl+synergy_mmd"
    )
    assert (
        study_name_for("optuna_tpe", ch, {"model": "mfn,tfn"})
        == "optuna_tpe-model=mfn,tfn-data=mosi-reg=none"
    )


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_running_trial_is_failed_and_redone(tmp_path):
    import socket

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    dists = {"x": FloatDistribution(0.0, 1.0)}
    done = study.ask(dists)
    study.tell(done, 0.5)
    killed = study.ask(dists)  # left RUNNING by a sweep process that is gone
    study._storage.set_trial_system_attr(killed._trial_id, "mmf_host", socket.gethostname())
    study._storage.set_trial_system_attr(killed._trial_id, "mmf_pid", _dead_pid())
    alive = study.ask(dists)  # RUNNING in a live process (this one): left alone
    study._storage.set_trial_system_attr(alive._trial_id, "mmf_host", socket.gethostname())
    study._storage.set_trial_system_attr(alive._trial_id, "mmf_pid", os.getpid())
    study = optuna.load_study(study_name="s", storage=storage)
    assert fail_stale_trials(study) == 1
    states = {t.number: t.state for t in study.trials}
    assert states[killed.number] == optuna.trial.TrialState.FAIL
    assert states[alive.number] == optuna.trial.TrialState.RUNNING
    assert finished_trials(study) == 1  # the stale failure does not count towards n_trials
    redo = study.ask(dists)
    assert redo.params == {"x": killed.params["x"]}  # the killed trial's parameters come first
    study._storage.set_trial_system_attr(redo._trial_id, "mmf_host", socket.gethostname())
    study._storage.set_trial_system_attr(redo._trial_id, "mmf_pid", os.getpid())
    assert fail_stale_trials(study) == 0


def test_outcome_of_jobs():
    def job(value=None, exc=None):
        def rv():
            if exc is not None:
                raise exc
            return value

        return _Ret(rv)

    assert _outcome(job(0.25)) == ("COMPLETE", 0.25)
    assert _outcome(job(float("nan")))[0] == "FAIL"
    assert _outcome(job(float("inf")))[0] == "FAIL"
    assert _outcome(job(None))[0] == "FAIL"
    state, why = _outcome(job(exc=DivergenceError("training loss is nan at step 3")))
    assert state == "FAIL" and "DivergenceError" in why
    assert _outcome(job(exc=optuna.TrialPruned("x")))[0] == "PRUNED"


class _Ret:
    def __init__(self, fn):
        self._fn = fn

    @property
    def return_value(self):
        return self._fn()


def test_pruning_callback_reports_and_prunes():
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trial = study.ask({"x": FloatDistribution(0, 1)})
    cb = OptunaPruning(monitor="val/MAE")
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, callback_metrics={"val/MAE": 0.8})
    cb.on_validation_end(trainer, None)  # no trial set (not a sweep): nothing happens
    assert study.trials[0].intermediate_values == {}
    set_trial(trial)
    try:
        cb.on_validation_end(trainer, None)  # 0.8 < 1.0: reported, not pruned
        trainer.current_epoch, trainer.callback_metrics = 1, {"val/MAE": 1.5}
        with pytest.raises(optuna.TrialPruned, match="epoch 1"):
            cb.on_validation_end(trainer, None)
    finally:
        set_trial(None)
    assert study.trials[0].intermediate_values == {0: 0.8, 1: 1.5}


@pytest.mark.slow
def test_pruned_and_diverged_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    """A threshold pruner below any MAE prunes the first trial at its first validation epoch (no test, no
    metrics.json); a diverging trial (lr 1e30) is stored FAIL; the sweep exits 0."""
    proc = run_cli(
        [
            "train.py",
            "-m",
            "hparams_search=optuna_tpe",
            "model=ef_lstm",
            f"paths.log_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path / 's'}",
            "hydra.sweeper.params=null",
            "hydra.sweeper.params_by_choice=null",
            "optim.lr=choice(1e-3,1e30)",
            "~hydra.sweeper.sampler",
            "+hydra.sweeper.sampler={_target_:optuna.samplers.GridSampler}",
            "~hydra.sweeper.pruner",
            "+hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,upper:1.0e-6}",
            "hydra.sweeper.n_trials=2",
            *TINY,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'optuna' / 'studies.db'}"
    (trials,) = [
        optuna.load_study(study_name=n, storage=storage).trials for n in optuna.get_all_study_names(storage)
    ]
    by_lr = {t.params["optim.lr"]: t for t in trials}
    assert by_lr[1e-3].state == optuna.trial.TrialState.PRUNED
    assert list(by_lr[1e-3].intermediate_values) == [0]
    assert by_lr[1e30].state == optuna.trial.TrialState.FAIL
    assert not list((tmp_path / "s").glob("*/metrics.json"))
    assert "no completed trial" in proc.stdout + proc.stderr


# every search config x every model it names (its header comment / params_by_choice), one trial each
CASES = [("optuna_tpe", m, "none") for m in ("ef_lstm", "lfn", "tfn", "mfn")] + [
    ("synergy_optuna", "tfn", "synergy_mmd"),
    ("synergy_grid", "tfn", "synergy_mmd"),
]


@pytest.mark.slow
@pytest.mark.parametrize("search,model,reg", CASES)
def test_search_config_runs_as_written(tmp_path, search, model, reg):
    args = [
        "train.py",
        "-m",
        f"hparams_search={search}",
        f"model={model}",
        f"reg={reg}",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 's'}",
        *TINY,
    ]
    if search == "synergy_grid":  # Hydra's basic sweeper: one point of the grid as written
        args += ["hydra.sweeper.params={data.batch_size:32,optim.lr:1.0e-2}"]
    else:
        args += ["hydra.sweeper.n_trials=1"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (m,) = [json.loads(p.read_text()) for p in (tmp_path / "s").glob("*/metrics.json")]
    assert m["val"]["MAE"] > 0
    if search != "synergy_grid":
        storage = f"sqlite:///{tmp_path / 'optuna' / 'studies.db'}"
        (name,) = optuna.get_all_study_names(storage)
        assert name == f"{search}-model={model}-data=synthetic-reg={reg}"
        (t,) = optuna.load_study(study_name=name, storage=storage).trials
        assert t.state == optuna.trial.TrialState.COMPLETE and t.value == pytest.approx(m["val"]["MAE"])
        if search == "optuna_tpe":  # the model's own dropout keys are searched and reach the run's config
            from omegaconf import OmegaConf

            run_cfg = OmegaConf.load(tmp_path / "s" / str(t.number) / ".hydra" / "config.yaml")
            searched = {k: v for k, v in t.params.items() if k.startswith("model.")}
            assert searched
            for k, v in searched.items():
                assert OmegaConf.select(run_cfg, k) == pytest.approx(v)


def test_optuna_dashboard_reads_the_sweeper_storage(tmp_path):
    """optuna-dashboard (the `dashboard` extra) lists a study the sweeper's storage holds, by its derived name."""
    import io

    from optuna_dashboard import wsgi

    from mmfusion.utils.runtime import sqlite_url

    storage = sqlite_url(str(tmp_path / "optuna" / "studies.db"))  # what the sweeper config resolves to
    name = study_name_for("optuna_tpe", {"model": "mfn", "data": "mosi", "reg": "none"}, {})
    study = optuna.create_study(study_name=name, storage=storage)
    study.tell(study.ask({"x": FloatDistribution(0, 1)}), 0.3)
    env = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api/studies",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "SERVER_NAME": "x",
        "SERVER_PORT": "1",
        "wsgi.url_scheme": "http",
    }
    status: list[str] = []
    body = b"".join(wsgi(storage)(env, lambda s, h, e=None: status.append(s)))
    assert status == ["200 OK"]
    (summary,) = json.loads(body)["study_summaries"]
    assert summary["study_name"] == "optuna_tpe-model=mfn-data=mosi-reg=none"
