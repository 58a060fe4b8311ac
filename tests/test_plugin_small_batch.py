"""Small batches never crash a loss plug-in: a term that cannot be formed on a batch (in-batch negatives, MMD, a
covariance) contributes nothing for that batch and is counted; and the generic influence diagnostic works for
every loss plug-in (any ``PluginLoss``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmfusion.contract import Plugin
from mmfusion.plugins.influence import gradient_influence
from mmfusion.tasks.module import FusionModule
from mmfusion.tasks.objectives import SentimentRegression
from mmfusion.tasks.training_step import active_plugins

from .reg_helpers import DIMS, TinyFusion, redundant_batch

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "reg"
# EMMA needs pre-trained DAEs (its own pipeline tests cover it); its Omega is a per-sample mean with no batch floor
NOT_HERE = {"none", "emma"}


def loss_plugin_configs() -> list[str]:
    """Every reg config whose plug-in contributes a loss term (overrides ``Plugin.loss``)."""
    names = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.stem in NOT_HERE:
            continue
        cfg = OmegaConf.load(path)
        if path.stem not in cfg or "_target_" not in cfg[path.stem]:
            continue  # a variant config of another plug-in (e.g. test_mca.yaml holds `mca`)
        module, _, cls = cfg[path.stem]["_target_"].rpartition(".")
        klass = getattr(__import__(module, fromlist=[cls]), cls)
        if klass.loss is not Plugin.loss:
            names.append(path.stem)
    return names


LOSS_PLUGINS = loss_plugin_configs()


def subset(batch: dict, n: int) -> dict:
    return {"x": {m: v[:n] for m, v in batch["x"].items()}, "y": batch["y"][:n], "index": batch["index"][:n]}


def module_with(name: str) -> FusionModule:
    torch.manual_seed(0)
    plugin = instantiate(OmegaConf.load(CONFIGS / f"{name}.yaml")[name])
    info = {"modalities": tuple(DIMS), "input_dims": dict(DIMS), "n_train": 32}
    return FusionModule(TinyFusion(), SentimentRegression(), {name: plugin}, data_info=info)


def test_the_loss_plugins_are_found() -> None:
    assert {"mdm_kl", "mdm_f", "mdm_wasserstein", "synergy_mmd", "synergy_kl"} <= set(LOSS_PLUGINS)


@pytest.mark.parametrize("name", LOSS_PLUGINS)
def test_last_batches_of_one_and_two_samples_skip_the_term_and_count(name: str) -> None:
    module = module_with(name)
    plugin = module.plugins[name]
    opts, _ = module.configure_optimizers()
    full = redundant_batch(n=32)
    for n in (32, 1, 2, 32):
        before = dict(module.skipped_batches)
        loss, task_loss, logs = module.optimization_step(subset(full, n), opts, lambda v: v.backward())
        assert torch.isfinite(loss) and torch.isfinite(task_loss)
        skipped = n < plugin.min_batch_size
        assert module.skipped_batches[name] == before[name] + int(skipped)
        assert logs[f"train/reg/{name}/skipped_batches"] == module.skipped_batches[name]
        assert (f"train/reg/{name}/loss" in logs) is not skipped
        if skipped:  # the term contributes nothing: the loss is the task loss
            assert float(loss) == float(task_loss)
    assert module.skipped_batches[name] == sum(n < plugin.min_batch_size for n in (1, 2))
    with torch.no_grad():  # evaluation on a 1-sample batch: no term, no crash
        module.eval()
        before_eval = dict(module.skipped_batches)
        act = active_plugins(module.plugins, subset(full, 1))
        assert (name in act) is (plugin.min_batch_size <= 1)
        assert module.skipped_batches == before_eval  # evaluation batches are not counted


@pytest.mark.parametrize("name", LOSS_PLUGINS)
def test_influence_is_logged_for_every_loss_plugin(name: str) -> None:
    module = module_with(name)
    module.influence_every = 2
    opts, _ = module.configure_optimizers()
    batch = redundant_batch(n=32)
    for _ in range(4):
        module.optimization_step(batch, opts, lambda v: v.backward())
    steps = [r["step"] for r in module.influence_history]
    assert steps == [1.0, 3.0]
    for rec in module.influence_history:
        assert math.isfinite(rec[f"{name}/influence"]) and rec[f"{name}/influence"] >= 0
        assert -1.0 <= rec[f"{name}/cosine"] <= 1.0


def test_influence_matches_hand_computed_gradients() -> None:
    """Against closed-form gradients: L = 0.5|w - a|^2, R = c <w, b>; grad L = w - a, grad R = c b."""
    w = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    b = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    task = 0.5 * ((w - a) ** 2).sum()
    res = gradient_influence(task, {"r": 0.3 * (w * b).sum(), "none": (a * 2).sum().requires_grad_()}, [w])
    gl, gr = (w - a).detach(), 0.3 * b
    assert res["r"]["influence"] == pytest.approx(float(gr.norm() / gl.norm()), rel=1e-6)
    assert res["r"]["cosine"] == pytest.approx(float(gl @ gr / (gl.norm() * gr.norm())), rel=1e-6)
    assert res["none"] == {"influence": 0.0, "cosine": 0.0}  # no path to the parameters: no influence
    task.backward()  # the graph was retained for the real backward
    assert torch.allclose(w.grad, gl)


@pytest.mark.parametrize("reg,n_train", [("mdm_kl", 66), ("synergy_mmd", 65)])
def test_train_with_a_last_batch_of_one_or_two(make_cfg, reg: str, n_train: int) -> None:
    """The issue's crashing commands (``train.py reg=mdm_kl data.n_train=66``, ``reg=synergy_mmd
    data.n_train=65``) at a small scale: they train, skip the small batch each epoch and log the influence."""
    from mmfusion.train import train

    _, objs = train(
        make_cfg(
            [
                f"reg={reg}",
                f"data.n_train={n_train}",
                "data.n_valid=33",
                "data.seq_len=8",
                "callbacks.plugin_influence.every_n_steps=1",
            ]
        )
    )
    module = objs["module"]
    assert module.skipped_batches[reg] == 2  # one per epoch, 2 epochs
    assert len(module.influence_history) == 2 * 2  # the two full batches of each epoch
