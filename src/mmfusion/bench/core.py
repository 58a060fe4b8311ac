"""Timing helpers shared by every benchmark suite (results are JSON rows, never asserted by tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def random_sentiment_batch(
    batch: int, seq_len: int, device: str = "cpu", seed: int = 0, dims: dict[str, int] | None = None
) -> dict[str, Any]:
    """A random right-padded batch in the contract's layout (MOSI aligned dims by default), true lengths in
    [seq_len/2, seq_len], for benchmarks that build models directly."""
    from mmfusion.data.synthetic import MOSI_DIMS

    dims = dims or MOSI_DIMS
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=g)
    x = {}
    for m, d in dims.items():
        v = torch.randn(batch, seq_len, d, generator=g)
        v[torch.arange(seq_len)[None, :] >= lengths[:, None]] = 0.0
        x[m] = v.to(device)
    return {
        "x": x,
        "lengths": {m: lengths.to(device) for m in dims},
        "y": torch.randn(batch, generator=g).to(device),
        "index": torch.arange(batch, device=device),
    }


def device_sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(
    fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10, device: str = "cpu"
) -> dict[str, float]:
    """Median / IQR wall time (ms) of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    device_sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        device_sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.asarray(times)
    return {
        "median_ms": float(np.median(t)),
        "p25_ms": float(np.percentile(t, 25)),
        "p75_ms": float(np.percentile(t, 75)),
        "repeats": repeats,
        "warmup": warmup,
    }


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """(wall ms, CPU ms of this thread) of one call."""
    device_sync(device)
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    device_sync(device)
    return (time.perf_counter() - w0) * 1e3, (time.thread_time() - c0) * 1e3


def paired_times(
    base: Callable[[], Any],
    other: Callable[[], Any],
    repeats: int,
    warmup: int,
    device: str,
    flip: bool = False,
) -> dict[str, np.ndarray]:
    """Alternate the two steps (base, other, base, ...) so that load drift on a shared machine hits both alike;
    ``flip``: run ``other`` first in every second round. Returns wall and thread-CPU times (``base_wall``,
    ``base_cpu``, ``wall``, ``cpu``); on a CPU shared with other jobs the CPU time is the stable measure."""
    for _ in range(warmup):
        base()
        other()
    res: dict[str, list[float]] = {"base_wall": [], "base_cpu": [], "wall": [], "cpu": []}
    for i in range(repeats):
        order = ("other", "base") if flip and i % 2 else ("base", "other")
        for which in order:
            w, c = timed(base if which == "base" else other, device)
            res["base_wall" if which == "base" else "wall"].append(w)
            res["base_cpu" if which == "base" else "cpu"].append(c)
    return {k: np.asarray(v) for k, v in res.items()}


def peak_memory_mb(device: str = "cpu") -> float | None:
    """Peak allocated CUDA memory (MiB) since the last reset, or peak RSS of the process on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return None


def reset_peak(device: str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def environment() -> dict[str, Any]:
    import platform

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
