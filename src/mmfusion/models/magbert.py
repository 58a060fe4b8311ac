"""MAG-BERT: BERT with a Multimodal Adaptation Gate (Rahman et al., ACL 2020, "Integrating Multimodal
Information in Large Pretrained Transformers"); released code ``WasifurRahman/BERT_multimodal_transformer``
(``modeling.py::MAG``, ``bert.py::MAG_BertModel``), MMSA ``models/singleTask/BERT_MAG.py``.

MAG (Sect. 3, Eq. 1-7), per word piece, with ``t`` the text hidden state at the injection point and ``a, v`` the
word-aligned acoustic / visual features:

    g_v = ReLU(W_gv [v; t] + b_v),  g_a = ReLU(W_ga [a; t] + b_a)          (Eq. 1-2)
    H   = g_v (.) (W_v v + b_v') + g_a (.) (W_a a + b_a')                  (Eq. 3; biases as the released code)
    alpha = min(||t||_2 / ||H||_2 * beta, 1)                               (Eq. 6; ||H|| = 0 -> 1, + 1e-6)
    m   = Dropout(LayerNorm(t + alpha H))                                  (Eq. 7)

``beta`` is ``beta_shift``; with ``beta_shift = 0`` the displacement vanishes and the gate is its own layer norm
of ``t``. MAG sits after ``injection_layer`` transformer layers (0 = after the embeddings, before the first
layer: the paper's default, and the only position in the released code). Any number of non-text modalities is
supported (one gated displacement each, summed). Head: BERT pooler -> Dropout -> Linear (released code).

Contract: ``unimodal["text"]`` = masked mean of ``t``; ``unimodal[m]`` = masked mean over word pieces of
``W_m m`` (all of width ``hidden``); ``fused`` = pooled output. The datamodule's text features are not used
(text enters as ``batch["tokens"]``, see :mod:`mmfusion.tokens`). A gate's ``gate_scales`` multiply ``t``
and each aligned feature sequence before MAG.

Training (docs/models.md): AdamW with weight decay except biases/LayerNorm (released code), separate learning rates for
BERT (``bert_lr``) and MAG + head (the module's ``lr``) via :meth:`param_groups`, and
:func:`linear_warmup_schedule` (``warmup_proportion`` 0.1, released code).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from mmfusion.contract import Batch, Encoded, FusionModel
from mmfusion.errors import ConfigError, DataError
from mmfusion.models.common import lengths_of
from mmfusion.tokens import PACKAGED, align_to_tokens, resolve_pretrained


class MAG(nn.Module):
    """The Multimodal Adaptation Gate over (B, L, H) text states and {m: (B, L, d_m)} aligned features."""

    def __init__(
        self,
        hidden: int,
        dims: Mapping[str, int],
        beta_shift: float = 1.0,
        dropout: float = 0.5,
        eps: float = 1e-6,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.beta_shift, self.eps = float(beta_shift), float(eps)
        self.gate = nn.ModuleDict({m: nn.Linear(d + hidden, hidden) for m, d in dims.items()})
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in dims.items()})
        self.norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.drop = nn.Dropout(dropout)

    def displacement(self, t: Tensor, feats: Mapping[str, Tensor]) -> Tensor:
        h = torch.zeros_like(t)
        for m, f in feats.items():
            g = torch.relu(self.gate[m](torch.cat([f, t], dim=-1)))
            h = h + g * self.proj[m](f)
        return h

    def forward(self, t: Tensor, feats: Mapping[str, Tensor]) -> Tensor:
        h = self.displacement(t, feats)
        t_norm = t.norm(p=2, dim=-1)
        h_norm = h.norm(p=2, dim=-1)
        h_norm = torch.where(h_norm == 0, torch.ones_like(h_norm), h_norm)
        alpha = torch.clamp(t_norm / (h_norm + self.eps) * self.beta_shift, max=1.0)
        return self.drop(self.norm(alpha[..., None] * h + t))


def linear_warmup_schedule(
    optimizer: torch.optim.Optimizer, num_training_steps: int, warmup_proportion: float = 0.1
) -> LambdaLR:
    """Linear warm-up over ``warmup_proportion`` of the steps, then linear decay to 0 (``transformers``'
    ``get_linear_schedule_with_warmup``, as in the released MAG-BERT code). Step it every batch."""
    total = max(1, int(num_training_steps))
    warm = int(warmup_proportion * total)

    def factor(step: int) -> float:
        if step < warm:
            return float(step) / float(max(1, warm))
        return max(0.0, float(total - step) / float(max(1, total - warm)))

    return LambdaLR(optimizer, factor)


def _extended_mask(bert: nn.Module, attention_mask: Tensor, hidden: Tensor) -> Tensor | None:
    try:  # transformers >= 5
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=bert.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
    except ImportError:  # pragma: no cover - transformers 4.x
        return bert.get_extended_attention_mask(attention_mask, attention_mask.shape)


class MAGBERT(FusionModel):
    """BERT with a Multimodal Adaptation Gate (``model=magbert``); text enters as word pieces (``batch["tokens"]``).

    Args:
        input_dims: feature size per modality, ``{name: D_m}`` (from the datamodule); the text modality's features
            are not used.
        output_dim: size of the prediction (from the task, sized to the data's targets by ``build.py``).
        pretrained: BERT to load: ``None`` or ``"minilm"`` (the packaged all-MiniLM-L6-v2, offline), a local
            folder, or a hub name such as ``bert-base-uncased`` (needs ``allow_download`` unless cached).
        tokenizer: tokenizer name, read by the data configs (``data.text_tokenizer``); it must share the BERT's
            vocabulary. The model itself does not use it.
        allow_download: allow ``from_pretrained`` to download a hub model.
        text_modality: the modality given as word pieces; every other modality is injected by MAG.
        injection_layer: MAG sits after this many transformer layers (0 = after the embeddings, the paper's).
        beta_shift: ``beta`` of Eq. 6, the bound on the displacement's norm relative to ``||t||``.
        mag_dropout: dropout after MAG's LayerNorm (Eq. 7).
        head_dropout: dropout before the linear head; ``None`` uses BERT's ``hidden_dropout_prob``.
        bert_layers: keep only the first ``k`` transformer layers (``None``: all).
        bert_lr: BERT's learning rate in :meth:`param_groups` (MAG and the head use the optimiser's ``lr``);
            ``None`` uses ``lr`` for BERT too.
        trim_padding: drop the token columns that are padding for the whole batch.
        pooling: ``"cls"`` (BERT pooler, the paper) or ``"mean"`` (masked mean of the last layer); ``None``: mean
            for the packaged MiniLM, cls otherwise.
    """

    accepts_unaligned = (
        False  # audio/vision gated per word piece: word-aligned (or utterance-level) input only
    )

    def __init__(
        self,
        *,
        input_dims: dict[str, int],
        output_dim: int = 1,
        pretrained: str | None = None,
        tokenizer: str | None = None,
        allow_download: bool = False,
        text_modality: str = "text",
        injection_layer: int = 0,
        beta_shift: float = 1.0,
        mag_dropout: float = 0.5,
        head_dropout: float | None = None,
        bert_layers: int | None = None,
        bert_lr: float | None = 1e-5,
        trim_padding: bool = True,
        pooling: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import BertModel

        # ``tokenizer`` is read by the data configs (data.text_tokenizer); it must share the BERT's vocabulary.
        self.tokenizer_name = tokenizer
        path, kw = resolve_pretrained(pretrained, allow_download)
        try:
            self.bert = BertModel.from_pretrained(path, **kw)
        except OSError as e:
            raise ConfigError(
                f"model.pretrained={pretrained!r}: BERT weights not found locally; give a local folder "
                f"or set model.allow_download=true"
            ) from e
        # ``from_pretrained`` returns the model in eval mode, and Lightning keeps each module's mode at fit start:
        # without this, BERT's dropout (hidden and attention, p = 0.1) would be off while fine-tuning.
        self.bert.train()
        n_layers = len(self.bert.encoder.layer)
        if bert_layers is not None:
            if not 1 <= bert_layers <= n_layers:
                raise ConfigError(f"model.bert_layers must be in [1, {n_layers}], got {bert_layers}")
            self.bert.encoder.layer = self.bert.encoder.layer[:bert_layers]
            n_layers = bert_layers
        if not 0 <= injection_layer <= n_layers:
            raise ConfigError(
                f"model.injection_layer must be in [0, {n_layers}] (0 = after the embeddings), "
                f"got {injection_layer}"
            )
        if text_modality not in input_dims:
            raise ConfigError(
                f"model.text_modality={text_modality!r} is not a data modality {list(input_dims)}"
            )
        if pooling is None:  # the packaged sentence-embedding MiniLM was trained with mean pooling
            pooling = "mean" if pretrained is None or str(pretrained).lower() in PACKAGED else "cls"
        if pooling not in ("cls", "mean"):
            raise ConfigError(
                f"model.pooling must be 'cls' (BERT pooler, the paper) or 'mean'; got {pooling!r}"
            )
        self.pooling = pooling
        if pooling == "mean":
            self.bert.pooler = None  # unused: no untrained parameters
        cfg = self.bert.config
        hidden = int(cfg.hidden_size)
        self.text_modality, self.injection_layer = text_modality, int(injection_layer)
        self.bert_lr, self.trim_padding = bert_lr, bool(trim_padding)
        self.modalities = tuple(input_dims)
        self.other = tuple(m for m in self.modalities if m != text_modality)
        self.mag = MAG(
            hidden,
            {m: input_dims[m] for m in self.other},
            beta_shift,
            mag_dropout,
            layer_norm_eps=cfg.layer_norm_eps,
        )
        self.unimodal_dims = {m: hidden for m in self.modalities}
        self.fused_dim = hidden
        p = cfg.hidden_dropout_prob if head_dropout is None else head_dropout
        self.head = nn.Sequential(nn.Dropout(p), nn.Linear(hidden, output_dim))

    def _layers(self, h: Tensor, mask: Tensor | None, start: int, stop: int) -> Tensor:
        for layer in self.bert.encoder.layer[start:stop]:
            out = layer(h, mask)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def encode(self, batch: Batch) -> Encoded:
        tok = batch.get("tokens")
        if not tok or "input_ids" not in tok:
            raise DataError(
                "MAG-BERT needs batch['tokens'] (word-piece ids): set data.text_tokenizer (e.g. "
                "experiment=mosi_magbert) so the datamodule tokenises the transcripts"
            )
        tok = dict(tok)
        if int(tok["input_ids"].max()) >= self.bert.config.vocab_size:
            raise DataError(
                f"token id {int(tok['input_ids'].max())} >= the BERT vocabulary size "
                f"{self.bert.config.vocab_size}: data.text_tokenizer and model.pretrained differ"
            )
        am = tok["attention_mask"]
        if self.trim_padding:  # drop the columns that are padding for the whole batch
            keep = int(am.sum(1).max())
            tok = {k: (v[:, :keep] if v.dim() == 2 else v) for k, v in tok.items()}
            am = tok["attention_mask"]
        h = self.bert.embeddings(input_ids=tok["input_ids"], token_type_ids=tok.get("token_type_ids"))
        mask = _extended_mask(self.bert, am, h)
        h = self._layers(h, mask, 0, self.injection_layer)
        w = am.to(h.dtype)[..., None]
        unimodal = {self.text_modality: (h * w).sum(1) / w.sum(1).clamp(min=1.0)}
        feats = {}
        for m in self.other:
            x = batch["x"][m]
            x = x[:, None, :] if x.dim() == 2 else x
            f, valid = align_to_tokens(x, lengths_of(batch, m, x), tok)
            feats[m] = f.to(h.dtype)
            pw = valid.to(h.dtype)[..., None]
            unimodal[m] = (self.mag.proj[m](feats[m]) * pw).sum(1) / pw.sum(1).clamp(min=1.0)
        return Encoded(
            unimodal=unimodal, state={"hidden": h, "feats": feats, "mask": mask, "attention_mask": am}
        )

    def fuse(self, unimodal: dict[str, Tensor], state: dict[str, Any], batch: Batch) -> Tensor:
        h, feats = state["hidden"], dict(state["feats"])
        scales = state.get("gate_scales") or {}
        if self.text_modality in scales:
            h = h * scales[self.text_modality].reshape(-1, 1, 1).to(h.dtype)
        for m in feats:
            if m in scales:
                feats[m] = feats[m] * scales[m].reshape(-1, 1, 1).to(h.dtype)
        h = self.mag(h, feats)
        h = self._layers(h, state["mask"], self.injection_layer, len(self.bert.encoder.layer))
        if self.pooling == "cls":
            return self.bert.pooler(h)
        w = state["attention_mask"].to(h.dtype)[..., None]
        return (h * w).sum(1) / w.sum(1).clamp(min=1.0)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """BERT at ``bert_lr`` (default: ``lr``), MAG + head at ``lr``; no weight decay on biases / LayerNorm."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            is_bert = name.startswith("bert.")
            no_decay = name.endswith("bias") or "LayerNorm" in name or ".norm." in name
            groups.setdefault((is_bert, no_decay), []).append(p)
        out = []
        for (is_bert, no_decay), params in groups.items():
            out.append(
                {
                    "params": params,
                    "lr": (self.bert_lr or lr) if is_bert else lr,
                    "weight_decay": 0.0 if no_decay else weight_decay,
                }
            )
        return out
