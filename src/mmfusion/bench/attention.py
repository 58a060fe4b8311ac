"""Continuous-attention cost at MCAN sizes: B=64, L=196 (14x14 grid), N=100 RBFs, D=512 (issue 4).

Rows: the transform alone (forward+backward from discrete weights p to r = E[psi], incl. moment matching / EM)
and the whole attention pooling (scorer MLP, masked softmax, density fit, transform, G r, weighted sum,
linear_merge; forward+backward w.r.t. the pool's parameters and x) for discrete AttFlat, continuous softmax,
continuous sparsemax (K = 100 angles) and MCA (K-MCA, 2 components, 5 EM steps). Targets: continuous softmax
pooling <= 1.2x discrete, sparsemax <= 1.5x. On CPU the ratio uses the thread's CPU time (stable on a shared
machine; run with OMP_NUM_THREADS=1); on GPU the synchronised wall time.

    python -m mmfusion.bench.attention --out docs/results/bench_attention.json [--device cuda]
    python scripts/benchmark.py --suite attention
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion.attention.attflat import AttFlat, masked_softmax
from mmfusion.attention.basis import GaussianBasis
from mmfusion.attention.continuous import continuous_softmax, continuous_sparsemax
from mmfusion.attention.mca import region_init, weighted_em
from mmfusion.attention.moments import grid_positions, moments_2d, sparsemax_sigma_2d
from mmfusion.attention.pools import ContinuousSoftmaxPool, ContinuousSparsemaxPool, MCAPool
from mmfusion.bench.core import device_sync, environment, paired_times

B, L, N, D, GRID = 64, 196, 100, 512, (14, 14)


def _timeit(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    device_sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        device_sync(device)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    return {
        "wall_ms": float(np.median(wall)),
        "cpu_ms": float(np.median(cpu)),
        "wall_p25_ms": float(np.percentile(wall, 25)),
        "wall_p75_ms": float(np.percentile(wall, 75)),
    }


def _transforms(device: str) -> dict[str, Callable[[], Any]]:
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(B, L, generator=g) * 2).to(device).requires_grad_(True)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    pos = grid_positions(*GRID, device=device)
    basis = GaussianBasis.grid_2d(N).to(device)
    w_out = torch.randn(B, N, device=device)
    w_disc = torch.randn(B, L, device=device)

    def discrete() -> None:
        (masked_softmax(scores, mask) * w_disc).sum().backward()

    def cont(kind: str) -> Callable[[], None]:
        def f() -> None:
            p = masked_softmax(scores, mask)
            mu, v = moments_2d(p, pos)
            if kind == "softmax":
                r = continuous_softmax(mu, v, basis)
            elif kind == "sparsemax":
                r = continuous_sparsemax(mu, sparsemax_sigma_2d(v), basis, 100)
            else:
                x = pos[None].expand(B, L, 2)
                pi, m, s = weighted_em(x, p, *region_init(x, p, 2, GRID), 5)
                rk = continuous_softmax(m.reshape(-1, 2), s.reshape(-1, 2, 2), basis).reshape(B, 2, N)
                r = (pi[..., None] * rk).sum(1)
            (r * w_out).sum().backward()

        return f

    return {
        "discrete": discrete,
        "cont_softmax": cont("softmax"),
        "cont_sparsemax": cont("sparsemax"),
        "mca": cont("mca"),
    }


def _pools(device: str) -> dict[str, Callable[[], Any]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, D, generator=g).to(device).requires_grad_(True)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    kw = dict(mid_dim=512, out_dim=1024, dropout=0.1, grid_shape=GRID)
    pools = {
        "discrete": AttFlat(D, **kw),
        "cont_softmax": ContinuousSoftmaxPool(D, **kw),
        "cont_sparsemax": ContinuousSparsemaxPool(D, **kw),
        "mca": MCAPool(D, k=2, n_iter=5, **kw),
    }

    def step(pool: torch.nn.Module) -> Callable[[], None]:
        pool.to(device).train()

        def f() -> None:
            pool.zero_grad(set_to_none=True)
            x.grad = None
            pool(x, mask).sum().backward()

        return f

    return {k: step(p) for k, p in pools.items()}


def sparsemax_transform_vs_pooling(device: str, warmup: int, rounds: int) -> dict[str, Any]:
    """Issue 18 item 3: the 2-D continuous sparsemax transform (fwd+bwd) against the discrete AttFlat pooling
    step, alternated in one process (order flipped every round); the median and IQR of the per-round ratios."""
    transform, pool = _transforms(device)["cont_sparsemax"], _pools(device)["discrete"]
    load0 = os.getloadavg()[0]
    kind = "cpu" if torch.device(device).type == "cpu" else "wall"
    t = paired_times(pool, transform, rounds, warmup, device, flip=True)
    t_ms, p_ms = t[kind], t[f"base_{kind}"]
    ratios = t_ms / p_ms
    q25, q50, q75 = (float(np.percentile(ratios, q)) for q in (25, 50, 75))
    return {
        "suite": "attention",
        "case": "transform_vs_pooling",
        "attention": "cont_sparsemax",
        "device": device,
        "B": B,
        "L": L,
        "N": N,
        "D": D,
        "rounds": rounds,
        "transform_ms": float(np.median(t_ms)),
        "discrete_pooling_ms": float(np.median(p_ms)),
        "ratio_median": q50,
        "ratio_iqr": [q25, q75],
        "target": 0.15,
        "ratio_basis": f"{kind}_ms",
        "load_avg_1min": [load0, os.getloadavg()[0]],
    }


def run(args: Any) -> list[dict]:
    device = getattr(args, "device", "cpu")
    warmup, repeats = getattr(args, "warmup", 3), getattr(args, "repeats", 10)
    rows = [sparsemax_transform_vs_pooling(device, warmup, getattr(args, "rounds", 15))]
    for what, cases in (("transform", _transforms(device)), ("pooling", _pools(device))):
        res = {k: _timeit(fn, device, warmup, repeats) for k, fn in cases.items()}
        key = "cpu_ms" if torch.device(device).type == "cpu" else "wall_ms"
        for k, r in res.items():
            rows.append(
                {
                    "suite": "attention",
                    "case": what,
                    "attention": k,
                    "device": device,
                    "B": B,
                    "L": L,
                    "N": N,
                    "D": D,
                    **r,
                    "ratio_vs_discrete": r[key] / res["discrete"][key],
                    "ratio_basis": key,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=15, help="alternated rounds of transform vs pooling")
    p.add_argument("--out", default="docs/results/bench_attention.json")
    args = p.parse_args(argv)
    rows = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    ab = rows[0]
    print(
        f"sparsemax transform / discrete pooling (alternated, {ab['rounds']} rounds): "
        f"{ab['transform_ms']:.1f} / {ab['discrete_pooling_ms']:.1f} ms, ratio {ab['ratio_median']:.3f} "
        f"[{ab['ratio_iqr'][0]:.3f}, {ab['ratio_iqr'][1]:.3f}] (target <= {ab['target']})"
    )
    for r in rows[1:]:
        print(
            f"{r['case']:9s} {r['attention']:15s} wall {r['wall_ms']:8.2f} ms  cpu {r['cpu_ms']:8.2f} ms  "
            f"x{r['ratio_vs_discrete']:.2f}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
