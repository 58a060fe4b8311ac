"""Small files in the exact released formats, written by the tests, plus the values a reader must return.

Every writer returns ``truth[split] = {"ids", "y", "seqs": {modality: [true frames (n_i, D) after sanitising]}}``
so that tests compare what a datamodule yields value by value. The fixtures contain NaN, +-inf, float32
overflow (1e39 stored as float64), zero-length sequences and unaligned modalities (different T per modality).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")
N = {"train": 6, "valid": 3, "test": 3}


def _frames(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Frames with no all-zero row (so that padding inference is exact)."""
    return (rng.normal(size=(n, d)) + 3.0).astype(np.float64)


def _poison(raw: np.ndarray, clean: np.ndarray, rng: np.random.Generator, overflow: bool) -> None:
    """Put NaN/-inf/+inf (and 1e39) into some entries of ``raw`` (inside the true frames); 0 into ``clean``.
    Never a whole frame, so frames stay non-zero."""
    if len(raw) == 0 or raw.shape[1] < 4:
        return
    t = rng.integers(0, len(raw))
    bad = [np.nan, -np.inf, np.inf] + ([1e39] if overflow else [])
    for j, v in enumerate(bad):
        raw[t, j] = v
        clean[t, j] = 0.0


def write_mmsa(path: Path, seed: int = 0, aligned: bool = False, dims=(16, 5, 20)) -> dict:
    """MMSA ``unaligned_50.pkl`` (or ``aligned_50.pkl``) layout; audio stored as float64 (overflow case)."""
    rng = np.random.default_rng(seed)
    dt, da, dv = dims
    lt, la, lv = (8, 8, 8) if aligned else (8, 12, 15)
    data, truth = {}, {}
    for s in SPLITS:
        n = N[s]
        ids = [f"{s}vid{i}$_${i + 1}" for i in range(n)]
        y = rng.uniform(-3, 3, n).astype(np.float32)
        tl = rng.integers(1, lt + 1, n)
        tl[0] = lt
        ids_arr = np.zeros((n, 3, lt), np.float32)
        text = rng.normal(size=(n, lt, dt)).astype(np.float32)  # BERT features: padding positions are non-zero
        seqs = {"text": [], "audio": [], "vision": []}
        for i in range(n):
            ids_arr[i, 0, : tl[i]] = rng.integers(100, 30000, tl[i])
            ids_arr[i, 0, 0] = 101
            ids_arr[i, 1, : tl[i]] = 1
            seqs["text"].append(text[i, : tl[i]].copy())
        audio = np.zeros((n, la, da), np.float64)
        vision = np.zeros((n, lv, dv), np.float32)
        if aligned:
            al = vl = tl.copy()
            al[1] = 0  # zero-length: no audio for this sample
        else:
            al = rng.integers(1, la + 1, n)
            vl = rng.integers(1, lv + 1, n)
            al[1] = 0
            vl[2 % n] = lv
        for arr, lens, name, ovf in ((audio, al, "audio", True), (vision, vl, "vision", False)):
            for i in range(n):
                fr = _frames(rng, int(lens[i]), arr.shape[2])
                clean = fr.copy()
                _poison(fr, clean, rng, ovf)
                arr[i, : lens[i]] = fr  # MMSA pads at the back
                seqs[name].append(clean.astype(np.float32))
        split = {
            "raw_text": np.array([f"text {i}" for i in range(n)]),
            "text": text,
            "text_bert": ids_arr,
            "audio": audio,
            "vision": vision,
            "regression_labels": y,
            "classification_labels": (y > 0).astype(np.float32),
            "annotations": np.array(["Positive" if v > 0 else "Negative" for v in y]),
            "id": ids,
        }
        if not aligned:
            split["audio_lengths"] = al.tolist()
            split["vision_lengths"] = vl.tolist()
        data[s] = split
        truth[s] = {"ids": ids, "y": y, "seqs": seqs, "tokens": ids_arr.astype(np.int64)}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return truth


def write_mult(path: Path, seed: int = 1, dims=(300, 5, 20), lens=(10, 14, 12)) -> dict:
    """MulT ``mosi_data_noalign.pkl`` layout: LEFT zero padding, labels (N, 1, 1), id (N, 3) bytes."""
    rng = np.random.default_rng(seed)
    data, truth = {}, {}
    for s in SPLITS:
        n = N[s]
        y = rng.uniform(-3, 3, (n, 1, 1)).astype(np.float32)
        ids = [f"{s}Vid{i}_{i + 1}" for i in range(n)]
        id_arr = np.array([[i.encode(), b"0.0", b"1.0"] for i in ids])
        split = {"labels": y, "id": id_arr}
        seqs = {}
        for m, d, t in zip(("text", "audio", "vision"), dims, lens):
            arr = np.zeros((n, t, d), np.float32)
            seqs[m] = []
            for i in range(n):
                k = int(rng.integers(1, t + 1))
                if i == 0:
                    k = t
                if m == "vision" and i == 1:
                    k = 0  # zero-length: all-zero sample
                fr = _frames(rng, k, d)
                clean = fr.copy()
                if m == "audio":
                    _poison(fr, clean, rng, overflow=False)
                arr[i, t - k :] = fr
                seqs[m].append(clean.astype(np.float32))
            split[m] = arr
        data[s] = split
        truth[s] = {"ids": ids, "y": y.reshape(-1), "seqs": seqs}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return truth
