"""CMU-MultimodalSDK computational sequences (``.csd``, HDF5): read, align, pad, cache. ``data=mosi_csd``.

File layout (CMU-MultimodalSDK ``mmsdk/mmdatasdk/computational_sequence/file_ops.py``): one root group named
after the sequence, with ``data/<video_id>/{features (n, d), intervals (n, 2) seconds}`` and ``metadata/<key>``
(one JSON-encoded string each). Read with h5py only; the SDK is not needed.

Alignment (the SDK recipe ``process_mosi.py``: ``align(words, collapse=avg)`` then ``align(labels)``):

1. word level (``reference: text``): every step of the reference sequence (one word interval) gets, for each
   other modality, the MEAN of that modality's frames whose interval overlaps the word's interval
   (``start_f < end_w`` and ``end_f > start_w``); a word with no overlapping frame gets zeros (counted);
2. segment level: a labelled segment ``[s, e)`` of video ``v`` (row ``i`` of the label sequence, id
   ``v_{i+1}`` as in CMU-MOSI) takes the steps whose interval MIDPOINT lies in ``[s, e)``, so a word straddling
   two segments goes to exactly one; ``reference: null`` skips step 1 and cuts each modality's own frames the
   same way (unaligned sequences);
3. sequences longer than ``max_len`` keep their last steps (CMU ``get_tensors`` keeps the last ``seq_len``;
   ``keep: first`` is the alternative) and are RIGHT-padded with true lengths.

Features are sanitised before averaging (NaN/+-inf -> 0: COVAREP contains -inf, CMU-MultimodalSDK#72), so one
bad frame never poisons a word. Splits come from video-level folds: the standard CMU-MOSI and CMU-MOSEI folds ship
in ``mmfusion/resources/folds/{mosi,mosei}_std_folds.json`` (``folds: mosi`` / ``mosei``, copied from the SDK's
``cmu_*_std_folds.py``); a JSON file with ``train/valid/test`` video lists, or the SDK's ``.py`` file, replaces them.

The aligned tensors are cached as ONE HDF5 file ``<cache_dir>/csd_<key>.h5``; ``key`` hashes the inputs' paths,
sizes and modification times plus every alignment option and the folds, so a changed input never reads a
stale cache and an unchanged one starts instantly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from mmfusion.data.base import ArrayDataset, MultimodalDataModule, sanitize
from mmfusion.data.sequences import check_dim, clamp_lengths, log_sanitize_once, masked_mean, pad_list
from mmfusion.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_VERSION = "csd-align-v1"
SPLITS = ("train", "valid", "test")


@dataclass
class ComputationalSequence:
    """One ``.csd`` file in memory: ``data[video_id] = (features (n, d), intervals (n, 2))``."""

    name: str
    path: str
    data: dict[str, tuple[np.ndarray, np.ndarray]]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        for f, _ in self.data.values():
            return int(f.shape[1]) if f.ndim == 2 else 1
        return 0

    def __len__(self) -> int:
        return len(self.data)


def _decode(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0] if v.size == 1 else [_decode(u) for u in v.reshape(-1)]
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def read_csd(path: str | Path) -> ComputationalSequence:
    """Read a computational sequence: features, intervals and metadata of every entry (video)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"{p}: file not found; `python scripts/prepare_data.py mosi_csd` says where to get it"
        )
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise DataError(f"{p}: not an HDF5 computational sequence ({e})") from None
    with f:
        roots = list(f.keys())
        if len(roots) != 1 or not isinstance(f[roots[0]], h5py.Group) or "data" not in f[roots[0]]:
            raise DataError(
                f"{p}: expected one root group <name> with data/ and metadata/ (a .csd file); "
                f"found top-level keys {roots}"
            )
        root = f[roots[0]]
        data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for vid, g in root["data"].items():
            if "features" not in g or "intervals" not in g:
                raise DataError(f"{p}: data/{vid} lacks 'features' or 'intervals' (has {list(g.keys())})")
            feats, iv = g["features"][()], np.asarray(g["intervals"][()], dtype=np.float64)
            if feats.ndim == 1:
                feats = feats[:, None]
            if iv.ndim != 2 or iv.shape[1] != 2 or len(iv) != len(feats):
                raise DataError(
                    f"{p}: data/{vid}: intervals {iv.shape} do not match features {feats.shape} "
                    f"(expected (n, 2) with n = {len(feats)})"
                )
            if feats.dtype.kind in "SO":
                feats = np.array(
                    [_decode(u) if isinstance(u, bytes) else u for u in feats.reshape(-1)], dtype=object
                ).reshape(feats.shape)
            data[str(vid)] = (feats, iv)
        meta: dict[str, Any] = {}
        if "metadata" in root:
            for k, v in root["metadata"].items():
                meta[k] = _decode(v[()])
        for k, v in root.attrs.items():
            meta.setdefault(k, _decode(v))
    return ComputationalSequence(name=str(roots[0]), path=str(p), data=data, metadata=meta)


def collapse_mean(ref: np.ndarray, iv: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each reference interval ``ref[j] = [s, e]``, the mean of the rows of ``feats`` whose interval
    overlaps it (``iv_start < e`` and ``iv_end > s``). Returns (means (n_ref, d) float32, counts (n_ref,))."""
    n, d = len(ref), feats.shape[1]
    if len(iv) == 0 or n == 0:
        return np.zeros((n, d), np.float32), np.zeros(n, np.int64)
    order = np.argsort(iv[:, 0], kind="stable")
    iv, feats = iv[order], feats[order]
    if np.all(np.diff(iv[:, 1]) >= 0):  # sorted, non-nested frames: prefix sums, O(n log k)
        lo = np.searchsorted(iv[:, 1], ref[:, 0], side="right")
        hi = np.searchsorted(iv[:, 0], ref[:, 1], side="left")
        cnt = np.maximum(hi - lo, 0)
        cs = np.concatenate([np.zeros((1, d)), np.cumsum(feats, axis=0, dtype=np.float64)])
        tot = cs[np.maximum(hi, lo)] - cs[lo]
    else:
        tot, cnt = np.zeros((n, d)), np.zeros(n, np.int64)
        for j, (s, e) in enumerate(ref):
            m = (iv[:, 0] < e) & (iv[:, 1] > s)
            cnt[j] = int(m.sum())
            tot[j] = feats[m].sum(0, dtype=np.float64)
    return (tot / np.maximum(cnt, 1)[:, None]).astype(np.float32), cnt.astype(np.int64)


def steps_in_segment(steps: np.ndarray, start: float, end: float) -> np.ndarray:
    """Indices of the steps whose interval midpoint lies in ``[start, end)``."""
    mid = steps.mean(axis=1) if len(steps) else np.zeros(0)
    return np.nonzero((mid >= start) & (mid < end))[0]


def _sdk_folds(path: Path) -> dict[str, list[str]]:
    """The SDK's ``cmu_mosi_std_folds.py`` / ``cmu_mosei_std_folds.py``: the three list literals, read with
    ``ast`` (the file is never executed)."""
    import ast

    names = {"standard_train_fold": "train", "standard_valid_fold": "valid", "standard_test_fold": "test"}
    out: dict[str, list[str]] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in names:
                out[names[node.targets[0].id]] = [str(v) for v in ast.literal_eval(node.value)]
    return out


def load_folds(folds: str | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Video-level folds: ``"mosi"`` / ``"mosei"`` (the packaged standard CMU-MOSI / CMU-MOSEI folds), a JSON
    path, the SDK's ``cmu_*_std_folds.py``, or a mapping."""
    if isinstance(folds, Mapping):
        raw = dict(folds)
        where = "data.folds"
    elif str(folds) in ("mosi", "mosei"):
        where = f"{folds}_std_folds.json"
        raw = json.loads(resources.files("mmfusion.resources").joinpath(f"folds/{where}").read_text())
    else:
        p = Path(str(folds)).expanduser()
        if not p.is_file():
            raise DataError(
                f"{p}: folds file not found (expected JSON with train/valid/test video-id lists, or "
                f"the SDK's cmu_*_std_folds.py)"
            )
        raw, where = (_sdk_folds(p) if p.suffix == ".py" else json.loads(p.read_text())), str(p)
    out = {}
    for s in SPLITS:
        key = s if s in raw else ("dev" if s == "valid" and "dev" in raw else None)
        if key is None:
            raise DataError(f"{where}: no {s!r} list of video ids; keys are {sorted(raw)}")
        out[s] = [str(v) for v in raw[key]]
    seen: dict[str, str] = {}
    for s, vids in out.items():
        for v in vids:
            if v in seen:
                raise DataError(f"{where}: video {v!r} is in both {seen[v]!r} and {s!r}; folds must not mix")
            seen[v] = s
    return out


def label_segments(
    labels: ComputationalSequence, column: int = 0
) -> dict[str, tuple[str, float, float, float]]:
    """``{segment_id: (video_id, start, end, label)}``; row ``i`` of video ``v`` is segment ``v_{i+1}``."""
    out = {}
    for vid, (f, iv) in labels.data.items():
        if f.shape[1] <= column:
            raise DataError(
                f"{labels.path}: data/{vid} has {f.shape[1]} label columns; data.label_column={column}"
            )
        for i in range(len(f)):
            out[f"{vid}_{i + 1}"] = (vid, float(iv[i, 0]), float(iv[i, 1]), float(f[i, column]))
    return out


def align(
    sequences: Mapping[str, ComputationalSequence],
    labels: ComputationalSequence,
    folds: Mapping[str, Sequence[str]],
    reference: str | None = "text",
    label_column: int = 0,
    max_len: int | Mapping[str, int] | None = 50,
    keep: str = "last",
    report: dict[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Aligned, right-padded arrays per split: ``{split: {"x": {m}, "lengths": {m}, "y", "ids"}}``."""
    report = {} if report is None else report
    if reference is not None and reference not in sequences:
        raise ConfigError(f"data.reference={reference!r} is not one of the sequences {list(sequences)}")
    for m, cs in sequences.items():
        if any(f.dtype == object for f, _ in cs.data.values()):
            raise DataError(
                f"{cs.path}: {m} holds non-numeric features (words?); use the word-vector sequence"
            )
    segs = label_segments(labels, label_column)
    fold_of = {v: s for s, vids in folds.items() for v in vids}
    missing_lab = sorted(set(fold_of) - set(labels.data))
    if missing_lab:
        raise DataError(
            f"{labels.path}: fold video {missing_lab[0]!r} has no label entry "
            f"({len(missing_lab)} fold videos without labels)"
        )
    seqs_of: dict[str, dict[str, list[np.ndarray]]] = {s: {m: [] for m in sequences} for s in SPLITS}
    y_of: dict[str, list[float]] = {s: [] for s in SPLITS}
    ids_of: dict[str, list[str]] = {s: [] for s in SPLITS}
    skipped_videos: set[str] = set()
    outside = 0
    clean: dict[tuple[str, str], np.ndarray] = {}

    def feats(m: str, vid: str) -> np.ndarray:
        if (m, vid) not in clean:
            clean[(m, vid)] = sanitize(sequences[m].data[vid][0], m, report)
        return clean[(m, vid)]

    for sid, (vid, s0, s1, y) in segs.items():
        split = fold_of.get(vid)
        if split is None:
            outside += 1
            continue
        if not np.isfinite(y):
            raise DataError(f"{labels.path}: segment {sid!r} has no label ({y})")
        if any(vid not in cs.data for cs in sequences.values()):
            skipped_videos.add(vid)
            continue
        if reference is not None:
            ref_iv = sequences[reference].data[vid][1]
            idx = steps_in_segment(ref_iv, s0, s1)
            for m, cs in sequences.items():
                if m == reference:
                    seqs_of[split][m].append(feats(m, vid)[idx])
                else:
                    mean, cnt = collapse_mean(ref_iv[idx], cs.data[vid][1], feats(m, vid))
                    report[f"{m}: words without frames -> 0"] = report.get(
                        f"{m}: words without frames -> 0", 0
                    ) + int((cnt == 0).sum())
                    seqs_of[split][m].append(mean)
        else:
            for m, cs in sequences.items():
                idx = steps_in_segment(cs.data[vid][1], s0, s1)
                seqs_of[split][m].append(feats(m, vid)[idx])
        y_of[split].append(y)
        ids_of[split].append(sid)
    report["segments outside the folds (unused)"] = outside
    report["fold videos missing from a feature file (dropped)"] = len(skipped_videos)
    if skipped_videos:
        log.warning(
            "csd: %d fold videos lack features in some sequence and are dropped: %s",
            len(skipped_videos),
            sorted(skipped_videos)[:10],
        )
    out: dict[str, dict[str, Any]] = {}
    for s in SPLITS:
        x, lens = {}, {}
        for m, cs in sequences.items():
            ml = max_len.get(m) if isinstance(max_len, Mapping) else max_len
            x[m], raw_len = pad_list(seqs_of[s][m], cs.dim, ml, keep)
            lens[m] = clamp_lengths(raw_len, x[m].shape[1], f"{s}/{m}", report)
        out[s] = {"x": x, "lengths": lens, "y": np.asarray(y_of[s], np.float32), "ids": ids_of[s]}
    return out


def _cache_key(files: Mapping[str, str], options: Mapping[str, Any]) -> str:
    desc = {"version": CACHE_VERSION, "options": options, "files": {}}
    for k, f in sorted(files.items()):
        st = Path(f).stat()
        desc["files"][k] = [str(Path(f).resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()


def write_cache(
    path: Path, key: str, arrays: Mapping[str, Mapping[str, Any]], report: Mapping[str, int]
) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w") as f:
        f.attrs["key"] = key
        f.attrs["report"] = json.dumps(dict(report))
        for s, a in arrays.items():
            g = f.create_group(s)
            g.create_dataset("y", data=a["y"])
            g.create_dataset("ids", data=np.array(a["ids"], dtype=object), dtype=h5py.string_dtype())
            for m in a["x"]:
                g.create_dataset(f"x/{m}", data=a["x"][m])
                g.create_dataset(f"lengths/{m}", data=a["lengths"][m])
    os.replace(tmp, path)


def read_cache(path: Path, key: str) -> tuple[dict[str, dict[str, Any]], dict[str, int]] | None:
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("key") != key:
                return None
            out = {}
            for s in SPLITS:
                g = f[s]
                out[s] = {
                    "y": g["y"][()],
                    "ids": [i.decode() if isinstance(i, bytes) else str(i) for i in g["ids"][()]],
                    "x": {m: g["x"][m][()] for m in g["x"]},
                    "lengths": {m: g["lengths"][m][()] for m in g["lengths"]},
                }
            return out, json.loads(f.attrs.get("report", "{}"))
    except (OSError, KeyError):
        return None


class CSDDataModule(MultimodalDataModule):
    """``data=mosi_csd``: modalities from ``.csd`` files aligned to words and to the labelled segments.

    Args:
        sequences: ``{modality: path.csd}`` (order = modality order).
        labels: the label ``.csd``.
        folds: ``mosi``, ``mosei`` (the packaged standard folds), a JSON / SDK ``.py`` path, or a mapping
            ``{train, valid, test: [video ids]}``.
        reference: the word-level modality the others are aligned to (``None`` = unaligned: each modality cut to
            the segments).
        label_column: which label column (MOSEI "All Labels": 0 = sentiment).
        max_len: steps per segment (int or ``{modality: int}``; ``None``: the longest segment); longer ones are cut
            according to ``keep``.
        keep: ``last`` (keep the last steps, as CMU's ``get_tensors``) or ``first``.
        feature_dims: expected ``{modality: D}``; a mismatch is an error naming the file.
        pool: modalities averaged over their true length to one step.
        cache_dir: where the aligned HDF5 goes (``None`` = no cache).
        dataset: name used in log lines and dataset names.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (``None``: ``max(batch_size, 256)``).
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        seed: seed of the training sampler's shuffling.
    """

    def __init__(
        self,
        sequences: Mapping[str, str],
        labels: str,
        folds: str | Mapping[str, Sequence[str]] = "mosi",
        reference: str | None = "text",
        label_column: int = 0,
        max_len: int | Mapping[str, int] | None = 50,
        keep: str = "last",
        feature_dims: Mapping[str, int] | None = None,
        pool: Sequence[str] = (),
        cache_dir: str | None = None,
        dataset: str = "mosi_csd",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, seed)
        if not sequences:
            raise ConfigError("data.sequences must map at least one modality to a .csd file")
        if keep not in ("last", "first"):
            raise ConfigError(f"data.keep must be 'last' or 'first'; got {keep!r}")
        self.sequences = {str(k): str(v) for k, v in dict(sequences).items()}
        self.modalities = tuple(self.sequences)
        self.labels, self.folds, self.reference = str(labels), folds, reference
        self.label_column, self.max_len, self.keep = int(label_column), max_len, keep
        self.feature_dims = dict(feature_dims) if feature_dims else None
        self.pool = tuple(pool)
        self.cache_dir, self.dataset = cache_dir, dataset
        self.ids: dict[str, list[str]] = {}
        self.cache_hit: bool | None = None
        self.cache_path: Path | None = None

    def _arrays(self) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        folds = load_folds(self.folds)
        files = dict(self.sequences, __labels__=self.labels)
        for m, f in files.items():
            if not Path(f).expanduser().is_file():
                raise DataError(
                    f"{f}: file not found ({m}); `python scripts/prepare_data.py mosi_csd` says where "
                    f"to get it"
                )
        options = {
            "reference": self.reference,
            "label_column": self.label_column,
            "max_len": self.max_len,
            "keep": self.keep,
            "folds": folds,
            "modalities": list(self.modalities),
        }
        if self.cache_dir:
            key = _cache_key(files, options)
            self.cache_path = Path(self.cache_dir).expanduser() / f"csd_{key[:20]}.h5"
            if self.cache_path.is_file():
                hit = read_cache(self.cache_path, key)
                if hit is not None:
                    self.cache_hit = True
                    log.info("csd: aligned tensors from cache %s", self.cache_path)
                    return hit
        report: dict[str, int] = {}
        seqs = {m: read_csd(p) for m, p in self.sequences.items()}
        for m, cs in seqs.items():
            check_dim(cs.dim, self.feature_dims, m, cs.path)
        arrays = align(
            seqs,
            read_csd(self.labels),
            folds,
            self.reference,
            self.label_column,
            self.max_len,
            self.keep,
            report,
        )
        self.cache_hit = False
        if self.cache_dir:
            write_cache(self.cache_path, key, arrays, report)
            log.info("csd: aligned tensors cached to %s", self.cache_path)
        return arrays, report

    def build(self) -> dict[str, ArrayDataset]:
        arrays, report = self._arrays()
        log_sanitize_once(
            f"{self.dataset}:{self.labels}", report, extra=f"reference={self.reference}, keep={self.keep}"
        )
        out = {}
        for s in SPLITS:
            a = arrays[s]
            x, lens = {}, {}
            for m in self.modalities:
                arr, ln = a["x"][m], np.asarray(a["lengths"][m], np.int64)
                check_dim(arr.shape[2], self.feature_dims, m, str(self.cache_path or self.sequences[m]))
                if m in self.pool:
                    arr, ln = masked_mean(arr, ln)[:, None, :], np.ones_like(ln)
                x[m], lens[m] = torch.from_numpy(np.ascontiguousarray(arr, np.float32)), torch.from_numpy(ln)
                self.input_dims[m] = int(arr.shape[2])
            self.ids[s] = list(a["ids"])
            out[s] = ArrayDataset(
                {"x": x, "lengths": lens, "y": torch.from_numpy(np.asarray(a["y"], np.float32))},
                name=f"{self.dataset}/{s}",
            )
        return out
