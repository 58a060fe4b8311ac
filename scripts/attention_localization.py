#!/usr/bin/env python
"""How much of MCAN's image attention falls inside the easy-VQA shape, per attention type and question type.

    python scripts/attention_localization.py --ckpt A.ckpt B.ckpt ... [--label none/s0 none/s1 ...] \
        [--out docs/results/attention_localization] [--figure docs/figures/attention_localization.png]

Each checkpoint is rebuilt from its stored config; the whole test split is run once. Per question: the image
pool's attention mass inside the shape (discrete: softmax weights x cell coverage; continuous/MCA: the density
integrated over the shape's pixels, see ``mmfusion.attention.localization``) and the uniform-attention baseline
(the shape's area fraction), and the checkpoint's accuracy. Question types: open colour, open shape, colour
yes/no, shape yes/no. Labels ``<type>/<run>`` (e.g. ``none/s0``) are grouped by ``<type>``: the table and the bar
figure show mean ± std over the runs of a group. Writes ``<out>.json`` (per checkpoint and type) and
``<out>.md``, and the figure.
"""

from __future__ import annotations

import argparse
import hashlib
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
    inside, image_mass, uniform, correct = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            idx = list(range(start, min(start + batch_size, len(test))))
            batch = test.__getitems__(idx)
            pred = net(batch).prediction.argmax(-1)
            correct.append((pred == batch["y"].argmax(-1)).float())
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
    inside_np, image_np, uniform_np, correct_np = (
        torch.cat(v).numpy() for v in (inside, image_mass, uniform, correct)
    )
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
                "accuracy": float(100 * correct_np[sel].mean()),
            }
    return out


KEYS = ("mass_in_shape", "uniform_baseline", "ratio_to_uniform", "mass_in_image", "accuracy")


def cached_measure(ckpt: str, cache: Path | None) -> dict[str, dict[str, float]]:
    """:func:`measure`, stored in ``cache`` under a key of the checkpoint's path, size and modification time."""
    if cache is None:
        return measure(ckpt)
    st = Path(ckpt).stat()
    key = hashlib.sha256(f"{Path(ckpt).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    path = cache / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    res = measure(ckpt)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return res


def grouped(results: dict[str, dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{group: {question type: {key: [value per run]}}}``; the group of label ``a/b`` is ``a``."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for label, per in results.items():
        g = out.setdefault(label.split("/", 1)[0], {})
        for qt, r in per["types"].items():
            cell = g.setdefault(qt, {k: [] for k in (*KEYS, "n")})
            for k in (*KEYS, "n"):
                cell[k].append(r[k])
    return out


def _ms(v: list[float], fmt: str) -> str:
    return f"{np.mean(v):{fmt}} ± {np.std(v, ddof=1):{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"


def write(results: dict[str, dict], out: Path, figure: Path | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    groups = grouped(results)
    out.with_suffix(".json").write_text(json.dumps({"runs": results, "groups": groups}, indent=2))
    lines = [
        "Attention mass inside the shape (easy-VQA test split, every question; mean over questions, then mean ± "
        "sample std over the runs of each attention type). Uniform = the shape's area fraction (what uniform "
        "attention puts inside); ratio = mass in shape / uniform. Continuous: density integrated over the "
        "shape's pixels (midpoint rule, 64x64); discrete: softmax weight x cell coverage. Accuracy: exact match "
        "on the same questions (%).",
        "",
        "| attention | question type | runs | n | mass in shape | uniform | ratio | mass in image | accuracy (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g, per in groups.items():
        for qt, c in per.items():
            lines.append(
                f"| {g} | {qt} | {len(c['n'])} | {int(np.mean(c['n']))} | {_ms(c['mass_in_shape'], '.3f')} | "
                f"{_ms(c['uniform_baseline'], '.3f')} | {_ms(c['ratio_to_uniform'], '.2f')} | "
                f"{_ms(c['mass_in_image'], '.3f')} | {_ms(c['accuracy'], '.2f')} |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(groups)
        fig, ax = plt.subplots(figsize=(8, 3.5))
        width = 0.8 / max(1, len(names))
        xs = np.arange(len(TYPES))
        for i, g in enumerate(names):
            vals = [np.mean(groups[g].get(qt, {}).get("mass_in_shape", [np.nan])) for qt in TYPES]
            errs = [
                np.std(groups[g][qt]["mass_in_shape"], ddof=1)
                if qt in groups[g] and len(groups[g][qt]["mass_in_shape"]) > 1
                else 0.0
                for qt in TYPES
            ]
            ax.bar(xs + i * width, vals, width, yerr=errs, capsize=2, label=g)
        base = [np.mean(groups[names[0]].get(qt, {}).get("uniform_baseline", [np.nan])) for qt in TYPES]
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
    ap.add_argument(
        "--cache",
        default=None,
        help="folder of per-checkpoint results: a checkpoint measured before is not re-run",
    )
    args = ap.parse_args(argv)
    labels = args.label or [Path(c).parent.parent.name for c in args.ckpt]
    if len(labels) != len(args.ckpt):
        print(f"error: {len(labels)} labels for {len(args.ckpt)} checkpoints", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    try:
        results = {
            lab: {"ckpt": c, "types": cached_measure(c, Path(args.cache) if args.cache else None)}
            for lab, c in zip(labels, args.ckpt)
        }
    except MMFusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(results, Path(args.out), Path(args.figure) if args.figure else None)
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
