"""Attention localisation on images with a known object mask (easy-VQA: one shape on a plain background).

The thesis' central claim for continuous attention (Farinhas 2021, Sects. 6.2-6.3, Figs. 6.4-6.11) is that the
density concentrates on the region the question is about. On easy-VQA the region is known exactly, so the claim can
be measured: the attention *mass inside the shape*.

* discrete attention (AttFlat, Eq. 6.1): sum_l p_l c_l, with p_l the softmax weight of grid cell l and c_l the
  fraction of the cell's pixels covered by the shape (:func:`cell_coverage`);
* continuous attention (Eqs. 3.8, 5.4): the density integrated over the shape, int p(t) m(t) dt, by the midpoint
  rule at pixel centres (:func:`density_mass`; m is the per-pixel coverage, fractional on anti-aliased edges);
* the uniform-attention baseline is the shape's area fraction, mean_t m(t) (the mass a uniform density puts in
  the shape; equal to the discrete mass of uniform weights over equal cells).

Coordinates follow :func:`mmfusion.attention.moments.grid_positions`: t = (row, column) in [0, 1]^2, pixel (r, c)
of an H x W image at ((r + 1/2)/H, (c + 1/2)/W), row-major. No Lightning, no data loading: arrays in, numbers out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mmfusion.errors import DataError


def shape_mask(image: np.ndarray) -> np.ndarray:
    """Per-pixel shape coverage in [0, 1] of an image of one shape on a plain background.

    Args:
        image: (H, W, 3) or (3, H, W) uint8/float RGB.

    Returns:
        (H, W) float64: 0 on the background, 1 inside the shape, the blend fraction a on anti-aliased edges
        (pixel = a * shape + (1 - a) * background, by projection on shape - background). The background is the most
        frequent border colour; the shape colour is the pixel farthest from it.
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 3 or 3 not in (a.shape[0], a.shape[-1]):
        raise DataError(f"shape_mask: expected an (H, W, 3) or (3, H, W) image, got shape {a.shape}")
    if a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    colours, counts = np.unique(border, axis=0, return_counts=True)
    bg = colours[counts.argmax()]
    diff = a - bg
    dist2 = (diff**2).sum(-1)
    if dist2.max() == 0:
        raise DataError("shape_mask: the image is a single colour (no shape)")
    fg = a.reshape(-1, 3)[dist2.argmax()]
    direction = fg - bg
    return np.clip((diff @ direction) / float(direction @ direction), 0.0, 1.0)


def cell_coverage(mask: np.ndarray | Tensor, grid_shape: tuple[int, int]) -> Tensor:
    """Fraction of each grid cell covered by the shape.

    Args:
        mask: (..., H, W) per-pixel coverage; H, W divisible by the grid.
        grid_shape: (h, w) attention grid (row-major cells, as the image features).

    Returns:
        (..., h * w) float64 cell coverages c_l.
    """
    m = torch.as_tensor(mask, dtype=torch.float64)
    h, w = grid_shape
    big_h, big_w = m.shape[-2:]
    if big_h % h or big_w % w:
        raise DataError(f"cell_coverage: image {big_h}x{big_w} is not divisible into a {h}x{w} grid")
    blocks = m.reshape(*m.shape[:-2], h, big_h // h, w, big_w // w)
    return blocks.mean(dim=(-3, -1)).reshape(*m.shape[:-2], h * w)


def discrete_mass(weights: Tensor, coverage: Tensor) -> Tensor:
    """sum_l p_l c_l: discrete attention mass in the shape. weights, coverage: (B, L) -> (B,)."""
    if weights.shape != coverage.shape:
        raise DataError(f"discrete_mass: weights {tuple(weights.shape)} vs coverage {tuple(coverage.shape)}")
    return (weights.to(torch.float64) * coverage.to(torch.float64)).sum(-1)


def pixel_centres(height: int, width: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """(H * W, 2) pixel centres (row, column) in [0, 1]^2, row-major."""
    r = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    c = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], -1).to(dtype)


def density_mass(density: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Midpoint-rule integrals of a density over the shape and over the image.

    Args:
        density: (B, H * W) density values at :func:`pixel_centres`.
        mask: (B, H, W) or (B, H * W) per-pixel coverage.

    Returns:
        (inside the shape, inside the image), each (B,): sum_t p(t) m(t) / (H W) and sum_t p(t) / (H W).
    """
    m = mask.reshape(mask.shape[0], -1).to(torch.float64)
    d = density.to(torch.float64)
    if d.shape != m.shape:
        raise DataError(f"density_mass: density {tuple(d.shape)} vs mask {tuple(m.shape)}")
    n = d.shape[-1]
    return (d * m).sum(-1) / n, d.sum(-1) / n


def uniform_mass(mask: Tensor) -> Tensor:
    """The uniform-attention baseline: the shape's area fraction. mask (B, H, W) or (B, H*W) -> (B,)."""
    return mask.reshape(mask.shape[0], -1).to(torch.float64).mean(-1)


__all__ = ["cell_coverage", "density_mass", "discrete_mass", "pixel_centres", "shape_mask", "uniform_mass"]
