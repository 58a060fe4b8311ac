"""MulT: Multimodal Transformer (Tsai et al., ACL 2019, "Multimodal Transformer for Unaligned Multimodal Language
Sequences"); released code ``yaohungt/Multimodal-Transformer`` (``src/models.py``, ``modules/transformer.py``),
MMSA ``models/singleTask/MULT.py``.

For M modalities (the paper: language L, audio A, vision V):

* Temporal convolution (Sect. 3.1, Eq. 1): ``X^_m = Conv1D(X_m, k_m)`` to a common width ``d`` (no bias, as the
  code); skipped when the input width already is ``d`` (as the code).
* Positional embedding (Eq. 2): ``Z_m^[0] = sqrt(d) X^_m + PE(T_m, d)``, sinusoidal (the fairseq / tensor2tensor
  form of the released code: ``[sin(p w_i); cos(p w_i)]``, ``w_i = 10000^{-i/(d/2-1)}``, positions ``p = 1..T``),
  then embedding dropout. Each transformer embeds its own inputs (its own scale ``sqrt(width)``).
* Crossmodal transformer ``a -> b`` (Sect. 3.2, Eq. 3-4): ``D`` layers, pre-LayerNorm as the released code::

      Z^ = Z^[i-1] + CM(LN(Z^[i-1]), LN(Z_a^[0]))     CM = multi-head attention, queries from b, keys/values from a
      Z^[i] = Z^ + FFN(LN(Z^))                         FFN = Linear(d, 4d) -> ReLU -> Linear(4d, d)

  (the paper's Eq. 4 adds ``LN(Z)`` as the residual; the code adds ``Z``: we follow the code, whose numbers the
  paper reports), then a final LayerNorm. For each target ``b`` there are M-1 of them (L <- A, L <- V, ...).
* Self-attention transformer (Sect. 3.3): ``Z_b = [Z_{a1 -> b}; Z_{a2 -> b}; ...]`` (features concatenated,
  width ``(M-1) d``) -> a transformer with ``memory_layers`` layers (code: ``max(layers, 3)``).
* Read-out: the last time step of each ``Z_b`` (at each sample's TRUE last step, see below), concatenated, then the
  residual block ``h + W2 Dropout(ReLU(W1 h))`` and a Linear output layer (code).

Contract: ``unimodal[b]`` = the last state of target ``b`` (``(M-1) d``; MMSA's ``Feature_t/a/v``), ``fused`` = their
concatenation (``M (M-1) d``; MMSA's ``Feature_f``), so a gate (EMMA) scales each target's state before the head
and every loss plug-in sees the same tensors as for the other models.

Unaligned input and padding (``docs/models.md``): each modality keeps its own ``T_m``; frames past a sample's true
length (``batch["lengths"]``) are set to zero before the convolution, are never attended to (key-padding masks),
and the read-out takes each sample's last valid step, so padding values never change the output. MMSA reads the
last PADDED step (``h[-1]``), which is the true last step only for left-padded files (MulT's own); our batches are
right-padded. ``causal_mask`` is the code's ``attn_mask`` (MMSA MOSI: true): query ``i`` may attend key ``j`` iff
``j <= i + |T_k - T_q|``, here with the true lengths per sample. ``conv_padding``: ``same`` keeps ``T_m`` (the
paper's Eq. 1 gives ``X^ in R^{T x d}``), ``valid`` is the code's ``padding=0`` (``T - k + 1`` steps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.contract import Batch, Encoded, FusionModel
from mmfusion.errors import ConfigError, DataError
from mmfusion.models.common import length_mask, lengths_of


def _per_modality(
    value: float | int | Mapping[str, Any], modalities: tuple[str, ...], key: str, default: float | int
) -> dict[str, Any]:
    """A scalar for every modality, or a mapping (missing modalities get ``default``; unknown keys are an error)."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in modalities]
        if unknown:
            raise ConfigError(
                f"model.{key} names unknown modalities {unknown}; data modalities are {list(modalities)}"
            )
        return {m: value.get(m, default) for m in modalities}
    return {m: value for m in modalities}


def sinusoidal_embedding(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal position embedding (tensor2tensor / fairseq form, MulT's ``SinusoidalPositionalEmbedding``):
    ``[sin(p w); cos(p w)]`` with ``w_i = exp(-i log(10000) / (dim/2 - 1))``, ``i < dim // 2``; a zero column is
    appended for odd ``dim``. positions: (T,) float -> (T, dim)."""
    half = dim // 2
    step = math.log(10000.0) / max(half - 1, 1)
    w = torch.exp(torch.arange(half, dtype=torch.float32, device=positions.device) * -step)
    ang = positions.float()[:, None] * w[None, :]
    emb = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def attention_mask(q_len: Tensor, k_len: Tensor, tq: int, tk: int, causal: bool) -> Tensor:
    """(B, 1, Tq, Tk) bool, True where query ``i`` may attend key ``j``: ``j`` is a valid key and, if ``causal``,
    ``j <= i + |L_k - L_q|`` (MulT's ``buffered_future_mask`` with the true lengths). Every query row keeps key 0,
    so no row is empty."""
    allowed = length_mask(k_len, tk)[:, None, :].expand(-1, tq, -1)
    if causal:
        i = torch.arange(tq, device=q_len.device)[None, :, None]
        j = torch.arange(tk, device=q_len.device)[None, None, :]
        offset = (k_len - q_len).abs()[:, None, None]
        allowed = allowed & (j <= i + offset)
    return allowed[:, None]


class MultiheadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al., 2017) with dropout on the attention weights; one
    ``(3d, d)`` input projection for queries, keys and values (the released code's ``in_proj_weight``)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.heads={heads} must divide the attention width {dim}")
        self.dim, self.heads, self.dropout = dim, heads, float(dropout)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, src: Tensor | None, mask: Tensor) -> Tensor:
        """x: (B, Tq, d) queries; src: (B, Tk, d) keys/values (None: self-attention); mask (B, 1, Tq, Tk): bool
        (True = attend; fused ``scaled_dot_product_attention``) or additive float (0 / -inf; explicit matmul +
        softmax, faster on CPU where the fused kernel re-checks a bool mask in every call)."""
        d, w, b = self.dim, self.in_proj.weight, self.in_proj.bias
        if src is None:
            q, k, v = self.in_proj(x).chunk(3, dim=-1)
        else:
            q = F.linear(x, w[:d], b[:d])
            k, v = F.linear(src, w[d:], b[d:]).chunk(2, dim=-1)
        bsz, tq, tk = x.shape[0], x.shape[1], k.shape[1]
        q = q.reshape(bsz, tq, self.heads, -1).transpose(1, 2)
        k = k.reshape(bsz, tk, self.heads, -1).transpose(1, 2)
        v = v.reshape(bsz, tk, self.heads, -1).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        if mask.dtype == torch.bool:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            w = torch.softmax(torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)) + mask, dim=-1)
            out = torch.matmul(F.dropout(w, p, self.training) if p > 0 else w, v)
        return self.out_proj(out.transpose(1, 2).reshape(bsz, tq, d))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm layer of the released code: attention (crossmodal if ``src`` is given; the same LayerNorm
    normalises queries and keys/values) + residual, then ``Linear(d, 4d) -> ReLU -> Linear(4d, d)`` + residual."""

    def __init__(
        self, dim: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float
    ) -> None:
        super().__init__()
        self.attn = MultiheadAttention(dim, heads, attn_dropout)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        self.norm_attn, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.relu_dropout, self.res_dropout = float(relu_dropout), float(res_dropout)

    def forward(self, x: Tensor, src: Tensor | None, mask: Tensor) -> Tensor:
        h = self.norm_attn(x)
        h = self.attn(h, None if src is None else self.norm_attn(src), mask)
        x = x + F.dropout(h, self.res_dropout, self.training)
        h = F.dropout(F.relu(self.fc1(self.norm_ffn(x))), self.relu_dropout, self.training)
        return x + F.dropout(self.fc2(h), self.res_dropout, self.training)


class TransformerEncoder(nn.Module):
    """MulT's ``TransformerEncoder``: embed (``sqrt(d) x + PE``, dropout) the queries and, for a crossmodal
    transformer, the keys/values; ``layers`` :class:`TransformerLayer` s; a final LayerNorm."""

    def __init__(
        self,
        dim: int,
        heads: int,
        layers: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        positional: bool,
        causal: bool,
    ) -> None:
        super().__init__()
        self.dim, self.scale = dim, math.sqrt(dim)
        self.positional, self.causal, self.embed_dropout = (
            bool(positional),
            bool(causal),
            float(embed_dropout),
        )
        self.layers = nn.ModuleList(
            [TransformerLayer(dim, heads, attn_dropout, relu_dropout, res_dropout) for _ in range(layers)]
        )
        self.norm = nn.LayerNorm(dim)

    def embed(self, x: Tensor) -> Tensor:
        x = self.scale * x
        if self.positional:
            pos = torch.arange(1, x.shape[1] + 1, device=x.device)  # fairseq: position 0 is the padding index
            x = x + sinusoidal_embedding(pos, self.dim).to(x.dtype)
        return F.dropout(x, self.embed_dropout, self.training)

    def forward(
        self, x: Tensor, x_len: Tensor, src: Tensor | None = None, src_len: Tensor | None = None
    ) -> Tensor:
        """x: (B, Tq, d), x_len: (B,) true lengths; src/src_len: the source modality (crossmodal) or None."""
        x = self.embed(x)
        if src is None:
            mask = attention_mask(x_len, x_len, x.shape[1], x.shape[1], self.causal)
        else:
            src = self.embed(src)
            mask = attention_mask(x_len, src_len, x.shape[1], src.shape[1], self.causal)
        if x.device.type == "cpu":  # additive mask, built once for all layers
            mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        for layer in self.layers:
            x = layer(x, src, mask)
        return self.norm(x)


class ResidualHead(nn.Module):
    """MulT's output block: ``y = W_out (h + W2 Dropout(ReLU(W1 h)))``."""

    def __init__(self, dim: int, output_dim: int, dropout: float) -> None:
        super().__init__()
        self.proj1, self.proj2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, output_dim)
        self.dropout = float(dropout)

    def forward(self, h: Tensor) -> Tensor:
        r = self.proj2(F.dropout(F.relu(self.proj1(h)), self.dropout, self.training))
        return self.out(h + r)


class MulT(FusionModel):
    """Args:
    input_dims: ``{modality: D_m}`` (from the datamodule); at least two modalities.
    output_dim: prediction width.
    d_model: common width ``d`` after the temporal convolutions (MMSA MOSI: 50).
    heads: attention heads (MMSA MOSI: 10); must divide ``d`` and ``(M-1) d``.
    layers: crossmodal transformer depth ``D`` (MMSA ``nlevels``, MOSI: 4).
    memory_layers: self-attention transformer depth; ``None`` = ``max(layers, 3)`` (the code's rule).
    kernel_size: temporal convolution width ``k_m`` (int or ``{modality: k}``; MMSA MOSI: 5).
    conv_padding: ``same`` (keeps ``T_m``, paper Eq. 1) | ``valid`` (the code's ``padding=0``).
    positional: add the sinusoidal position embedding (paper, released code; MMSA builds its transformers
        without it).
    causal_mask: the code's ``attn_mask`` (see the module docstring).
    input_dropout: dropout on the input features (float or ``{modality: p}``; MMSA ``text_dropout`` 0.5 on text).
    embed_dropout: dropout after the embedding (MMSA MOSI: 0.2).
    attn_dropout: attention-weight dropout of the crossmodal transformers INTO each target (float or
        ``{modality: p}``; MMSA MOSI: text 0.3, audio 0.2, vision 0.0).
    memory_attn_dropout: the same for the self-attention transformers (MMSA: its text value).
    relu_dropout, res_dropout: FFN and residual dropouts (MMSA MOSI: 0, 0).
    output_dropout: dropout inside the residual output block (MMSA MOSI: 0.5).
    """

    accepts_unaligned = True

    def __init__(
        self,
        *,
        input_dims: dict[str, int],
        output_dim: int = 1,
        d_model: int = 30,
        heads: int = 5,
        layers: int = 4,
        memory_layers: int | None = None,
        kernel_size: int | Mapping[str, int] = 1,
        conv_padding: str = "same",
        positional: bool = True,
        causal_mask: bool = True,
        input_dropout: float | Mapping[str, float] = 0.0,
        embed_dropout: float = 0.2,
        attn_dropout: float | Mapping[str, float] = 0.1,
        memory_attn_dropout: float = 0.1,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        output_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.modalities = tuple(input_dims)
        mods = self.modalities
        if len(mods) < 2:
            raise ConfigError(
                f"model=mult needs at least two modalities (crossmodal attention); got {list(mods)}"
            )
        if conv_padding not in ("same", "valid"):
            raise ConfigError(f"model.conv_padding must be 'same' or 'valid'; got {conv_padding!r}")
        if d_model < 1 or layers < 1:
            raise ConfigError(f"model.d_model and model.layers must be >= 1; got {d_model}, {layers}")
        d = int(d_model)
        self.d_model, self.conv_padding = d, conv_padding
        self.kernel = {m: int(k) for m, k in _per_modality(kernel_size, mods, "kernel_size", 1).items()}
        for m, k in self.kernel.items():
            if k < 1 or (conv_padding == "same" and k % 2 == 0):
                raise ConfigError(
                    f"model.kernel_size for {m!r} must be a positive (odd with conv_padding=same) "
                    f"integer; got {k}"
                )
        self.input_dropout = {
            m: float(p) for m, p in _per_modality(input_dropout, mods, "input_dropout", 0.0).items()
        }
        # temporal convolutions (Eq. 1); none where the input already has width d (the code's rule)
        self.proj = nn.ModuleDict(
            {m: nn.Conv1d(input_dims[m], d, self.kernel[m], bias=False) for m in mods if input_dims[m] != d}
        )
        attn_p = _per_modality(attn_dropout, mods, "attn_dropout", 0.0)
        common = dict(
            relu_dropout=relu_dropout,
            res_dropout=res_dropout,
            embed_dropout=embed_dropout,
            positional=positional,
            causal=causal_mask,
        )
        # crossmodal transformers source -> target, keyed "<source>_to_<target>"
        self.crossmodal = nn.ModuleDict(
            {
                f"{a}_to_{b}": TransformerEncoder(d, heads, layers, float(attn_p[b]), **common)
                for b in mods
                for a in mods
                if a != b
            }
        )
        mem_dim = (len(mods) - 1) * d
        n_mem = max(layers, 3) if memory_layers is None else int(memory_layers)
        self.memory = nn.ModuleDict(
            {b: TransformerEncoder(mem_dim, heads, n_mem, float(memory_attn_dropout), **common) for b in mods}
        )
        self.unimodal_dims = {m: mem_dim for m in mods}
        self.fused_dim = len(mods) * mem_dim
        self.head = ResidualHead(self.fused_dim, output_dim, output_dropout)

    def project(self, m: str, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, D_m) right-padded -> (B, T', d) and the true lengths after the convolution."""
        t = x.shape[1]
        x = torch.where(
            length_mask(lengths, t)[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)
        )
        p = self.input_dropout[m]
        if p > 0:
            x = F.dropout(x, p, self.training)
        if m not in self.proj:
            return x, lengths
        k = self.kernel[m]
        h = x.transpose(1, 2)
        if self.conv_padding == "same":
            h = self.proj[m](F.pad(h, ((k - 1) // 2, (k - 1) // 2)))
            return h.transpose(1, 2), lengths
        if t < k:
            raise DataError(
                f"MulT with conv_padding=valid: modality {m!r} has T={t} steps < kernel_size {k}; "
                f"use model.conv_padding=same or a smaller model.kernel_size"
            )
        h = self.proj[m](h).transpose(1, 2)
        return h, (lengths - (k - 1)).clamp(min=1)

    def encode(self, batch: Batch) -> Encoded:
        z, lens = {}, {}
        for m in self.modalities:
            x = batch["x"][m]
            x = x[:, None, :] if x.dim() == 2 else x
            z[m], lens[m] = self.project(m, x, lengths_of(batch, m, x))
        unimodal = {}
        for b in self.modalities:
            cross = [
                self.crossmodal[f"{a}_to_{b}"](z[b], lens[b], z[a], lens[a])
                for a in self.modalities
                if a != b
            ]
            h = self.memory[b](torch.cat(cross, dim=-1), lens[b])
            last = (lens[b] - 1).clamp(min=0)
            unimodal[b] = h[torch.arange(h.shape[0], device=h.device), last]  # each sample's last valid step
        return Encoded(unimodal=unimodal)

    def fuse(self, unimodal: dict[str, Tensor], state: dict[str, Any], batch: Batch) -> Tensor:
        return torch.cat([unimodal[m] for m in self.modalities], dim=-1)
