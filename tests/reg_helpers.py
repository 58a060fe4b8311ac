"""Shared helpers of the regulariser tests: a tiny 3-modality fusion model and redundant synthetic batches."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfusion.contract import Batch, Encoded, FusionModel, ModelInfo, Plugin

DIMS = {"text": 6, "audio": 5, "vision": 4}


class TinyFusion(FusionModel):
    """Linear encoders (B, d_m) -> d, concatenation -> tanh(Linear) fused -> linear head."""

    def __init__(self, input_dims: dict[str, int] = DIMS, d: int = 8, fused: int = 12) -> None:
        super().__init__()
        self.modalities = tuple(input_dims)
        self.enc = nn.ModuleDict({m: nn.Linear(k, d) for m, k in input_dims.items()})
        self.unimodal_dims = {m: d for m in input_dims}
        self.fused_dim = fused
        self.fuse_lin = nn.Linear(d * len(input_dims), fused)
        self.head = nn.Linear(fused, 1)

    def encode(self, batch: Batch) -> Encoded:
        return Encoded(unimodal={m: self.enc[m](batch["x"][m]) for m in self.modalities})

    def fuse(self, unimodal: dict[str, Tensor], state: dict, batch: Batch) -> Tensor:
        return torch.tanh(self.fuse_lin(torch.cat([unimodal[m] for m in self.modalities], -1)))


def redundant_batch(n: int = 64, seed: int = 0, shared: float = 0.8) -> Batch:
    """Every modality sees a noisy random embedding of one shared latent; y depends on the latent."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g)
    x = {}
    for i, (m, k) in enumerate(DIMS.items()):
        w = torch.randn(3, k, generator=torch.Generator().manual_seed(100 + i))
        x[m] = shared * z @ w + (1 - shared) * torch.randn(n, k, generator=g)
    return {"x": x, "y": z[:, 0] - 0.5 * z[:, 1], "index": torch.arange(n)}


def attach(plugin: Plugin, model: FusionModel) -> list[torch.optim.Optimizer]:
    plugin.attach(model, ModelInfo(model.modalities, model.unimodal_dims, model.fused_dim))
    return plugin.configure_optimizers()


class DropoutFusion(TinyFusion):
    """TinyFusion with dropout on the fused vector: its masks come from the global RNG stream."""

    def fuse(self, unimodal: dict[str, Tensor], state: dict, batch: Batch) -> Tensor:
        return nn.functional.dropout(super().fuse(unimodal, state, batch), 0.3, self.training)


def train_steps(plugin: Plugin | None, steps: int = 4, seed: int = 0) -> dict[str, Tensor]:
    """Model parameters after ``steps`` reference training steps with (or without) ``plugin``."""
    import torch.nn.functional as F

    from mmfusion.tasks.training_step import training_step

    torch.manual_seed(seed)
    model, batch = DropoutFusion(), redundant_batch()
    opts = attach(plugin, model) if plugin is not None else []
    task_opt = torch.optim.SGD(model.parameters(), lr=0.05)
    plugins = {"p": plugin} if plugin is not None else {}
    for _ in range(steps):
        training_step(model, lambda p, y: F.l1_loss(p.squeeze(-1), y), plugins, batch, task_opt, {"p": opts})
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
