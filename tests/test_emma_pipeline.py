"""EMMA end to end through the real configs: experiment=emma_pipeline on data=synthetic (short, seed-averaged),
a stage started from given checkpoints, and the pipeline on the other sentiment models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import open_dict

from mmfusion.train import train

SMALL = [
    "experiment=emma_pipeline",
    "data.n_train=256",
    "data.n_valid=64",
    "data.n_test=128",
    "stage.finetune.max_epochs=2",
]


def run(make_cfg, tmp_path, overrides: list[str], sub: str):
    cfg = make_cfg(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / sub)
    return train(cfg)[0]


@pytest.mark.slow
def test_emma_pipeline_synthetic_lowers_alpha_and_beats_baseline_under_noise(make_cfg, tmp_path):
    results = [run(make_cfg, tmp_path, [*SMALL, f"seed={s}"], f"s{s}") for s in (0, 1)]
    r0 = results[0]
    for f in (
        "baseline/checkpoints/last.ckpt",
        "pretrain/emma_dae.pt",
        "finetune/metrics.json",
        "metrics.json",
    ):
        assert (tmp_path / "s0" / f).is_file(), f
    mods = ("text", "audio", "vision")
    for r in results:
        emma = r["finetune"]["robustness"]["emma"]
        for m in mods:
            assert abs(sum(emma[f"noise_{m}:3"]["alpha"].values()) - 1) < 1e-5
    # the corrupted modality gets a lower importance weight than on clean data (seed average)
    for m in mods:
        clean = np.mean([r["finetune"]["robustness"]["emma"]["none"]["alpha"][m] for r in results])
        noisy = np.mean([r["finetune"]["robustness"]["emma"][f"noise_{m}:3"]["alpha"][m] for r in results])
        assert noisy < clean, (m, noisy, clean)
    # and the EMMA model's test MAE under corruption beats the baseline's (seed average)
    base = np.mean([r["summary"]["baseline"]["noise=3"] for r in results])
    emma = np.mean([r["summary"]["emma"]["noise=3"] for r in results])
    assert emma < base, (emma, base)
    assert np.mean([r["summary"]["emma"]["missing"] for r in results]) < np.mean(
        [r["summary"]["baseline"]["missing"] for r in results]
    )
    assert r0["val"]["MAE"] > 0 and r0["test"]["MAE"] == r0["finetune"]["robustness"]["emma"]["none"]["MAE"]

    # a stage started from given checkpoints: fine-tune only the gate for one epoch
    base_ckpt = r0["baseline"]["best_ckpt"]
    dae = r0["pretrain"]["dae_path"]
    r = run(
        make_cfg,
        tmp_path,
        [
            "reg=emma",
            "stage=emma_finetune",
            f"stage.base_ckpt={base_ckpt}",
            f"stage.dae_path={dae}",
            "stage.trainable=emma",
            "stage.max_epochs=1",
            "seed=0",
        ],
        "ft_only",
    )
    assert r["trainable"] == "emma" and r["parameters"]["trainable"] < 200
    # the baseline is evaluated on the same corrupted inputs as in the pipeline: identical numbers
    assert r["robustness"]["baseline"]["noise_text:3"]["MAE"] == pytest.approx(
        r0["finetune"]["robustness"]["baseline"]["noise_text:3"]["MAE"], abs=1e-9
    )
    saved = json.loads((tmp_path / "ft_only" / "metrics.json").read_text())
    assert saved["stage"] == "emma_finetune"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tfn", "lfn", "mfn"])
def test_emma_pipeline_runs_on_other_sentiment_models(make_cfg, tmp_path, model):
    r = run(
        make_cfg,
        tmp_path,
        [
            *SMALL,
            f"model={model}",
            "data.n_train=96",
            "data.n_test=64",
            "data.seq_len=8",
            "trainer.max_epochs=1",
            "stage.finetune.max_epochs=1",
            "stage.finetune.eval_noise=[3.0]",
        ],
        model,
    )
    emma = r["finetune"]["robustness"]["emma"]
    assert set(emma) == {
        "none",
        "noise_text:3",
        "noise_audio:3",
        "noise_vision:3",
        "drop_text",
        "drop_audio",
        "drop_vision",
    }
    for v in emma.values():
        assert abs(sum(v["alpha"].values()) - 1) < 1e-5 and all(0 <= b <= 1 for b in v["beta"].values())
        assert np.isfinite(v["MAE"])


def test_stage_without_checkpoint_is_a_clear_error(make_cfg, tmp_path):
    from mmfusion.errors import ConfigError

    cfg = make_cfg(["stage=emma_pretrain"])
    with pytest.raises(ConfigError, match="stage.base_ckpt is required"):
        train(cfg)
    cfg = make_cfg(["reg=emma", "stage=emma_finetune", f"stage.base_ckpt={tmp_path / 'none.ckpt'}"])
    with pytest.raises(ConfigError, match="file not found"):
        train(cfg)
