"""Model and experiment configs compose and build (no data files needed: models get MOSI-like dims)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmfusion.utils.runtime import compose_train_cfg

DIMS = {"text": 100, "audio": 73, "vision": 100}
EXPERIMENTS = [f"{d}_{m}" for d in ("mosi", "mosei") for m in ("tfn", "lfn", "mfn", "ef_lstm", "magbert")]
EXPERIMENTS += ["mosi_mult"]


def _compose(overrides: list[str]):
    return compose_train_cfg([*overrides, "paths.output_dir=/tmp/unused"])


@pytest.mark.parametrize("exp", [e for e in EXPERIMENTS if not e.endswith("magbert")])
def test_experiment_builds_its_model(exp: str) -> None:
    cfg = _compose([f"experiment={exp}"])
    assert cfg.model._target_.split(".")[-1].lower().replace("_", "") in exp.replace("_", "")
    model = instantiate(cfg.model, _partial_=True)(input_dims=DIMS, output_dim=1)
    out = model({"x": {m: torch.randn(2, 1, d) for m, d in DIMS.items()}})
    assert out.prediction.shape == (2, 1)


def test_magbert_experiments_wire_the_tokenizer_and_schedule() -> None:
    cfg = _compose(["experiment=mosi_magbert"])
    assert cfg.data.text_tokenizer == cfg.model.pretrained == "minilm"
    assert cfg.optim.scheduler_interval == "step" and cfg.optim.scheduler._partial_
    cfg = _compose(["experiment=mosei_magbert"])
    assert (
        cfg.data.text == "tokens"
        and cfg.model.pretrained == "bert-base-uncased"
        and cfg.model.pooling == "cls"
    )


def test_synergy_grid_is_a_plain_basic_sweep() -> None:
    cfg = _compose(["hparams_search=synergy_grid", "experiment=mosi_tfn"])
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    grid = [str(v).split(",") for v in params.values()]
    assert sorted(params) == ["data.batch_size", "optim.lr"]
    assert [float(x) for x in grid[0]] == [32, 64]
    assert [float(x) for x in grid[1]] == [1e-2, 5e-3, 1e-3, 5e-4, 1e-4]
    assert cfg.optim.grad_clip_val == 5.0 and cfg.optim.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.hydra.mode is None  # not forced to MULTIRUN: run it with -m


@pytest.mark.parametrize("optim", ["adamw", "adam", "mcan"])
def test_shipped_optimisers_are_fused_and_update_like_the_for_loop(optim: str) -> None:
    """``optim=adamw|adam|mcan`` build torch's fused kernel; its updates equal the for-loop updates to float
    rounding (the trainer's speed-up changes no result beyond that)."""
    cfg = _compose([f"optim={optim}"])
    torch.manual_seed(0)
    w0 = torch.randn(64, 33)
    w, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = instantiate(cfg.optim.optimizer)([w], lr=1e-2)
    assert opt.defaults["fused"] is True
    kw = {
        k: v for k, v in opt.defaults.items() if k in ("betas", "eps", "weight_decay", "amsgrad", "maximize")
    }
    slow = type(opt)([ref], lr=1e-2, foreach=False, **kw)
    for _ in range(3):
        g = torch.randn(64, 33)
        w.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        slow.step()
    assert float((ref.detach() - w0).abs().mean()) > 5e-3  # the weights moved (3 steps of ~lr)
    torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
