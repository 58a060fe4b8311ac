"""Re-usable same-shape work buffers for elementwise kernels written as chains of in-place torch ops.

On CPU every fresh multi-megabyte tensor is fresh pages from the C allocator (glibc maps large blocks and gives
them back on free), so a chain of out-of-place ops pays a page fault per 4 KiB it writes. The 2-D continuous
sparsemax transform spent about a third of its time there (B = 64, N = K = 100: 2.5 MB per (B, N, K) buffer,
~40 fresh buffers per call). :class:`Scratch` hands out buffers of one shape and keeps them, per thread, for the
next call with the same shape, dtype and device (and inference mode). Off CPU it allocates normally (the CUDA caching allocator
already re-uses blocks).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

_KEPT_SHAPES = 2  # e.g. the training and the evaluation batch
_local = threading.local()


class Scratch:
    """Buffers of one shape for one call: :meth:`take` one, :meth:`give` it back once it is dead.

    Nothing taken may escape the call that owns the Scratch (results must be fresh tensors), because the next
    call with the same shape writes into the same memory.

    Args:
        shape: shape of every buffer.
        like: dtype and device of the buffers.
    """

    def __init__(self, shape: tuple[int, ...], like: Tensor) -> None:
        self.shape, self.dtype, self.device = tuple(shape), like.dtype, like.device
        self._kept: list[Tensor] = []
        if self.device.type == "cpu":
            cache: dict = getattr(_local, "cache", None) or {}
            # buffers made under inference mode are inference tensors, unusable outside it (and vice versa)
            key = (self.shape, self.dtype, torch.is_inference_mode_enabled())
            self._kept = cache.pop(key, [])
            cache[key] = self._kept  # most recent last
            while len(cache) > _KEPT_SHAPES:
                cache.pop(next(iter(cache)))
            _local.cache = cache
        self._free = list(self._kept)

    def take(self) -> Tensor:
        """An uninitialised buffer of the shape."""
        if self._free:
            return self._free.pop()
        buf = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        if self.device.type == "cpu":
            self._kept.append(buf)
        return buf

    def give(self, *bufs: Tensor) -> None:
        """Return buffers obtained from :meth:`take` whose values are no longer needed."""
        self._free.extend(bufs)
