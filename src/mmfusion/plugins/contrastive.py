"""Contrastive coordination of the unimodal representations (lecture 4.1, ``shared/seeds/001``, slides
"Coordination with Contrastive Learning", "Example - Visual-Semantic Embeddings", "Example - CLIP").

For every pair of modalities (a, b) each representation goes through its own linear projection ``g_m`` (CLIP's
projection heads; the plug-in owns them) and is L2-normalised, ``z_m = g_m(u_m) / ||g_m(u_m)||``. Two forms:

* ``infonce`` (CLIP, Radford et al. 2021, Fig. 3 pseudo-code; the lecture's InfoNCE slide): logits
  ``S_ij = exp(t) z_a^i . z_b^j`` with a learnable log-temperature ``t`` (init ``log(1/0.07)``; the parameter is
  clipped to ``[0, log 100]`` after every step, so the logit scale stays <= 100 as in CLIP) and the symmetric
  cross-entropy against the diagonal, in-batch negatives::

      L_ab = 1/2 [ -1/B sum_i log softmax_j(S)_ii  -  1/B sum_j log softmax_i(S)_jj ]

  ``log B - L_ab`` is the InfoNCE lower bound of ``I(z_a; z_b)`` (van den Oord et al. 2018; Poole et al. 2019,
  Eq. 12), capped at ``log B``; it is logged as ``infonce_mi``.
* ``hinge`` (visual-semantic embeddings: Kiros et al. 2014, Eq. on the VSE slide; Faghri et al. 2018, VSE++ Eq. 4
  for the max-violation variant): cosine similarities ``s_ij = z_a^i . z_b^j`` and the two ranking terms::

      L_ab = 1/B sum_i R_j [alpha - s_ii + s_ij]_+  +  1/B sum_j R_i [alpha - s_jj + s_ij]_+ ,   j != i

  with ``R = sum`` (Kiros) or ``R = max`` (VSE++ hardest negative).

The plug-in returns ``weight * mean_pairs L_ab``. Deviations (docs/regularisers.md): several modalities are
handled pairwise and averaged over pairs; the hinge terms are averaged over anchors instead of summed over the
batch (the weight then does not depend on the batch size). The projections and the temperature are trained by
the plug-in's own Adam on the gradients of the same backward (``after_backward``); the encoders receive the
term's gradient through the task optimiser. A batch of one sample has no negatives: the term is 0 and counted in
``skipped``. Initialisation runs under a forked RNG (``seed``), so the task model's random stream is untouched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.contract import Batch, FusionModel, FusionOutput, ModelInfo, Plugin, PluginLoss
from mmfusion.errors import ConfigError
from mmfusion.plugins.coordination import modality_pairs, skipped, unimodal_views

CLIP_INIT_TEMPERATURE = 0.07
CLIP_MAX_LOGIT_SCALE = 100.0


def clip_logits(za: Tensor, zb: Tensor, log_scale: Tensor, max_scale: float = CLIP_MAX_LOGIT_SCALE) -> Tensor:
    """``exp(min(t, log max_scale)) * normalize(za) @ normalize(zb).T`` -> ``(B, B)``.

    Args:
        za, zb: ``(B, d)`` projected representations of the two modalities (paired by row).
        log_scale: scalar log of the logit scale (CLIP's ``logit_scale`` parameter).
        max_scale: upper clip of the scale.
    """
    scale = log_scale.clamp(max=math.log(max_scale)).exp()
    return scale * F.normalize(za, dim=-1) @ F.normalize(zb, dim=-1).T


def symmetric_infonce(logits: Tensor) -> tuple[Tensor, Tensor]:
    """CLIP's loss ``(CE(rows) + CE(cols)) / 2`` against the diagonal, and the InfoNCE estimate ``log B - loss``.

    Args:
        logits: ``(B, B)`` critic scores; row i / column i is the positive pair.
    """
    n = logits.shape[0]
    target = torch.arange(n, device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return loss, math.log(n) - loss


def vse_hinge(sim: Tensor, margin: float = 0.2, reduction: str = "sum") -> Tensor:
    """Two-term hinge ranking loss of visual-semantic embeddings, averaged over anchors.

    Args:
        sim: ``(B, B)`` similarities ``s_ij = sim(z_a^i, z_b^j)``; the diagonal holds the positive pairs.
        margin: ``alpha``.
        reduction: ``sum`` over negatives (Kiros et al. 2014) or ``max`` (hardest negative, VSE++).
    """
    n = sim.shape[0]
    pos = sim.diagonal()
    off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    cost_a = (margin - pos[:, None] + sim).clamp(min=0) * off  # anchor a_i against negatives b_j
    cost_b = (margin - pos[None, :] + sim).clamp(min=0) * off  # anchor b_j against negatives a_i
    if reduction == "sum":
        return cost_a.sum(1).mean() + cost_b.sum(0).mean()
    if reduction == "max":
        return cost_a.max(1).values.mean() + cost_b.max(0).values.mean()
    raise ConfigError(f"reg.contrastive hinge_reduction must be 'sum' or 'max', got {reduction!r}")


class Contrastive(Plugin):
    """Pairwise contrastive coordination; ``loss`` returns ``weight * mean_pairs L_ab``.

    Args:
        weight: multiplier of the term (>= 0).
        form: ``infonce`` (CLIP) or ``hinge`` (visual-semantic embeddings).
        proj_dim: width of each modality's linear projection (CLIP's embedding size).
        temperature_init: initial temperature (``t = log(1/temperature_init)``).
        learn_temperature: train ``t`` (CLIP) or keep it fixed.
        max_logit_scale: upper clip of ``exp(t)`` (CLIP: 100).
        margin: ``alpha`` of the hinge form.
        hinge_reduction: ``sum`` (Kiros) or ``max`` (VSE++).
        lr, weight_decay: the projections' own Adam(W) optimiser.
        seed: seed of the projections' initialisation (forked RNG).
    """

    training_only = True

    def __init__(
        self,
        weight: float = 0.1,
        form: str = "infonce",
        proj_dim: int = 64,
        temperature_init: float = CLIP_INIT_TEMPERATURE,
        learn_temperature: bool = True,
        max_logit_scale: float = CLIP_MAX_LOGIT_SCALE,
        margin: float = 0.2,
        hinge_reduction: str = "sum",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if form not in ("infonce", "hinge"):
            raise ConfigError(f"reg.contrastive form must be 'infonce' or 'hinge', got {form!r}")
        if hinge_reduction not in ("sum", "max"):
            raise ConfigError(
                f"reg.contrastive hinge_reduction must be 'sum' or 'max', got {hinge_reduction!r}"
            )
        if weight < 0:
            raise ConfigError(f"reg.contrastive weight must be >= 0, got {weight}")
        if not (0 < temperature_init <= 1 and 1.0 / temperature_init <= max_logit_scale):
            raise ConfigError(
                f"reg.contrastive needs 1/max_logit_scale <= temperature_init <= 1 (logit scale in "
                f"[1, max_logit_scale], as CLIP clips it); "
                f"got temperature_init={temperature_init}, max_logit_scale={max_logit_scale}"
            )
        if proj_dim < 1:
            raise ConfigError(f"reg.contrastive proj_dim must be >= 1, got {proj_dim}")
        self.weight, self.form, self.proj_dim = float(weight), form, int(proj_dim)
        self.learn_temperature, self.max_logit_scale = bool(learn_temperature), float(max_logit_scale)
        self.margin, self.hinge_reduction = float(margin), hinge_reduction
        self.lr, self.weight_decay, self.seed = float(lr), float(weight_decay), seed
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature_init)),
            requires_grad=self.learn_temperature and form == "infonce",
        )
        self.proj = nn.ModuleDict()
        self.modalities: tuple[str, ...] = ()

    @property
    def min_batch_size(self) -> int:
        """2: a batch of one sample has no in-batch negative."""
        return 2

    def attach(self, model: FusionModel, info: ModelInfo) -> None:
        if len(info.modalities) < 2:
            raise ConfigError(f"reg.contrastive needs >= 2 modalities, the model has {list(info.modalities)}")
        self.modalities = tuple(info.modalities)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.proj.update({m: nn.Linear(info.unimodal_dims[m], self.proj_dim) for m in self.modalities})

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        if not self.modalities:
            raise RuntimeError("Contrastive plug-in used before attach()")
        params = [p for p in self.parameters() if p.requires_grad]
        return [torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, foreach=True)]

    def pair_terms(self, out: FusionOutput) -> dict[str, dict[tuple[str, str], Tensor]]:
        """Per pair: ``loss`` (L_ab), ``mi`` (InfoNCE estimate, infonce form) and ``align`` (mean positive
        cosine)."""
        uni = unimodal_views(out, self.modalities, "contrastive")
        z = {m: F.normalize(self.proj[m](u), dim=-1) for m, u in uni.items()}
        res: dict[str, dict[tuple[str, str], Tensor]] = {"loss": {}, "mi": {}, "align": {}}
        for a, b in modality_pairs(self.modalities):
            sim = z[a] @ z[b].T
            res["align"][(a, b)] = sim.diagonal().mean()
            if self.form == "infonce":
                res["loss"][(a, b)], res["mi"][(a, b)] = symmetric_infonce(
                    clip_logits(z[a], z[b], self.log_scale, self.max_logit_scale)
                )
            else:
                res["loss"][(a, b)] = vse_hinge(sim, self.margin, self.hinge_reduction)
        return res

    def loss(self, out: FusionOutput, batch: Batch, stage: str) -> PluginLoss | None:
        if out.fused.shape[0] < 2:  # no in-batch negatives
            return skipped(out)
        t = self.pair_terms(out)
        term = torch.stack(list(t["loss"].values())).mean()
        logs: dict[str, Tensor | float] = {
            "contrastive": term.detach(),
            "align": torch.stack(list(t["align"].values())).mean().detach(),
        }
        if t["mi"]:
            logs["infonce_mi"] = torch.stack(list(t["mi"].values())).mean().detach()
            logs["logit_scale"] = self.log_scale.detach().clamp(max=math.log(self.max_logit_scale)).exp()
        return PluginLoss(value=self.weight * term, logs=logs)

    def after_backward(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Step the projections (and temperature) on the task backward's gradients; clip ``t`` as CLIP does."""
        opt = optimizers[0]
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.log_scale.clamp_(0.0, math.log(self.max_logit_scale))

    @torch.no_grad()
    def diagnostics(self, out: FusionOutput, batch: Batch) -> dict[str, Tensor | float]:
        """Per-pair InfoNCE estimate (or hinge loss) and positive-pair cosine on the first validation batch."""
        if out.fused.shape[0] < 2:
            return {}
        t = self.pair_terms(out)
        logs: dict[str, Tensor | float] = {}
        for (a, b), v in t["align"].items():
            logs[f"align_{a}_{b}"] = v
            logs[(f"infonce_mi_{a}_{b}" if t["mi"] else f"hinge_{a}_{b}")] = (t["mi"] or t["loss"])[(a, b)]
        return logs
