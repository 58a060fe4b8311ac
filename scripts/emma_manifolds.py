#!/usr/bin/env python
"""EMMA Experiment 1 (Werenne 2019, Sect. 5.1, Table 1): tied DAEs (8 hidden units) on 2-D manifolds.

    python scripts/emma_manifolds.py                       # all four manifolds of configs/data/manifolds.yaml
    python scripts/emma_manifolds.py manifolds.spiral.n=4000 --hidden 16

Writes docs/figures/emma_manifolds.png (field / potential / reconstruction norm per manifold) and
docs/results/emma_manifolds.json (mean potential on vs off the manifold, ROC-AUC, settings). Offline, CPU, ~1 min.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmfusion.utils.runtime import ROOT_DIR

ROOT = ROOT_DIR  # the one root locator (MMFUSION_ROOT overrides it)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "overrides", nargs="*", help="OmegaConf dot-list overrides of configs/data/manifolds.yaml"
    )
    ap.add_argument("--config", default=str(ROOT / "configs/data/manifolds.yaml"))
    ap.add_argument("--hidden", type=int, default=8)
    ap.add_argument("--noise-std", type=float, default=0.05, help="DAE corruption std sigma_n (Eq. 5)")
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-2)
    ap.add_argument("--grid", type=int, default=41)
    ap.add_argument("--off-distance", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=str(ROOT / "docs/figures/emma_manifolds.png"))
    ap.add_argument("--json", default=str(ROOT / "docs/results/emma_manifolds.json"))
    args = ap.parse_args(argv)

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mmfusion.emma.experiments.manifolds import plot_results, run_manifold
    from mmfusion.errors import MMFusionError

    try:
        cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(args.overrides))
        data = instantiate(cfg)
        results = [
            run_manifold(
                data,
                k,
                hidden=args.hidden,
                noise_std=args.noise_std,
                epochs=args.epochs,
                lr=args.lr,
                grid=args.grid,
                off_distance=args.off_distance,
                seed=args.seed,
            )
            for k in data.kinds
        ]
    except MMFusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in (args.figure, args.json):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    plot_results(results, args.figure)
    out = {
        "experiment": "EMMA Experiment 1 (2-D manifolds)",
        "data": OmegaConf.to_container(cfg),
        "figure": str(Path(args.figure).relative_to(ROOT))
        if Path(args.figure).is_relative_to(ROOT)
        else args.figure,
        "manifolds": {r.kind: r.stats for r in results},
    }
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    for r in results:
        s = r.stats
        print(
            f"{r.kind:7s} V on {s['mean_potential_on']:.3f}  V off {s['mean_potential_off']:.3f}  "
            f"AUC {s['auc_on_vs_off']:.3f}  loss {s['final_train_loss']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
