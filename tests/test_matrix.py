"""Every config composes, and every sentiment model x every loss plug-in takes a real training step."""

from __future__ import annotations

import math

import pytest
import torch

from mmfusion.bench.train_step import build_step

from .conftest import CONFIG_DIR, compose_cfg

SENTIMENT_MODELS = ["ef_lstm", "tfn", "lfn", "mfn", "magbert"]
LOSS_PLUGINS = [
    "none",
    "synergy_mmd",
    "synergy_kl",
    "mdm_kl",
    "mdm_f",
    "mdm_wasserstein",
    "contrastive",
    "dcca",
    "autoencoder",
]
GROUPS = [
    "data",
    "model",
    "reg",
    "optim",
    "trainer",
    "logger",
    "callbacks",
    "debug",
    "experiment",
    "hparams_search",
    "stage",
]


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
    bs = 16 if reg == "dcca" else 8  # dcca needs more than k = 8 samples (out_dim 8)
    module, batch, opts = build_step(model, regs, "mosi", bs, extra=extra)
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


@pytest.mark.parametrize("model", SENTIMENT_MODELS)
@pytest.mark.parametrize("reg", ["contrastive", "dcca", "autoencoder"])
def test_representation_objectives_on_batches_of_one_and_two(model, reg):
    """The lecture-4.1 objectives on every sentiment model with a last batch of 1 and 2 samples: no crash; a term
    that cannot be formed (contrastive: no negative in a batch of 1; dcca: <= k samples) adds nothing and is
    counted in skipped_batches."""
    torch.manual_seed(0)
    extra = ["data.seq_len=8", "data.min_len=4"]
    module, batch, opts = build_step(model, [reg], "mosi", 8, extra=extra)
    plugin = module.plugins[reg]
    for n in (1, 2):
        small = {
            k: ({m: v[:n] for m, v in batch[k].items()} if isinstance(batch[k], dict) else batch[k][:n])
            for k in batch
        }
        loss, task_loss, logs = module.optimization_step(small, opts, lambda l: l.backward())
        assert math.isfinite(float(loss)) and math.isfinite(float(task_loss))
        if n < plugin.min_batch_size:
            assert float(loss) == float(task_loss) and f"train/reg/{reg}/loss" not in logs
        else:
            assert f"train/reg/{reg}/loss" in logs
    assert module.skipped_batches[reg] == sum(n < plugin.min_batch_size for n in (1, 2))


def test_representation_objectives_carry_the_influence_diagnostic():
    """The generic influence diagnostic (train/reg/<name>/{influence,cosine}) covers the new plug-ins: they are
    discovered as loss plug-ins, and on a real model (TFN, reg=dcca) each term gets a finite, non-zero ratio."""
    from .test_plugin_small_batch import LOSS_PLUGINS as DISCOVERED

    assert {"contrastive", "dcca", "autoencoder"} <= set(DISCOVERED)
    torch.manual_seed(0)
    module, batch, opts = build_step(
        "tfn", ["dcca", "contrastive", "autoencoder"], "mosi", 16, extra=["data.seq_len=8", "data.min_len=4"]
    )
    module.influence_every = 1
    module.optimization_step(batch, opts, lambda l: l.backward())
    (rec,) = module.influence_history
    for name in ("dcca", "contrastive", "autoencoder"):
        assert math.isfinite(rec[f"{name}/influence"]) and rec[f"{name}/influence"] > 0
        assert -1.0 <= rec[f"{name}/cosine"] <= 1.0


@pytest.mark.parametrize("reg", ["contrastive", "dcca", "autoencoder"])
def test_representation_objectives_on_mult(reg):
    """MulT (per-modality crossmodal outputs as unimodal, concatenated final state as fused) with the lecture-4.1
    objectives: one real training step moves the model and the plug-in's networks."""
    torch.manual_seed(0)
    module, batch, opts = build_step("mult", [reg], "mosi", 16, extra=["data.seq_len=8", "data.min_len=4"])
    net0 = [p.detach().clone() for p in module.net.parameters() if p.requires_grad]
    plug0 = [p.detach().clone() for p in module.plugins.parameters() if p.requires_grad]
    loss, task_loss, logs = module.optimization_step(batch, opts, lambda l: l.backward())
    assert math.isfinite(float(loss)) and float(loss) != float(task_loss) and f"train/reg/{reg}/loss" in logs
    assert any(
        not torch.equal(a, b) for a, b in zip(net0, [p for p in module.net.parameters() if p.requires_grad])
    )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(plug0, [p for p in module.plugins.parameters() if p.requires_grad])
    )
