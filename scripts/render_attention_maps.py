#!/usr/bin/env python
"""Render MCAN's image attention over the image for any checkpoint and question (thesis Figs. 6.4-6.11).

    python scripts/render_attention_maps.py --ckpt outputs/.../checkpoints/best.ckpt --index 3 \
        [--question "what color is the shape?"] [--kinds discrete cont_softmax cont_sparsemax mca] \
        [--split test] [--image photo.jpg] [--out docs/figures/attention] [--wandb-project mmfusion]

Each checkpoint is rebuilt from the config stored in it (data, model, plug-ins) and its weights loaded. Without
``--kinds`` the checkpoint's own image pool is drawn; with ``--kinds`` the same trained scorer is re-used with
each attention type (the continuous pools share AttFlat's parameters; MCA with ``--mca-select`` is test-MCA).
Panels: discrete = the 14x14 weights; continuous softmax = Gaussian density with contours; continuous sparsemax
= truncated paraboloid with its zero-level contour (the support boundary) emphasised; MCA = mixture density with
the component means. Images come from the batch (easy-VQA pixels) or from ``--image`` (grid-feature data).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mmfusion.attention.attflat import AttFlat  # noqa: E402
from mmfusion.attention.linalg2 import det2, inv2  # noqa: E402
from mmfusion.errors import MMFusionError  # noqa: E402
from mmfusion.plugins.continuous_attention import ContinuousAttention  # noqa: E402

KINDS = {"cont_softmax": "softmax", "cont_sparsemax": "sparsemax", "mca": "mca"}
TITLES = {
    "discrete": "discrete",
    "cont_softmax": "continuous softmax",
    "cont_sparsemax": "continuous sparsemax",
    "mca": "MCA",
}


def load(ckpt: str):
    from mmfusion.evaluation.checkpoints import load_trained

    module, dm = load_trained(ckpt, strict=False)
    return module.net.eval(), dm


def pool_kind(pool: torch.nn.Module) -> str:
    name = type(pool).__name__
    return {
        "ContinuousSoftmaxPool": "cont_softmax",
        "ContinuousSparsemaxPool": "cont_sparsemax",
        "MCAPool": "mca",
    }.get(name, "discrete")


def with_kind(net, kind: str, mca_select: bool, mca_lam: float | None = None):
    """Swap the image pool for ``kind`` keeping the trained scorer/merge weights."""
    old = net.pools["image"]
    if kind == "discrete":
        new = AttFlat(old.in_dim, getattr(old, "mid_dim", 512), old.out_dim, 1, 0.0, old.grid_shape)
        new.load_state_dict(
            {k: v for k, v in old.state_dict().items() if k in new.state_dict()}, strict=False
        )
    else:
        kw = {"select_k": True} if (kind == "mca" and mca_select) else {}
        if kind == "mca" and mca_lam is not None:
            kw["lam"] = mca_lam
        new = ContinuousAttention(KINDS[kind], pool_kwargs=kw).build_pool(old)
    net.pools["image"] = new.eval()
    return net


def sample(dm, split: str, index: int, question: str | None):
    key = {"test": "test", "valid": "valid", "val": "valid", "train": "train"}[split]
    ds = dm.splits[key]
    if not 0 <= index < len(ds):
        raise MMFusionError(f"--index {index} out of range for split {key!r} ({len(ds)} questions)")
    batch = ds.__getitems__([index])
    if question is not None:
        from mmfusion.data.vqa_text import encode_questions

        vocab = getattr(dm, "token_vocab", None)
        if not vocab:
            raise MMFusionError("--question needs a datamodule with a token vocabulary (data=easyvqa|vqa2)")
        ids = encode_questions([question], vocab, batch["x"]["question"].shape[1])
        batch["x"]["question"] = torch.from_numpy(ids)
    return batch


def question_text(dm, batch) -> str | None:
    vocab = getattr(dm, "token_vocab", None)
    if not vocab:
        return None
    inv = {i: w for w, i in vocab.items()}
    words = [inv.get(int(i), "?") for i in batch["x"]["question"][0] if int(i) != 0]
    y = batch.get("y")
    gt = ""
    if y is not None and y.dim() == 2 and getattr(dm, "answers", None):
        gt = f"  (ground truth: {dm.answers[int(y[0].argmax())]})"
    return " ".join(words) + "?" + gt


def background(batch, image_path: str | None) -> np.ndarray | None:
    if image_path:
        return plt.imread(image_path)
    img = batch["x"].get("image")
    if img is not None and img.dim() == 4 and img.shape[1] == 3:
        return img[0].permute(1, 2, 0).clamp(0, 1).numpy()
    return None


def draw(ax, kind: str, pool, grid_shape, img: np.ndarray | None, res: int = 200) -> None:
    h, w = grid_shape
    if img is not None:
        ax.imshow(img, extent=(0, 1, 1, 0))
    att = pool.last_attention[0, :, 0].reshape(h, w).numpy()
    if kind == "discrete":
        ax.imshow(att, extent=(0, 1, 1, 0), cmap="jet", alpha=0.55, interpolation="nearest")
    else:
        g = (torch.arange(res, dtype=torch.float64) + 0.5) / res
        rr, cc = torch.meshgrid(g, g, indexing="ij")
        t = torch.stack([rr.reshape(-1), cc.reshape(-1)], -1)
        dens = pool.density(t)[0].reshape(res, res).numpy()
        ax.imshow(
            np.ma.masked_less_equal(dens, dens.max() * 1e-3), extent=(0, 1, 1, 0), cmap="jet", alpha=0.55
        )
        levels = np.linspace(dens.max() * 0.1, dens.max() * 0.9, 5)
        ax.contour(cc.numpy(), rr.numpy(), dens, levels=levels, colors="white", linewidths=0.8)
        prm = pool.last_params
        if (
            kind == "cont_sparsemax"
        ):  # zero-level contour of -lambda - 1/2 (t-mu)^T Sigma^-1 (t-mu): the support
            mu, sigma = prm["mu"][0, 0].double(), prm["sigma"][0, 0].double()
            d = t - mu
            f = 1.0 / math.sqrt(math.pi * float(det2(sigma).sqrt())) - 0.5 * torch.einsum(
                "pi,ij,pj->p", d, inv2(sigma), d
            )
            ax.contour(
                cc.numpy(),
                rr.numpy(),
                f.reshape(res, res).numpy(),
                levels=[0.0],
                colors="yellow",
                linewidths=2.5,
            )
        if kind == "mca":
            keep = prm["pi"][0] > 1e-3
            m = prm["mu"][0][keep].numpy()
            ax.scatter(m[:, 1], m[:, 0], marker="x", c="white", s=40)
            ax.set_xlabel(f"K = {int(keep.sum())}")
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True)
    p.add_argument("--index", type=int, nargs="+", default=[0])
    p.add_argument("--split", default="test")
    p.add_argument("--question", default=None, help="replace the question text of the sample")
    p.add_argument("--kinds", nargs="+", default=None, choices=["discrete", *KINDS])
    p.add_argument("--mca-select", action="store_true", help="MCA panel = test-MCA (K chosen by Eq. 5.20)")
    p.add_argument(
        "--mca-lam", type=float, default=None, help="lambda of Eq. 5.20 for test-MCA (default: config)"
    )
    p.add_argument("--image", default=None, help="background image (for grid-feature data)")
    p.add_argument("--out", default="docs/figures/attention")
    p.add_argument("--wandb-project", default=None)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        loaded = [(c, *load(c)) for c in args.ckpt]
        for index in args.index:
            figs = []
            for _ckpt, net, dm in loaded:
                kinds = args.kinds or [pool_kind(net.pools["image"])]
                for kind in kinds:
                    if args.kinds:
                        with_kind(net, kind, args.mca_select, args.mca_lam)
                    batch = sample(dm, args.split, index, args.question)
                    with torch.no_grad():
                        pred = net(batch).prediction[0]
                    ans = (
                        dm.answers[int(pred.argmax())]
                        if getattr(dm, "answers", None)
                        else str(int(pred.argmax()))
                    )
                    figs.append((kind, net.pools["image"], batch, ans))
            ncol = len(figs)
            fig, axes = plt.subplots(1, ncol, figsize=(3.2 * ncol, 3.6), squeeze=False)
            grid = loaded[0][1].pools["image"].grid_shape
            if grid is None:
                raise MMFusionError("the image pool has no grid_shape (box features): nothing to draw over")
            for ax, (kind, pool, batch, ans) in zip(axes[0], figs):
                draw(ax, kind, pool, pool.grid_shape, background(batch, args.image))
                ax.set_title(f"{TITLES[kind]}\nanswer: {ans}", fontsize=9)
            q = args.question or question_text(loaded[0][2], figs[0][2]) or f"question #{index}"
            fig.suptitle(q, fontsize=10)
            fig.tight_layout(rect=(0, 0, 1, 0.9))
            path = out / f"attention_{args.split}_{index}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
            print(f"wrote {path}")
    except MMFusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.wandb_project:
        import wandb

        run = wandb.init(project=args.wandb_project, job_type="attention_maps")
        run.log({f"attention/{p.stem}": wandb.Image(str(p)) for p in written})
        run.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
