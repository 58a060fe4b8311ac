"""Short real training runs (EF-LSTM on ``data=synthetic``, the module's own training step, no Trainer) with a loss
plug-in at its SHIPPED config or with its weight set to 0, at the same seed: what the plug-in tests compare."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion.build import build_datamodule, build_module
from mmfusion.utils.runtime import compose_train_cfg

SMALL = [
    "model=ef_lstm",
    "data.n_train=320",
    "data.n_valid=256",
    "data.n_test=32",
    "data.seq_len=12",
    "data.min_len=4",
    "logger=none",
    "seed=0",
]


def short_run(reg: str, overrides: list[str] | None = None, epochs: int = 3) -> dict[str, Any]:
    """Train ``epochs`` epochs; return the module, the validation representations and predictions."""
    from hydra.core.global_hydra import GlobalHydra

    cfg = compose_train_cfg(
        [*SMALL, f"reg={reg}", *(overrides or [])], Path(tempfile.mkdtemp(prefix="mmf_eff_"))
    )
    GlobalHydra.instance().clear()
    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    opts, _ = module.configure_optimizers()
    loader = dm.train_dataloader()
    for p in module.plugins.values():
        p.set_total_steps(epochs * len(loader))  # as the Trainer does (warm-ups are fractions of the run)
    module.train()
    for _ in range(epochs):
        for batch in loader:
            module.optimization_step(batch, opts, lambda v: v.backward())
    module.eval()
    outs = []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            outs.append((module.net(batch), batch["y"]))
    uni = {m: torch.cat([o.unimodal[m] for o, _ in outs]) for m in module.net.modalities}
    fused = torch.cat([o.fused for o, _ in outs])
    pred = torch.cat([o.prediction.reshape(-1) for o, _ in outs]).numpy()
    y = torch.cat([t for _, t in outs]).numpy()
    return {
        "module": module,
        "plugin": module.plugins[reg],
        "unimodal": uni,
        "fused": fused,
        "corr": float(np.corrcoef(pred, y)[0, 1]),
    }


def layer_normed(views: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    import torch.nn.functional as F

    from mmfusion.estimators.dependence import LN_EPS

    return [F.layer_norm(v.double(), v.shape[-1:], eps=LN_EPS) for v in views.values()]


def fixed_projection_mmd(plugin: Any, unimodal: dict[str, torch.Tensor], fused: torch.Tensor) -> float:
    """Sum over modalities of the unbiased MMD^2 between the layer-normalised unimodal and fused representations
    after the plug-in's FIXED random projections (no trained map): a divergence of the representations themselves,
    comparable between runs with the same projection seed."""
    from mmfusion.estimators.dependence import mmd2

    uni = dict(zip(unimodal, layer_normed(unimodal)))
    (fz,) = layer_normed({"fused": fused})
    total = 0.0
    for m in plugin.modalities:
        a = uni[m] @ getattr(plugin, f"R_uni_{m}").double().T
        b = fz @ getattr(plugin, f"R_fus_{m}").double().T
        total += float(mmd2(a, b))
    return total
