"""Abnormal-modality injection during EMMA's fine-tuning (Werenne 2019, Sect. 4; author's code ``apply_corruption``).

Per sample: with probability ``noise_rate`` it gets Gaussian noise on k modalities, with probability
``drop_rate`` it gets k modalities zeroed (missing), otherwise it stays clean; k is uniform in
``1..max_corrupted`` and the modalities are drawn uniformly; the noise level is ``noise_level`` or, for a range
``[lo, hi]``, drawn uniformly per batch and modality. ``max_corrupted`` defaults to M - M' with
M' = floor((M + 1) / 2) the number of normal modes of Sect. 4 -- fewer than half of the modalities for odd M (one of
three for text/audio/vision), one of two for M = 2 as in the thesis' two-mode experiments. Corruption acts on the
INPUT features with the semantics of :mod:`mmfusion.evaluation.corruption` (noise std = ``noise_level`` x the feature's
std in the batch on valid steps; drop = zeros, ``[UNK]`` tokens for BERT text), and the labels are written to
``batch["corrupt"] (B, M)`` (OR-ed with any the data already carries), which EMMA's regulariser reads as eta.

Never in place on the clean tensors (the author's code wrote the noise into the training array).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from mmfusion.contract import Batch
from mmfusion.errors import ConfigError
from mmfusion.evaluation import corruption


def default_max_corrupted(n_modalities: int) -> int:
    return n_modalities - (n_modalities + 1) // 2


def _select(clean: Any, corrupt: Any, rows: Tensor) -> Any:
    if isinstance(clean, dict):
        return {k: _select(clean[k], corrupt[k], rows) for k in clean}
    if not isinstance(clean, Tensor) or clean is corrupt:
        return clean
    r = rows.to(clean.device).view(-1, *([1] * (clean.ndim - 1)))
    return torch.where(r, corrupt, clean)


class AbnormalInjector:
    def __init__(
        self,
        modalities: tuple[str, ...],
        noise_rate: float = 0.25,
        drop_rate: float = 0.25,
        noise_level: float | list[float] = 1.0,
        max_corrupted: int | None = None,
    ) -> None:
        M = len(modalities)
        if M < 2:
            raise ConfigError("EMMA fine-tuning needs at least two modalities to corrupt one of them")
        if noise_rate < 0 or drop_rate < 0 or noise_rate + drop_rate > 1:
            raise ConfigError(
                f"stage.noise_rate and stage.drop_rate must be >= 0 with a sum <= 1, got "
                f"{noise_rate} and {drop_rate}"
            )
        k = default_max_corrupted(M) if max_corrupted is None else int(max_corrupted)
        if not 1 <= k < M:
            raise ConfigError(f"stage.max_corrupted must be in [1, {M - 1}] for {M} modalities, got {k}")
        lv = (
            [float(v) for v in noise_level]
            if isinstance(noise_level, (list, tuple))
            else [float(noise_level)] * 2
        )
        if len(lv) != 2 or not 0 < lv[0] <= lv[1]:
            raise ConfigError(
                f"stage.noise_level must be a level > 0 or a range [lo, hi] with 0 < lo <= hi, "
                f"got {noise_level}"
            )
        self.modalities, self.noise_rate, self.drop_rate = tuple(modalities), noise_rate, drop_rate
        self.noise_range, self.max_corrupted = (lv[0], lv[1]), k

    def plan(self, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(noise_mask, drop_mask)``, each ``(B, M)`` bool, disjoint, at most ``max_corrupted`` per row."""
        M = len(self.modalities)
        u = torch.rand(b, generator=generator)
        kind_noise = u < self.noise_rate
        kind_drop = (u >= self.noise_rate) & (u < self.noise_rate + self.drop_rate)
        k = torch.randint(1, self.max_corrupted + 1, (b,), generator=generator)
        order = torch.rand(b, M, generator=generator).argsort(-1)  # a random permutation per row
        ranks = order.argsort(-1)
        chosen = ranks < k[:, None]
        return chosen & kind_noise[:, None], chosen & kind_drop[:, None]

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        b = int(batch["y"].shape[0])
        noise, drop = self.plan(b, generator)
        out = dict(batch)
        for i, m in enumerate(self.modalities):
            lo, hi = self.noise_range
            level = lo + (hi - lo) * float(torch.rand(1, generator=generator))
            for mask, spec in ((noise[:, i], f"noise_{m}:{level}"), (drop[:, i], f"drop_{m}")):
                if not mask.any():
                    continue
                full = corruption.apply(out, spec, self.modalities, generator)
                out["x"] = _select(out["x"], full["x"], mask)
                if "tokens" in out:
                    out["tokens"] = _select(out["tokens"], full["tokens"], mask)
        device = next(iter(batch["x"].values())).device
        flags = (noise | drop).to(device)
        prev = batch.get("corrupt")
        out["corrupt"] = flags if prev is None else (prev.to(device).bool() | flags)
        return out


class InjectAbnormal(pl.Callback):
    """Corrupts each training batch in place (the dict Lightning hands to ``training_step``), seeded per step."""

    def __init__(self, injector: AbnormalInjector, seed: int = 0) -> None:
        self.injector, self.seed = injector, int(seed)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Batch, batch_idx: int
    ) -> None:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + trainer.global_step)
        corrupted = self.injector(batch, g)
        batch.update(corrupted)
