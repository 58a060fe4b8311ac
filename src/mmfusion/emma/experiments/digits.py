"""Experiment 2 (Werenne 2019, Sect. 5.2): a DAE trained on zero digits only.

(a) potential energy vs Gaussian noise level on 100 held-out zero images (mean and 2 sigma bands; Fig. 10);
(b) seen (held-out 0s) vs unseen (1s) digits: energy histograms and the ROC-AUC of V as an "unseen" score (Fig. 11).

Data: scikit-learn's bundled 8x8 digits (offline; values /16 to [0, 1]); the zeros are split, seeded, into a
training set and ``n_eval`` held-out images. With MNIST IDX files (``mnist_root``), the DAE trains on the
training-set zeros and is evaluated on the test-set zeros and ones (pixels /255). The noise is added without
clipping (clipping to [0, 1] would bound the perturbation and bend the curve at high noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mmfusion.emma.dae import TiedDAE, fit_dae
from mmfusion.emma.energy import potential
from mmfusion.errors import DataError


@dataclass
class DigitsData:
    zeros_train: np.ndarray
    zeros_eval: np.ndarray
    ones_eval: np.ndarray
    source: str


def load_zero_one(mnist_root: str | None = None, n_eval: int = 100, seed: int = 0) -> DigitsData:
    """Zeros for training, held-out zeros and ones for evaluation, as float32 (N, pixels) in [0, 1]."""
    if mnist_root:
        from mmfusion.data.mnist import load_mnist_arrays  # IDX reader (no torchvision)

        a = load_mnist_arrays(mnist_root)
        flat = {
            k: a[k].reshape(len(a[k]), -1).astype(np.float32) / 255.0 for k in ("train_images", "test_images")
        }
        return DigitsData(
            flat["train_images"][a["train_labels"] == 0],
            flat["test_images"][a["test_labels"] == 0],
            flat["test_images"][a["test_labels"] == 1],
            f"mnist:{mnist_root}",
        )
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    zeros, ones = x[y == 0], x[y == 1]
    if n_eval >= len(zeros):
        raise DataError(f"digits: n_eval={n_eval} leaves no training zeros (there are {len(zeros)} zeros)")
    perm = np.random.default_rng(seed).permutation(len(zeros))
    return DigitsData(zeros[perm[n_eval:]], zeros[perm[:n_eval]], ones, "sklearn.datasets.load_digits")


def fit_zero_dae(
    data: DigitsData,
    *,
    hidden: int = 64,
    noise_std: float = 0.2,
    epochs: int = 200,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> tuple[TiedDAE, dict[str, Any]]:
    x = torch.from_numpy(data.zeros_train)
    dae, rep = fit_dae(
        x, hidden, noise_std, epochs=epochs, batch_size=batch_size, lr=lr, standardize=False, seed=seed
    )
    return dae, {
        "hidden": hidden,
        "noise_std": noise_std,
        "epochs": epochs,
        "n_train": len(x),
        "final_train_loss": rep.train_loss,
        "fit_seconds": rep.seconds,
    }


def noise_curve(
    dae: TiedDAE, images: np.ndarray, levels: list[float], seed: int = 0, n_images: int = 100
) -> dict[str, list[float]]:
    """Mean and std of V over ``n_images`` images for each Gaussian noise std in ``levels`` (Fig. 10)."""
    x = torch.from_numpy(images[:n_images])
    g = torch.Generator().manual_seed(seed)
    means, stds = [], []
    with torch.no_grad():
        for s in levels:
            v = potential(dae, x + s * torch.randn(x.shape, generator=g)).numpy()
            means.append(float(v.mean()))
            stds.append(float(v.std()))
    return {"levels": [float(s) for s in levels], "mean": means, "std": stds, "n_images": int(len(x))}


def seen_unseen(dae: TiedDAE, zeros: np.ndarray, ones: np.ndarray) -> dict[str, Any]:
    """Energies of held-out 0s (seen class) and 1s (unseen) and the ROC-AUC of V for 'unseen' (Fig. 11)."""
    with torch.no_grad():
        v0 = potential(dae, torch.from_numpy(zeros)).numpy()
        v1 = potential(dae, torch.from_numpy(ones)).numpy()
    auc = roc_auc_score(np.r_[np.zeros(len(v0)), np.ones(len(v1))], np.r_[v0, v1])
    return {
        "v_zero": v0,
        "v_one": v1,
        "auc": float(auc),
        "mean_zero": float(v0.mean()),
        "mean_one": float(v1.mean()),
        "n_zero": int(len(v0)),
        "n_one": int(len(v1)),
    }


def plot_noise_curve(curve: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, m, sd = (np.asarray(curve[k]) for k in ("levels", "mean", "std"))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(s, m, "o-", color="tab:blue", label="mean V")
    ax.fill_between(s, m - 2 * sd, m + 2 * sd, alpha=0.25, color="tab:blue", label="±2σ")
    ax.set_xlabel("Gaussian noise std")
    ax.set_ylabel("potential energy V")
    ax.set_title(f"noise vs potential ({curve['n_images']} zero images)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_seen_unseen(res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    lo = min(res["v_zero"].min(), res["v_one"].min())
    hi = max(res["v_zero"].max(), res["v_one"].max())
    bins = np.linspace(lo, hi, 40)
    ax.hist(res["v_zero"], bins=bins, alpha=0.6, density=True, label=f"seen: 0 (n={res['n_zero']})")
    ax.hist(res["v_one"], bins=bins, alpha=0.6, density=True, label=f"unseen: 1 (n={res['n_one']})")
    ax.set_xlabel("potential energy V")
    ax.set_ylabel("density")
    ax.set_title(f"seen vs unseen digits (ROC-AUC {res['auc']:.3f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
