"""End-to-end: ``train.py data=<reader> data.path=<fixture>`` for every real-data format (fixtures written in the
exact released layouts), and learning well beyond chance on the real 8x8 digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

try:
    from .data_fixtures import mnist_fixture, write_csd_dataset, write_mmsa, write_mult, write_urfunny
except ImportError:  # tests/ is not a package
    from data_fixtures import mnist_fixture, write_csd_dataset, write_mmsa, write_mult, write_urfunny

from mmfusion.errors import DataError
from mmfusion.train import train
from mmfusion.utils.runtime import compose_train_cfg

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "~callbacks.model_summary",
    "~callbacks.early_stopping",
    "data.batch_size=4",
]

pytestmark = pytest.mark.slow


def _train(overrides, tmp_path):
    cfg = compose_train_cfg(overrides, tmp_path / "run")
    try:
        result, objs = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    return result, objs


def test_cli_mosi_mmsa_aligned(tmp_path):
    """The literal command line: python train.py data=mosi data.path=<aligned_50.pkl fixture> model=ef_lstm."""
    write_mmsa(tmp_path / "aligned_50.pkl", aligned=True)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "train.py",
            "data=mosi",
            f"data.path={tmp_path / 'aligned_50.pkl'}",
            "model=ef_lstm",
            *QUICK,
            f"hydra.run.dir={out}",
            f"paths.output_dir={out}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(m["test"]["MAE"]) and np.isfinite(m["val"]["MAE"])


def test_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(DataError, match=r"none\.pkl: file not found") as e:
        _train(["data=mosi", f"data.path={tmp_path / 'none.pkl'}", *QUICK], tmp_path)
    assert "\n" not in str(e.value)


def test_e2e_mosei_mult_unaligned_tfn(tmp_path):
    write_mult(tmp_path / "mosei_senti_data_noalign.pkl", dims=(300, 74, 35))
    result, objs = _train(
        ["data=mosei", f"data.path={tmp_path / 'mosei_senti_data_noalign.pkl'}", "model=tfn", *QUICK],
        tmp_path,
    )
    assert objs["datamodule"].resolved_format == "mult"
    assert np.isfinite(result["test"]["MAE"])


def test_e2e_mosi_csd(tmp_path):
    fx = write_csd_dataset(tmp_path)
    p = fx["paths"]
    result, objs = _train(
        [
            "data=mosi_csd",
            f"data.sequences.text={p['text']}",
            f"data.sequences.audio={p['audio']}",
            f"data.sequences.vision={p['vision']}",
            f"data.labels={p['labels']}",
            f"data.folds={fx['folds']}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "model=ef_lstm",
            *QUICK,
        ],
        tmp_path,
    )
    assert objs["datamodule"].cache_path.is_file()
    assert np.isfinite(result["test"]["MAE"])


def test_e2e_urfunny(tmp_path):
    write_urfunny(tmp_path)
    result, _ = _train(
        ["data=urfunny", f"data.path={tmp_path}", "data.context_sentences=2", "model=ef_lstm", *QUICK],
        tmp_path,
    )
    assert 0.0 <= result["test"]["acc"] <= 1.0


def test_e2e_mnist_idx(tmp_path):
    mnist_fixture(tmp_path, np.random.default_rng(0), gz=True)
    result, _ = _train(
        ["data=mnist", f"data.path={tmp_path}", "data.n_valid=10", "model=ef_lstm", *QUICK], tmp_path
    )
    assert 0.0 <= result["test"]["acc"] <= 1.0


def test_e2e_digits_learns_beyond_chance(tmp_path):
    result, _ = _train(
        [
            "data=digits",
            "model=ef_lstm",
            "model.hidden=64",
            "model.dropout=0.1",
            "trainer.max_epochs=8",
            "trainer.enable_progress_bar=false",
            "logger=none",
            "~callbacks.model_summary",
            "~callbacks.early_stopping",
            "data.batch_size=32",
        ],
        tmp_path,
    )
    assert result["test"]["acc"] > 0.6, result["test"]  # chance is 0.1


def test_e2e_mosi_tokens_magbert(tmp_path):
    """data.text=tokens: MMSA text_bert ids reach MAG-BERT (the packaged offline BERT, one layer kept)."""
    write_mmsa(tmp_path / "aligned_50.pkl", aligned=True)
    result, objs = _train(
        [
            "data=mosi",
            f"data.path={tmp_path / 'aligned_50.pkl'}",
            "data.text=tokens",
            "model=magbert",
            "model.bert_layers=1",
            *QUICK,
        ],
        tmp_path,
    )
    assert "tokens" in objs["datamodule"].splits["train"].tensors
    assert np.isfinite(result["test"]["MAE"])
