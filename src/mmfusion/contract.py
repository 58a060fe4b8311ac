"""The plug-in contract: what every fusion model returns and what every plug-in (``reg``) may do.

Batch layout (what every datamodule yields, see ``docs/architecture.md``)::

    batch = {
        "x":       {modality: Tensor},     # features; sequences are (B, T, D), RIGHT-padded, float32
        "lengths": {modality: LongTensor}, # (B,) true lengths (1 for utterance-level data); optional
        "y":       Tensor,                 # (B,) float regression target | (B,) long class | (B, A) soft scores
        "index":   LongTensor,             # (B,) row of the sample in its split (dedup under DDP)
        # optional, by data/model:
        "tokens":  {"input_ids", "attention_mask", ...},  # word-piece ids for BERT models
        "corrupt": BoolTensor (B, M),      # which modality of a sample was corrupted (EMMA's eta)
    }

Every fusion model is a :class:`FusionModel`: ``encode`` -> (optional ``gate``) -> ``fuse`` -> ``head``. Its
``forward`` returns a :class:`FusionOutput`. Plug-ins subclass :class:`Plugin` and act through any of four hooks:
a loss term, auxiliary optimisers with inner steps, a gate between encoders and fusion, and the replacement of
attention pools. The Lightning module (:mod:`mmfusion.tasks.module`) composes them without knowing which it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

Batch = dict[str, Any]


@dataclass(frozen=True)
class TargetFacts:
    """What a datamodule knows about its targets (``MultimodalDataModule.target_facts``). ``build.py`` configures
    the task from it, so the data never imports or mutates a task.

    Args:
        num_outputs: size of the prediction the targets call for (1 for a score or binary label, K classes,
            the answer vocabulary for VQA).
        answer_types: the type of each output (VQA answer vocabularies), or ``None``.
    """

    num_outputs: int
    answer_types: tuple[str, ...] | None = None


@dataclass
class FusionOutput:
    """What every fusion model returns.

    unimodal:   per-modality representation after its encoder, ``{modality: (B, d_m)}`` (after the gate, if any).
    fused:      the fused representation ``(B, d_f)``, input of the prediction head.
    prediction: ``(B, out_dim)`` (regression: ``out_dim == 1``; classification/VQA: logits).
    extras:     anything else a plug-in or a logger may want (attention maps, EMMA weights, pre-gate features).
    """

    unimodal: dict[str, Tensor]
    fused: Tensor
    prediction: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Encoded:
    """Result of :meth:`FusionModel.encode`: the unimodal representations plus model-private state that
    ``fuse`` needs (e.g. MFN's multi-view memory, per-position features for attention pooling)."""

    unimodal: dict[str, Tensor]
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class GateOutput:
    """What a gate returns (:attr:`FusionModel.gate`).

    Args:
        unimodal: the gated unimodal representations ``{m: (B, d_m)}``.
        scales: per-modality factors ``{m: (B,)}`` when the gate scales whole modalities (EMMA's beta, Eq. 17);
            models that fuse sequences (EF-LSTM, MFN, MAG-BERT) receive them as ``state["gate_scales"]`` and scale
            each modality's sequence by the same factor. ``None``: the gate does not scale modalities.
        extras: diagnostics added to :attr:`FusionOutput.extras` (e.g. ``emma/alpha``).
    """

    unimodal: dict[str, Tensor]
    scales: dict[str, Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class FusionModel(nn.Module):
    """Base class of every fusion model.

    Subclasses implement :meth:`encode`, :meth:`fuse` and :meth:`head` (a module or a method). They set
    ``self.modalities`` (ordered names) and ``self.unimodal_dims`` (``{modality: d_m}``) and ``self.fused_dim``,
    so that plug-ins can size their networks in :meth:`Plugin.attach`.

    ``gate`` (optional) is inserted between encoders and fusion: ``gate(unimodal, batch) ->``
    :class:`GateOutput` (EMMA). A gate that scales whole modalities returns ``scales = {m: (B,)}``; ``forward``
    passes them to ``fuse`` as ``state["gate_scales"]`` so that models fusing sequences (EF-LSTM, MFN) scale each
    modality's sequence by the same factor.
    ``pools`` holds the attention-pooling modules that an attention plug-in may replace; each maps
    ``(x: (B, L, D), mask: (B, L) bool) -> (B, D')`` (see :class:`AttentionPool`).

    ``accepts_unaligned`` declares whether the model takes modalities with different numbers of time steps
    (unaligned sequences, per-modality ``batch["lengths"]``). ``False``: it needs word-aligned input (one time axis
    for all modalities); :func:`mmfusion.build.build_module` then refuses data whose modalities differ in T, with
    one line, before the model is built.
    """

    modalities: tuple[str, ...]
    unimodal_dims: dict[str, int]
    fused_dim: int
    accepts_unaligned: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.gate: nn.Module | None = None
        self.pools = nn.ModuleDict()

    def encode(self, batch: Batch) -> Encoded:
        raise NotImplementedError

    def fuse(self, unimodal: dict[str, Tensor], state: dict[str, Any], batch: Batch) -> Tensor:
        raise NotImplementedError

    def predict(self, fused: Tensor) -> Tensor:
        return self.head(fused)

    def forward(self, batch: Batch) -> FusionOutput:
        enc = self.encode(batch)
        extras: dict[str, Any] = {}
        unimodal = enc.unimodal
        if self.gate is not None:
            extras["unimodal_pre_gate"] = unimodal
            gated: GateOutput = self.gate(unimodal, batch)
            unimodal = gated.unimodal
            extras.update(gated.extras)
            if gated.scales is not None:  # per-modality factors {m: (B,)} for models that fuse sequences
                enc.state["gate_scales"] = gated.scales
        fused = self.fuse(unimodal, enc.state, batch)
        prediction = self.predict(fused)
        extras.update(enc.state.get("extras", {}))
        return FusionOutput(unimodal=unimodal, fused=fused, prediction=prediction, extras=extras)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups (override for e.g. separate BERT learning rates)."""
        return [
            {
                "params": [p for p in self.parameters() if p.requires_grad],
                "lr": lr,
                "weight_decay": weight_decay,
            }
        ]

    def set_gate(self, gate: nn.Module | None) -> None:
        self.gate = gate

    def replace_pool(self, name: str, pool: nn.Module) -> None:
        if name not in self.pools:
            raise KeyError(
                f"model {type(self).__name__} has no attention pool {name!r}; has {list(self.pools)}"
            )
        self.pools[name] = pool


class AttentionPool(nn.Module):
    """Interface of a replaceable attention pool: ``forward(x (B, L, D), mask (B, L) bool) -> (B, D_out)``.

    ``positions`` (optional buffer, ``(L, 1)`` or ``(L, 2)``) gives the cell-centre coordinates in [0, 1] of
    each position, for continuous attention. ``last_attention`` may hold the attention of the last call for
    visualisation.
    """

    in_dim: int
    out_dim: int


@dataclass
class PluginLoss:
    """A plug-in's contribution to the task model's objective.

    ``value`` is ADDED to the task loss as is: the plug-in applies its own weight and sign
    (e.g. MDM returns ``-lambda * MDM``). ``logs`` are scalars logged under ``<stage>/reg/<plugin>/<key>``.
    """

    value: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)


@dataclass
class ModelInfo:
    """What a plug-in may know about the model and data when it attaches."""

    modalities: tuple[str, ...]
    unimodal_dims: dict[str, int]
    fused_dim: int
    data: Mapping[str, Any] = field(default_factory=dict)


class Plugin(nn.Module):
    """Base class of every plug-in (config group ``reg``). All hooks are optional.

    Order of calls in one training step (see :class:`mmfusion.tasks.module.FusionModule`):

    1. ``out = model(batch)`` (with any gate/pool the plug-in installed in :meth:`attach`);
    2. :meth:`inner_step` for each plug-in: its own updates (critic ascent, ...) on detached tensors of ``out``,
       using its own optimisers and the ``backward`` function given (AMP-aware);
    3. ``loss = task_loss + sum(plugin.loss(out, batch).value)``; one backward; gradient clipping of the task
       model's parameters; the task optimiser steps;
    4. :meth:`after_backward` for each plug-in: it may step its own optimisers on the gradients of that same
       backward (e.g. the synergy C-network, which minimises the same loss jointly with the encoders).

    Plug-in parameters are never in the task optimiser. ``training_only = True`` plug-ins are not run at
    evaluation except for their diagnostic :meth:`loss` on validation (no effect on the prediction).
    """

    training_only: bool = True

    @property
    def min_batch_size(self) -> int:
        """Smallest batch on which :meth:`loss` / :meth:`inner_step` can be formed (e.g. in-batch negatives need
        >= M samples, an MMD >= 2). On a smaller batch (a loader's last, incomplete batch) the module skips the
        plug-in's hooks for that batch -- the term contributes nothing -- and counts it in
        ``<stage>/reg/<name>/skipped_batches`` (see docs/regularisers.md, *Small batches*)."""
        return 1

    def set_total_steps(self, total_steps: int) -> None:
        """Told once, when training starts (``on_train_start``), how many task steps the run will take (for schedules
        expressed as a fraction of the run, e.g. a warm-up)."""

    def attach(self, model: FusionModel, info: ModelInfo) -> None:
        """Build networks sized to the model; install gates/pools on ``model``. Called once, before training."""

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """The plug-in's own optimisers (checkpointed with the run)."""
        return []

    def inner_step(
        self,
        out: FusionOutput,
        batch: Batch,
        optimizers: list[torch.optim.Optimizer],
        backward: Callable[[Tensor], None],
    ) -> dict[str, Tensor | float]:
        """Auxiliary updates before the task update. Must detach what it reads from ``out``."""
        return {}

    def loss(self, out: FusionOutput, batch: Batch, stage: str) -> PluginLoss | None:
        """The term added to the task loss (weighted and signed); ``stage`` is 'train', 'val' or 'test'."""
        return None

    def after_backward(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Step the plug-in's optimisers on the gradients of the task backward, if it trains jointly."""

    def diagnostics(self, out: FusionOutput, batch: Batch) -> dict[str, Tensor | float]:
        """Extra scalars for the logger on a fixed validation batch each epoch (critic estimate, ...)."""
        return {}

    def validation_epoch_diagnostics(self) -> dict[str, Tensor | float]:
        """Scalars computed once per validation epoch from what the plug-in gathered during the epoch (e.g. in
        ``loss(..., stage='val')``); logged as ``val/reg/<name>/<key>``. The plug-in clears its buffers."""
        return {}
