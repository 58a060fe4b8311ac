#!/usr/bin/env python
"""EMMA Experiment 2 (Werenne 2019, Sect. 5.2): a DAE trained on zero digits.

    python scripts/emma_digits.py                          # scikit-learn's bundled 8x8 digits (offline)
    python scripts/emma_digits.py --mnist /path/to/mnist   # MNIST IDX files (train/t10k-*-idx?-ubyte[.gz])

(a) potential energy vs Gaussian noise level on 100 held-out zero images (mean, 2 sigma bands);
(b) seen (0) vs unseen (1) digits: energy histograms and ROC-AUC.
Writes docs/figures/emma_digits_noise.png, docs/figures/emma_digits_seen_unseen.png, docs/results/emma_digits.json.
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
        "--mnist", default=None, help="directory with the MNIST IDX files (default: sklearn digits)"
    )
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--noise-std", type=float, default=0.2, help="DAE corruption std sigma_n (Eq. 5)")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument(
        "--levels",
        default="0,0.05,0.1,0.2,0.3,0.4,0.5,0.75,1.0",
        help="comma-separated Gaussian noise stds for (a)",
    )
    ap.add_argument("--n-eval", type=int, default=100, help="held-out zeros (sklearn digits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-figures", default=str(ROOT / "docs/figures"))
    ap.add_argument("--json", default=str(ROOT / "docs/results/emma_digits.json"))
    args = ap.parse_args(argv)

    from mmfusion.emma.experiments.digits import (
        fit_zero_dae,
        load_zero_one,
        noise_curve,
        plot_noise_curve,
        plot_seen_unseen,
        seen_unseen,
    )
    from mmfusion.errors import MMFusionError

    try:
        levels = [float(s) for s in args.levels.split(",")]
        data = load_zero_one(args.mnist, n_eval=args.n_eval, seed=args.seed)
    except ValueError:
        print(f"error: --levels must be comma-separated numbers, got {args.levels!r}", file=sys.stderr)
        return 2
    except MMFusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dae, fit = fit_zero_dae(
        data, hidden=args.hidden, noise_std=args.noise_std, epochs=args.epochs, lr=args.lr, seed=args.seed
    )
    curve = noise_curve(dae, data.zeros_eval, levels, seed=args.seed)
    su = seen_unseen(dae, data.zeros_eval, data.ones_eval)
    figs = Path(args.out_figures)
    figs.mkdir(parents=True, exist_ok=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    plot_noise_curve(curve, str(figs / "emma_digits_noise.png"))
    plot_seen_unseen(su, str(figs / "emma_digits_seen_unseen.png"))
    diffs = [b - a for a, b in zip(curve["mean"], curve["mean"][1:])]
    out = {
        "experiment": "EMMA Experiment 2 (digits)",
        "source": data.source,
        "n_train_zeros": int(len(data.zeros_train)),
        "dae": fit,
        "noise_curve": curve,
        "noise_curve_monotone": all(d > 0 for d in diffs),
        "seen_vs_unseen": {k: su[k] for k in ("auc", "mean_zero", "mean_one", "n_zero", "n_one")},
    }
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"source {data.source}: {len(data.zeros_train)} training zeros; fit {fit['fit_seconds']:.1f}s")
    print("noise -> mean V:", ", ".join(f"{s:g}: {m:.2f}" for s, m in zip(curve["levels"], curve["mean"])))
    print(
        f"seen 0 mean V {su['mean_zero']:.2f}, unseen 1 mean V {su['mean_one']:.2f}, ROC-AUC {su['auc']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
