"""Sequence helpers shared by the real-dataset readers: sanitising in place, padding side, true lengths, masked
means, feature-dimension checks, and the once-per-dataset sanitising log.

Conventions (``mmfusion.contract``): every sequence leaves a reader RIGHT-padded with its true length. Released
files differ: CMU-MultimodalSDK ``get_tensors(direction=False)``, MulT and the UR-FUNNY tutorial pad on the LEFT
(keep the last steps), MMSA's own extractor pads on the right (``v_1.0:data/DataPre.py``). A "zero-length"
sequence (no frame at all, e.g. a segment without a detected face) is kept as ONE all-zero step with length 1,
counted and logged: never silently dropped (MultiBench ``drop_entry``), never a division by zero downstream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from mmfusion.data.base import sanitize
from mmfusion.errors import DataError

log = logging.getLogger(__name__)

_LOGGED: set[str] = set()

SANITIZE_DOC = (
    "NaN and +/-inf -> 0; finite values beyond the float32 range -> 0 (counted as overflow); "
    "sequences right-padded with true lengths; zero-length sequences -> one zero step of length 1"
)


def sanitize_inplace(a: np.ndarray, name: str, report: dict[str, int], chunk: int = 512) -> np.ndarray:
    """:func:`mmfusion.data.base.sanitize` applied in chunks along axis 0, so a multi-GB MOSEI array is never
    copied to float64 whole. float32 input is fixed in place with the same rule and counters (a finite float32
    cannot overflow float32, so one ``isfinite`` pass decides); other dtypes go through ``base.sanitize``.
    Returns a float32 array (``a`` itself when it is a writeable float32 array)."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise DataError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    out = a if a.dtype == np.float32 and a.flags.writeable else np.empty(a.shape, np.float32)
    if a.ndim == 0 or a.shape[0] == 0:
        return out
    fast = (
        a.dtype == np.float32
    )  # a finite float32 value can never overflow float32: one isfinite pass suffices
    for i in range(0, a.shape[0], chunk):
        c = a[i : i + chunk]
        if not fast:
            if (
                c.dtype.kind == "f"
                and np.isfinite(c).all()
                and np.abs(c).max(initial=0) <= np.finfo(np.float32).max
            ):
                out[i : i + chunk] = c  # clean chunk: a plain cast (base.sanitize would change nothing)
            else:
                out[i : i + chunk] = sanitize(c, name, report)
            continue
        bad = ~np.isfinite(c)
        if bad.any():  # same rule and counters as base.sanitize, without its float64 copy
            n_nan = int(np.isnan(c[bad]).sum())
            report[f"{name}: nan"] = report.get(f"{name}: nan", 0) + n_nan
            report[f"{name}: inf"] = report.get(f"{name}: inf", 0) + int(bad.sum()) - n_nan
            if out is a:
                c[bad] = 0.0
            else:
                out[i : i + chunk] = np.where(bad, np.float32(0), c)
        elif out is not a:
            out[i : i + chunk] = c
    for key in ("nan", "inf", "float32 overflow"):  # the report always lists what was checked
        report.setdefault(f"{name}: {key}", 0)
    return out


def log_sanitize_once(dataset: str, report: Mapping[str, int], extra: str = "") -> None:
    """One INFO line per dataset (per process) with what sanitising changed."""
    if dataset in _LOGGED:
        return
    _LOGGED.add(dataset)
    changed = {k: v for k, v in report.items() if v}
    log.info(
        "%s: sanitised (%s)%s: %s",
        dataset,
        SANITIZE_DOC,
        f"; {extra}" if extra else "",
        changed or "nothing to fix",
    )


def zero_frames(x: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(N, T) bool: which time steps of ``x`` (N, T, D) are all-zero (in chunks: no full-size temporary)."""
    out = np.empty(x.shape[:2], dtype=bool)
    for i in range(0, x.shape[0], chunk):
        out[i : i + chunk] = ~np.any(x[i : i + chunk] != 0, axis=2)
    return out


def _run_length(z: np.ndarray) -> np.ndarray:
    """Number of leading True values per row of ``z`` (N, T)."""
    t = z.shape[1]
    first_false = np.where(z.all(axis=1), t, np.argmin(z, axis=1))
    return first_false.astype(np.int64)


def infer_padding(x: np.ndarray) -> tuple[str, np.ndarray]:
    """Infer the padding side and the true lengths of ``x`` (N, T, D) from its all-zero frames.

    Side = the side where more samples have zero frames ('none' if no sample has any). Length = T minus the
    zero frames on that side (zero frames inside the sequence are data, e.g. an out-of-vocabulary word).
    """
    n, t = x.shape[:2]
    if n == 0 or t == 0:
        return "none", np.zeros(n, np.int64)
    z = zero_frames(x)
    lead, trail = _run_length(z), _run_length(z[:, ::-1])
    full = lead == t
    n_left = int(((lead > 0) & ~full).sum())
    n_right = int(((trail > 0) & ~full).sum())
    if n_left == 0 and n_right == 0:
        side = "none"
        lengths = np.where(full, 0, t)
    elif n_left >= n_right:
        side, lengths = "left", t - lead
    else:
        side, lengths = "right", t - trail
    return side, lengths.astype(np.int64)


def detect_side_with_lengths(x: np.ndarray, lengths: np.ndarray) -> str:
    """Padding side of ``x`` given its true lengths: 'right' if the frames after ``len`` are zero in most
    padded samples, 'left' if the frames before ``T - len`` are, 'none' if no sample is padded."""
    t = x.shape[1]
    z = zero_frames(x)
    pos = np.arange(t)[None, :]
    padded = lengths < t
    if not padded.any():
        return "none"
    right_ok = np.all(z | (pos < lengths[:, None]), axis=1)[padded]
    left_ok = np.all(z | (pos >= (t - lengths)[:, None]), axis=1)[padded]
    return "left" if int(left_ok.sum()) > int(right_ok.sum()) else "right"


def to_right_padding(x: np.ndarray, lengths: np.ndarray, side: str) -> None:
    """Move left-padded sequences to the front, in place, and zero everything beyond the true length."""
    n, t = x.shape[:2]
    if side == "left":
        for i in np.nonzero(lengths < t)[0]:
            k = int(lengths[i])
            if k > 0:
                x[i, :k] = x[i, t - k :]
            x[i, k:] = 0
    elif side == "right":
        for i in np.nonzero(lengths < t)[0]:
            x[i, int(lengths[i]) :] = 0
    elif side != "none":
        raise DataError(f"padding side must be left, right or none; got {side!r}")


def clamp_lengths(lengths: np.ndarray, t: int, name: str, report: dict[str, int]) -> np.ndarray:
    """Lengths in [1, T]: longer than T -> T (counted), zero-length -> 1 (one zero step, counted)."""
    lengths = np.asarray(lengths).astype(np.int64).reshape(-1)
    if (lengths < 0).any():
        raise DataError(f"{name}: negative sequence length {int(lengths.min())}")
    report[f"{name}: length > T clipped"] = report.get(f"{name}: length > T clipped", 0) + int(
        (lengths > t).sum()
    )
    report[f"{name}: zero-length -> 1 zero step"] = report.get(
        f"{name}: zero-length -> 1 zero step", 0
    ) + int((lengths == 0).sum())
    return np.clip(lengths, 1, max(t, 1))


def masked_mean(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean of right-padded ``x`` (N, T, D) over its first ``lengths`` steps only (never the padding)."""
    t = x.shape[1]
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    total = np.einsum("ntd,nt->nd", x, mask, dtype=np.float64)
    return (total / np.maximum(lengths, 1)[:, None]).astype(np.float32)


def check_dim(actual: int, expected: Mapping[str, int] | None, modality: str, where: str) -> None:
    """One-line error when a feature dimension contradicts ``data.feature_dims`` in the config."""
    if expected is None or modality not in expected or expected[modality] is None:
        return
    if int(expected[modality]) != int(actual):
        raise DataError(
            f"{where}: {modality} features have dimension {actual} but the config says "
            f"data.feature_dims.{modality}={expected[modality]} (wrong file, or fix data.feature_dims)"
        )


def pad_list(
    seqs: list[np.ndarray], dim: int, max_len: int | None, keep: str = "last"
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad variable-length (n_i, D) arrays into (N, T, D) float32 + lengths. Sequences longer than
    ``max_len`` keep their ``keep`` ('last', as CMU ``get_tensors`` and MulT do, or 'first') steps."""
    lens = np.array([len(s) for s in seqs], np.int64)
    t = int(max_len) if max_len else int(max(lens.max(initial=0), 1))
    out = np.zeros((len(seqs), t, dim), np.float32)
    for i, s in enumerate(seqs):
        if len(s) == 0:
            continue
        s = s[-t:] if keep == "last" else s[:t]
        out[i, : len(s)] = s
    return out, np.minimum(lens, t)
