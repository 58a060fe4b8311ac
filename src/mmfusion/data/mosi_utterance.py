"""``data=mosi_utterance``: real CMU-MOSI utterance-level features (Poria et al., ACL 2017, bc-LSTM release).

Files (see ``shared/data/README.md``): ``bclstm_utterance_features/{text,audio,video}/{m}_{train,test}0.csv``
(no header, quoted floats, last column = binary label; row k of every file is the same utterance) and
``mosi_index.csv``, which joins ``(bclstm_split, bclstm_row)`` to the continuous label in [-3, 3], the video id
and the transcript.

Protocol: the speaker-independent bc-LSTM split ONLY (62 train / 31 test videos). Its text/video features were
learned with supervision on this train split, which overlaps the standard CMU test fold, so numbers here are not
comparable with published results on the standard folds. A validation set is carved out of the train videos BY
VIDEO (``valid_videos`` of them, seeded by ``split_seed``). Audio (openSMILE, std 1e-3..51) is standardised with
training statistics; ``standardize`` lists the modalities to standardise. Each utterance is a length-1 sequence.
The binary label column of every CSV must agree with the continuous label (``>= 0``): a mismatch is an error.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import torch

from mmfusion.data.base import ArrayDataset, MultimodalDataModule, sanitize
from mmfusion.errors import DataError

log = logging.getLogger(__name__)

FILES = {"text": "text", "audio": "audio", "vision": "video"}
DIMS = {"text": 100, "audio": 73, "vision": 100}


def _open_text(path: Path) -> list[list[str]]:
    """The CSV rows of ``path``; a binary or corrupt file is a one-line DataError."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return [r for r in csv.reader(f) if r]
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not a text CSV (byte {e.start} is not UTF-8: a binary or corrupt file?)"
        ) from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None


def read_float_csv(path: Path, expected_cols: int) -> np.ndarray:
    """A headerless numeric CSV with ``expected_cols`` columns per row (features, then the label).

    Raises:
        DataError: one line naming the file, the first bad row (and column) and what was expected.
    """
    if not path.is_file():
        raise DataError(
            f"{path}: file not found (expected the bc-LSTM MOSI utterance features; see shared/data/README.md)"
        )
    rows = _open_text(path)
    if not rows:
        raise DataError(f"{path}: empty file (expected rows of {expected_cols} numbers: features + label)")
    for i, r in enumerate(rows, 1):
        if len(r) != expected_cols:
            raise DataError(
                f"{path}: expected {expected_cols} columns (features + label), row {i} has {len(r)}"
                + (" (a row cut short?)" if len(r) < expected_cols else "")
            )
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except ValueError:
        for i, r in enumerate(rows, 1):
            for j, v in enumerate(r, 1):
                try:
                    float(v)
                except ValueError:
                    what = "the label" if j == expected_cols else f"feature {j}"
                    raise DataError(
                        f"{path}: row {i}, column {j} ({what}): {v[:40]!r} is not a number"
                    ) from None
        raise
    return arr


INDEX_COLUMNS = ("bclstm_split", "bclstm_row", "label", "video_id", "text_lower")


def read_index(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    """``mosi_index.csv`` keyed by ``(bclstm_split, bclstm_row)``; every row must be complete, with an integer
    row and a finite numeric label (one-line DataError naming the line otherwise)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (mosi_index.csv joins bc-LSTM rows to continuous labels)")
    rows = _open_text(path)
    if not rows:
        raise DataError(f"{path}: empty file (expected a header with columns {list(INDEX_COLUMNS)})")
    header, out = rows[0], {}
    missing = sorted(set(INDEX_COLUMNS) - set(header))
    if missing:
        raise DataError(f"{path}: missing columns {missing}")
    for line, r in enumerate(rows[1:], 2):
        if len(r) != len(header):
            raise DataError(
                f"{path}: line {line} has {len(r)} fields, expected {len(header)}"
                + (" (a row cut short?)" if len(r) < len(header) else "")
            )
        rec = dict(zip(header, r))
        try:
            row = int(rec["bclstm_row"])
        except ValueError:
            raise DataError(
                f"{path}: line {line}: bclstm_row {rec['bclstm_row'][:40]!r} is not an integer"
            ) from None
        try:
            label = float(rec["label"])
        except ValueError:
            label = None
        if label is None or not math.isfinite(label):
            raise DataError(
                f"{path}: line {line} (segment {rec.get('segment_id', '?')!r}): label "
                f"{rec['label'][:40]!r} is not a finite number (expected a score in [-3, 3])"
            )
        out[(rec["bclstm_split"], row)] = rec
    return out


class MOSIUtterance(MultimodalDataModule):
    """Real CMU-MOSI utterance-level features of the bc-LSTM release (``data=mosi_utterance``; bc-LSTM split only).

    Args:
        path: folder holding ``bclstm_utterance_features/`` and ``mosi_index.csv`` (``../shared/data/mosi``).
        valid_videos: number of training videos held out as the validation split (by video).
        split_seed: seed of the choice of validation videos.
        standardize: modalities standardised with training statistics (default: audio).
        text_tokenizer: tokenizer of a BERT model; when set, the transcripts are tokenised into ``batch["tokens"]``.
        max_tokens: word pieces per sample (with ``text_tokenizer``).
        **loader: batch size, workers and shuffling seed, passed to :class:`~mmfusion.data.base.MultimodalDataModule`.
    """

    modalities = ("text", "audio", "vision")

    def __init__(
        self,
        path: str,
        valid_videos: int = 6,
        split_seed: int = 0,
        standardize: list[str] | tuple[str, ...] = ("audio",),
        text_tokenizer: str | None = None,
        max_tokens: int = 50,
        **loader: object,
    ) -> None:
        super().__init__(**loader)
        self.root = Path(path)
        self.valid_videos, self.split_seed = int(valid_videos), int(split_seed)
        self.standardize = tuple(standardize or ())
        self.input_dims = dict(DIMS)
        self.text_tokenizer, self.max_tokens = text_tokenizer, max_tokens
        self.transcripts: dict[str, list[str]] = {}

    def _read_split(
        self, split: str, index: dict
    ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str], list[str]]:
        feats, binary = {}, None
        report: dict[str, int] = {}
        for m, folder in FILES.items():
            arr = read_float_csv(
                self.root / "bclstm_utterance_features" / folder / f"{folder}_{split}0.csv", DIMS[m] + 1
            )
            feats[m] = sanitize(arr[:, :-1], f"{m}/{split}", report)
            if binary is None:
                binary = arr[:, -1]
            elif arr.shape[0] != binary.shape[0] or not np.array_equal(arr[:, -1], binary):
                raise DataError(
                    f"{folder}_{split}0.csv: rows do not match text_{split}0.csv (row count or label column)"
                )
        if any(report.values()):
            log.warning(
                "mosi_utterance/%s: sanitised non-finite values: %s",
                split,
                {k: v for k, v in report.items() if v},
            )
        labels, videos, texts = [], [], []
        for row in range(binary.shape[0]):
            rec = index.get((split, row))
            if rec is None:
                raise DataError(
                    f"{self.root / 'mosi_index.csv'}: no label for bc-LSTM row ({split}, {row}); it has "
                    f"{len(index)} rows (a file cut short?)"
                )
            y = float(rec["label"])
            if (y >= 0) != bool(binary[row]):
                raise DataError(
                    f"mosi_index.csv: label {y} of ({split}, {row}) disagrees with the CSV binary label {binary[row]}"
                )
            labels.append(y)
            videos.append(rec["video_id"])
            texts.append(rec["text_lower"])
        return feats, np.asarray(labels, dtype=np.float32), videos, texts

    def build(self) -> dict[str, ArrayDataset]:
        if not self.root.is_dir():
            raise DataError(
                f"data.path={self.root}: directory not found (expected shared/data/mosi with bclstm_utterance_features/)"
            )
        index = read_index(self.root / "mosi_index.csv")
        tr_x, tr_y, tr_vid, tr_txt = self._read_split("train", index)
        te_x, te_y, _, te_txt = self._read_split("test", index)
        vids = sorted(set(tr_vid))
        if not 0 < self.valid_videos < len(vids):
            raise DataError(
                f"data.valid_videos={self.valid_videos}: must be in [1, {len(vids) - 1}] train videos"
            )
        rng = np.random.default_rng(self.split_seed)
        val_vids = set(rng.choice(vids, size=self.valid_videos, replace=False).tolist())
        is_val = np.asarray([v in val_vids for v in tr_vid])
        parts = {
            "train": (
                {m: a[~is_val] for m, a in tr_x.items()},
                tr_y[~is_val],
                [t for t, v in zip(tr_txt, is_val) if not v],
            ),
            "valid": (
                {m: a[is_val] for m, a in tr_x.items()},
                tr_y[is_val],
                [t for t, v in zip(tr_txt, is_val) if v],
            ),
            "test": (te_x, te_y, te_txt),
        }
        for m in self.standardize:  # statistics from the training part only
            mu = parts["train"][0][m].mean(0)
            sd = parts["train"][0][m].std(0)
            sd = np.where(sd > 1e-8, sd, 1.0)
            for split in parts:
                parts[split][0][m] = ((parts[split][0][m] - mu) / sd).astype(np.float32)
        out = {}
        for split, (x, y, txt) in parts.items():
            n = len(y)
            out[split] = ArrayDataset(
                {
                    "x": {m: torch.from_numpy(a[:, None, :].copy()) for m, a in x.items()},
                    "lengths": {m: torch.ones(n, dtype=torch.long) for m in x},
                    "y": torch.from_numpy(y),
                },
                name=f"mosi_utterance/{split}",
            )
            self.transcripts[split] = txt
        if self.text_tokenizer:
            from mmfusion.tokens import add_tokens

            add_tokens(self, out)
        return out
