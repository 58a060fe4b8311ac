"""TFN: Tensor Fusion Network (Zadeh et al., EMNLP 2017, "Tensor Fusion Network for Multimodal Sentiment
Analysis").

* Modality embedding sub-networks (Sect. 4.1-4.2): acoustic/visual :class:`SubNet` on the time-averaged
  features, language :class:`TextSubNet` (LSTM) -> ``z_l, z_a, z_v``.
* Tensor fusion (Sect. 4.3, Eq. 1): ``z_m = [z_l; 1] (x) [z_v; 1] (x) [z_a; 1]``, the 3-fold outer product of the
  embeddings each extended by a constant 1, so that the unimodal, bimodal and trimodal terms all appear; we put
  the 1 first (``[1; z]``, as the MMSA / released code), which only permutes the flattened coordinates.
  The product is built one modality at a time by batched matrix products
  (``(B, I) x (B, J) -> (B, I*J) x (B, K) -> (B, I*J*K)``), so no intermediate is larger than the fused tensor
  itself, and any number of modalities works.
* Sentiment inference sub-network (Sect. 4.4): Dropout -> 2 x (Linear + ReLU) -> Linear (:class:`PostFusionMLP`;
  training on CPU its dropout and first Linear run fused and chunked, on a mask of ``F.dropout``'s law drawn from
  about one random byte per value: ``subnets._DropoutLinear``).

Paper vs re-implementations (docs/models.md): the paper's language sub-network feeds all LSTM outputs of a
fixed-length (20-word) sentence to the fully connected layers; with variable-length, right-padded input we use
the final state of a packed LSTM (as the released code and MMSA do). The output squashing (released code:
sigmoid to (-4, 4); MMSA: (-3, 3)) is ``output_range`` (default: none, a plain linear output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mmfusion.contract import Batch, Encoded, FusionModel
from mmfusion.models.subnets import ModalityEncoders, PostFusionMLP, encoder_hidden


def tensor_fusion(z: Sequence[Tensor]) -> Tensor:
    """Flattened outer product of ``[1; z_m]`` over the modalities: (B, prod(d_m + 1)).

    Coordinates are in row-major order of ``(d_1+1, d_2+1, ...)`` (the first modality varies slowest).
    """
    out = None
    for zm in z:
        zm1 = torch.cat([zm.new_ones(zm.shape[0], 1), zm], dim=1)
        # batched outer product (B, P, 1) x (B, 1, d+1): one BLAS call forward and backward (1.4x faster
        # fused + backward than broadcasting at MOSI sizes)
        out = zm1 if out is None else torch.bmm(out.unsqueeze(2), zm1.unsqueeze(1)).reshape(zm.shape[0], -1)
    return out


class TFN(FusionModel):
    """Tensor Fusion Network (``model=tfn``): sub-networks, the outer product of ``[1; z_m]`` (Eq. 1), post-fusion MLP.

    Args:
        input_dims: feature size per modality, ``{name: D_m}`` (from the datamodule).
        output_dim: size of the prediction (from the task, sized to the data's targets by ``build.py``).
        hidden: width of the acoustic/visual sub-networks (BatchNorm, Dropout, 3 x Linear+ReLU), one int or
            ``{modality: width}``; a mapping may also name a sequence modality to set its LSTM width.
        text_hidden: LSTM hidden size of the sequence (language) sub-networks.
        text_out: size of the language embedding ``z_l`` (the Linear after the LSTM).
        dropout: sub-network dropout, one float or ``{modality: p}``.
        post_fusion_dim: width of the two hidden layers of the post-fusion MLP.
        post_fusion_dropout: dropout on the fused tensor before the post-fusion MLP.
        sequence_modalities: modalities encoded by an LSTM sub-network; the others are time-averaged over their true
            lengths and go through a vector sub-network.
        output_range: ``[low, high]`` squashes the single regression output by a scaled sigmoid (released code
            (-4, 4), MMSA (-3, 3)); ``None`` (default) leaves it linear.
    """

    accepts_unaligned = True  # language LSTM by its own lengths; audio/vision masked time-means

    def __init__(
        self,
        *,
        input_dims: dict[str, int],
        output_dim: int = 1,
        hidden: int | Mapping[str, int] = 32,
        text_hidden: int = 128,
        text_out: int = 64,
        dropout: float | Mapping[str, float] = 0.2,
        post_fusion_dim: int = 128,
        post_fusion_dropout: float = 0.2,
        sequence_modalities: Sequence[str] = ("text",),
        output_range: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.modalities = tuple(input_dims)
        hid = encoder_hidden(self.modalities, hidden, text_hidden, sequence_modalities)
        self.encoders = ModalityEncoders(input_dims, hid, dropout, text_out, sequence_modalities)
        self.unimodal_dims = dict(self.encoders.out_dims)
        self.fused_dim = 1
        for d in self.unimodal_dims.values():
            self.fused_dim *= d + 1
        self.head = PostFusionMLP(
            self.fused_dim, post_fusion_dim, output_dim, post_fusion_dropout, output_range
        )

    def encode(self, batch: Batch) -> Encoded:
        return Encoded(unimodal=self.encoders(batch))

    def fuse(self, unimodal: dict[str, Tensor], state: dict[str, Any], batch: Batch) -> Tensor:
        return tensor_fusion([unimodal[m] for m in self.modalities])
