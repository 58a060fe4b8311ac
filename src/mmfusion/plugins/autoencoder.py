"""Multimodal autoencoder objective on the fused representation (lecture 4.1, ``shared/seeds/001``, slides
"Learning Fusion Representations" / "Multimodal Autoencoder"; the bimodal deep autoencoder of Ngiam, Khosla,
Kim, Nam, Lee & Ng, ICML 2011, Sect. 3.2-3.3).

The fusion model is the encoder; the plug-in adds one decoder per modality ``D_m`` from the fused representation
``h`` back to that modality's *input summary* ``s_m`` (the masked time mean of ``batch["x"][m]`` over its true
length ``batch["lengths"][m]`` for sequences, the vector itself for utterance-level data)::

    L_AE(h) = sum_m w_m * || D_m(h) - (s_m - mu_m) / sigma_m ||^2 / d_m  /  sum_m w_m

``mu_m, sigma_m`` are running per-feature moments of the training targets (buffers, momentum ``target_momentum``),
so every modality's error is in units of its own variance whatever its feature scale, and ``w_m`` are the
documented per-modality weights (``modality_weights``; default 1 each). The decoders read the fused vector as
the task head does. ``normalize_fused=True`` puts a non-affine LayerNorm in front of them instead; it is off by
default because normalising amplifies the term's gradient into the encoders by ``1 / std(h)``: LFN's fused
vector starts at a scale of ~1e-3, and with the LayerNorm the term's gradient was 371x the task's at step 0.

**Modality dropout on the input side** (Ngiam et al. 2011, Sect. 3.3: train with examples whose other modality is
zeroed and still reconstruct *both*, so the shared code must carry cross-modal information -- the lecture's
"can it hallucinate the other modality?"). With ``modality_dropout = p > 0`` the plug-in runs a *second* forward
of the model on a corrupted copy of the batch: in each sample every modality is zeroed independently with
probability ``p`` (if all would be zeroed, one chosen uniformly is kept); zeroing is the project's ``drop_<m>``
corruption (:mod:`mmfusion.evaluation.corruption`: features set to 0, and for BERT models the word pieces replaced by
``[UNK]``). Every modality's *clean* summary is reconstructed from that corrupted fused vector::

    loss = weight * ( L_AE(h_clean) + L_AE(h_corrupted) )

Why a second forward inside the loss and not a contract hook that corrupts the batch before the model's forward:
the task loss stays on the clean batch, so ``reg=autoencoder`` differs from ``reg=none`` only by its objective
(input-side dropout applied to the task forward would add modality-dropout data augmentation to the task, a
different method with its own effect on ``drop_text`` robustness), and the plug-in contract is unchanged. The
price is one extra forward/backward per step (only when ``p > 0``). The second forward's random draws (dropout
masks, which samples are zeroed) come from the plug-in's own generator under a forked RNG, so the task model's
random stream is the same as without the plug-in; with ``weight = 0`` nothing runs and training is identical to
``reg=none``.

For Ngiam's two modalities his augmented set is 1/3 each of (both, only A, only B); ``p = 0.5`` gives 1/4 both
and 3/8 each single modality in the corrupted copy, plus the clean batch. Decoders: MLP with ``layers`` hidden
LeakyReLU layers, trained by the plug-in's own AdamW on the gradients of the same backward (``after_backward``).
The term never needs more than one sample (no batch statistics in the loss), so it is never skipped; the running
moments are updated from batches of at least two samples.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.contract import Batch, FusionModel, FusionOutput, ModelInfo, Plugin, PluginLoss
from mmfusion.errors import ConfigError
from mmfusion.estimators.dependence import LN_EPS, mlp
from mmfusion.evaluation import corruption
from mmfusion.models.common import lengths_of, masked_mean


def input_summary(batch: Batch, modality: str) -> Tensor:
    """``(B, D)``: masked time mean of a right-padded ``(B, T, D)`` input (true lengths from
    ``batch["lengths"]``), or the ``(B, D)`` input itself."""
    x = batch["x"][modality]
    if x.dim() == 2:
        return x.float()
    return masked_mean(x.float(), lengths_of(batch, modality, x))


def drop_per_sample(batch: Batch, keep: Tensor, modalities: tuple[str, ...]) -> Batch:
    """Shallow copy of ``batch`` with modality ``j`` of sample ``i`` zeroed where ``keep[i, j]`` is False (the
    ``drop_<m>`` corruption of :mod:`mmfusion.evaluation.corruption`, applied per sample).

    Args:
        batch: the clean batch (not modified).
        keep: ``(B, M)`` bool.
        modalities: the model's modalities, in ``keep``'s column order.
    """
    out = dict(batch)
    out["x"] = dict(batch["x"])
    for j, m in enumerate(modalities):
        drop = ~keep[:, j]
        if not bool(drop.any()):
            continue
        dropped = corruption.apply(batch, f"drop_{m}", modalities)
        x = batch["x"][m]
        mask = drop.reshape(-1, *([1] * (x.dim() - 1))).to(x.device)
        out["x"][m] = torch.where(mask, dropped["x"][m], out["x"][m])
        if "tokens" in dropped and dropped["tokens"] is not batch.get("tokens"):
            tok = dict(out["tokens"])
            tok["input_ids"] = torch.where(
                drop[:, None].to(tok["input_ids"].device), dropped["tokens"]["input_ids"], tok["input_ids"]
            )
            out["tokens"] = tok
    corrupt = batch.get("corrupt")
    out["corrupt"] = (~keep if corrupt is None else corrupt | ~keep).to(keep.device)
    return out


def sample_keep(n: int, m: int, p: float, generator: torch.Generator) -> Tensor:
    """``(n, m)`` bool: each modality kept with probability ``1 - p``; rows with none kept keep one at random."""
    keep = torch.rand(n, m, generator=generator) >= p
    empty = ~keep.any(1)
    if bool(empty.any()):
        pick = torch.randint(m, (int(empty.sum()),), generator=generator)
        keep[empty.nonzero().squeeze(1), pick] = True
    return keep


class MultimodalAutoencoder(Plugin):
    """Decoders from the fused vector to every modality's input summary; ``loss`` returns ``weight * L``.

    Args:
        weight: multiplier (>= 0).
        modality_weights: ``{modality: w_m >= 0}`` (missing modalities: 1); null = 1 for every modality.
        modality_dropout: ``p`` of the input-side modality dropout (0 = off: no second forward).
        hidden, layers: decoder MLP width and number of hidden layers.
        target_momentum: momentum of the running target moments.
        normalize_fused: non-affine LayerNorm of the fused vector before the decoders (off: see above).
        lr, weight_decay: the decoders' own AdamW optimiser.
        seed: decoder initialisation and the dropout draws (private generator, saved in checkpoints).
    """

    training_only = True

    def __init__(
        self,
        weight: float = 5.0,
        modality_weights: Mapping[str, float] | None = None,
        modality_dropout: float = 0.5,
        hidden: int = 64,
        layers: int = 1,
        target_momentum: float = 0.01,
        normalize_fused: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if weight < 0:
            raise ConfigError(f"reg.autoencoder weight must be >= 0, got {weight}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ConfigError(f"reg.autoencoder modality_dropout must be in [0, 1), got {modality_dropout}")
        if not 0.0 < target_momentum <= 1.0:
            raise ConfigError(f"reg.autoencoder target_momentum must be in (0, 1], got {target_momentum}")
        self.weight, self.p = float(weight), float(modality_dropout)
        self.modality_weights = dict(modality_weights or {})
        for m, w in self.modality_weights.items():
            if float(w) < 0:
                raise ConfigError(f"reg.autoencoder modality_weights.{m} must be >= 0, got {w}")
        self.hidden, self.layers, self.momentum = int(hidden), int(layers), float(target_momentum)
        self.normalize_fused = bool(normalize_fused)
        self.lr, self.weight_decay, self.seed = float(lr), float(weight_decay), seed
        self.rng = torch.Generator().manual_seed(seed)
        self.decoders = nn.ModuleDict()
        self.modalities: tuple[str, ...] = ()
        self.w: dict[str, float] = {}
        self._net: list[
            FusionModel
        ] = []  # the model, for the corrupted forward (a list: not a registered child)

    def attach(self, model: FusionModel, info: ModelInfo) -> None:
        dims = dict(info.data.get("input_dims") or {})
        mods = tuple(info.modalities)
        missing = [m for m in mods if m not in dims]
        if missing:
            raise ConfigError(
                f"reg.autoencoder needs the data's input_dims for every modality; missing {missing} "
                f"(data info has {sorted(dims)})"
            )
        unknown = sorted(set(self.modality_weights) - set(mods))
        if unknown:
            raise ConfigError(
                f"reg.autoencoder modality_weights has unknown modalities {unknown}; "
                f"the model has {list(mods)}"
            )
        self.modalities = mods
        self.w = {m: float(self.modality_weights.get(m, 1.0)) for m in mods}
        if sum(self.w.values()) <= 0:
            raise ConfigError(
                "reg.autoencoder modality_weights are all 0; set weight=0 to switch the term off"
            )
        self._net = [model]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.decoders.update(
                {m: mlp(int(info.fused_dim), self.hidden, self.layers, int(dims[m])) for m in mods}
            )
        for m in mods:
            self.register_buffer(f"mu_{m}", torch.zeros(int(dims[m])))
            self.register_buffer(f"var_{m}", torch.ones(int(dims[m])))
        self.register_buffer("moments_seen", torch.zeros((), dtype=torch.long))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        if not self.modalities:
            raise RuntimeError("MultimodalAutoencoder plug-in used before attach()")
        return [
            torch.optim.AdamW(
                self.decoders.parameters(), lr=self.lr, weight_decay=self.weight_decay, foreach=True
            )
        ]

    def get_extra_state(self) -> Tensor:
        return self.rng.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.rng.set_state(state.cpu())

    # ------------------------------------------------------------------------------------------------ terms

    @torch.no_grad()
    def _update_moments(self, targets: dict[str, Tensor]) -> None:
        first = int(self.moments_seen) == 0
        for m, s in targets.items():
            mu, var = getattr(self, f"mu_{m}"), getattr(self, f"var_{m}")
            bm, bv = s.mean(0), s.var(0, unbiased=True)
            if first:
                mu.copy_(bm)
                var.copy_(bv)
            else:
                mu.lerp_(bm, self.momentum)
                var.lerp_(bv, self.momentum)
        self.moments_seen += 1

    def targets(self, batch: Batch, update: bool) -> dict[str, Tensor]:
        """Standardised input summaries ``(s_m - mu_m) / sigma_m`` (moments updated first when ``update``)."""
        raw = {m: input_summary(batch, m) for m in self.modalities}
        if update and next(iter(raw.values())).shape[0] >= 2:
            self._update_moments(raw)
        return {
            m: (s - getattr(self, f"mu_{m}")) / getattr(self, f"var_{m}").clamp(min=1e-8).sqrt()
            for m, s in raw.items()
        }

    def reconstruction(self, fused: Tensor, targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_AE`` (weighted mean over modalities) and the per-modality normalised MSE."""
        h = fused.float()
        if self.normalize_fused:
            h = F.layer_norm(h, h.shape[-1:], eps=LN_EPS)
        per = {m: ((self.decoders[m](h) - t) ** 2).mean() for m, t in targets.items()}
        total = sum(self.w[m] * v for m, v in per.items()) / sum(self.w.values())
        return total, per

    def corrupted_fused(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Fused vector of a second forward on a per-sample modality-dropped copy of ``batch``, and the keep mask.
        Randomness (keep mask, the model's dropout) from the plug-in's generator; the global RNG is restored."""
        net = self._net[0]
        n = int(batch["y"].shape[0])
        keep = sample_keep(n, len(self.modalities), self.p, self.rng)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.rng))
        dev = next(iter(batch["x"].values())).device
        devices = (
            [dev.index if dev.index is not None else torch.cuda.current_device()]
            if dev.type == "cuda"
            else []
        )
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(seed)
            if dev.type == "cuda":
                torch.cuda.manual_seed(seed)
            out = net(drop_per_sample(batch, keep.to(dev), self.modalities))
        return out.fused, keep

    def loss(self, out: FusionOutput, batch: Batch, stage: str) -> PluginLoss | None:
        if self.weight == 0.0 and stage == "train":
            return PluginLoss(value=out.fused.float().sum() * 0.0, logs={})
        targets = self.targets(batch, update=(stage == "train"))
        clean, per = self.reconstruction(out.fused, targets)
        logs: dict[str, Tensor | float] = {"recon": clean.detach()}
        logs.update({f"recon_{m}": v.detach() for m, v in per.items()})
        total = clean
        if self.p > 0 and stage == "train":
            fused_c, keep = self.corrupted_fused(batch)
            cross, _ = self.reconstruction(fused_c, targets)
            total = total + cross
            logs["recon_corrupted"] = cross.detach()
            logs["kept_fraction"] = keep.float().mean().item()
        return PluginLoss(value=self.weight * total, logs=logs)

    def after_backward(self, optimizers: list[torch.optim.Optimizer]) -> None:
        opt = optimizers[0]
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def diagnostics(self, out: FusionOutput, batch: Batch) -> dict[str, Tensor | float]:
        """Clean reconstruction error per modality and, per dropped modality, the error of reconstructing it
        from the others alone (the "hallucination" error) on the first validation batch (deterministic)."""
        targets = self.targets(batch, update=False)
        _, per = self.reconstruction(out.fused, targets)
        logs: dict[str, Tensor | float] = {f"recon_{m}": v for m, v in per.items()}
        net = self._net[0]
        n = int(batch["y"].shape[0])
        for j, m in enumerate(self.modalities):
            keep = torch.ones(n, len(self.modalities), dtype=torch.bool)
            keep[:, j] = False
            dev = next(iter(batch["x"].values())).device
            fused = net(drop_per_sample(batch, keep.to(dev), self.modalities)).fused
            _, per_m = self.reconstruction(fused, targets)
            logs[f"recon_{m}_without_{m}"] = per_m[m]
        return logs
