"""Small files in the exact released formats, written by the tests, plus the values a reader must return.

Every writer returns ``truth[split] = {"ids", "y", "seqs": {modality: [true frames (n_i, D) after sanitising]}}``
so that tests compare what a datamodule yields value by value. The fixtures contain NaN, +-inf, float32
overflow (1e39 stored as float64), zero-length sequences and unaligned modalities (different T per modality).
"""

from __future__ import annotations

import gzip
import pickle
import struct
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
    """MMSA ``unaligned_50.pkl`` (or ``aligned_50.pkl``) layout; audio stored as float64 (overflow case).
    Aligned: audio/vision lengths are the text mask's; sample 0 ends with an all-zero (silent) frame and sample
    1 has all-zero audio, so trailing-zero inference would get both wrong."""
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
        text = rng.normal(size=(n, lt, dt)).astype(
            np.float32
        )  # BERT features: padding positions are non-zero
        seqs = {"text": [], "audio": [], "vision": []}
        for i in range(n):
            ids_arr[i, 0, : tl[i]] = rng.integers(100, 30000, tl[i])
            ids_arr[i, 0, 0] = 101
            ids_arr[i, 1, : tl[i]] = 1
            seqs["text"].append(text[i, : tl[i]].copy())
        audio = np.zeros((n, la, da), np.float64)
        vision = np.zeros((n, lv, dv), np.float32)
        if aligned:  # one audio/vision step per word-piece position: the true length is the text mask's
            al = vl = tl.copy()
        else:
            al = rng.integers(1, la + 1, n)
            vl = rng.integers(1, lv + 1, n)
            al[1] = 0
            vl[2 % n] = lv
        for arr, lens, name, ovf in ((audio, al, "audio", True), (vision, vl, "vision", False)):
            for i in range(n):
                fr = _frames(rng, int(lens[i]), arr.shape[2])
                if aligned and i == 0:
                    fr[-1] = 0.0  # a silent last word: an all-zero frame that is data, not padding
                if aligned and i == 1 and name == "audio":
                    fr[:] = 0.0  # no audio at all for this sample, still one (zero) step per word
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


# ---------------------------------------------------------------------------------------------------------------
# Python-2 pickles, numpy-1.x names, hostile payloads


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's ``cPickle.dump(obj, f, 2)`` writes: ``str``/``bytes`` as Python-2 ``str``
    (``SHORT_BINSTRING``/``BINSTRING`` raw bytes, so numpy's array buffers are 8-bit strings that Python 3 can only
    decode as ``latin1``) and built-ins under ``__builtin__`` (protocol 2 with ``fix_imports``)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def py2_pickle_bytes(obj) -> bytes:
    """``obj`` as a Python-2 protocol-2 pickle naming numpy 1.x's ``numpy.core.multiarray``."""
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return numpy1_names(buf.getvalue())


def numpy1_names(data: bytes) -> bytes:
    """A protocol 0-2 pickle (text ``GLOBAL`` opcodes) with numpy 2's ``numpy._core`` renamed to numpy 1.x's
    ``numpy.core``: what a file written under numpy 1.x names."""
    return data.replace(b"cnumpy._core.", b"cnumpy.core.")


def rewrite_as_py2(path: Path) -> None:
    """Rewrite a (trusted, test-written) pickle in place as a Python-2 pickle of the same content."""
    with open(path, "rb") as f:
        obj = pickle.load(f)
    path.write_bytes(py2_pickle_bytes(obj))


class MarkerPayload:
    """Unpickling this object runs ``touch <marker>`` (a ``__reduce__`` to ``os.system``): the hostile payload of
    the security tests. The marker file existing afterwards means code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch '{self.marker}'",)


class ExecPayload(MarkerPayload):
    """The same via ``builtins.exec`` (a global that looks like a harmless built-in)."""

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def inject_payload(path: Path, payload, *keys) -> None:
    """Replace ``obj[keys[0]][keys[1]]...`` of a test-written pickle by ``payload`` (no keys: the whole file)."""
    if not keys:
        path.write_bytes(pickle.dumps(payload))
        return
    with open(path, "rb") as f:
        obj = pickle.load(f)
    node = obj
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = payload
    path.write_bytes(pickle.dumps(obj))


# ---------------------------------------------------------------------------------------------------------------
# CMU-MultimodalSDK computational sequences (.csd, HDF5)


def write_csd(path: Path, root: str, data: dict, metadata: dict | None = None) -> None:
    """The SDK layout: ``<root>/data/<vid>/{features,intervals}``, ``<root>/metadata/<key>`` = (1,) JSON string."""
    import json

    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        d = g.create_group("data")
        for vid, (feats, iv) in data.items():
            v = d.create_group(vid)
            v.create_dataset("features", data=feats)
            v.create_dataset("intervals", data=iv)
        m = g.create_group("metadata")
        meta = {
            "root name": root,
            "dimension names": [f"d{i}" for i in range(next(iter(data.values()))[0].shape[1])],
            "computational sequence version": "1.0",
            **(metadata or {}),
        }
        for k, val in meta.items():
            ds = m.create_dataset(k, (1,), dtype=h5py.special_dtype(vlen=str))
            ds[0] = json.dumps(val)


def write_csd_dataset(root: Path, seed: int = 0) -> dict:
    """Words (text vectors), audio frames (NaN/-inf), vision frames with a gap, labels; 5 videos, one outside the
    folds; one segment without words. Returns paths and the raw arrays."""
    import json

    rng = np.random.default_rng(seed)
    vids = ["vidA", "vidB", "vidC", "vidD", "vidE"]
    text, audio, vision, labels = {}, {}, {}, {}
    for k, v in enumerate(vids):
        n_words = 9 + k
        starts = np.cumsum(rng.uniform(0.2, 0.5, n_words)) + 1.0
        w_iv = np.stack([starts, starts + rng.uniform(0.1, 0.3, n_words)], 1)
        text[v] = (rng.normal(size=(n_words, 6)).astype(np.float32), w_iv)
        t_end = w_iv[-1, 1] + 2.0
        a_start = np.arange(0.0, t_end, 0.1)
        a = rng.normal(size=(len(a_start), 4))
        a[rng.integers(0, len(a), 3), 0] = -np.inf
        a[rng.integers(0, len(a), 2), 1] = np.nan
        audio[v] = (a.astype(np.float64), np.stack([a_start, a_start + 0.1], 1))
        v_start = np.sort(rng.uniform(0.0, t_end, 40))
        v_start = v_start[
            (v_start < w_iv[2, 0] - 0.05) | (v_start > w_iv[3, 1] + 0.05)
        ]  # no frame on words 2-3
        vision[v] = (
            rng.normal(size=(len(v_start), 3)).astype(np.float32),
            np.stack([v_start, v_start + 0.04], 1),
        )
        # segments: words [0, 4), [4, end), and one segment inside a silence before the first word
        mid = (w_iv[3, 1] + w_iv[4, 0]) / 2
        seg = np.array([[0.0, 0.9], [w_iv[0, 0] - 0.01, mid], [mid, w_iv[-1, 1] + 0.01]])
        labels[v] = (rng.uniform(-3, 3, (3, 1)).astype(np.float32), seg)
    paths = {m: root / f"{m}.csd" for m in ("text", "audio", "vision", "labels")}
    write_csd(paths["text"], "glove_vectors", text)
    write_csd(paths["audio"], "COVAREP", audio)
    write_csd(paths["vision"], "FACET 4.2", vision)
    write_csd(paths["labels"], "Opinion Segment Labels", labels)
    folds = {"train": ["vidA", "vidB"], "valid": ["vidC"], "test": ["vidD"]}
    (root / "folds.json").write_text(json.dumps(folds))
    return {
        "paths": paths,
        "folds": root / "folds.json",
        "fold_lists": folds,
        "raw": {"text": text, "audio": audio, "vision": vision, "labels": labels},
    }


# ---------------------------------------------------------------------------------------------------------------
# UR-FUNNY v2 (six pickles)


def write_urfunny(
    root: Path,
    ids_by_split: dict | None = None,
    seed: int = 0,
    write_labels_folds: bool = True,
    labels: dict | None = None,
) -> dict:
    """The v2 layout. Id 0 of train has an empty punchline and NaN/-inf COVAREP; one sentence of the second
    train id has a vision word-count mismatch. Returns, per id, the sentences per modality (sanitised)."""
    rng = np.random.default_rng(seed)
    if ids_by_split is None:
        ids_by_split = {
            "train": list(range(100, 110)),
            "dev": list(range(200, 204)),
            "test": list(range(300, 304)),
        }
    all_ids = [i for v in ids_by_split.values() for i in v]
    vocab = 60
    emb = [rng.normal(size=300) + 1.0 for _ in range(vocab)]  # list of vectors, as released
    lang, cov, opf, truth = {}, {}, {}, {}
    for k, sid in enumerate(all_ids):
        n_ctx = int(rng.integers(0, 4))
        ctx_words = [int(rng.integers(1, 6)) for _ in range(n_ctx)]
        p_words = 0 if k == 0 else int(rng.integers(1, 8))
        ctx_idx = [rng.integers(0, vocab, w).tolist() for w in ctx_words]
        p_idx = rng.integers(0, vocab, p_words).tolist()
        lang[sid] = {
            "punchline_embedding_indexes": p_idx,
            "context_embedding_indexes": ctx_idx,
            "punchline_sentence": " ".join(f"w{i}" for i in p_idx),
            "context_sentences": [" ".join(f"w{i}" for i in s) for s in ctx_idx],
            "punchline_intervals": [[j, j + 0.3] for j in range(p_words)],
            "context_intervals": [[[j, j + 0.3] for j in range(w)] for w in ctx_words],
        }
        a_ctx = [rng.normal(size=(w, 81)) for w in ctx_words]
        a_p = rng.normal(size=(p_words, 81))
        v_ctx = [rng.normal(size=(w, 371)) for w in ctx_words]
        v_p = rng.normal(size=(p_words, 371))
        a_clean = [c.copy() for c in a_ctx] + [a_p.copy()]
        if k == 0 and n_ctx:
            a_ctx[0][0, 0], a_ctx[0][0, 1] = -np.inf, np.nan
            a_clean[0][0, 0], a_clean[0][0, 1] = 0.0, 0.0
        v_clean = [c.copy() for c in v_ctx] + [v_p.copy()]
        t_clean = [np.array([emb[i] for i in s]).reshape(len(s), 300) for s in ctx_idx + [p_idx]]
        if k == 1 and p_words > 1:  # vision has one word fewer in the punchline -> all modalities cut
            v_p = v_p[:-1]
            v_clean[-1] = v_p.copy()
            a_clean[-1] = a_clean[-1][:-1]
            t_clean[-1] = t_clean[-1][:-1]
        cov[sid] = {"punchline_features": a_p.tolist(), "context_features": [c.tolist() for c in a_ctx]}
        opf[sid] = {"punchline_features": v_p, "context_features": v_ctx}
        truth[sid] = {"text": t_clean, "audio": a_clean, "vision": v_clean}
    files = {"language": lang, "embeddings": emb, "audio": cov, "vision": opf}
    names = {
        "language": "language_sdk.pkl",
        "embeddings": "word_embedding_list.pkl",
        "audio": "covarep_features_sdk.pkl",
        "vision": "openface_features_sdk.pkl",
    }
    if write_labels_folds:
        labels = labels or {i: float(rng.integers(0, 2)) for i in all_ids}
        files["labels"], names["labels"] = labels, "humor_label_sdk.pkl"
        files["folds"], names["folds"] = dict(ids_by_split), "data_folds.pkl"
    for k, name in names.items():
        with open(root / name, "wb") as f:
            pickle.dump(files[k], f)
    return {"truth": truth, "labels": labels, "folds": ids_by_split}


# ---------------------------------------------------------------------------------------------------------------
# MNIST IDX


def write_idx(path, arr: np.ndarray, code: int, gz: bool) -> None:
    be = arr.astype(arr.dtype.newbyteorder(">"))
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + be.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def mnist_fixture(root, rng, gz):
    data = {}
    for split, n in (("train", 30), ("t10k", 12)):
        x = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", x, 0x08, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", y, 0x08, gz)
        data[split] = (x, y)
    return data
