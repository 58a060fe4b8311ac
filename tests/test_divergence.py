"""Divergence is an error (callbacks/divergence.py), NaN labels are a DataError (data/base.py), `logger=wandb` without
a login falls back to offline (utils/wandb_offline.py), `debug=limit` works when a split has a single batch."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch

from mmfusion.callbacks.divergence import DivergenceGuard, likely_cause, nonfinite_entries
from mmfusion.data.synthetic import SyntheticSentiment
from mmfusion.errors import DataError, DivergenceError, MMFusionError
from mmfusion.tasks.objectives import SentimentRegression
from mmfusion.train import train
from mmfusion.utils import wandb_offline
from mmfusion.utils.runtime import compose_train_cfg

from .conftest import SMALL_DATA

TINY = [
    *SMALL_DATA,
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "~callbacks.model_summary",
    "~callbacks.early_stopping",
    "model.hidden=16",
    "model.proj_dim=8",
]


def _trainer(epoch: int = 2, step: int = 17) -> SimpleNamespace:
    return SimpleNamespace(
        current_epoch=epoch, global_step=step, sanity_checking=False, state=SimpleNamespace(fn="fit")
    )


def _module(lr: float = 0.5, val: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(lr=lr, plugins={}, task=SentimentRegression(), last_metrics={"val": val or {}})


def _batch(y: torch.Tensor) -> dict:
    return {
        "x": {"text": torch.zeros(4, 3, 2), "audio": torch.ones(4, 3, 2)},
        "y": y,
        "index": torch.arange(4),
    }


def test_divergence_error_is_a_bad_input_error():
    assert issubclass(DivergenceError, MMFusionError)  # CLI: one line, exit 2; sweeps catch the class


def test_nan_training_loss_names_step_value_and_lr():
    with pytest.raises(DivergenceError) as e:
        DivergenceGuard().on_train_batch_end(
            _trainer(), _module(lr=1e30), {"loss": torch.tensor(float("nan"))}, _batch(torch.zeros(4)), 3
        )
    msg = str(e.value)
    assert "\n" not in msg and "epoch 2, step 17 (batch 3)" in msg and "train/loss = nan" in msg
    assert "learning rate is too high (optim.lr=1e+30)" in msg


def test_inf_loss_with_nan_in_the_batch_blames_the_data():
    x = torch.ones(4, 3, 2)
    x[1, 2, 0] = float("nan")
    batch = {"x": {"audio": x}, "y": torch.zeros(4)}
    with pytest.raises(
        DivergenceError,
        match=r"train/loss = inf; likely cause: non-finite values in the data: "
        r"batch\['x'\]\['audio'\] \(1 of 24 values\)",
    ):
        DivergenceGuard().on_train_batch_end(_trainer(), _module(), torch.tensor(float("inf")), batch, 0)
    assert nonfinite_entries(_batch(torch.zeros(4))) == []


def test_finite_loss_passes_and_records_the_first_loss():
    g = DivergenceGuard()
    g.on_train_batch_end(_trainer(), _module(), {"loss": torch.tensor(2.0)}, _batch(torch.zeros(4)), 0)
    g.on_train_batch_end(_trainer(), _module(), {"loss": torch.tensor(5.0)}, _batch(torch.zeros(4)), 1)
    assert g.first_loss == 2.0


@pytest.mark.parametrize(
    "val", [{"loss": float("nan"), "MAE": float("nan"), "Corr": 0.1}, {"loss": 1.0, "MAE": float("inf")}]
)
def test_nonfinite_validation_loss_or_monitored_metric(val):
    with pytest.raises(
        DivergenceError,
        match=r"validation predictions are not finite after epoch 2, step 17: "
        r"val/(loss|MAE) = (nan|inf)",
    ):
        DivergenceGuard().on_validation_end(_trainer(), _module(val=val))


def test_nan_in_an_unmonitored_metric_is_not_divergence(caplog):
    # Corr is NaN for constant (finite) predictions: a collapsed model, not a diverged one
    DivergenceGuard().on_validation_end(_trainer(), _module(val={"loss": 1.0, "MAE": 1.0, "Corr": math.nan}))


def test_exploding_but_finite_validation_loss_is_a_warning(caplog):
    g = DivergenceGuard()
    g.first_loss = 1.0
    with caplog.at_level(logging.WARNING, logger="mmfusion.callbacks.divergence"):
        g.on_validation_end(_trainer(), _module(lr=1e3, val={"loss": 9e7, "MAE": 9e7}))
        g.on_validation_end(_trainer(), _module(lr=1e3, val={"loss": 9e7, "MAE": 9e7}))
    warnings = [r for r in caplog.records if "diverging" in r.getMessage()]
    assert len(warnings) == 1 and "9e+07 x the first training loss" in warnings[0].getMessage()
    assert "optim.lr=1000" in warnings[0].getMessage()
    caplog.clear()
    g2 = DivergenceGuard()
    g2.first_loss = 1.0
    g2.on_validation_end(_trainer(), _module(val={"loss": 999.0, "MAE": 999.0}))
    assert not [r for r in caplog.records if "diverging" in r.getMessage()]


def test_likely_cause_names_the_plugins():
    m = SimpleNamespace(lr=1e-3, plugins={"mdm_kl": object()})
    assert "reg: mdm_kl" in likely_cause(m)


def test_lr_1e30_stops_the_run_without_metrics(tmp_path):
    """End to end: the issue's `optim.lr=1e30` run used to exit 0 with a test table from NaN predictions."""
    cfg = compose_train_cfg([*TINY, "optim.lr=1e30"], tmp_path)
    with pytest.raises(
        DivergenceError,
        match=r"training diverged at epoch 0, step \d+ .*train/loss = nan.*"
        r"optim.lr=1e\+30",
    ):
        train(cfg)
    assert not (tmp_path / "metrics.json").exists()


# -- NaN labels: one DataError from the shared datamodule check ----------------------------------------------------
class NaNLabels(SyntheticSentiment):
    def build(self):
        out = super().build()
        out["valid"].tensors["y"][[2, 7]] = float("nan")
        return out


def test_nan_labels_are_a_data_error():
    kw = dict(n_train=16, n_valid=16, n_test=16, seq_len=4, min_len=2)
    with pytest.raises(DataError) as e:
        NaNLabels(**kw).setup()
    msg = str(e.value)
    assert (
        "\n" not in msg and "NaNLabels" in msg and "2 non-finite (NaN/inf) label(s) in the valid split" in msg
    )
    assert "samples [2, 7]" in msg
    SyntheticSentiment(**kw).setup()  # finite labels pass


# -- logger=wandb without a login ------------------------------------------------------------------------------------
@pytest.fixture
def no_login(tmp_path, monkeypatch):
    for k in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "NETRC",
        "WANDB_CONFIG_DIR",
        "WANDB_BASE_URL",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setitem(wandb_offline._NOTICE, "shown", False)
    return tmp_path


def test_wandb_without_login_goes_offline_with_one_notice(no_login, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="mmfusion"):
        assert wandb_offline.offline_unless_logged_in() is True
        assert wandb_offline.offline_unless_logged_in() is True
    notices = [r.getMessage() for r in caplog.records if "W&B: no login found" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]
    cfg = compose_train_cfg(["logger=wandb"], tmp_path / "run")
    assert cfg.logger.wandb.offline is True


def test_wandb_with_a_login_or_explicit_mode_stays_as_asked(no_login, monkeypatch):
    (no_login / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert wandb_offline.offline_unless_logged_in() is False
    (no_login / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_offline.offline_unless_logged_in() is False
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_offline.offline_unless_logged_in() is False


# -- debug=limit: numbers of batches -----------------------------------------------------------------------------------
def test_debug_limit_on_a_one_batch_validation_split(tmp_path):
    """32 validation samples = one batch: a fractional limit (0.1) asked for a tenth of it and failed."""
    overrides = [o for o in TINY if not o.startswith(("trainer.max_epochs", "logger"))]
    cfg = compose_train_cfg([*overrides, "debug=limit", "data.n_train=256"], tmp_path)
    assert cfg.trainer.limit_train_batches == 5 and cfg.trainer.limit_val_batches == 2
    result, objs = train(cfg)
    assert objs["trainer"].num_training_batches == 5  # 256 / 32 = 8 batches, limited to 5
    assert objs["trainer"].current_epoch == 3 and math.isfinite(result["test"]["MAE"])


def test_failed_sweep_job_keeps_its_class_and_is_one_line_for_hydra(monkeypatch):
    """A multirun job's DivergenceError is re-raised as its own class (the Optuna sweeper marks the trial failed)
    and as Hydra's CompactHydraException, so the basic sweeper's final re-raise prints one line, not a traceback."""
    from hydra.errors import CompactHydraException

    from mmfusion.utils import runtime
    from mmfusion.utils.runtime import _sweep_job_error

    # no Hydra job context (an earlier test in the same worker may have registered one)
    monkeypatch.setattr(runtime, "_hydra_cfg", lambda: None)
    e = _sweep_job_error(DivergenceError("training diverged at epoch 0, step 2: train/loss = nan"))
    assert isinstance(e, DivergenceError) and isinstance(e, CompactHydraException)
    assert str(e) == "error: sweep job failed: training diverged at epoch 0, step 2: train/loss = nan"
