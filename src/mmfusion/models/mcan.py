"""MCAN, the Modular Co-Attention Network for VQA (Yu et al., CVPR'19), encoder-decoder variant (``MCA_ED``).

As used by Farinhas (2021), Ch. 6 / Table 6.1, and reproduced module by module from ``MILVLG/mcan-vqa``
(``core/model/{mca.py,net.py,net_utils.py}``):

* question: word embedding (300-d, GloVe-initialised when given) -> 1-layer LSTM(300 -> d), all time steps;
* image: region/grid features -> Linear(F -> d) (or, for raw pixels, :class:`~mmfusion.models.grid_cnn.GridCNN`);
* backbone: ``layers`` self-attention units (SA) on the question (encoder); ``layers`` self-guided-attention
  units (SGA) on the image, each attending to the *final* encoder output (decoder);
* post-LN residual units with MCAN's own layer norm (unbiased std, eps added to the std), dropout on the
  attention maps, the FFN hidden layer and every residual branch;
* ``AttFlat`` pools on both sides (``self.pools["question"]``, ``self.pools["image"]``: the image one is what the
  continuous-attention plug-in replaces), sum fusion + layer norm, linear head to the answer vocabulary (logits;
  the task applies sigmoid + BCE).

Masks: PAD tokens (id 0) and all-zero feature rows (``sum |f| == 0``, MCAN's ``make_mask``) are invalid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mmfusion.attention.attflat import AttFlat
from mmfusion.contract import Batch, Encoded, FusionModel
from mmfusion.errors import ConfigError, DataError
from mmfusion.models.grid_cnn import GridCNN


class MCANLayerNorm(nn.Module):
    """MCAN's ``LayerNorm``: ``a * (x - mean) / (std + eps) + b`` with the *unbiased* std (``x.std(-1)``)."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.a_2 = nn.Parameter(torch.ones(size))
        self.b_2 = nn.Parameter(torch.zeros(size))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.a_2 * (x - mean) / (std + self.eps) + self.b_2


class MHAtt(nn.Module):
    """Multi-head scaled dot-product attention with dropout on the attention map (MCAN ``MHAtt``)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"MCAN: hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads, self.d_head = heads, hidden // heads
        self.linear_v = nn.Linear(hidden, hidden)
        self.linear_k = nn.Linear(hidden, hidden)
        self.linear_q = nn.Linear(hidden, hidden)
        self.linear_merge = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.d_head).transpose(1, 2)

    def forward(self, v: Tensor, k: Tensor, q: Tensor, kv_valid: Tensor) -> Tensor:
        vh, kh, qh = (
            self._split(self.linear_v(v)),
            self._split(self.linear_k(k)),
            self._split(self.linear_q(q)),
        )
        scores = qh @ kh.transpose(-2, -1) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~kv_valid[:, None, None, :], -1e9)
        att = self.dropout(torch.softmax(scores, dim=-1))
        out = (att @ vh).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
        return self.linear_merge(out)


class FFN(nn.Module):
    """MCAN ``FFN`` = ``MLP(d -> ff -> d)``: Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, hidden: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, ff), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ff, hidden)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SA(nn.Module):
    """Self-attention unit: ``x = LN(x + Drop(MHAtt(x,x,x)))``; ``x = LN(x + Drop(FFN(x)))``."""

    def __init__(self, hidden: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.mhatt = MHAtt(hidden, heads, dropout)
        self.ffn = FFN(hidden, ff, dropout)
        self.dropout1, self.norm1 = nn.Dropout(dropout), MCANLayerNorm(hidden)
        self.dropout2, self.norm2 = nn.Dropout(dropout), MCANLayerNorm(hidden)

    def forward(self, x: Tensor, x_valid: Tensor) -> Tensor:
        x = self.norm1(x + self.dropout1(self.mhatt(x, x, x, x_valid)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class SGA(nn.Module):
    """Self-guided-attention unit: SA on ``x``, then guided attention with queries ``x`` and keys/values ``y``,
    then FFN, each as a post-LN residual."""

    def __init__(self, hidden: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.mhatt1 = MHAtt(hidden, heads, dropout)
        self.mhatt2 = MHAtt(hidden, heads, dropout)
        self.ffn = FFN(hidden, ff, dropout)
        self.dropout1, self.norm1 = nn.Dropout(dropout), MCANLayerNorm(hidden)
        self.dropout2, self.norm2 = nn.Dropout(dropout), MCANLayerNorm(hidden)
        self.dropout3, self.norm3 = nn.Dropout(dropout), MCANLayerNorm(hidden)

    def forward(self, x: Tensor, y: Tensor, x_valid: Tensor, y_valid: Tensor) -> Tensor:
        x = self.norm1(x + self.dropout1(self.mhatt1(x, x, x, x_valid)))
        x = self.norm2(x + self.dropout2(self.mhatt2(y, y, x, y_valid)))
        return self.norm3(x + self.dropout3(self.ffn(x)))


class MCA_ED(nn.Module):
    """Encoder-decoder backbone: ``layers`` SA on the question, then ``layers`` SGA on the image, every SGA
    guided by the final encoder output."""

    def __init__(self, hidden: int, heads: int, ff: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.enc_list = nn.ModuleList([SA(hidden, heads, ff, dropout) for _ in range(layers)])
        self.dec_list = nn.ModuleList([SGA(hidden, heads, ff, dropout) for _ in range(layers)])

    def forward(
        self, lang: Tensor, img: Tensor, lang_valid: Tensor, img_valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        for enc in self.enc_list:
            lang = enc(lang, lang_valid)
        for dec in self.dec_list:
            img = dec(img, lang, img_valid, lang_valid)
        return lang, img


class MCAN(FusionModel):
    """MCAN as a :class:`~mmfusion.contract.FusionModel` with modalities ``("question", "image")``.

    ``input_dims`` to ``image_size`` are data-dependent: they come from the datamodule's ``model_kwargs()``; the
    rest comes from the config (``model=mcan|mcan_small|mcan_large``).

    Args:
        input_dims: must have ``image``: the feature size, or the number of channels for raw pixels.
        output_dim: answer vocabulary size.
        vocab_size: number of question tokens, PAD=0 and UNK=1 included.
        pretrained_emb: optional ``(vocab_size, word_dim)`` tensor that initialises the word embedding (GloVe).
        grid_shape: ``(h, w)`` of grid features; ``None`` for bottom-up boxes.
        image_encoder: ``"linear"`` for image features, ``"cnn"`` for raw ``(B, C, H, W)`` images
            (a :class:`~mmfusion.models.grid_cnn.GridCNN` trained end to end).
        image_size: ``(H, W)`` of raw images; the CNN's grid shape is derived from it.
        cnn_channels: output channels of the GridCNN's stride-2 stages (raw pixels only).
        word_dim: word embedding size.
        hidden: hidden size of the LSTM and of every SA/SGA unit.
        heads: number of attention heads.
        ff: hidden size of the feed-forward layers (``None``: ``4 * hidden``).
        layers: number of SA units (question) and of SGA units (image).
        dropout: dropout on attention maps, FFN hidden layers, residual branches and in the AttFlat pools.
        flat_mlp: hidden width of the AttFlat scorer MLP.
        flat_glimpses: number of attention glimpses of each AttFlat pool.
        flat_out: output size of the AttFlat pools, i.e. of the unimodal and fused representations.
        freeze_embedding: keep the word embedding fixed.
        fusion: ``"add"``: MCAN's ``z = LayerNorm(W_y y + W_x x)`` (Farinhas 2021, Sect. 6.2.1, the fused
            feature before the answer projection; the default, faithful);
            ``"add_mul"`` (ours, not MCAN): ``LayerNorm(q + v + q * v)``, which adds the elementwise product of
            the two pooled vectors, a rank-``flat_out`` bilinear term as in MLB (Kim et al. 2017), so that the
            linear answer head can compare what the question asks for with what the image holds (docs/vqa.md).
    """

    modalities = ("question", "image")

    def __init__(
        self,
        *,
        input_dims: dict[str, int],
        output_dim: int,
        vocab_size: int,
        pretrained_emb: Tensor | None = None,
        grid_shape: tuple[int, int] | list[int] | None = None,
        image_encoder: str = "linear",
        image_size: tuple[int, int] | list[int] | None = None,
        cnn_channels: tuple[int, ...] | list[int] = (32, 64, 128),
        word_dim: int = 300,
        hidden: int = 512,
        heads: int = 8,
        ff: int | None = None,
        layers: int = 6,
        dropout: float = 0.1,
        flat_mlp: int = 512,
        flat_glimpses: int = 1,
        flat_out: int = 1024,
        freeze_embedding: bool = False,
        fusion: str = "add",
    ) -> None:
        super().__init__()
        if fusion not in ("add", "add_mul"):
            raise ConfigError(f"MCAN: fusion must be 'add' or 'add_mul', got {fusion!r}")
        self.fusion = fusion
        if "image" not in input_dims:
            raise ConfigError(f"MCAN: input_dims must have an 'image' entry, got {dict(input_dims)}")
        ff = int(ff) if ff is not None else 4 * hidden
        self.grid_shape = tuple(int(g) for g in grid_shape) if grid_shape is not None else None

        self.embedding = nn.Embedding(vocab_size, word_dim)
        if pretrained_emb is not None:
            emb = torch.as_tensor(pretrained_emb, dtype=torch.float32)
            if emb.shape != (vocab_size, word_dim):
                raise ConfigError(
                    f"MCAN: pretrained_emb has shape {tuple(emb.shape)}, expected "
                    f"({vocab_size}, {word_dim}) = (vocab_size, word_dim)"
                )
            self.embedding.weight.data.copy_(emb)
        self.embedding.weight.requires_grad_(not freeze_embedding)
        self.lstm = nn.LSTM(word_dim, hidden, num_layers=1, batch_first=True)

        if image_encoder == "linear":
            self.cnn: GridCNN | None = None
            self.img_feat_linear = nn.Linear(int(input_dims["image"]), hidden)
        elif image_encoder == "cnn":
            self.cnn = GridCNN(int(input_dims["image"]), tuple(cnn_channels))
            self.img_feat_linear = nn.Linear(self.cnn.out_channels, hidden)
            if image_size is not None:
                expect = self.cnn.grid_shape(tuple(image_size))
                if self.grid_shape is not None and expect != self.grid_shape:
                    raise ConfigError(
                        f"MCAN: grid_shape {self.grid_shape} does not match the CNN output {expect} "
                        f"for images of size {tuple(image_size)}"
                    )
                self.grid_shape = expect
        else:
            raise ConfigError(f"MCAN: image_encoder must be 'linear' or 'cnn', got {image_encoder!r}")

        self.backbone = MCA_ED(hidden, heads, ff, layers, dropout)
        self.pools["question"] = AttFlat(hidden, flat_mlp, flat_out, flat_glimpses, dropout)
        self.pools["image"] = AttFlat(
            hidden, flat_mlp, flat_out, flat_glimpses, dropout, grid_shape=self.grid_shape
        )
        self.proj_norm = MCANLayerNorm(flat_out)
        self.head = nn.Linear(flat_out, output_dim)

        self.hidden = hidden
        self.unimodal_dims = {"question": flat_out, "image": flat_out}
        self.fused_dim = flat_out

    # -- encoders -----------------------------------------------------------------------------------------------
    def encode_image(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Image input -> (features (B, L, hidden), valid mask (B, L))."""
        if self.cnn is not None:
            if image.dim() != 4:
                raise DataError(
                    f"MCAN(image_encoder='cnn'): expected images (B, C, H, W), got {tuple(image.shape)}"
                )
            grid = self.cnn(image)  # (B, C', h, w)
            if self.grid_shape is not None and tuple(grid.shape[-2:]) != self.grid_shape:
                raise DataError(
                    f"MCAN: CNN grid {tuple(grid.shape[-2:])} != configured grid_shape {self.grid_shape}"
                )
            feats = grid.flatten(2).transpose(1, 2)  # row-major: index = w*row + col
            valid = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        else:
            if image.dim() != 3 or image.shape[-1] != self.img_feat_linear.in_features:
                raise DataError(
                    f"MCAN: expected image features (B, L, {self.img_feat_linear.in_features}), "
                    f"got {tuple(image.shape)}"
                )
            feats = image
            valid = image.abs().sum(-1) != 0
        return self.img_feat_linear(feats), valid

    def encode_question(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        if ids.dim() != 2:
            raise DataError(f"MCAN: expected question token ids (B, T), got {tuple(ids.shape)}")
        valid = ids != 0
        lang, _ = self.lstm(self.embedding(ids.long()))
        return lang, valid

    def encode(self, batch: Batch) -> Encoded:
        x = batch["x"]
        lang, lang_valid = self.encode_question(x["question"])
        img, img_valid = self.encode_image(x["image"])
        lang, img = self.backbone(lang, img, lang_valid, img_valid)
        unimodal = {
            "question": self.pools["question"](lang, lang_valid),
            "image": self.pools["image"](img, img_valid),
        }
        extras: dict[str, Any] = {}
        att = getattr(self.pools["image"], "last_attention", None)
        if att is not None:
            extras["attention/image"] = att
        state = {
            "sequences": {"question": lang, "image": img},
            "masks": {"question": lang_valid, "image": img_valid},
            "extras": extras,
        }
        return Encoded(unimodal=unimodal, state=state)

    def fuse(self, unimodal: dict[str, Tensor], state: dict[str, Any], batch: Batch) -> Tensor:
        q, v = unimodal["question"], unimodal["image"]
        return self.proj_norm(q + v + q * v if self.fusion == "add_mul" else q + v)
