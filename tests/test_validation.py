"""Config validation up front (utils/validate.py) and the command-line key checks (utils/cli.py): every wrong value
of issue 15 is one ConfigError line naming the key, the value and what is expected, raised before anything is
built; unknown keys get a spelling suggestion; `trainer.<arg>=` works without `+`; every shipped config passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfusion import train as train_mod
from mmfusion.errors import ConfigError
from mmfusion.utils import cli
from mmfusion.utils.runtime import compose_train_cfg
from mmfusion.utils.validate import check_eval_cfg, check_train_cfg

from .conftest import CONFIG_DIR, run_cli

# (overrides, substrings the one-line message must contain): the cases of issue 15 and their neighbours
CASES = {
    "max_epochs_abc": (["trainer.max_epochs=abc"], ["trainer.max_epochs='abc'", "expected an integer >= 1"]),
    "max_epochs_zero": (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "expected an integer >= 1"]),
    "max_epochs_-1_without_max_steps": (["trainer.max_epochs=-1"], ["trainer.max_epochs=-1", "integer >= 1"]),
    "batch_size_zero": (["data.batch_size=0"], ["data.batch_size=0", "expected an integer >= 1"]),
    "batch_size_negative": (["data.batch_size=-4"], ["data.batch_size=-4", "expected an integer >= 1"]),
    "batch_size_float": (["data.batch_size=2.5"], ["data.batch_size=2.5", "expected an integer"]),
    "lr_word": (["optim.lr=fast"], ["optim.lr='fast'", "expected a learning rate > 0"]),
    "lr_negative": (["optim.lr=-0.001"], ["optim.lr=-0.001", "expected a learning rate > 0"]),
    "lr_zero": (["optim.lr=0"], ["optim.lr=0", "expected a learning rate > 0"]),
    "lr_nan": (["optim.lr=nan"], ["optim.lr=nan", "expected a learning rate > 0"]),
    "weight_decay_negative": (["optim.weight_decay=-1"], ["optim.weight_decay=-1", ">= 0"]),
    "seed_word": (["seed=abc"], ["seed='abc'", "expected an integer in [0, 4294967295] or null"]),
    "seed_negative": (["seed=-3"], ["seed=-3", "[0, 4294967295]"]),
    "dropout_above_one": (["model.dropout=1.5"], ["model.dropout=1.5", "dropout probability in [0, 1)"]),
    "dropout_in_dict_of_tfn": (
        ["model=tfn", "model.dropout={text: 0.1, audio: 2.0}"],
        ["model.dropout=", "dropout probability in [0, 1)"],
    ),
    "model_width_word": (["model.hidden=abc"], ["model.hidden='abc'", "expected an integer"]),
    "model_width_zero": (["model.proj_dim=0"], ["model.proj_dim=0", "expected an integer >= 1"]),
    "model_bool_as_number": (
        ["model=mfn", "model.gates_see_memory=2"],
        ["model.gates_see_memory=2", "true or false"],
    ),
    "model_unknown_argument": (
        ["+model.dropuot=0.1"],
        ["model.dropuot", "unknown argument of EFLSTM", "did you mean 'dropout'?"],
    ),
    "mcan_on_sentiment_data": (
        ["model=mcan", "data=synthetic"],
        ["model=mcan", "vocab_size", "data=synthetic", "data=easyvqa"],
    ),
    "reg_weight_word": (
        ["reg=mdm_kl", "reg.mdm_kl.weight=abc"],
        ["reg.mdm_kl.weight='abc'", "expected a number"],
    ),
    "reg_weight_negative": (["reg=mdm_kl", "reg.mdm_kl.weight=-0.1"], ["reg.mdm_kl.weight=-0.1", ">= 0"]),
    "reg_critic_lr_zero": (
        ["reg=mdm_wasserstein", "reg.mdm_wasserstein.lr=0"],
        ["reg.mdm_wasserstein.lr=0", "> 0"],
    ),
    "limit_fraction_above_one": (
        ["+trainer.limit_val_batches=1.5"],
        ["trainer.limit_val_batches=1.5", "fraction"],
    ),
    "precision_unknown": (["trainer.precision=17"], ["trainer.precision=17", "32-true"]),
    "trainer_unknown_argument": (
        ["+trainer.max_epoch=3"],
        ["trainer.max_epoch", "unknown Trainer argument", "did you mean 'max_epochs'?"],
    ),
    "monitor_on_test": (["data.task.monitor=test/MAE"], ["data.task.monitor='test/MAE'", "val/"]),
    "mode_word": (["data.task.mode=up"], ["data.task.mode='up'", "min, max"]),
    "num_workers_negative": (["data.num_workers=-1"], ["data.num_workers=-1", ">= 0"]),
    "train_not_bool": (["train=maybe"], ["train='maybe'", "true or false"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_value_is_one_line_naming_key_value_expected(name, tmp_path):
    overrides, needles = CASES[name]
    cfg = compose_train_cfg(overrides, tmp_path)
    with pytest.raises(ConfigError) as e:
        check_train_cfg(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_validation_runs_before_anything_is_built(tmp_path, monkeypatch):
    def must_not_run(*a, **k):
        raise AssertionError("the datamodule was built before the config was validated")

    monkeypatch.setattr(train_mod, "build_datamodule", must_not_run)
    cfg = compose_train_cfg(["optim.lr=-1"], tmp_path)
    with pytest.raises(ConfigError, match="optim.lr=-1"):
        train_mod.train(cfg)


def test_max_epochs_minus_one_is_fine_with_max_steps(tmp_path):
    check_train_cfg(compose_train_cfg(["trainer.max_epochs=-1", "+trainer.max_steps=100"], tmp_path))


def test_eval_config_checks(tmp_path):
    cfg = compose_train_cfg(["ckpt_path=x.ckpt", "split=train"], tmp_path, "eval.yaml")
    with pytest.raises(ConfigError, match="split='train': expected one of test, valid"):
        check_eval_cfg(cfg)


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


VQA_REGS = {"cont_softmax", "cont_sparsemax", "mca", "test_mca"}
SHIPPED = (
    [[f"model={m}"] + (["data=easyvqa"] if m.startswith("mcan") else []) for m in _names("model")]
    + [[f"data={d}"] for d in _names("data") if d != "manifolds"]
    + [[f"reg={r}"] + (["model=mcan", "data=easyvqa"] if r in VQA_REGS else []) for r in _names("reg")]
    + [[f"{g}={n}"] for g in ("experiment", "optim", "trainer", "debug", "hparams_search") for n in _names(g)]
)


@pytest.mark.parametrize("overrides", SHIPPED, ids=lambda o: " ".join(o))
def test_every_shipped_config_passes(overrides, tmp_path):
    check_train_cfg(compose_train_cfg(overrides, tmp_path))


# -- command line: keys, suggestions, trainer.<arg>= without '+' ---------------------------------------------------
def test_unknown_key_suggests_the_closest():
    msg = cli.check_keys(["optim.lrr=1e-3"], CONFIG_DIR)
    assert msg.startswith("error: unknown config key 'optim.lrr'") and "did you mean 'optim.lr'?" in msg
    assert "+optim.lrr=1e-3" in msg and "\n" not in msg
    msg = cli.check_keys(["sed=3"], CONFIG_DIR)
    assert "did you mean 'seed'?" in msg
    msg = cli.check_keys(["trainer.max_epoch=3"], CONFIG_DIR)
    assert "not a Trainer argument" in msg and "did you mean 'trainer.max_epochs'?" in msg


def test_known_keys_and_added_keys_pass():
    assert (
        cli.check_keys(
            [
                "model=tfn",
                "model.post_fusion_dim=64",
                "+foo.bar=1",
                "++trainer.fast_dev_run=1",
                "hydra.run.dir=/tmp/x",
                "~callbacks.early_stopping",
                "seed=1,2",
            ],
            CONFIG_DIR,
        )
        is None
    )


def test_key_must_exist_for_every_swept_choice():
    msg = cli.check_keys(["model=tfn,mfn", "model.dropout=0.3"], CONFIG_DIR)
    assert "with model=mfn" in msg and "'model.dropout'" in msg
    assert cli.check_keys(["model=tfn,lfn", "model.dropout=0.3"], CONFIG_DIR) is None


def test_unparsable_override_is_one_line():
    msg = cli.check_keys(["optim.lr=1e-3="], CONFIG_DIR)
    assert msg.startswith("error: cannot parse override 'optim.lr=1e-3='") and "\n" not in msg


def test_trainer_arguments_need_no_plus(tmp_path):
    argv = cli.rewrite_trainer_overrides(
        [
            "trainer.fast_dev_run=true",
            "trainer.limit_train_batches=5",
            "trainer.max_epochs=2",
            "trainer.nonsense=1",
            "model=tfn",
            "-m",
        ]
    )
    assert argv == [
        "++trainer.fast_dev_run=true",
        "++trainer.limit_train_batches=5",
        "++trainer.max_epochs=2",
        "trainer.nonsense=1",
        "model=tfn",
        "-m",
    ]
    cfg = compose_train_cfg(argv[:3], tmp_path)
    assert (
        cfg.trainer.fast_dev_run is True
        and cfg.trainer.limit_train_batches == 5
        and cfg.trainer.max_epochs == 2
    )
    assert cli.check_keys(argv[:3], CONFIG_DIR) is None


# -- the real command line: exit status 2 and exactly one stderr line ----------------------------------------------
def _one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'"),
        (["model=mcan", "data=synthetic"], "vocab_size"),
        (["optim.lrr=1e-3"], "did you mean 'optim.lr'?"),
    ],
)
def test_cli_exit_2_one_line(args, needle, tmp_path):
    assert needle in _one_line(run_cli(["train.py", *args, f"hydra.run.dir={tmp_path}"], timeout=300))
    assert not (Path(tmp_path) / "metrics.json").exists()


def test_failed_sweep_ends_in_one_line(capsys, monkeypatch):
    """-m: Hydra re-raises a failed job's exception (HYDRA_FULL_ERROR=1) and the hook prints bad input as one line;
    a bug keeps its traceback."""
    import sys

    from mmfusion.errors import DivergenceError

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    cli.one_line_sweep_errors(["model=tfn"])
    assert "HYDRA_FULL_ERROR" not in __import__("os").environ  # single runs: Hydra's behaviour unchanged
    cli.one_line_sweep_errors(["-m", "seed=1,2"])
    assert __import__("os").environ["HYDRA_FULL_ERROR"] == "1" and sys.excepthook is cli._sweep_excepthook
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    cli._sweep_excepthook(DivergenceError, DivergenceError("training diverged\nat step 2"), None)
    assert capsys.readouterr().err == "error: training diverged at step 2\n"
    try:
        raise ValueError("a bug")
    except ValueError as exc:
        cli._sweep_excepthook(ValueError, exc, exc.__traceback__)
    assert "Traceback" in capsys.readouterr().err
