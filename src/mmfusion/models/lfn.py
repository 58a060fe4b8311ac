"""LFN / LMF: Low-rank Multimodal Fusion (Liu et al., ACL 2018, "Efficient Low-rank Multimodal Fusion with
Modality-Specific Factors").

TFN maps the tensor ``Z = (x)_m [1; z_m]`` linearly: ``h = W . Z + b`` with ``W`` of shape
``(d_h, d_1+1, ..., d_M+1)``. LMF decomposes ``W`` into ``r`` modality-specific factors (Eq. 5-6):
``W = sum_i (x)_m w_m^(i)`` with ``w_m^(i) in R^{(d_m+1) x d_h}``, so that (Eq. 7)

    h = sum_i lambda_i * prod_m ( [1; z_m] W_m^(i) ) + b,

computed without ever building ``Z`` (cost linear in the number of modalities). ``lambda`` (``fusion_weights``)
and ``b`` (``fusion_bias``) follow the released code (``Justin1904/Low-rank-Multimodal-Fusion``).

Every parameter is registered and trained: MMSA's optimiser slicing leaves ``fusion_weights``/``fusion_bias``
untrained and MultiBench does not register the factors (notes §4.1 item 8); a test checks that every parameter
gets a gradient. ``post_fusion_dropout`` is applied to ``h`` inside the head (the released code builds it and
never uses it; with ``fusion_dim: null`` there is no head and no dropout).

Paper vs code: in the paper and the released code ``h`` is the prediction itself (``d_h`` = output size);
``fusion_dim`` sets ``d_h`` and a linear head maps ``h`` to the output (a linear map of a rank-``r`` linear map of
``Z`` is again one, so the model class is unchanged while plug-ins get a ``d_h``-dimensional fused representation);
``fusion_dim: null`` reproduces the code exactly (``d_h`` = output size, identity head).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmfusion.contract import Batch, Encoded, FusionModel
from mmfusion.errors import ConfigError
from mmfusion.models.subnets import ModalityEncoders, encoder_hidden


class LowRankFusion(nn.Module):
    """``h = sum_i lambda_i prod_m ([1; z_m] W_m^(i)) + b`` for (B, d_m) inputs -> (B, out_dim)."""

    def __init__(self, dims: Mapping[str, int], rank: int, out_dim: int, factor_init: str = "xavier") -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"model.rank must be >= 1, got {rank}")
        if factor_init not in ("xavier", "unit_bias"):
            raise ConfigError(f"model.factor_init must be 'xavier' or 'unit_bias', got {factor_init!r}")
        self.rank, self.out_dim = int(rank), int(out_dim)
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(rank, d + 1, out_dim)) for m, d in dims.items()}
        )
        self.fusion_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.zeros(1, out_dim))
        for p in self.factors.values():
            nn.init.xavier_normal_(p)
            if factor_init == "unit_bias":  # each factor starts as 1 + W z: the product keeps an O(1) scale
                with torch.no_grad():
                    p[:, 0, :] = 1.0
        nn.init.xavier_normal_(self.fusion_weights)

    def forward(self, z: Mapping[str, Tensor]) -> Tensor:
        prod = None
        for m, w in self.factors.items():
            zm = z[m]
            zm1 = torch.cat([zm.new_ones(zm.shape[0], 1), zm], dim=1)
            f = torch.matmul(zm1, w)  # (r, B, out)
            prod = f if prod is None else prod * f
        # (1, r) x (r, B*out) -> (B, out)
        h = torch.matmul(self.fusion_weights, prod.reshape(self.rank, -1)).reshape(-1, self.out_dim)
        return h + self.fusion_bias


class LFN(FusionModel):
    """Low-rank Multimodal Fusion (``model=lfn``): TFN's sub-networks, then rank-``r`` modality-specific factors (Eq. 5-7).

    Args:
        input_dims: feature size per modality, ``{name: D_m}`` (from the datamodule).
        output_dim: size of the prediction (from the task, sized to the data's targets by ``build.py``).
        hidden: width of the acoustic/visual sub-networks, one int or ``{modality: width}``; a mapping may also name
            a sequence modality to set its LSTM width.
        text_hidden: LSTM hidden size of the sequence (language) sub-networks.
        text_out: size of the language embedding (the Linear after the LSTM).
        dropout: sub-network dropout, one float or ``{modality: p}``.
        rank: number ``r`` of low-rank factors per modality.
        fusion_dim: ``d_h``, the size of the fused vector ``h``, followed by a linear head; ``None`` makes ``h`` the
            prediction itself (``d_h`` = ``output_dim``, no head), as in the paper and the released code.
        post_fusion_dropout: dropout on ``h`` inside the head (no effect when ``fusion_dim`` is ``None``).
        factor_init: ``xavier`` (the released code: every factor Xavier-normal, so ``h`` is a product of M small
            numbers, ``|h|`` ~ 1e-3 at initialisation) or ``unit_bias`` (optional, ours: the weight of each factor's
            constant input is set to 1, so each factor starts as ``1 + W z`` and ``h`` at an O(1) scale with
            first-order unimodal terms, as in TFN's appended 1).
        sequence_modalities: modalities encoded by an LSTM sub-network; the others are time-averaged over their true
            lengths and go through a vector sub-network.
    """

    accepts_unaligned = True  # language LSTM by its own lengths; audio/vision masked time-means

    def __init__(
        self,
        *,
        input_dims: dict[str, int],
        output_dim: int = 1,
        hidden: int | Mapping[str, int] = 16,
        text_hidden: int = 128,
        text_out: int = 64,
        dropout: float | Mapping[str, float] = 0.3,
        rank: int = 4,
        fusion_dim: int | None = 32,
        post_fusion_dropout: float = 0.0,
        sequence_modalities: Sequence[str] = ("text",),
        factor_init: str = "xavier",
    ) -> None:
        super().__init__()
        self.modalities = tuple(input_dims)
        hid = encoder_hidden(self.modalities, hidden, text_hidden, sequence_modalities)
        self.encoders = ModalityEncoders(input_dims, hid, dropout, text_out, sequence_modalities)
        self.unimodal_dims = dict(self.encoders.out_dims)
        self.fused_dim = int(fusion_dim) if fusion_dim else int(output_dim)
        self.fusion = LowRankFusion(self.unimodal_dims, rank, self.fused_dim, factor_init)
        self.head = (
            nn.Sequential(nn.Dropout(post_fusion_dropout), nn.Linear(self.fused_dim, output_dim))
            if fusion_dim
            else nn.Identity()
        )

    def encode(self, batch: Batch) -> Encoded:
        return Encoded(unimodal=self.encoders(batch))

    def fuse(self, unimodal: dict[str, Tensor], state: dict[str, Any], batch: Batch) -> Tensor:
        return self.fusion(unimodal)
