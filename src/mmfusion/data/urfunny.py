"""UR-FUNNY v2 (Hasan et al., EMNLP 2019; ROC-HCI/UR-FUNNY README): humour detection, ``data=urfunny``.

Six pickles in one folder (all dicts keyed by the segment id, except the list of word vectors):

* ``data_folds.pkl``: ``{"train", "dev", "test"}`` id lists (speaker-independent; ``dev`` is our ``valid``);
* ``humor_label_sdk.pkl``: id -> 1 (humorous punchline) / 0;
* ``language_sdk.pkl``: id -> ``punchline_embedding_indexes`` (n words), ``context_embedding_indexes`` (list of
  sentences), sentences and word intervals; the indexes point into ``word_embedding_list.pkl`` (GloVe 840B.300d);
* ``covarep_features_sdk.pkl`` (81-d) / ``openface_features_sdk.pkl`` (371-d): id -> ``punchline_features``
  (n words x d, word-averaged) and ``context_features`` (sentences x words x d).

Sequence per sample (one per modality, word-aligned): the last ``context_sentences`` context sentences (0 =
punchline only, as MISA/BBFN do) followed by the punchline, RIGHT-padded with true lengths. Truncation
(``truncate``): ``last`` (default) keeps the LAST ``max_len`` words of that sequence, so the punchline is kept
whole; ``first`` cuts EACH sentence to its FIRST ``max_len`` words, as the official loader does
(ROC-HCI/UR-FUNNY ``humor_dataloader.ipynb``: ``seq[0:max_sen_len]``, ``max_sen_len=20``), so a sample has at
most ``(context_sentences + 1) * max_len`` steps (``truncate=first max_len=20`` = the official punchline). The
official tutorial also pads on the left and wraps features in ``LongTensor`` (truncating them) with padding
index 0 = a real GloVe row: none of that is reproduced.

Sanitising (logged once): NaN/+-inf -> 0 (COVAREP), float32 overflow -> 0; a sentence whose modalities have
different word counts is cut to the shortest (counted; MISA drops such samples instead); an empty punchline
becomes one zero step of length 1. Label: float 0/1 for :class:`mmfusion.tasks.objectives.BinaryClassification`.
A fold id without a label is an error; a fold id without features is an error unless
``missing_features: drop`` (then dropped and counted).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion.data.base import ArrayDataset, MultimodalDataModule, sanitize
from mmfusion.data.mosi_pickle import load_pickle
from mmfusion.data.sequences import check_dim, clamp_lengths, log_sanitize_once, masked_mean, pad_list
from mmfusion.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FILES = {
    "folds": "data_folds.pkl",
    "labels": "humor_label_sdk.pkl",
    "language": "language_sdk.pkl",
    "embeddings": "word_embedding_list.pkl",
    "audio": "covarep_features_sdk.pkl",
    "vision": "openface_features_sdk.pkl",
}
FOLD_KEYS = {"train": "train", "valid": "dev", "test": "test"}
DIMS = {"text": 300, "audio": 81, "vision": 371}


def _path(root: str | Path, files: Mapping[str, str] | None, key: str) -> Path:
    if files and key in files:
        return Path(files[key]).expanduser()
    return Path(root).expanduser() / FILES[key]


def load_labels_and_folds(
    root: str | Path, files: Mapping[str, str] | None = None
) -> tuple[dict[Any, float], dict[str, list[Any]]]:
    """Labels ``{id: 0.0|1.0}`` and folds ``{"train","valid","test": [ids]}``; every fold id must have a label
    and no id may be in two folds."""
    lp, fp = _path(root, files, "labels"), _path(root, files, "folds")
    labels = load_pickle(lp, "urfunny")
    folds_raw = load_pickle(fp, "urfunny")
    if not isinstance(labels, Mapping):
        raise DataError(f"{lp}: expected a dict id -> 0/1, got {type(labels).__name__}")
    if not isinstance(folds_raw, Mapping):
        raise DataError(f"{fp}: expected a dict with train/dev/test id lists, got {type(folds_raw).__name__}")
    folds = {}
    for s, k in FOLD_KEYS.items():
        if k not in folds_raw:
            raise DataError(f"{fp}: key {k!r} not found; keys are {sorted(map(str, folds_raw))}")
        folds[s] = list(folds_raw[k])
    seen: dict[Any, str] = {}
    for s, ids in folds.items():
        for i in ids:
            if i in seen and seen[i] != s:
                raise DataError(f"{fp}: id {i!r} is in both {seen[i]!r} and {s!r}; folds must not mix")
            seen[i] = s
            if i not in labels:
                raise DataError(f"{lp}: fold id {i!r} ({s}) has no label")
    out = {}
    for i, v in labels.items():
        fv = float(v)
        if fv not in (0.0, 1.0):
            raise DataError(f"{lp}: id {i!r} has label {v!r}; expected 0 or 1")
        out[i] = fv
    return out, folds


def _as_2d(a: Any, d: int, where: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, d))
    if arr.ndim != 2:
        raise DataError(f"{where}: expected (words, {d}) features, got shape {arr.shape}")
    return arr


class UrFunnyDataModule(MultimodalDataModule):
    """``data=urfunny``: UR-FUNNY v2 humour detection from the six released pickles.

    Args:
        path: folder with the six pickles.
        modalities: a non-empty subset of text, audio, vision.
        context_sentences: the last ``k`` context sentences before the punchline go into the same word-level
            sequence (0 = the punchline only, as MISA/BBFN).
        max_len: ``truncate=last``: words per sample, keeping the last (the punchline); ``truncate=first``: words
            per sentence, keeping the first (the official loader's ``max_sen_len``, 20).
        truncate: ``last`` or ``first`` (see the module docstring).
        feature_dims: expected ``{modality: D}``; a mismatch is an error naming the file.
        missing_features: ``error`` (a fold id without features stops the run) or ``drop`` (dropped and counted).
        pool: modalities averaged over their true length to one step.
        files: ``{key: path}`` overriding single files of ``path`` (e.g. ``labels``, ``folds``).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (``None``: ``max(batch_size, 256)``).
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        seed: seed of the training sampler's shuffling.
    """

    def __init__(
        self,
        path: str,
        modalities: Sequence[str] = ("text", "audio", "vision"),
        context_sentences: int = 0,
        max_len: int = 40,
        truncate: str = "last",
        feature_dims: Mapping[str, int] | None = None,
        missing_features: str = "error",
        pool: Sequence[str] = (),
        files: Mapping[str, str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, seed)
        if missing_features not in ("error", "drop"):
            raise ConfigError(f"data.missing_features must be 'error' or 'drop'; got {missing_features!r}")
        bad = set(modalities) - set(DIMS)
        if bad or not modalities:
            raise ConfigError(
                f"data.modalities must be a non-empty subset of {tuple(DIMS)}; got {list(modalities)}"
            )
        if truncate not in ("last", "first"):
            raise ConfigError(
                f"data.truncate must be 'last' (the last max_len words of the sample) or 'first' (each "
                f"sentence's first max_len words, the official loader); got {truncate!r}"
            )
        if context_sentences < 0 or max_len < 1:
            raise ConfigError(
                f"data.context_sentences must be >= 0 and data.max_len >= 1; got "
                f"{context_sentences}, {max_len}"
            )
        self.path, self.files = str(path), dict(files) if files else None
        self.modalities = tuple(modalities)
        self.context_sentences, self.max_len, self.truncate = int(context_sentences), int(max_len), truncate
        self.feature_dims = dict(feature_dims) if feature_dims else None
        self.missing_features, self.pool = missing_features, tuple(pool)
        self.ids: dict[str, list[Any]] = {}

    def _sentences(
        self, lang: Mapping, feats: Mapping[str, Mapping], emb: np.ndarray, sid: Any, report: dict[str, int]
    ) -> dict[str, list[np.ndarray]]:
        """Per modality, the word-feature arrays of the chosen sentences (context first, punchline last)."""
        k = self.context_sentences
        entry = lang[sid]
        for key in ("punchline_embedding_indexes", "context_embedding_indexes"):
            if key not in entry:
                raise DataError(
                    f"{_path(self.path, self.files, 'language')}: id {sid!r} lacks {key!r}; "
                    f"has {sorted(entry)}"
                )
        word_idx = ([list(s) for s in entry["context_embedding_indexes"]][-k:] if k else []) + [
            list(entry["punchline_embedding_indexes"])
        ]
        per_mod: dict[str, list[np.ndarray]] = {}
        for m in self.modalities:
            if m == "text":
                sents = []
                for s in word_idx:
                    idx = np.asarray(s, dtype=np.int64).reshape(-1)
                    if idx.size and (idx.min() < 0 or idx.max() >= len(emb)):
                        raise DataError(
                            f"{_path(self.path, self.files, 'language')}: id {sid!r} has word index "
                            f"{int(idx.max())} outside word_embedding_list (size {len(emb)})"
                        )
                    sents.append(emb[idx])
                per_mod[m] = sents
                continue
            e = feats[m][sid]
            where = f"{_path(self.path, self.files, m)}: id {sid!r}"
            for key in ("punchline_features", "context_features"):
                if key not in e:
                    raise DataError(f"{where} lacks {key!r}; has {sorted(e)}")
            ctx = [_as_2d(c, DIMS[m], where) for c in e["context_features"]][-k:] if k else []
            per_mod[m] = ctx + [_as_2d(e["punchline_features"], DIMS[m], where)]
        # word counts must agree per sentence across modalities; cut to the shortest
        n_sent = min(len(v) for v in per_mod.values())
        for s in range(n_sent):
            counts = {m: len(per_mod[m][-1 - s]) for m in per_mod}
            lo = min(counts.values())
            if len(set(counts.values())) > 1:
                report["sentences with mismatched word counts (cut)"] = (
                    report.get("sentences with mismatched word counts (cut)", 0) + 1
                )
                for m in per_mod:
                    per_mod[m][-1 - s] = per_mod[m][-1 - s][:lo]
        return {m: v[-n_sent:] for m, v in per_mod.items()}

    def build(self) -> dict[str, ArrayDataset]:
        labels, folds = load_labels_and_folds(self.path, self.files)
        feats: dict[str, Mapping] = {}
        lang = load_pickle(_path(self.path, self.files, "language"), "urfunny")  # also defines the sentences
        emb = np.zeros((0, DIMS["text"]))
        if "text" in self.modalities:
            emb = np.asarray(
                load_pickle(_path(self.path, self.files, "embeddings"), "urfunny"), dtype=np.float64
            )
            if emb.ndim != 2:
                raise DataError(
                    f"{_path(self.path, self.files, 'embeddings')}: expected a list of equal-length "
                    f"word vectors, got shape {emb.shape}"
                )
        for m in ("audio", "vision"):
            if m in self.modalities:
                feats[m] = load_pickle(_path(self.path, self.files, m), "urfunny")
        report: dict[str, int] = {}
        emb = sanitize(emb, "text", report)
        out: dict[str, ArrayDataset] = {}
        for split, ids in folds.items():
            keep, seqs = [], {m: [] for m in self.modalities}
            for sid in ids:
                lacking = [n for n, src in (("language", lang), *feats.items()) if sid not in src]
                if lacking:
                    if self.missing_features == "error":
                        raise DataError(
                            f"{_path(self.path, self.files, lacking[0])}: fold id {sid!r} ({split}) has "
                            f"no features (set data.missing_features=drop to skip such ids)"
                        )
                    report["fold ids without features (dropped)"] = (
                        report.get("fold ids without features (dropped)", 0) + 1
                    )
                    continue
                per_mod = self._sentences(lang, feats, emb, sid, report)
                if self.truncate == "first":  # the official loader: each sentence's first max_len words
                    per_mod = {m: [sent[: self.max_len] for sent in v] for m, v in per_mod.items()}
                for m in self.modalities:
                    cat = np.concatenate(per_mod[m], axis=0) if per_mod[m] else np.zeros((0, DIMS[m]))
                    seqs[m].append(sanitize(cat, m, report))
                keep.append(sid)
            if not keep:
                raise DataError(
                    f"{self.path}: no {split} sample has features (check the files and data.files)"
                )
            x, lens = {}, {}
            for m in self.modalities:
                dims = {a.shape[1] for a in seqs[m] if len(a)} or {DIMS[m]}  # empty sentences carry no dim
                if len(dims) != 1:
                    raise DataError(
                        f"{_path(self.path, self.files, 'language' if m == 'text' else m)}: {m} features "
                        f"have inconsistent dimensions {sorted(dims)}"
                    )
                dim = dims.pop()
                check_dim(
                    dim,
                    self.feature_dims,
                    m,
                    str(_path(self.path, self.files, "embeddings" if m == "text" else m)),
                )
                if self.truncate == "first":  # sentences already cut: room for all of them
                    arr, raw = pad_list(
                        seqs[m], dim, (self.context_sentences + 1) * self.max_len, keep="first"
                    )
                else:
                    arr, raw = pad_list(seqs[m], dim, self.max_len, keep="last")
                ln = clamp_lengths(raw, arr.shape[1], f"{split}/{m}", report)
                if m in self.pool:
                    arr, ln = masked_mean(arr, ln)[:, None, :], np.ones_like(ln)
                x[m], lens[m] = torch.from_numpy(arr), torch.from_numpy(ln)
                self.input_dims[m] = int(arr.shape[2])
            y = torch.tensor([labels[i] for i in keep], dtype=torch.float32)
            self.ids[split] = keep
            out[split] = ArrayDataset({"x": x, "lengths": lens, "y": y}, name=f"urfunny/{split}")
        log_sanitize_once(
            f"urfunny:{self.path}",
            report,
            extra=f"context_sentences={self.context_sentences}, max_len={self.max_len}, "
            f"truncate={self.truncate}",
        )
        return out
