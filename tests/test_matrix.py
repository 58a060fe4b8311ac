"""Every config composes, and every sentiment model x every loss plug-in takes a real training step."""

from __future__ import annotations

import math

import pytest
import torch

from mmfusion.bench.train_step import build_step

from .conftest import CONFIG_DIR, compose_cfg

SENTIMENT_MODELS = ["ef_lstm", "tfn", "lfn", "mfn", "magbert"]
LOSS_PLUGINS = ["none", "synergy_mmd", "synergy_kl", "mdm_kl", "mdm_f", "mdm_wasserstein"]
GROUPS = ["data", "model", "reg", "optim", "trainer", "logger", "callbacks", "debug", "experiment",
          "hparams_search", "stage"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_config_option_composes(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"], tmp_path)  # every group is in train.yaml's defaults list
    assert cfg is not None


@pytest.mark.parametrize("model", SENTIMENT_MODELS)
@pytest.mark.parametrize("reg", LOSS_PLUGINS)
def test_model_x_plugin_training_step(model, reg):
    torch.manual_seed(0)
    regs = [] if reg == "none" else [reg]
    extra = ["data.seq_len=8", "data.min_len=4"]
    module, batch, opts = build_step(model, regs, "mosi", 8, extra=extra)
    net0 = [p.detach().clone() for p in module.net.parameters() if p.requires_grad]
    plug0 = [p.detach().clone() for p in module.plugins.parameters() if p.requires_grad]
    loss, task_loss, logs = module.optimization_step(batch, opts, lambda l: l.backward())
    assert math.isfinite(float(loss)) and math.isfinite(float(task_loss))
    net1 = [p for p in module.net.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(net0, net1)), "the task model did not move"
    if regs:
        assert logs, f"{reg} logged nothing"
        if plug0:  # plug-ins with their own networks update them in the same step
            plug1 = [p for p in module.plugins.parameters() if p.requires_grad]
            assert any(not torch.equal(a, b) for a, b in zip(plug0, plug1)), f"{reg}'s networks did not move"


@pytest.mark.parametrize("reg", ["cont_softmax", "cont_sparsemax", "mca"])
def test_one_d_continuous_attention_replaces_ef_lstm_time_pool(reg):
    """EF-LSTM with attention pooling: the 1-D continuous plug-ins replace pools["time"] and train."""
    torch.manual_seed(0)
    extra = ["data.seq_len=12", "data.min_len=6", "model.pooling=attention", f"reg.{reg}.pools=[time]"]
    module, batch, opts = build_step("ef_lstm", [reg], "mosi", 8, extra=extra)
    assert type(module.net.pools["time"]).__name__ != "DiscreteAttentionPool"
    loss, _, _ = module.optimization_step(batch, opts, lambda l: l.backward())
    assert math.isfinite(float(loss))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.net.parameters())
