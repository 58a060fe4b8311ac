"""Pieces shared by the representation-objective plug-ins of lecture 4.1 (``shared/seeds/001``): contrastive
(``contrastive.py``), Deep CCA (``dcca.py``) and the multimodal autoencoder (``autoencoder.py``).

* :func:`modality_pairs` -- every unordered pair of modalities (the coordination objectives act pairwise);
* :func:`unimodal_views` -- the model's unimodal representations in float32, with a one-line error naming the
  plug-in when a modality is missing;
* :func:`skipped` -- the small-batch convention: a term that cannot be formed on a batch (too few samples for
  in-batch negatives or for a covariance) contributes an exact zero to the loss and logs ``skipped = 1`` (the
  epoch mean of ``train/reg/<name>/skipped`` is then the fraction of such batches), instead of crashing.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor

from mmfusion.contract import FusionOutput, PluginLoss
from mmfusion.errors import ConfigError


def modality_pairs(modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    """All unordered pairs ``(a, b)``, ``a`` before ``b`` in the model's modality order."""
    return list(combinations(modalities, 2))


def unimodal_views(out: FusionOutput, modalities: tuple[str, ...], plugin: str) -> dict[str, Tensor]:
    """``{m: out.unimodal[m]}`` in at least float32 (half precision is upcast, float64 kept); ConfigError naming
    the plug-in if the model lacks a modality."""
    try:
        return {m: _atleast_float32(out.unimodal[m]) for m in modalities}
    except KeyError as e:
        raise ConfigError(
            f"reg.{plugin}: model output has no unimodal representation {e}; has {sorted(out.unimodal)}"
        ) from None


def _atleast_float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def skipped(out: FusionOutput, **logs: Tensor | float) -> PluginLoss:
    """A zero term (``0 * fused.sum()``: in the graph, gradient exactly 0) that logs ``skipped = 1``."""
    return PluginLoss(value=out.fused.float().sum() * 0.0, logs={"skipped": 1.0, **logs})
