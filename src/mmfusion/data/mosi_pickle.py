"""CMU-MOSI / CMU-MOSEI from the processed pickles most papers use, in the canonical batch layout.

Two released layouts (``shared/notes/sentiment_baselines.md`` §2.1-2.2), told apart by their keys:

* **MMSA** ``{MOSI,MOSEI}/Processed/{aligned_50,unaligned_50}.pkl`` (thuiar/MMSA README §2): splits
  ``train/valid/test``; ``text`` = BERT-base last-layer features (N, 50, 768), ``text_bert`` = stacked
  ``[input_ids, input_mask, segment_ids]`` (N, 3, 50) stored as float; ``audio``/``vision`` (N, T, D);
  ``audio_lengths``/``vision_lengths`` only in the unaligned files; ``regression_labels`` in [-3, 3]; ``id``.
* **MulT** ``mosi_data(_noalign).pkl`` / ``mosei_senti_data(_noalign).pkl`` (yaohungt/Multimodal-Transformer
  ``src/dataset.py``): ``vision/audio/text/labels/id``; GloVe 300-d text; labels (N, 1, 1); id (N, 3) bytes
  (column 0 = ``videoid_clipid``); sequences zero-padded on the LEFT, no lengths stored.

What this reader does, identically for both (documented in ``docs/datasets.md``):

* sanitising (:func:`mmfusion.data.sequences.sanitize_inplace`, logged once per file): NaN/+-inf -> 0 (the
  peers zero only -inf, MulT/MMSA; MOSEI COVAREP also overflows float32, AZYoung233/CLGSI#9);
* true lengths: the stored ``*_lengths`` (MMSA unaligned); the BERT attention mask for text and, in MMSA
  aligned files (audio/vision with one step per word-piece position, no ``*_lengths``), for audio and vision
  too, as MMSA's models use it (``MISA.alignment``: ``lengths = mask_len``); otherwise (MulT) inferred from the
  all-zero padding frames on the detected side; the padding side is detected per file and modality (MMSA's
  side is undocumented) or forced with ``padding``; everything leaves RIGHT-padded;
* ``pool``: modalities averaged over their TRUE length to one step (N, 1, D), for utterance-level models
  (MMSA ``need_normalized`` averages over the padding instead, §4.1 item 2: not reproduced);
* text as features (``text: features``) or as BERT word-piece ids in ``batch["tokens"]`` (``text: tokens``,
  for MAG-BERT); audio/vision then stay as stored (aligned files: one step per word-piece position);
* the released splits are used as they are; an id in two splits is an error (never mix splits).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion.data.base import ArrayDataset, MultimodalDataModule, to_tensor
from mmfusion.data.sequences import (
    check_dim,
    clamp_lengths,
    detect_side_with_lengths,
    infer_padding,
    log_sanitize_once,
    masked_mean,
    sanitize_inplace,
    to_right_padding,
    zero_frames,
)
from mmfusion.errors import ConfigError, DataError
from mmfusion.utils.safe_load import load_data_pickle

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"train": ("train",), "valid": ("valid", "dev"), "test": ("test",)}
MODALITIES = ("text", "audio", "vision")


def load_pickle(path: str | Path, hint: str = "mosi") -> Any:
    """A dataset pickle through the restricted unpickler (:func:`mmfusion.utils.safe_load.load_data_pickle`:
    numpy arrays, built-in containers, strings and numbers only; Python-2 pickles via latin1), with one-line
    errors for a missing, unreadable or hostile file."""
    return load_data_pickle(path, f"`python scripts/prepare_data.py {hint}` says where to get it")


def detect_format(split: Mapping[str, Any], where: str) -> str:
    """'mmsa' (``regression_labels``) or 'mult' (``labels``)."""
    if "regression_labels" in split:
        return "mmsa"
    if "labels" in split:
        return "mult"
    raise DataError(
        f"{where}: no 'regression_labels' (MMSA layout) or 'labels' (MulT layout) key; "
        f"keys are {sorted(split)}"
    )


def _split_dict(data: Any, split: str, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise DataError(f"{where}: expected a dict with splits train/valid/test, got {type(data).__name__}")
    for key in SPLIT_ALIASES[split]:
        if key in data:
            return data[key]
    raise DataError(
        f"{where}: split {split!r} not found (accepted keys {list(SPLIT_ALIASES[split])}); "
        f"keys are {sorted(map(str, data))}"
    )


def _ids(split: Mapping[str, Any], n: int, fmt: str) -> list[str]:
    raw = split.get("id")
    if raw is None:
        return [f"#{i}" for i in range(n)]
    arr = np.asarray(raw)
    if arr.ndim == 2:  # MulT: (N, 3), column 0 = "videoid_clipid"
        arr = arr[:, 0]
    out = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    if len(out) != n:
        raise DataError(f"'id' has {len(out)} entries for {n} samples")
    return out


def _labels(split: Mapping[str, Any], fmt: str, ids: list[str], where: str) -> np.ndarray:
    key = "regression_labels" if fmt == "mmsa" else "labels"
    y = np.asarray(split[key], dtype=np.float64)
    n = len(ids)
    if y.size != n:
        raise DataError(f"{where}/{key}: shape {y.shape} is not one label per sample ({n} samples)")
    y = y.reshape(n)
    bad = ~np.isfinite(y)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise DataError(f"{where}/{key}: id {ids[i]!r} has no label ({y[i]}); {int(bad.sum())} such samples")
    return y.astype(np.float32)


class MosiPickleDataModule(MultimodalDataModule):
    """``data=mosi`` / ``data=mosei``: one class for both datasets and both pickle layouts.

    Args:
        path: the ``.pkl`` file (MMSA ``{aligned,unaligned}_50.pkl`` or MulT ``*_data(_noalign).pkl``).
        dataset: ``mosi`` or ``mosei``; names the dataset in messages (``prepare_data.py`` hint).
        format: ``auto`` (detected from the keys), ``mmsa`` or ``mult``.
        text: ``features`` (the stored vectors) or ``tokens`` (MMSA's ``text_bert`` ids in ``batch["tokens"]``,
            for MAG-BERT).
        modalities: a non-empty subset of text, audio, vision.
        feature_dims: expected ``{modality: D}``; a mismatch is an error naming the file.
        padding: ``auto`` (detected per file and modality), ``left`` or ``right``; the output is always
            right-padded.
        pool: modalities averaged over their true length to one step.
        bert_dim: ``input_dims["text"]`` when text comes as tokens (width of the BERT that embeds them).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (``None``: ``max(batch_size, 256)``).
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        seed: seed of the training sampler's shuffling.
    """

    def __init__(
        self,
        path: str,
        dataset: str = "mosi",
        format: str = "auto",
        text: str = "features",
        modalities: Sequence[str] = MODALITIES,
        feature_dims: Mapping[str, int] | None = None,
        padding: str = "auto",
        pool: Sequence[str] = (),
        bert_dim: int = 768,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, seed)
        if format not in ("auto", "mmsa", "mult"):
            raise ConfigError(f"data.format must be auto, mmsa or mult; got {format!r}")
        if text not in ("features", "tokens"):
            raise ConfigError(f"data.text must be 'features' or 'tokens'; got {text!r}")
        if padding not in ("auto", "left", "right"):
            raise ConfigError(f"data.padding must be auto, left or right; got {padding!r}")
        unknown = set(modalities) - set(MODALITIES)
        if unknown or not modalities:
            raise ConfigError(
                f"data.modalities must be a non-empty subset of {MODALITIES}; got {list(modalities)}"
            )
        self.path = str(path)
        self.dataset = dataset
        self.format = format
        self.text = text
        self.modalities = tuple(modalities)
        self.feature_dims = dict(feature_dims) if feature_dims else None
        self.padding = padding
        self.pool = tuple(pool)
        self.bert_dim = int(bert_dim)
        self.ids: dict[str, list[str]] = {}
        self.padding_sides: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------------------
    def build(self) -> dict[str, ArrayDataset]:
        data = load_pickle(self.path, self.dataset)
        report: dict[str, int] = {}
        splits: dict[str, ArrayDataset] = {}
        fmt = self.format
        for split in SPLITS:
            d = _split_dict(data, split, self.path)
            where = f"{self.path}:{split}"
            if fmt == "auto":
                fmt = detect_format(d, where)
            elif fmt == "mmsa" and "regression_labels" not in d or fmt == "mult" and "labels" not in d:
                raise DataError(f"{where}: data.format={fmt} but the file has keys {sorted(d)}")
            splits[split] = self._build_split(d, split, fmt, where, report)
            # free the raw arrays of this split as soon as they are converted
            if isinstance(data, dict):
                for key in SPLIT_ALIASES[split]:
                    data.pop(key, None)
        self._check_disjoint()
        self.resolved_format = fmt
        log_sanitize_once(
            f"{self.dataset}:{self.path}",
            report,
            extra=f"format={fmt}, text={self.text}, padding sides {self.padding_sides}",
        )
        return splits

    def _build_split(
        self, d: Mapping[str, Any], split: str, fmt: str, where: str, report: dict[str, int]
    ) -> ArrayDataset:
        first = d["regression_labels" if fmt == "mmsa" else "labels"]
        n = int(np.asarray(first).shape[0])
        ids = _ids(d, n, fmt)
        self.ids[split] = ids
        y = _labels(d, fmt, ids, where)
        x: dict[str, torch.Tensor] = {}
        lengths: dict[str, torch.Tensor] = {}
        out: dict[str, Any] = {"x": x, "lengths": lengths, "y": torch.as_tensor(y)}
        text_mask = None
        if "text_bert" in d and (self.text == "tokens" or fmt == "mmsa"):
            tokens, text_mask = self._tokens(d["text_bert"], n, where)
            if self.text == "tokens":
                out["tokens"] = tokens
        elif self.text == "tokens":
            raise DataError(
                f"{where}: data.text=tokens needs the 'text_bert' key (MMSA layout); keys are {sorted(d)}"
            )
        for m in self.modalities:
            if m == "text" and self.text == "tokens":
                t_tok = out["tokens"]["input_ids"].shape[1]
                lengths[m] = torch.as_tensor(clamp_lengths(text_mask, t_tok, f"{split}/text", report))
                self.input_dims[m] = self.bert_dim
                continue
            if m not in d:
                raise DataError(f"{where}: key {m!r} not found; keys are {sorted(d)}")
            arr = sanitize_inplace(d[m], f"{split}/{m}", report)
            if arr.ndim == 2:  # utterance-level features (N, D)
                arr = arr[:, None, :]
            if arr.ndim != 3 or arr.shape[0] != n:
                raise DataError(f"{where}/{m}: expected (N={n}, T, D), got shape {tuple(np.shape(d[m]))}")
            check_dim(arr.shape[2], self.feature_dims, m, f"{where}/{m}")
            lens, side = self._lengths(arr, d, m, text_mask, split, report)
            to_right_padding(arr, lens, side)
            self.padding_sides[f"{split}/{m}"] = side
            if m in self.pool:
                arr, lens = masked_mean(arr, lens)[:, None, :], np.ones(n, np.int64)
            x[m] = to_tensor(arr)
            lengths[m] = torch.as_tensor(lens, dtype=torch.long)
            self.input_dims[m] = int(arr.shape[2])
        return ArrayDataset(out, name=where)

    def _tokens(self, raw: Any, n: int, where: str) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        tb = np.asarray(raw)
        if tb.ndim != 3 or tb.shape[0] != n or tb.shape[1] != 3:
            raise DataError(
                f"{where}/text_bert: expected (N={n}, 3, L) [ids, mask, segments], got {tb.shape}"
            )
        if not np.isfinite(tb).all() or not np.array_equal(tb, np.round(tb)):
            raise DataError(f"{where}/text_bert: token ids must be finite integers")
        tb = tb.astype(np.int64)
        mask = tb[:, 1]
        if not np.isin(mask, (0, 1)).all():
            raise DataError(f"{where}/text_bert: row 1 (attention mask) must be 0/1")
        tokens = {
            "input_ids": torch.as_tensor(tb[:, 0]),
            "attention_mask": torch.as_tensor(mask),
            "token_type_ids": torch.as_tensor(tb[:, 2]),
        }
        return tokens, mask.sum(axis=1)

    def _lengths(
        self,
        arr: np.ndarray,
        d: Mapping[str, Any],
        m: str,
        text_mask: np.ndarray | None,
        split: str,
        report: dict[str, int],
    ) -> tuple[np.ndarray, str]:
        t = arr.shape[1]
        name = f"{split}/{m}"
        if f"{m}_lengths" in d:  # MMSA unaligned: stored true lengths
            stored = np.asarray(d[f"{m}_lengths"]).reshape(-1)
            if stored.shape[0] != arr.shape[0]:
                raise DataError(
                    f"{self.path}:{split}/{m}_lengths: {stored.shape[0]} entries for {arr.shape[0]} samples"
                )
            lens = clamp_lengths(stored, t, name, report)
            side = (
                self.padding
                if self.padding != "auto"
                else detect_side_with_lengths(arr, np.minimum(stored, t))
            )
            return lens, side
        if m == "text" and text_mask is not None:  # BERT features: the tokenizer pads on the right
            return clamp_lengths(text_mask, t, name, report), "right"
        if (
            text_mask is not None
            and self.padding in ("auto", "right")
            and t == np.shape(d["text_bert"])[-1]
            and "audio_lengths" not in d
            and "vision_lengths" not in d
        ):
            # MMSA aligned_50: one audio/vision step per word-piece position, so the true length is the text
            # mask's, as MMSA's models use it (e.g. MISA.alignment packs audio/vision with the mask length); a
            # silent word (an all-zero frame) at the end is data, not padding
            return clamp_lengths(text_mask, t, name, report), "right"
        side, lens = infer_padding(arr)
        if self.padding != "auto":
            z = zero_frames(arr)
            run = z if self.padding == "left" else z[:, ::-1]
            lead = np.where(run.all(axis=1), t, np.argmin(run, axis=1))
            side, lens = self.padding, t - lead
        return clamp_lengths(lens, t, name, report), side

    def _check_disjoint(self) -> None:
        seen: dict[str, str] = {}
        for split, ids in self.ids.items():
            for i in ids:
                if i.startswith("#"):
                    continue
                if i in seen and seen[i] != split:
                    raise DataError(
                        f"{self.path}: id {i!r} is in both {seen[i]!r} and {split!r}; splits must not mix"
                    )
                seen[i] = split
