"""End-to-end: every sentiment baseline trains from the config system and learns.

* ``data=synthetic`` (small, short sequences): test MAE clearly below the predict-the-train-mean baseline and a
  clearly positive correlation;
* ``data=mosi_utterance`` (real CMU-MOSI utterance features, bc-LSTM split): ``Has0_acc_2 >= 0.72`` on test
  (majority class 62.1 %), with the ``experiment=mosi_<model>`` hyper-parameters and few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfusion.train import train
from mmfusion.utils.runtime import compose_train_cfg

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mosi"

SYNTH = [
    "data.n_train=768",
    "data.n_valid=128",
    "data.n_test=256",
    "data.seq_len=12",
    "data.min_len=4",
    "data.dims={text:32,audio:16,vision:16}",
]
SMALL = {
    "tfn": [
        "model.hidden=8",
        "model.text_hidden=32",
        "model.text_out=8",
        "model.post_fusion_dim=32",
        "model.dropout=0.1",
        "model.post_fusion_dropout=0.1",
        "optim.lr=3e-3",
    ],
    "lfn": [
        "model.hidden=16",
        "model.text_hidden=32",
        "model.text_out=16",
        "model.dropout=0.0",
        "optim.lr=3e-3",
    ],
    "mfn": [
        "model.hidden={text:32,audio:16,vision:16}",
        "model.mem_dim=32",
        "model.attn_hidden=32",
        "model.mem_hidden=32",
        "model.gamma1_hidden=32",
        "model.gamma2_hidden=32",
        "model.out_hidden=32",
        "optim.lr=3e-3",
    ],
    "ef_lstm": ["model.hidden=64", "model.proj_dim=32", "model.dropout=0.1", "optim.lr=3e-3"],
    "magbert": [
        "model.bert_layers=2",
        "model.bert_lr=1e-4",
        "optim.lr=1e-3",
        "data.max_tokens=24",
        "+optim.scheduler._target_=mmfusion.models.magbert.linear_warmup_schedule",
        "+optim.scheduler._partial_=true",
        "optim.scheduler_interval=step",
    ],
}
EPOCHS = {"tfn": 8, "lfn": 8, "mfn": 8, "ef_lstm": 8, "magbert": 4}  # MAG-BERT: BERT dropout on since dc751f2


def run(overrides: list[str], tmp_path: Path) -> dict:
    cfg = compose_train_cfg(
        [
            *overrides,
            "logger=none",
            "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu",
            "callbacks.early_stopping.patience=100",
        ],
        tmp_path,
    )
    result, objs = train(cfg)
    return result | {"datamodule": objs["datamodule"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tfn", "lfn", "mfn", "ef_lstm", "magbert"])
def test_learns_on_synthetic(name: str, tmp_path: Path) -> None:
    res = run(
        [f"model={name}", "data=synthetic", f"trainer.max_epochs={EPOCHS[name]}", *SYNTH, *SMALL[name]],
        tmp_path,
    )
    dm = res["datamodule"]
    y_train = dm.splits["train"].tensors["y"].numpy()
    y_test = dm.splits["test"].tensors["y"].numpy()
    mean_mae = float(np.abs(y_test - y_train.mean()).mean())
    test = res["test"]
    assert test["MAE"] < 0.8 * mean_mae, (test, mean_mae)
    assert test["Corr"] > 0.5, test


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data/mosi is not present")
@pytest.mark.parametrize("name", ["tfn", "lfn", "mfn", "ef_lstm", "magbert"])
def test_reaches_72_percent_on_mosi_utterance(name: str, tmp_path: Path) -> None:
    extra = {"magbert": ["model.bert_layers=3", "data.max_tokens=24", "trainer.max_epochs=2"]}.get(
        name, ["trainer.max_epochs=10"]
    )
    res = run([f"experiment=mosi_{name}", *extra], tmp_path)
    assert res["test"]["Has0_acc_2"] >= 0.72, res["test"]
