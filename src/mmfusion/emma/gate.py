"""The EMMA module inserted between a model's encoders and its fusion (Werenne 2019, Fig. 1-2):
energy step -> composition step -> attention step, ``m'_i = beta_i m_i`` (Eq. 2).

Installed with ``model.set_gate(EMMAGate(...))``; called as ``gate(unimodal, batch) ->``
:class:`~mmfusion.contract.GateOutput` with the gated representations, ``scales = {m: beta_m (B,)}`` (models that
fuse sequences scale each modality's sequence by it) and ``extras`` (copied into ``FusionOutput.extras``):
``emma/alpha``, ``emma/beta``, ``emma/energy`` (system energy S), ``emma/modal_energy`` (E), ``emma/potential``
(V), ``emma/log_alpha`` and, if asked, ``emma/laplacian``.

The potentials are computed on *detached* representations with the frozen DAEs (no corruption noise outside
:meth:`TiedDAE.loss`, so train/eval mode does not matter): the energy judges the encoder's
output, and gradients through V would let a trainable encoder move its outputs to game the energy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmfusion.contract import GateOutput
from mmfusion.emma.attention import AttentionStep
from mmfusion.emma.composition import Composition
from mmfusion.emma.dae import TiedDAE
from mmfusion.emma.energy import laplacian, potential
from mmfusion.errors import DataError


class EMMAGate(nn.Module):
    def __init__(
        self,
        modalities: tuple[str, ...],
        daes: dict[str, TiedDAE],
        composition: Composition,
        attention: AttentionStep,
        with_laplacian: bool = False,
    ) -> None:
        super().__init__()
        missing = [m for m in modalities if m not in daes]
        if missing:
            raise DataError(f"EMMA: no DAE for modalities {missing}; DAEs exist for {sorted(daes)}")
        self.modalities = tuple(modalities)
        self.daes = nn.ModuleDict({m: daes[m] for m in self.modalities})
        self.daes.requires_grad_(False)
        self.composition = composition
        self.attention = attention
        self.with_laplacian = with_laplacian

    def potentials(self, unimodal: dict[str, Tensor]) -> Tensor:
        """``V (B, M)`` of the (detached) unimodal representations, in float32."""
        return torch.stack(
            [potential(self.daes[m], unimodal[m].detach().float()) for m in self.modalities], -1
        )

    def forward(self, unimodal: dict[str, Tensor], batch: dict[str, Any] | None = None) -> GateOutput:
        v = self.potentials(unimodal)
        comp = self.composition(v)
        alpha = comp["alpha"]
        beta = self.attention(alpha)
        log_alpha = torch.log_softmax(-self.composition.coldness * comp["E"], dim=-1)
        gated = {}
        for i, m in enumerate(self.modalities):
            u = unimodal[m]
            gated[m] = beta[:, i].to(u.dtype).view(-1, *([1] * (u.ndim - 1))) * u
        extras: dict[str, Any] = {
            "emma/alpha": alpha,
            "emma/beta": beta,
            "emma/energy": comp["S"],
            "emma/modal_energy": comp["E"],
            "emma/potential": v,
            "emma/log_alpha": log_alpha,
        }
        if self.with_laplacian:
            extras["emma/laplacian"] = torch.stack(
                [laplacian(self.daes[m], unimodal[m].detach().float()) for m in self.modalities], -1
            )
        return GateOutput(gated, scales={m: beta[:, i] for i, m in enumerate(self.modalities)}, extras=extras)
