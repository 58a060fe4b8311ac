# Frozen copy of src/mmfusion/models/lfn.py at commit 26d69f6 (before the issue-18 speed work): the reference of
# tests/test_models_equivalence.py. Do not edit; it is not used by the package.
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

from .subnets import ModalityEncoders, encoder_hidden


class LowRankFusion(nn.Module):
    """``h = sum_i lambda_i prod_m ([1; z_m] W_m^(i)) + b`` for (B, d_m) inputs -> (B, out_dim)."""

    def __init__(self, dims: Mapping[str, int], rank: int, out_dim: int) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"model.rank must be >= 1, got {rank}")
        self.rank, self.out_dim = int(rank), int(out_dim)
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(rank, d + 1, out_dim)) for m, d in dims.items()}
        )
        self.fusion_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.zeros(1, out_dim))
        for p in self.factors.values():
            nn.init.xavier_normal_(p)
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
    ) -> None:
        super().__init__()
        self.modalities = tuple(input_dims)
        hid = encoder_hidden(self.modalities, hidden, text_hidden, sequence_modalities)
        self.encoders = ModalityEncoders(input_dims, hid, dropout, text_out, sequence_modalities)
        self.unimodal_dims = dict(self.encoders.out_dims)
        self.fused_dim = int(fusion_dim) if fusion_dim else int(output_dim)
        self.fusion = LowRankFusion(self.unimodal_dims, rank, self.fused_dim)
        self.head = (
            nn.Sequential(nn.Dropout(post_fusion_dropout), nn.Linear(self.fused_dim, output_dim))
            if fusion_dim
            else nn.Identity()
        )

    def encode(self, batch: Batch) -> Encoded:
        return Encoded(unimodal=self.encoders(batch))

    def fuse(self, unimodal: dict[str, Tensor], state: dict[str, Any], batch: Batch) -> Tensor:
        return self.fusion(unimodal)
