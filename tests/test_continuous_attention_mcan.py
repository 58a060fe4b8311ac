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
    "model=mcan", "data=easyvqa", "data.max_train_images=48", "data.max_test_images=16", "data.batch_size=16",
    "model.layers=1", "model.hidden=32", "model.heads=4", "model.ff=64", "model.flat_mlp=32", "model.flat_out=64",
    "model.cnn_channels=[8,16,32]", "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
    "logger=none", "callbacks=default", "~callbacks.model_summary", "~callbacks.early_stopping",
]


@pytest.mark.slow
@pytest.mark.parametrize("reg,cls,extra", [
    ("cont_softmax", ContinuousSoftmaxPool, []),
    ("cont_sparsemax", ContinuousSparsemaxPool, []),
    ("mca", MCAPool, ["reg.mca.pool_kwargs.select_k=true", "reg.mca.pool_kwargs.k_max=3", "reg.mca.pool_kwargs.n_inits=1"]),
])
def test_mcan_easyvqa_with_continuous_attention(make_cfg, reg, cls, extra) -> None:
    cfg = make_cfg(TINY + [f"reg={reg}", *extra], fast=False)
    result, objs = train(cfg)
    net = objs["module"].net
    pool = net.pools["image"]
    assert isinstance(pool, cls) and pool.grid_shape == net.grid_shape
    assert not isinstance(net.pools["question"], cls)  # the language AttFlat stays discrete (thesis)
    assert math.isfinite(result["test"]["loss"]) and 0.0 <= result["test"]["vqa_acc"] <= 100.0
    if reg == "mca":  # test-MCA ran at validation/test and counted the selected K
        assert int(pool.k_histogram.sum()) > 0
    net.train()
    batch = next(iter(objs["datamodule"].train_dataloader()))
    out = net(batch)
    out.prediction.sum().backward()
    g = pool.mlp.net[0].weight.grad
    assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0
