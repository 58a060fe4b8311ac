"""2-D toy manifolds of EMMA's Experiment 1 (Werenne 2019, Sect. 5.1): linear, sine, circle and spiral.

Points are drawn uniformly along the curve's parameter and perturbed by isotropic Gaussian noise of std ``noise``.
This is not a Lightning datamodule (there is no target): ``data=manifolds`` configures
``scripts/emma_manifolds.py``. Everything is offline and seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmfusion.errors import ConfigError

KINDS = ("linear", "sine", "circle", "spiral")


def curve(kind: str, t: np.ndarray) -> np.ndarray:
    """Noiseless curve point for parameter ``t`` in [0, 1]: ``(n,) -> (n, 2)``."""
    if kind == "linear":
        x = 2 * t - 1
        return np.stack([x, 0.5 * x], 1)
    if kind == "sine":
        x = 2 * t - 1
        return np.stack([x, 0.5 * np.sin(math.pi * x)], 1)
    if kind == "circle":
        a = 2 * math.pi * t
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "spiral":  # Archimedean, 1.25 turns, radius 0.2 -> 1.2
        a = 0.5 * math.pi + 2.5 * math.pi * t
        r = 0.2 + (a - 0.5 * math.pi) / (2.5 * math.pi)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    raise ConfigError(f"data.manifolds: unknown manifold {kind!r}; expected one of {KINDS}")


def sample(kind: str, n: int, noise: float, seed: int = 0) -> np.ndarray:
    """``n`` noisy points ``(n, 2)`` float32 on the manifold ``kind``."""
    if n < 1 or noise < 0:
        raise ConfigError(f"data.manifolds.{kind}: need n >= 1 and noise >= 0, got n={n}, noise={noise}")
    rng = np.random.default_rng(seed)
    pts = curve(kind, rng.uniform(0, 1, n)) + noise * rng.standard_normal((n, 2))
    return pts.astype(np.float32)


def distance_to_curve(kind: str, points: np.ndarray, resolution: int = 4000) -> np.ndarray:
    """Euclidean distance of each point ``(n, 2)`` to the noiseless curve (dense polyline approximation)."""
    c = curve(kind, np.linspace(0, 1, resolution))
    out = np.empty(len(points))
    for i in range(0, len(points), 2048):  # chunks keep the (chunk, resolution) matrix small
        d = points[i : i + 2048, None, :] - c[None]
        out[i : i + 2048] = np.sqrt((d**2).sum(-1)).min(1)
    return out


@dataclass
class ManifoldSpec:
    n: int = 1000
    noise: float = 0.03


class Manifolds:
    """Config holder (``configs/data/manifolds.yaml``): per-manifold sample counts and noise, one seed.

    Args:
        manifolds: ``{kind: {n: samples, noise: std}}`` for a subset of linear, sine, circle, spiral (``None``:
            all four with the defaults).
        seed: seed of the samples (each manifold and split gets its own stream).
        extent: the figures show ``[-extent, extent]^2``.
    """

    def __init__(self, manifolds: dict[str, dict] | None = None, seed: int = 0, extent: float = 1.6) -> None:
        manifolds = dict(manifolds or {k: {} for k in KINDS})
        bad = [k for k in manifolds if k not in KINDS]
        if bad:
            raise ConfigError(f"data.manifolds: unknown manifolds {bad}; expected a subset of {KINDS}")
        self.specs = {k: ManifoldSpec(**dict(v or {})) for k, v in manifolds.items()}
        self.seed = int(seed)
        self.extent = float(extent)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def sample(self, kind: str, split: str = "train") -> np.ndarray:
        spec = self.specs[kind]
        offset = {"train": 0, "test": 1}[split]
        return sample(kind, spec.n, spec.noise, seed=self.seed * 1000 + KINDS.index(kind) * 10 + offset)
