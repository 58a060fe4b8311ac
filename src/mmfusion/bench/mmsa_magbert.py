"""MMSA's own MAG-BERT (``MMSA.models.singleTask.BERT_MAG``, ``mmsa`` 2.2.1) beside ours, on the packaged offline
MiniLM, for :mod:`mmfusion.bench.models`.

MMSA 2.2.1 was written for transformers 4; under transformers 5 its MAG-BERT cannot be built as shipped. A small
in-process shim (:func:`install_mmsa_shim`; site-packages untouched, MMSA's computation unchanged) restores the three
transformers-4 behaviours it relies on:

* ``init_weights()`` as the end-of-``__init__`` hook: in transformers 5 that hook is ``post_init()`` (which also
  records the tied-weight keys ``from_pretrained`` needs), and ``post_init`` itself calls ``init_weights``, so a
  plain rename recurses. MMSA's call runs ``post_init()`` once; the nested call runs the real ``init_weights``.
* ``get_extended_attention_mask`` and ``get_head_mask`` (removed in 5): transformers 4's additive ``(B, 1, 1, L)``
  mask ``(1 - m) * finfo.min`` and ``[None] * layers`` (MMSA never passes a head mask).

``BERT_MAG.__init__`` runs as shipped except that its hard-coded ``bert-base-uncased`` is redirected, while the
constructor runs, to the local MiniLM folder (``local_files_only``); its MAG text width ``feature_dims[0]`` is the
BERT hidden size (384 for MiniLM, 768 for bert-base). Our MAG-BERT at MMSA's settings (MAG after the embeddings,
``beta_shift``, MAG dropout ``dropout_prob``, BERT's head dropout, pooler read-out) has the same number of trainable
parameters; with MMSA's weights copied in, both give the same predictions up to the MAG LayerNorm's epsilon (MMSA:
PyTorch's 1e-5, ours: BERT's 1e-12; 6e-7 apart, identical with the same epsilon; tested).
"""

from __future__ import annotations

import importlib
import json
import sys
from importlib import resources
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from torch import nn

CLS_ID, SEP_ID = 101, 102


def _module() -> ModuleType:
    importlib.import_module("MMSA.models.singleTask.BERT_MAG")
    return sys.modules["MMSA.models.singleTask.BERT_MAG"]


def install_mmsa_shim() -> None:
    """Patch MMSA's ``MAG_BertModel`` / ``MAG_BertForSequenceClassification`` (used by ``BERT_MAG`` only) for
    transformers 5; idempotent."""
    bm = _module()
    if getattr(bm.MAG_BertModel, "_mmfusion_shim", False):
        return
    from transformers import PreTrainedModel

    real_init_weights = PreTrainedModel.init_weights

    def init_weights(self: Any) -> Any:
        if self.__dict__.get("_in_post_init"):  # post_init's own call
            return real_init_weights(self)
        self.__dict__["_in_post_init"] = True
        try:
            self.post_init()
        finally:
            del self.__dict__["_in_post_init"]

    def get_extended_attention_mask(
        self: Any, attention_mask: torch.Tensor, input_shape: Any, device: Any = None, dtype: Any = None
    ) -> torch.Tensor:
        dtype = dtype or self.dtype
        ext = attention_mask[:, None, :, :] if attention_mask.dim() == 3 else attention_mask[:, None, None, :]
        return (1.0 - ext.to(dtype)) * torch.finfo(dtype).min

    def get_head_mask(self: Any, head_mask: Any, num_hidden_layers: int, is_attention_chunked: bool = False):
        if head_mask is not None:
            raise NotImplementedError("MMSA's MAG-BERT never passes a head mask")
        return [None] * num_hidden_layers

    for cls in (bm.MAG_BertModel, bm.MAG_BertForSequenceClassification):
        cls.init_weights = init_weights
    bm.MAG_BertModel.get_extended_attention_mask = get_extended_attention_mask
    bm.MAG_BertModel.get_head_mask = get_head_mask
    bm.MAG_BertModel._mmfusion_shim = True


def mmsa_params(data: str) -> dict[str, Any]:
    """``commonParams`` updated by ``datasetParams[data]`` of ``bert_mag`` in MMSA's ``config_regression.json``."""
    cfg = json.loads((resources.files("MMSA") / "config" / "config_regression.json").read_text())
    entry = cfg["bert_mag"]
    return {**entry["commonParams"], **entry["datasetParams"][data]}


def build_mmsa(dims: dict[str, int], data: str, seq_len: int, device: str = "cpu") -> nn.Module:
    """MMSA's ``BERT_MAG(args)`` at its config for ``data``, on the packaged MiniLM."""
    from transformers import AutoConfig

    from mmfusion.tokens import packaged_model_dir

    install_mmsa_shim()
    bm = _module()
    path = str(packaged_model_dir())
    hidden = AutoConfig.from_pretrained(path, local_files_only=True).hidden_size
    args = SimpleNamespace(
        feature_dims=[hidden, dims["audio"], dims["vision"]],
        seq_lens=[seq_len] * 3,
        train_mode="regression",
        num_classes=1,
        language="en",
        device=torch.device(device),
        **mmsa_params(data),
    )
    cls = bm.MAG_BertForSequenceClassification
    own = cls.__dict__.get("from_pretrained")

    def from_local(klass: Any, name: str, *a: Any, **k: Any) -> Any:
        if name != "bert-base-uncased":
            raise ValueError(
                f"MMSA's BERT_MAG asked for {name!r}; expected its hard-coded 'bert-base-uncased'"
            )
        return super(cls, klass).from_pretrained(path, *a, local_files_only=True, **k)

    cls.from_pretrained = classmethod(from_local)
    try:
        net = bm.BERT_MAG(args)
    finally:
        if own is None:
            del cls.from_pretrained
        else:
            cls.from_pretrained = own
    return net.to(device)


def build_ours(dims: dict[str, int], data: str) -> nn.Module:
    """Our MAG-BERT at MMSA's settings for ``data`` (equal parameter count)."""
    from mmfusion.models.magbert import MAGBERT

    p = mmsa_params(data)
    return MAGBERT(
        input_dims=dict(dims),
        output_dim=1,
        pretrained="minilm",
        injection_layer=0,
        beta_shift=float(p["beta_shift"]),
        mag_dropout=float(p["dropout_prob"]),
        head_dropout=None,
        bert_layers=None,
        pooling="cls",
        trim_padding=True,
    )


def make_inputs(
    dims: dict[str, int], batch: int, seq_len: int, device: str, lengths: torch.Tensor | None = None
) -> tuple[dict, tuple]:
    """(our batch, MMSA's (text (B, 3, T) = [ids; mask; segments] as floats, audio, video)): the same word pieces
    ([CLS] random ids [SEP], then padding) and the same aligned audio / vision, full length unless ``lengths``."""
    g = torch.Generator().manual_seed(0)
    x = {m: torch.randn(batch, seq_len, d, generator=g) for m, d in dims.items()}
    lens = torch.full((batch,), seq_len, dtype=torch.long) if lengths is None else torch.as_tensor(lengths)
    pos = torch.arange(seq_len)[None, :]
    mask = (pos < lens[:, None]).long()
    ids = torch.randint(1000, 30522, (batch, seq_len), generator=g)
    ids = torch.where(pos == 0, CLS_ID, torch.where(pos == lens[:, None] - 1, SEP_ID, ids)) * mask
    seg = torch.zeros_like(ids)
    ours = {
        "x": {m: v.to(device) for m, v in x.items()},
        "lengths": {m: lens.to(device) for m in x},
        "tokens": {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "token_type_ids": seg.to(device),
        },
        "y": torch.randn(batch, generator=g).to(device),
    }
    text = torch.stack([ids.float(), mask.float(), seg.float()], dim=1).to(device)
    return ours, (text, ours["x"]["audio"], ours["x"]["vision"])


def copy_mmsa_into_ours(mmsa: nn.Module, ours: nn.Module) -> None:
    """Copy every MMSA parameter into ours (asserts a one-to-one map of names and shapes)."""
    rename = {
        "model.bert.MAG.W_ha.": "mag.gate.audio.",
        "model.bert.MAG.W_hv.": "mag.gate.vision.",
        "model.bert.MAG.W_a.": "mag.proj.audio.",
        "model.bert.MAG.W_v.": "mag.proj.vision.",
        "model.bert.MAG.LayerNorm.": "mag.norm.",
        "model.classifier.": "head.1.",
        "model.bert.": "bert.",
    }
    dst = dict(ours.named_parameters())
    done = set()
    with torch.no_grad():
        for k, v in mmsa.named_parameters():
            new = next(k.replace(a, b, 1) for a, b in rename.items() if k.startswith(a))
            assert dst[new].shape == v.shape, (k, new)
            dst[new].copy_(v)
            done.add(new)
    assert done == set(dst), sorted(set(dst) ^ done)
