"""The MDM toy experiment: train each measure's critic on correlated Gaussian views and compare with the truth.

Views ``x_j = sqrt(rho) z + sqrt(1-rho) eps_j`` (d dims, M views). Ground truth: total correlation (= MI for two
views) for the KL-type measures (kl = DV read-out with MINE gradient, f = NWJ, infonce), and the bracket
``[c_d (sqrt(1+(M-1) rho) - 1), W2]`` for the Wasserstein measure (W1 has no closed form).

    python scripts/mdm_toy.py --dim 5 --views 2 --rhos 0,0.2,0.4,0.6,0.8,0.9 --steps 1000

Prints the JSON and writes it (``--out``) together with the figure (``--fig``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from mmfusion.estimators.dependence import DependencyEstimator
from mmfusion.estimators.gaussian import total_correlation, train_estimator, w1_bounds
from mmfusion.utils.runtime import ROOT_DIR

ROOT = ROOT_DIR  # the one root locator (MMFUSION_ROOT overrides it)
MEASURES = {
    "kl": dict(measure="mine"),
    "f": dict(measure="nwj"),
    "infonce": dict(measure="infonce"),
    "wasserstein": dict(measure="wasserstein", spectral_norm=True),
    "wasserstein_gp": dict(measure="wasserstein", spectral_norm=False, gp_weight=10.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=5, help="dimension of each view")
    p.add_argument("--views", type=int, default=2, help="number of views (modalities)")
    p.add_argument("--rhos", type=str, default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--batch", type=int, default=256, help="sample size per critic step")
    p.add_argument("--steps", type=int, default=1000, help="critic steps")
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--negatives", type=int, default=16, help="InfoNCE negatives per positive (K)")
    p.add_argument("--measures", type=str, default=",".join(MEASURES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "mdm_toy.json")
    p.add_argument("--fig", type=Path, default=ROOT / "docs" / "figures" / "mdm_toy.png")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    rhos = [float(r) for r in args.rhos.split(",")]
    measures = [m.strip() for m in args.measures.split(",")]
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise SystemExit(f"--measures: unknown {unknown}; choose from {list(MEASURES)}")
    rows = []
    for rho in rhos:
        lo, hi = w1_bounds(args.dim, args.views, rho)
        row = {
            "rho": rho,
            "truth_tc": total_correlation(args.dim, args.views, rho),
            "w1_lower": lo,
            "w1_upper": hi,
        }
        for name in measures:
            torch.manual_seed(args.seed)
            kw = dict(MEASURES[name])
            if name == "infonce":
                kw["n_negatives"] = args.negatives
            est = DependencyEstimator(
                [args.dim] * args.views, hidden=args.hidden, layers=2, normalize="none", **kw
            )
            betas = (0.5, 0.9) if name == "wasserstein_gp" else (0.9, 0.999)
            t0 = time.perf_counter()
            res = train_estimator(
                est,
                args.dim,
                args.views,
                rho,
                steps=args.steps,
                batch=args.batch,
                lr=args.lr,
                betas=betas,
                eval_batches=args.eval_batches,
                seed=args.seed + int(rho * 1000),
            )
            row[name] = res["estimate"]
            row[f"{name}_std"] = res["std"]
            row[f"{name}_seconds"] = time.perf_counter() - t0
        rows.append(row)
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "infonce_cap": math.log(args.negatives + 1),
        "rows": rows,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    rho = [r["rho"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    tc = [r["truth_tc"] for r in rows]
    a.plot(rho, tc, "k-", lw=2, label="ground truth TC")
    for name, style in (("kl", "o-"), ("f", "s-"), ("infonce", "^-")):
        if name in rows[0]:
            a.errorbar(
                rho,
                [r[name] for r in rows],
                yerr=[r[f"{name}_std"] for r in rows],
                fmt=style,
                capsize=2,
                label={"kl": "MDM_KL (DV, MINE grad.)", "f": "MDM_f (NWJ)", "infonce": "InfoNCE"}[name],
            )
    if "infonce" in rows[0]:
        a.axhline(result["infonce_cap"], color="gray", ls=":", label="log(K+1)")
    a.set_xlabel("correlation rho")
    a.set_ylabel("nats")
    a.set_title("KL-type measures vs total correlation")
    a.legend(fontsize=8)
    b.fill_between(
        rho,
        [r["w1_lower"] for r in rows],
        [r["w1_upper"] for r in rows],
        color="0.85",
        label="W1 bracket [lower, W2]",
    )
    for name, style, lab in (
        ("wasserstein", "o-", "MDM_W, spectral norm"),
        ("wasserstein_gp", "s-", "MDM_W, GP"),
    ):
        if name in rows[0]:
            b.errorbar(
                rho,
                [r[name] for r in rows],
                yerr=[r[f"{name}_std"] for r in rows],
                fmt=style,
                capsize=2,
                label=lab,
            )
    b.set_xlabel("correlation rho")
    b.set_title("Wasserstein dependency vs its bracket")
    b.legend(fontsize=8)
    c = result["config"]
    fig.suptitle(
        f"MDM toy: d={c['dim']}, M={c['views']} views, batch {c['batch']}, {c['steps']} critic steps"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.fig)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
