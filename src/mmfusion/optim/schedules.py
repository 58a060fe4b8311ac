"""MCAN's learning-rate schedule (Farinhas 2021, Table 6.1; ``MILVLG/mcan-vqa`` ``core/model/optim.py``,
``core/exec.py``): warm-up ``lr(t) = min(t / (warmup_epochs + 1), 1) * base`` for 1-based epoch t, i.e.
``min(2.5e-5 t, 1e-4)`` for base 1e-4, piecewise constant within an epoch; then x0.2 at the start of each
0-based epoch in ``decay_epochs`` = (10, 12). With 13 epochs: epochs 1-10 at 1e-4 (after warm-up),
11-12 at 2e-5, 13 at 4e-6.

Table 6.1 words the decay as "at epoch t in {10, 12}" with t from 1; the reference code applies it at the start
of 0-based epochs 10 and 12 (1-based 11 and 13), which we follow.
Use with ``optim.scheduler_interval: epoch`` (stepped once at the end of every training epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from mmfusion.errors import ConfigError


class WarmupStepDecay:
    """Picklable factor ``f(epoch)`` (0-based) for :class:`~torch.optim.lr_scheduler.LambdaLR`."""

    def __init__(
        self, warmup_epochs: int = 3, decay_epochs: Sequence[int] = (10, 12), decay_rate: float = 0.2
    ) -> None:
        if warmup_epochs < 0 or not 0.0 < decay_rate <= 1.0:
            raise ConfigError(
                f"WarmupStepDecay: need warmup_epochs >= 0 and 0 < decay_rate <= 1, got "
                f"{warmup_epochs}, {decay_rate}"
            )
        self.warmup_epochs = int(warmup_epochs)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_rate = float(decay_rate)

    def __call__(self, epoch: int) -> float:
        warm = min((epoch + 1) / (self.warmup_epochs + 1), 1.0)
        n_decays = sum(1 for e in self.decay_epochs if epoch >= e)
        return warm * self.decay_rate**n_decays


def mcan_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_epochs: int = 3,
    decay_epochs: Sequence[int] = (10, 12),
    decay_rate: float = 0.2,
) -> LambdaLR:
    """``LambdaLR`` with :class:`WarmupStepDecay` (per-epoch stepping)."""
    return LambdaLR(optimizer, WarmupStepDecay(warmup_epochs, decay_epochs, decay_rate))
