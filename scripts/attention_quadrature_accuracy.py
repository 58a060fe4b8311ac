#!/usr/bin/env python
"""Accuracy of the 2-D continuous-sparsemax angle quadrature vs K -> docs/results/attention_quadrature.json.

Max over 32 random 14x14 attention maps per family of max_j |r_j(K) - r_j(ref)| / max_j r_j(ref), with ref = 3000
uniform distinct angles (itself checked against scipy dblquad in tests/test_continuous_attention.py), for the
default adaptive angle map, the plain distinct-angle trapezoid (Alg. 4) and the reference code's
linspace(0, 2 pi, K) rule (angle 0 counted twice), reproduced here only to quantify its error.

    python scripts/attention_quadrature_accuracy.py [--out docs/results/attention_quadrature.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import mmfusion.attention.continuous as C
from mmfusion.attention.basis import GaussianBasis
from mmfusion.attention.moments import grid_positions, moments_2d, sparsemax_sigma_2d

F64 = torch.float64


def maps(kind: str, g: torch.Generator) -> torch.Tensor:
    if kind.startswith("random"):
        return (torch.randn(32, 196, generator=g, dtype=F64) * float(kind.split("_")[1])).softmax(-1)
    l = torch.randn(32, 14, 14, generator=g, dtype=F64)
    if kind == "row":
        l[:, 5] += 8
    else:
        l += 8 * torch.eye(14, dtype=F64)
    return l.reshape(32, -1).softmax(-1)


def _at_angles(mu, sigma, basis, a0, a1):
    """The 2-D sparsemax integrand summed at the given angles with unit weights (the reference code's rule)."""
    _, c2, _, mt, prec, detp = C._whiten(mu, sigma, basis.centres, basis.variances)
    q = (
        prec[..., 0, 0, None] * a0 * a0
        + 2 * prec[..., 0, 1, None] * a0 * a1
        + prec[..., 1, 1, None] * a1 * a1
    )
    pm = torch.einsum("bnij,bnj->bni", prec, mt)
    b = pm[..., 0, None] * a0 + pm[..., 1, None] * a1
    cross = a0 * mt[..., 1, None] - a1 * mt[..., 0, None]
    stl = torch.sqrt(detp[..., None] / q / (2 * math.pi)) * torch.exp(-0.5 * detp[..., None] * cross**2 / q)
    _, x1, _, x3 = C.interval_moments(b / q, (1 / q).sqrt(), 0.0, 1.0)
    return 0.5 * c2[:, None] * (stl * (x1 - x3)).sum(-1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/attention_quadrature.json")
    args = p.parse_args(argv)
    basis = GaussianBasis.grid_2d(100)
    pos = grid_positions(14, 14, F64)
    g = torch.Generator().manual_seed(0)
    rows = []
    for fam in ("random_1", "random_2", "random_4", "random_8", "random_20", "row", "diagonal"):
        mu, v = moments_2d(maps(fam, g), pos)
        s = sparsemax_sigma_2d(v)
        ref = C.continuous_sparsemax(mu, s, basis, 3000, adaptive_angles=False)
        err = lambda r, ref=ref: float(((r - ref).abs().amax(-1) / ref.amax(-1)).max())  # noqa: E731
        for k in (50, 100, 200, 400):
            rows.append(
                {
                    "maps": fam,
                    "K": k,
                    "adaptive": err(C.continuous_sparsemax(mu, s, basis, k, adaptive_angles=True)),
                    "uniform_distinct": err(C.continuous_sparsemax(mu, s, basis, k, adaptive_angles=False)),
                    "reference_linspace_bug": err(_at_angles(mu, s, basis, *_lin(k)) * (2 * math.pi / k)),
                }
            )
            print(rows[-1])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")
    return 0


def _lin(k: int):
    th = torch.linspace(0, 2 * math.pi, k, dtype=F64)
    return th.cos(), th.sin()


if __name__ == "__main__":
    raise SystemExit(main())
