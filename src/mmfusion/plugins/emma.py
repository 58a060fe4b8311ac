"""``reg=emma``: inserts EMMA between the encoders and the fusion of a trained model (Werenne 2019).

``attach`` loads the pre-trained DAEs (``dae_path``, written by ``stage=emma_pretrain``), freezes V_min from the
training energies (Eq. 13) and, with ``unit_scale_init``, initialises ``w_i = 1 / mean_train(V'_i)`` so that every
phi_i averages 1 on normal data (modalities' energies live on different scales; w_i stays learned), and installs an :class:`~mmfusion.emma.gate.EMMAGate` with
``model.set_gate``. The gate's parameters (composition + attention) are then part of the model and trained by the
task optimiser. The loss term is ``-weight * mean_batch(Omega) + capacity_weight * (G - b)`` (Eq. 20 and the
author's capacity proxy), with eta from ``batch["corrupt"]`` by default (see :mod:`mmfusion.emma.regularizer`).

Diagnostics (first validation batch each epoch): mean alpha, beta per modality and the system energy on the clean
batch and on copies with each modality noised (``noise_<m>:<diag_noise>``) or dropped (``drop_<m>``), logged as
``val/reg/emma/<condition>/<quantity>``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmfusion.contract import Batch, FusionModel, FusionOutput, ModelInfo, Plugin, PluginLoss
from mmfusion.emma.attention import AttentionStep
from mmfusion.emma.composition import W_FLOOR, Composition, inv_softplus, shifted_potential
from mmfusion.emma.gate import EMMAGate
from mmfusion.emma.regularizer import ORACLES, eta_from_labels, eta_from_laplacian, eta_from_threshold, omega
from mmfusion.emma.store import load_daes
from mmfusion.errors import ConfigError
from mmfusion.evaluation import corruption


class EMMAPlugin(Plugin):
    """EMMA between the encoders and the fusion of a trained model (``reg=emma``); the gate acts at evaluation too.

    Args:
        dae_path: the pre-trained DAEs and training-energy statistics written by ``stage=emma_pretrain`` (the
            pipeline fills it in); required.
        coldness: tau of the Gibbs importance weights ``alpha = softmax(-tau E)`` (Eq. 16).
        form: energy composition: ``thesis`` (independent gamma_ij and coupling weights w_ij in [-1, 1]) or
            ``summary`` (the summary's symmetric gamma, Eq. 14-15).
        gain_init: G at insertion; ``None`` = 4M (beta = tanh 3 at uniform alpha).
        bias_init: b at insertion (a modality is masked iff alpha_i <= b / G).
        weight: lambda of ``-lambda * mean_batch(Omega)`` (Eq. 20), >= 0.
        capacity_weight: weight of the author's capacity proxy ``(G - b)`` added to the loss, >= 0.
        eta: where eta comes from: ``labels`` (the corruption labels ``batch["corrupt"]``, the final thesis),
            ``laplacian`` (Eq. 11 with the sign fixed) or ``threshold`` (V' above the training 99th percentile).
        eta_normal: eta of a normal modality.
        eta_abnormal: eta of an abnormal (corrupted) modality.
        unit_scale_init: initialise ``w_i = 1 / mean_train(V'_i)`` so that phi_i averages 1 on normal data.
        diag_noise: noise level (x the feature std) of the noised copies in the validation diagnostics.
        seed: seed of the coupling weights' initialisation (``form: thesis``).
    """

    training_only = False  # the gate acts at evaluation too

    def __init__(
        self,
        dae_path: str | None = None,
        coldness: float = 1.0,
        form: str = "thesis",
        gain_init: float | None = None,
        bias_init: float = 1.0,
        weight: float = 0.1,
        capacity_weight: float = 0.0,
        eta: str = "labels",
        eta_normal: float = 1.0,
        eta_abnormal: float = -1.0,
        unit_scale_init: bool = True,
        diag_noise: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if eta not in ORACLES:
            raise ConfigError(f"reg.emma.eta must be one of {ORACLES}, got {eta!r}")
        if weight < 0 or capacity_weight < 0:
            raise ConfigError(
                f"reg.emma.weight and capacity_weight must be >= 0, got {weight}, {capacity_weight}"
            )
        self.dae_path, self.coldness, self.form = dae_path, float(coldness), form
        self.gain_init, self.bias_init = gain_init, float(bias_init)
        self.weight, self.capacity_weight = float(weight), float(capacity_weight)
        self.eta, self.eta_normal, self.eta_abnormal = eta, float(eta_normal), float(eta_abnormal)
        self.unit_scale_init, self.diag_noise, self.seed = bool(unit_scale_init), float(diag_noise), int(seed)
        self._model: list[
            FusionModel
        ] = []  # a plain list: the model must not become a sub-module of the plug-in
        self.register_buffer("v_q99", torch.zeros(0))

    @property
    def gate(self) -> EMMAGate:
        if not self._model or not isinstance(self._model[0].gate, EMMAGate):
            raise ConfigError("reg.emma: the plug-in is not attached to a model")
        return self._model[0].gate

    def attach(self, model: FusionModel, info: ModelInfo) -> None:
        if not self.dae_path:
            raise ConfigError(
                "reg.emma.dae_path is not set: EMMA is inserted into a trained model with "
                "pre-trained DAEs; run experiment=emma_pipeline, or stage=emma_pretrain and "
                "stage=emma_finetune"
            )
        mods = tuple(model.modalities)
        daes, blob = load_daes(self.dae_path, mods, dict(model.unimodal_dims))
        comp = Composition(len(mods), coldness=self.coldness, form=self.form, seed=self.seed)
        with torch.no_grad():
            comp.v_min.copy_(torch.tensor([blob["v_min"][m] for m in mods]))
            if self.unit_scale_init:
                mean = torch.tensor([max(blob["v_mean"][m], 1e-3) for m in mods])
                comp.w_raw.copy_(inv_softplus((1.0 / mean).clamp_min(10 * W_FLOOR) - W_FLOOR))
        self.v_q99 = torch.tensor([blob["v_q99"][m] for m in mods])
        att = AttentionStep(len(mods), gain_init=self.gain_init, bias_init=self.bias_init)
        model.set_gate(EMMAGate(mods, daes, comp, att, with_laplacian=self.eta == "laplacian"))
        self._model = [model]

    # -- Eq. 20 -------------------------------------------------------------------------------------------------
    def eta_of(self, out: FusionOutput, batch: Batch) -> Tensor:
        log_alpha = out.extras["emma/log_alpha"]
        if self.eta == "labels":
            return eta_from_labels(
                batch.get("corrupt"),
                tuple(log_alpha.shape),
                self.eta_normal,
                self.eta_abnormal,
                device=log_alpha.device,
            )
        if self.eta == "laplacian":
            return eta_from_laplacian(out.extras["emma/laplacian"], self.eta_normal, self.eta_abnormal)
        vp = shifted_potential(out.extras["emma/potential"], self.gate.composition.v_min)
        return eta_from_threshold(vp, self.v_q99.to(vp.device), self.eta_normal, self.eta_abnormal)

    def loss(self, out: FusionOutput, batch: Batch, stage: str) -> PluginLoss | None:
        if "emma/log_alpha" not in out.extras:
            return None
        log_alpha = out.extras["emma/log_alpha"]
        om = omega(log_alpha, self.eta_of(out, batch).to(log_alpha.dtype)).mean()
        att = self.gate.attention
        value = -self.weight * om
        if self.capacity_weight:
            value = value + self.capacity_weight * (att.gain - att.bias)
        logs: dict[str, Tensor | float] = {
            "omega": om.detach(),
            "gain": att.gain.detach(),
            "bias": att.bias.detach(),
            "energy": out.extras["emma/energy"].detach().mean(),
        }
        alpha, beta = out.extras["emma/alpha"].detach(), out.extras["emma/beta"].detach()
        for i, m in enumerate(self.gate.modalities):
            logs[f"alpha_{m}"] = alpha[:, i].mean()
            logs[f"beta_{m}"] = beta[:, i].mean()
        return PluginLoss(value, logs)

    # -- logging ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def summarize(self, extras: dict[str, Any], prefix: str) -> dict[str, Tensor]:
        alpha, beta = extras["emma/alpha"], extras["emma/beta"]
        logs = {f"{prefix}/energy": extras["emma/energy"].mean()}
        for i, m in enumerate(self.gate.modalities):
            logs[f"{prefix}/alpha_{m}"] = alpha[:, i].mean()
            logs[f"{prefix}/beta_{m}"] = beta[:, i].mean()
        return logs

    @torch.no_grad()
    def diagnostics(self, out: FusionOutput, batch: Batch) -> dict[str, Tensor | float]:
        if "emma/alpha" not in out.extras:
            return {}
        logs = self.summarize(out.extras, "clean")
        model, mods = self._model[0], self.gate.modalities
        g = torch.Generator().manual_seed(self.seed)
        for m in mods:
            for name, spec in ((f"noise_{m}", f"noise_{m}:{self.diag_noise}"), (f"drop_{m}", f"drop_{m}")):
                cb = corruption.apply(batch, spec, mods, g)
                logs.update(self.summarize(model(cb).extras, name))
        return logs
