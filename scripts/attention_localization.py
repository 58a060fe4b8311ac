#!/usr/bin/env python
"""How much of MCAN's image attention falls inside the easy-VQA shape, per attention type and question type.

    python scripts/attention_localization.py --ckpt A.ckpt B.ckpt ... [--label none cont_softmax ...] \
        [--out docs/results/attention_localization] [--figure docs/figures/attention_localization.png]

Each checkpoint is rebuilt from its stored config; the whole test split is run once. Per question: the image
pool's attention mass inside the shape (discrete: softmax weights x cell coverage; continuous/MCA: the density
integrated over the shape's pixels, see ``mmfusion.attention.localization``) and the uniform-attention baseline
(the shape's area fraction). Question types: open colour, open shape, colour yes/no, shape yes/no. Writes
``<out>.json`` (per-question means, per checkpoint and type) and ``<out>.md``, and a bar figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from mmfusion.attention.localization import (
    cell_coverage,
    density_mass,
    discrete_mass,
    pixel_centres,
    shape_mask,
    uniform_mass,
)
from mmfusion.errors import MMFusionError

TYPES = ("open colour", "open shape", "colour yes/no", "shape yes/no")


def question_types(questions: list[str], answers: list[str], colours: set[str]) -> list[str]:
    """easy-VQA question type from the answer (yes/no or not) and whether the question names a colour."""
    out = []
    for q, a in zip(questions, answers):
        words = set(q.lower().replace("?", " ").split())
        about_colour = bool(words & colours) if a in ("yes", "no") else a in colours
        kind = "yes/no" if a in ("yes", "no") else "open"
        out.append(
            f"{kind} {'colour' if about_colour else 'shape'}"
            if kind == "open"
            else f"{'colour' if about_colour else 'shape'} yes/no"
        )
    return out


def measure(ckpt: str, batch_size: int = 256) -> dict[str, dict[str, float]]:
    from mmfusion.data.easyvqa import answer_type, load_split, package_dir
    from mmfusion.evaluation.checkpoints import load_trained

    module, dm = load_trained(ckpt, strict=False)
    net = module.net.eval()
    dm.setup()
    test = dm.splits["test"]
    questions, answers, rows, images64 = load_split(package_dir(), "test", dm.max_test_images, 64)
    colours = {a for a in dm.answers if answer_type(a) == "color"}
    qtypes = np.asarray(question_types(questions, answers, colours))
    masks = torch.as_tensor(np.stack([shape_mask(im) for im in images64]))  # (N_img, 64, 64)
    pool = net.pools["image"]
    grid = pool.grid_shape
    coverage = cell_coverage(masks, grid)  # (N_img, L)
    t = pixel_centres(64, 64)
    inside, image_mass, uniform = [], [], []
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            idx = list(range(start, min(start + batch_size, len(test))))
            batch = test.__getitems__(idx)
            net(batch)
            img_rows = torch.as_tensor(rows[idx])
            if getattr(pool, "last_params", None) is not None and hasattr(pool, "density"):
                dens = pool.density(t)  # (B, 64*64)
                ins, tot = density_mass(dens, masks[img_rows])
            else:
                p = pool.last_attention[..., 0]
                ins = discrete_mass(p, coverage[img_rows])
                tot = torch.ones_like(ins)
            inside.append(ins)
            image_mass.append(tot)
            uniform.append(uniform_mass(masks[img_rows]))
    inside_np, image_np, uniform_np = (torch.cat(v).numpy() for v in (inside, image_mass, uniform))
    out: dict[str, dict[str, float]] = {}
    for qt in ("all", *TYPES):
        sel = np.ones(len(qtypes), bool) if qt == "all" else qtypes == qt
        if sel.any():
            out[qt] = {
                "n": int(sel.sum()),
                "mass_in_shape": float(inside_np[sel].mean()),
                "uniform_baseline": float(uniform_np[sel].mean()),
                "ratio_to_uniform": float(inside_np[sel].mean() / uniform_np[sel].mean()),
                "mass_in_image": float(image_np[sel].mean()),
            }
    return out


def write(results: dict[str, dict], out: Path, figure: Path | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    lines = [
        "Attention mass inside the shape (easy-VQA test split, every question; mean over questions). Uniform = "
        "the shape's area fraction (what uniform attention puts inside). Continuous: density integrated over "
        "the shape's pixels (midpoint rule, 64x64); discrete: softmax weight x cell coverage.",
        "",
        "| attention | question type | n | mass in shape | uniform | ratio | mass in image |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, per in results.items():
        for qt, r in per["types"].items():
            lines.append(
                f"| {label} | {qt} | {r['n']} | {r['mass_in_shape']:.3f} | {r['uniform_baseline']:.3f} | "
                f"{r['ratio_to_uniform']:.2f} | {r['mass_in_image']:.3f} |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = list(results)
        fig, ax = plt.subplots(figsize=(8, 3.5))
        width = 0.8 / max(1, len(labels))
        xs = np.arange(len(TYPES))
        for i, label in enumerate(labels):
            vals = [results[label]["types"].get(qt, {}).get("mass_in_shape", np.nan) for qt in TYPES]
            ax.bar(xs + i * width, vals, width, label=label)
        base = [
            next(iter(results.values()))["types"].get(qt, {}).get("uniform_baseline", np.nan) for qt in TYPES
        ]
        ax.scatter(xs + 0.4 - width / 2, base, marker="_", s=600, color="k", label="uniform", zorder=3)
        ax.set_xticks(xs + 0.4 - width / 2, TYPES)
        ax.set_ylabel("attention mass inside the shape")
        ax.legend(fontsize=8)
        fig.tight_layout()
        figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", nargs="+", required=True)
    ap.add_argument("--label", nargs="*")
    ap.add_argument("--out", default="docs/results/attention_localization")
    ap.add_argument("--figure", default="docs/figures/attention_localization.png")
    args = ap.parse_args(argv)
    labels = args.label or [Path(c).parent.parent.name for c in args.ckpt]
    if len(labels) != len(args.ckpt):
        print(f"error: {len(labels)} labels for {len(args.ckpt)} checkpoints", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    try:
        results = {lab: {"ckpt": c, "types": measure(c)} for lab, c in zip(labels, args.ckpt)}
    except MMFusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(results, Path(args.out), Path(args.figure) if args.figure else None)
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
