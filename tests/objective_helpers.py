"""Shared helpers of the representation-objective tests (contrastive, DCCA, autoencoder): a short real training
run on ``data=synthetic`` through the configs, and probes of the learnt representations that do not use the
plug-in's own networks (so a run with the term at weight 0 is measured the same way)."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from omegaconf import open_dict

from mmfusion.build import build_datamodule, build_module
from mmfusion.contract import FusionOutput
from mmfusion.utils.runtime import compose_train_cfg

SYNTH = [
    "data=synthetic",
    "data.n_train=640",
    "data.n_valid=256",
    "data.seq_len=20",
    "data.min_len=5",
    "optim.scheduler=null",
    "logger=none",
]


def short_run(
    reg: str,
    overrides: list[str],
    model: str = "ef_lstm",
    epochs: int = 3,
    seed: int = 0,
    tmp: str = "/tmp/mmfusion-objective-tests",
):
    """Train ``model`` with ``reg`` for ``epochs`` on small synthetic data (the module's real training step);
    return ``(module, {"train": out, "val": out}, {"train": batch, "val": batch})`` with the outputs of the
    trained model (eval mode) on the whole train and validation splits."""
    torch.manual_seed(seed)
    cfg = compose_train_cfg([f"model={model}", f"reg={reg}", f"seed={seed}", *SYNTH, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = tmp
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    module.train()
    opts, _ = module.configure_optimizers()
    for _ in range(epochs):
        for batch in dm.train_dataloader():
            module.optimization_step(batch, opts, lambda loss: loss.backward())
    module.eval()
    outs, batches = {}, {}
    with torch.no_grad():
        for split in ("train", "valid"):
            ds = dm.splits[split]
            batch = move_data_to_device(ds.__getitems__(list(range(len(ds)))), "cpu")
            key = "val" if split == "valid" else split
            outs[key], batches[key] = module.net(batch), batch
    return module, outs, batches


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def linear_cca_heldout(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    k: int,
    ridge: float = 1e-3,
) -> float:
    """Sum of the top-``k`` held-out canonical correlations: CCA directions fitted on ``train`` (numpy, ridge
    relative to the mean variance), correlations of the paired canonical variates measured on ``val``."""
    a, b = (_np(t) for t in train)
    ma, mb = a.mean(0), b.mean(0)
    a, b = a - ma, b - mb
    n = a.shape[0]
    saa, sbb, sab = a.T @ a / (n - 1), b.T @ b / (n - 1), a.T @ b / (n - 1)
    saa += ridge * np.trace(saa) / saa.shape[0] * np.eye(saa.shape[0])
    sbb += ridge * np.trace(sbb) / sbb.shape[0] * np.eye(sbb.shape[0])

    def inv_sqrt(s: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(s)
        return v @ np.diag(w**-0.5) @ v.T

    wa, wb = inv_sqrt(saa), inv_sqrt(sbb)
    u, _, vt = np.linalg.svd(wa @ sab @ wb)
    pa, pb = wa @ u[:, :k], wb @ vt.T[:, :k]
    va, vb = (_np(val[0]) - ma) @ pa, (_np(val[1]) - mb) @ pb
    return float(sum(abs(np.corrcoef(va[:, i], vb[:, i])[0, 1]) for i in range(k)))


def ridge_reconstruction_error(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    ridge: float = 1e-2,
) -> float:
    """Held-out normalised MSE of the ridge regression (closed form) from ``x`` to standardised ``y``."""
    x, y, vx, vy = _np(train_x), _np(train_y), _np(val_x), _np(val_y)
    mx, sx = x.mean(0), x.std(0) + 1e-8
    my, sy = y.mean(0), y.std(0) + 1e-8
    x, vx = (x - mx) / sx, (vx - mx) / sx
    y, vy = (y - my) / sy, (vy - my) / sy
    w = np.linalg.solve(x.T @ x + ridge * x.shape[0] * np.eye(x.shape[1]), x.T @ y)
    return float(((vx @ w - vy) ** 2).mean())


def infonce_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    dim: int = 16,
    steps: int = 300,
    seed: int = 0,
) -> float:
    """Held-out symmetric InfoNCE estimate (nats, full validation batch) of a fresh linear CLIP critic (two
    projections + learnt temperature) fitted with Adam on the frozen ``train`` pair."""
    from mmfusion.plugins.contrastive import clip_logits, symmetric_infonce

    g = torch.Generator().manual_seed(seed)
    (a, b), (va, vb) = [t.detach().float() for t in train], [t.detach().float() for t in val]
    pa = torch.nn.Parameter(torch.randn(a.shape[1], dim, generator=g) / a.shape[1] ** 0.5)
    pb = torch.nn.Parameter(torch.randn(b.shape[1], dim, generator=g) / b.shape[1] ** 0.5)
    t = torch.nn.Parameter(torch.tensor(2.0))
    opt = torch.optim.Adam([pa, pb, t], lr=1e-2)
    ma, sa, mb, sb = a.mean(0), a.std(0) + 1e-6, b.mean(0), b.std(0) + 1e-6
    a, b, va, vb = (a - ma) / sa, (b - mb) / sb, (va - ma) / sa, (vb - mb) / sb
    for _ in range(steps):
        idx = torch.randperm(a.shape[0], generator=g)[:256]
        loss, _ = symmetric_infonce(clip_logits(a[idx] @ pa, b[idx] @ pb, t))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, est = symmetric_infonce(clip_logits(va @ pa, vb @ pb, t))
    return float(est)


def unimodal_pair(out: FusionOutput, a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
    return out.unimodal[a], out.unimodal[b]
