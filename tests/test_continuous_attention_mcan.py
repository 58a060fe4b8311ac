"""End to end: model=mcan with reg=cont_softmax|cont_sparsemax|mca on data=easyvqa (real package data, a few
batches of a tiny MCAN): the image AttFlat is replaced, training/validation/test run, and gradients reach the
image-side scorer through the continuous pool."""

from __future__ import annotations

import math

import pytest
import torch

from mmfusion.attention.pools import ContinuousSoftmaxPool, ContinuousSparsemaxPool, MCAPool
from mmfusion.train import train

pytest.importorskip("easy_vqa")

TINY = [
    "model=mcan",
    "data=easyvqa",
    "data.max_train_images=48",
    "data.max_test_images=16",
    "data.batch_size=16",
    "model.layers=1",
    "model.hidden=32",
    "model.heads=4",
    "model.ff=64",
    "model.flat_mlp=32",
    "model.flat_out=64",
    "model.cnn_channels=[8,16,32]",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks=default",
    "~callbacks.model_summary",
    "~callbacks.early_stopping",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "reg,cls,extra",
    [
        ("cont_softmax", ContinuousSoftmaxPool, []),
        ("cont_sparsemax", ContinuousSparsemaxPool, []),
        (
            "mca",
            MCAPool,
            [
                "reg.mca.pool_kwargs.select_k=true",
                "reg.mca.pool_kwargs.k_max=3",
                "reg.mca.pool_kwargs.n_inits=1",
            ],
        ),
    ],
)
def test_mcan_easyvqa_with_continuous_attention(make_cfg, reg, cls, extra) -> None:
    cfg = make_cfg(TINY + [f"reg={reg}", *extra], fast=False)
    result, objs = train(cfg)
    net = objs["module"].net
    pool = net.pools["image"]
    assert isinstance(pool, cls) and pool.grid_shape == net.grid_shape
    assert not isinstance(net.pools["question"], cls)  # the language AttFlat stays discrete (thesis)
    # the reported test accuracy is the official accuracy of the trained model's answers on the evaluated batch,
    # recomputed here outside the loop (limit_test_batches=1: the first test batch)
    net.eval()
    test_batch = next(iter(objs["datamodule"].test_dataloader()))
    with torch.no_grad():
        pred = net(test_batch).prediction
    y = test_batch["y"]
    by_hand = 100.0 * float(y[torch.arange(len(y)), pred.argmax(1)].double().mean())
    assert result["test"]["vqa_acc"] == pytest.approx(by_hand, abs=1e-6)
    assert math.isfinite(result["test"]["loss"])
    if reg == "mca":  # test-MCA ran at validation/test and counted the selected K
        assert int(pool.k_histogram.sum()) > 0
    net.train()
    batch = next(iter(objs["datamodule"].train_dataloader()))
    out = net(batch)
    out.prediction.sum().backward()
    g = pool.mlp.net[0].weight.grad
    assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0


@pytest.mark.slow
def test_mcan_vqa2_grid_fixture_with_continuous_sparsemax(make_cfg, tmp_path) -> None:
    """VQA-v2 official-format fixtures with deep-spin grid features (4x4): the plug-in runs on them too; with
    bottom-up boxes it refuses with a clear error (no grid to attend over)."""
    from .vqa_fixtures import write_vqa_fixture

    args = write_vqa_fixture(tmp_path / "vqa", layout="grid")
    data = [f"data.{k}={v}" for k, v in args.items() if k != "feature_dirs"]
    data += [
        f"data.feature_dirs=[{','.join(args['feature_dirs'])}]",
        "data.min_answer_count=2",
        "data.valid_fraction=0.25",
        "data.batch_size=8",
        "data.eval_batch_size=8",
    ]
    small = [o for o in TINY if not o.startswith(("data.", "model.cnn")) and o != "data=easyvqa"]
    cfg = make_cfg(
        small + ["data=vqa2", *data, "reg=cont_sparsemax", "reg.cont_sparsemax.pool_kwargs.num_basis=16"],
        fast=False,
    )
    result, objs = train(cfg)
    pool = objs["module"].net.pools["image"]
    assert isinstance(pool, ContinuousSparsemaxPool) and pool.grid_shape == (4, 4)
    assert math.isfinite(result["test"]["loss"])


def test_plugin_refuses_box_features() -> None:
    from mmfusion.attention.attflat import AttFlat
    from mmfusion.contract import FusionModel, ModelInfo
    from mmfusion.errors import ConfigError
    from mmfusion.plugins.continuous_attention import ContinuousAttention

    model = FusionModel()
    model.pools["image"] = AttFlat(8, 8, 8, grid_shape=None)
    with pytest.raises(ConfigError, match="grid features"):
        ContinuousAttention("softmax").attach(model, ModelInfo(("image",), {}, 8))
