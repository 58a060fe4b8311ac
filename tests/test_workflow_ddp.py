"""DDP on 2 CPU processes (a CLI subprocess, never inside pytest) computes the same validation/test metrics as a
single process: predictions are gathered across ranks and deduplicated by sample index, although the splits (33
and 61 samples) are not divisible by 2 and the distributed sampler pads them with repeats.

(Training order: Lightning always re-shuffles the training sampler under DDP, so a DDP fit is not sample-order
identical to a single-process fit; only its metric computation is compared here, on one checkpoint.)"""

from __future__ import annotations

import json

import pytest

from mmfusion.train import train

from .conftest import run_cli

COMMON = [
    "data.n_train=128",
    "data.n_valid=33",
    "data.n_test=61",
    "data.seq_len=10",
    "data.min_len=3",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "~callbacks.model_summary",
    "~callbacks.early_stopping",
    "seed=3",
]


@pytest.mark.slow
def test_ddp_metrics_equal_single_process(make_cfg, tmp_path):
    cfg = make_cfg([*COMMON, "trainer.max_epochs=2"], fast=False)
    cfg.paths.output_dir = str(tmp_path / "single")
    single, _ = train(cfg)
    proc = run_cli(
        [
            "train.py",
            *COMMON,
            "train=false",
            f"ckpt_path={single['best_ckpt']}",
            "trainer=ddp_cpu",
            "trainer.devices=2",
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "train_ddp_process_1.log").exists()  # two processes really ran
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(ddp[split]) == set(single[split])
        for k, v in single[split].items():
            # float32 forward passes on different batch compositions: ~1e-9; one padded repeat counted twice
            # would move MAE/loss by ~|error|/62 ~ 1e-2
            assert ddp[split][k] == pytest.approx(v, abs=1e-6), (split, k)
