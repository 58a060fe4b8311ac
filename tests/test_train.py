"""End-to-end training through the real configs (in-process), the plug-in contract, reproducibility, eval."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mmfusion.contract import ModelInfo, Plugin, PluginLoss
from mmfusion.eval import evaluate
from mmfusion.train import train

from .conftest import SHARED


def test_default_model_learns_on_synthetic(make_cfg, tmp_path):
    cfg = make_cfg(["data.n_train=640", "data.seq_len=30", "trainer.max_epochs=4"])
    result, objs = train(cfg)
    assert result["test"]["Corr"] > 0.5, result["test"]
    # model selection is on validation; the chosen checkpoint and the metrics file are in the run folder
    assert result["selection"].startswith("val/MAE")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["MAE"] == pytest.approx(result["test"]["MAE"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # re-evaluating the best checkpoint gives the same test metrics
    ecfg = make_cfg([f"ckpt_path={result['best_ckpt']}"], fast=False, config_name="eval.yaml")
    ecfg.trainer.enable_progress_bar = False
    ev, _ = evaluate(ecfg)
    assert ev["metrics"]["MAE"] == pytest.approx(result["test"]["MAE"], abs=1e-6)
    assert ev["metrics"]["Corr"] == pytest.approx(result["test"]["Corr"], abs=1e-6)
    # dropping text at test time hurts (text carries the private factor t and most of s)
    dropped, _ = evaluate(ecfg, corrupt="drop_text")
    assert dropped["metrics"]["MAE"] > result["test"]["MAE"] + 0.05


class ProbePlugin(Plugin):
    """Trivial test plug-in: an auxiliary linear probe trained in ``inner_step`` with its own optimiser on the
    detached fused representation, and a loss term ``weight * mean ||fused||^2``."""

    def __init__(self, weight: float = 0.01) -> None:
        super().__init__()
        self.weight = weight
        self.calls = {"inner": 0, "after": 0, "loss": 0}

    def attach(self, model, info):
        self.probe = nn.Linear(info.fused_dim, 1)

    def configure_optimizers(self):
        return [torch.optim.SGD(self.probe.parameters(), lr=0.05)]

    def inner_step(self, out, batch, optimizers, backward):
        self.calls["inner"] += 1
        (opt,) = optimizers
        opt.zero_grad()
        loss = nn.functional.mse_loss(self.probe(out.fused.detach()).squeeze(-1), batch["y"])
        backward(loss)
        opt.step()
        return {"probe_mse": loss.detach()}

    def loss(self, out, batch, stage):
        self.calls["loss"] += 1
        return PluginLoss(
            self.weight * out.fused.pow(2).sum(-1).mean(), {"fused_norm2": out.fused.pow(2).sum(-1).mean()}
        )

    def after_backward(self, optimizers):
        self.calls["after"] += 1


def test_plugin_contract(make_cfg):
    from mmfusion.build import build_datamodule, build_module

    cfg = make_cfg(["trainer.max_epochs=1"])
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    plugin = ProbePlugin()
    module.plugins["probe"] = plugin
    plugin.attach(
        module.net, ModelInfo(module.net.modalities, module.net.unimodal_dims, module.net.fused_dim)
    )
    probe0 = plugin.probe.weight.detach().clone()
    net0 = {k: v.detach().clone() for k, v in module.net.state_dict().items()}
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    steps = len(dm.train_dataloader())
    assert plugin.calls["inner"] == steps and plugin.calls["after"] == steps and plugin.calls["loss"] == steps
    assert not torch.equal(plugin.probe.weight, probe0)  # the auxiliary optimiser stepped
    assert any(not torch.equal(v, net0[k]) for k, v in module.net.state_dict().items())
    main_params = {id(p) for g in module._optimizers()[0].optimizer.param_groups for p in g["params"]}
    assert not any(
        id(p) in main_params for p in plugin.parameters()
    )  # plug-in params never in the task optimiser
    logged = trainer.callback_metrics
    assert "train/reg/probe/probe_mse" in logged and "train/reg/probe/loss" in logged


def test_seed_reproduces_bit_for_bit(make_cfg, tmp_path):
    results = []
    for i in range(2):
        cfg = make_cfg(["trainer.max_epochs=1", "seed=7"])
        cfg.paths.output_dir = str(tmp_path / f"run{i}")
        res, objs = train(cfg)
        results.append((res["test"], {k: v.clone() for k, v in objs["module"].net.state_dict().items()}))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])


@pytest.mark.slow
def test_ef_lstm_mosi_utterance_beats_majority(make_cfg):
    """Real CMU-MOSI utterance features, bc-LSTM test split: >= 72 % Has0_acc_2 (majority class 62.1 %)."""
    cfg = make_cfg(
        [
            "data=mosi_utterance",
            f"data.path={SHARED / 'mosi'}",
            "trainer.max_epochs=10",
            "trainer.enable_progress_bar=false",
            "logger=none",
            "~callbacks.model_summary",
        ],
        fast=False,
    )
    result, _ = train(cfg)
    assert result["test"]["Has0_acc_2"] >= 0.72, result["test"]
