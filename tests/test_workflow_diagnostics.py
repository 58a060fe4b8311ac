"""Diagnostics callbacks: per-epoch gradient norms (checked against a hand computation), predicted-vs-true
scatter and the figure hook (model/plug-in ``figures()``, attention maps, EMMA weights) saved and logged."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

import mmfusion.utils.runtime  # noqa: F401  (config resolvers)
from mmfusion.build import build_datamodule, build_module
from mmfusion.callbacks.diagnostics import GradNormMonitor, PredictionScatter, _sq_norms
from mmfusion.callbacks.figures import FigureLogger, attention_figures, emma_figures
from mmfusion.contract import FusionOutput, Plugin


def test_sq_norms_by_prefix():
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    for p in m.parameters():
        p.grad = torch.full_like(p, 2.0)
    sq = _sq_norms(m, 1)
    assert sq == {"0": 4.0 * (6 + 3), "1": 4.0 * (3 + 1)}
    assert math.sqrt(sum(sq.values())) == pytest.approx(
        torch.cat([p.grad.flatten() for p in m.parameters()]).norm().item()
    )


class FigurePlugin(Plugin):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def figures(self, out, batch):
        import matplotlib.pyplot as plt

        self.calls += 1
        fig, ax = plt.subplots()
        ax.hist(out.fused.detach().flatten().numpy())
        return {"fused_hist": fig}


def test_callbacks_log_norms_and_figures(make_cfg, tmp_path):
    cfg = make_cfg(["trainer.max_epochs=2", "data.n_train=128", "data.n_valid=32"])
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    plugin = FigurePlugin()
    module.plugins["figs"] = plugin
    gn = GradNormMonitor(depth=2)
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer = pl.Trainer(
        max_epochs=2,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[gn, PredictionScatter(), FigureLogger()],
    )
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    assert logged["grad_norm/net/total"] > 0
    parts = [k for k in logged if k.startswith("grad_norm/net/") and k != "grad_norm/net/total"]
    assert {"grad_norm/net/lstm.weight_ih_l0", "grad_norm/net/head.0"} <= set(parts)
    # the epoch mean of the total norm is bounded by the per-part norms (triangle inequality on each step)
    assert logged["grad_norm/net/total"] <= sum(float(logged[k]) for k in parts) + 1e-6
    figs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert "figures_pred_vs_true_val_e000.png" in figs and "figures_pred_vs_true_val_e001.png" in figs
    assert "figures_reg_figs_fused_hist_e001.png" in figs and plugin.calls == 2
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 10_000  # images went to TensorBoard


def test_builtin_renderers():
    class Pool(nn.Module):
        grid_shape = (2, 3)
        last_attention = torch.softmax(torch.randn(4, 6), -1)

    model = nn.Module()
    model.pools = nn.ModuleDict({"image": Pool()})
    out = FusionOutput({}, torch.zeros(4, 2), torch.zeros(4, 1), {"attention/text": torch.rand(4, 7)})
    figs = attention_figures(model, out)
    assert set(figs) == {"attention/image", "attention/text"}
    assert figs["attention/image"].axes[0].images[0].get_array().shape == (2, 3)
    out.extras.update(
        {"emma/alpha": torch.rand(4, 3), "emma/beta": torch.rand(4, 3), "emma/energy": torch.rand(4)}
    )
    assert set(emma_figures(out, ("text", "audio", "vision"))) == {"emma/weights_energy"}
