"""MNIST (IDX files) and scikit-learn's bundled 8x8 digits, presented as a two-modality problem.

* :func:`read_idx` reads the IDX format of LeCun et al.'s release directly with numpy (gzip detected from the
  magic bytes, so ``train-images-idx3-ubyte`` and ``.gz`` both work): 4-byte magic ``0 0 <dtype> <ndim>``, then
  ``ndim`` big-endian uint32 sizes, then the data big-endian. torchvision is not needed: its ``MNIST`` class
  reads these same IDX files from ``<root>/MNIST/raw``, a layout :func:`find_idx` also accepts, so a
  torchvision download directory works as ``data.path``.
* :func:`load_digits_arrays` is the offline fallback (``data=digits``): 1,797 images 8x8, values 0..16 -> [0, 1].

Two views ("modalities") of one image, chosen by ``views`` (documented choice):

* ``halves`` (default): ``top`` and ``bottom`` halves of the image, each a sequence of pixel rows (MNIST: 14 rows
  of 28 pixels; digits: 4 rows of 8). Neither half alone determines the digit (e.g. 7 vs 9, 3 vs 5 share halves),
  so fusion helps, and dropping a half is a natural missing-modality test.
* ``noisy``: ``image`` (the clean image) and ``noisy`` (the same image + N(0, noise_std^2), clipped to [0, 1];
  noise drawn once per sample from ``data_seed``): a redundant second view of graded reliability, the setting
  of EMMA's attention experiments.

``layout: rows`` gives (N, rows, width) sequences; ``layout: flat`` gives one step (N, 1, pixels). Splits: MNIST's
official 60,000/10,000 train/test, validation = the last ``n_valid`` training images (fixed, never shuffled into
train); digits: a stratified, seeded 60/20/20 split. Task: 10-way classification.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmfusion.data.base import ArrayDataset, MultimodalDataModule
from mmfusion.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzip-compressed) as a numpy array of its stored shape and dtype."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; `python scripts/prepare_data.py mnist` says where to get it")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{p}: not an IDX file (magic bytes {raw[:4].hex()}, expected 0000<dtype><ndim>)")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise DataError(
            f"{p}: header says shape {tuple(int(d) for d in dims)} ({expected} bytes) but {len(raw) - offset} bytes follow"
        )
    return np.frombuffer(raw, dtype, offset=offset).reshape(tuple(dims)).astype(dtype.newbyteorder("="))


def find_idx(root: str | Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz`` (also under ``root/MNIST/raw``, torchvision's layout)."""
    root = Path(root)
    for d in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    raise DataError(
        f"{root}: {stem}[.gz] not found (looked in {root}, {root}/MNIST/raw); "
        f"`python scripts/prepare_data.py mnist` says where to get it"
    )


def load_mnist_arrays(root: str | Path) -> dict[str, np.ndarray]:
    """``{train_images (60000,28,28) uint8, train_labels, test_images, test_labels}`` from the IDX files."""
    out = {k: read_idx(find_idx(root, stem)) for k, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        xi, yi = out[f"{split}_images"], out[f"{split}_labels"]
        if xi.ndim != 3 or yi.ndim != 1 or len(xi) != len(yi):
            raise DataError(
                f"{root}: {split} images {xi.shape} and labels {yi.shape} do not match (N,H,W)/(N,)"
            )
    return out


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: X float32 in [0, 1] of shape (1797, 64), y int64 in 0..9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def make_views(
    images: np.ndarray, views: str, layout: str, noise_std: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """(N, H, W) float images in [0, 1] -> ``{modality: (N, T, D)}`` (see module docstring)."""
    n, h, w = images.shape
    if views == "halves":
        parts = {"top": images[:, : h // 2], "bottom": images[:, h // 2 :]}
    elif views == "noisy":
        noisy = np.clip(images + rng.normal(0.0, noise_std, images.shape), 0.0, 1.0)
        parts = {"image": images, "noisy": noisy}
    else:
        raise ConfigError(f"data.views must be 'halves' or 'noisy'; got {views!r}")
    if layout == "flat":
        return {m: v.reshape(n, 1, -1).astype(np.float32) for m, v in parts.items()}
    if layout != "rows":
        raise ConfigError(f"data.layout must be 'rows' or 'flat'; got {layout!r}")
    return {m: np.ascontiguousarray(v, dtype=np.float32) for m, v in parts.items()}


def _dataset(
    images: np.ndarray,
    labels: np.ndarray,
    views: str,
    layout: str,
    noise_std: float,
    rng: np.random.Generator,
    name: str,
) -> ArrayDataset:
    x = make_views(images, views, layout, noise_std, rng)
    n = len(labels)
    return ArrayDataset(
        {
            "x": {m: torch.from_numpy(v) for m, v in x.items()},
            "lengths": {m: torch.full((n,), v.shape[1], dtype=torch.long) for m, v in x.items()},
            "y": torch.as_tensor(labels, dtype=torch.long),
        },
        name=name,
    )


class _ImageViews(MultimodalDataModule):
    num_outputs = 10  # digit classes

    def __init__(self, views: str, layout: str, noise_std: float, data_seed: int, **loader: object) -> None:
        super().__init__(**loader)
        if views not in ("halves", "noisy") or layout not in ("rows", "flat"):
            raise ConfigError(
                f"data.views must be halves|noisy and data.layout rows|flat; got {views!r}, {layout!r}"
            )
        self.views, self.layout, self.noise_std, self.data_seed = (
            views,
            layout,
            float(noise_std),
            int(data_seed),
        )
        self.modalities = ("top", "bottom") if views == "halves" else ("image", "noisy")

    def _build(self, parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ArrayDataset]:
        out = {}
        for k, (split, (xi, yi)) in enumerate(parts.items()):
            rng = np.random.default_rng([self.data_seed, k])
            out[split] = _dataset(
                xi, yi, self.views, self.layout, self.noise_std, rng, f"{type(self).__name__}/{split}"
            )
        self.input_dims = {m: int(v.shape[2]) for m, v in out["train"].tensors["x"].items()}
        return out


class MnistDataModule(_ImageViews):
    """``data=mnist``: the IDX files in ``path`` (see :func:`find_idx`) as two views of each digit.

    Args:
        path: folder with the MNIST IDX files (``.gz`` or not; a torchvision ``MNIST/raw`` folder works too).
        views: ``halves`` (``top`` and ``bottom`` halves of the image, each a sequence of pixel rows) or ``noisy``
            (``image`` plus a copy with Gaussian noise clipped to [0, 1]).
        layout: ``rows`` (a sequence of pixel rows) or ``flat`` (one step of pixels).
        noise_std: std of the noise of the ``noisy`` view.
        n_valid: the last ``n_valid`` training images are the validation split.
        limit_train: keep only the first ``k`` training images (quick runs); ``None``: all.
        data_seed: seed of the view noise.
        **loader: batch size, workers and shuffling seed, passed to :class:`~mmfusion.data.base.MultimodalDataModule`.
    """

    def __init__(
        self,
        path: str,
        views: str = "halves",
        layout: str = "rows",
        noise_std: float = 0.5,
        n_valid: int = 5000,
        limit_train: int | None = None,
        data_seed: int = 0,
        **loader: object,
    ) -> None:
        super().__init__(views, layout, noise_std, data_seed, **loader)
        self.path, self.n_valid, self.limit_train = str(path), int(n_valid), limit_train

    def build(self) -> dict[str, ArrayDataset]:
        a = load_mnist_arrays(self.path)
        xtr, ytr = a["train_images"].astype(np.float32) / 255.0, a["train_labels"].astype(np.int64)
        if not 0 < self.n_valid < len(xtr):
            raise ConfigError(f"data.n_valid must be in (0, {len(xtr)}); got {self.n_valid}")
        cut = len(xtr) - self.n_valid
        train = (xtr[:cut], ytr[:cut])
        if self.limit_train:
            train = (train[0][: self.limit_train], train[1][: self.limit_train])
        test = (a["test_images"].astype(np.float32) / 255.0, a["test_labels"].astype(np.int64))
        return self._build({"train": train, "valid": (xtr[cut:], ytr[cut:]), "test": test})


def stratified_split(y: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Indices of a seeded stratified split into ``len(fractions)`` parts (per-class rounding)."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        cuts = np.round(bounds * len(idx)).astype(int)
        for p, chunk in zip(parts, np.split(idx, cuts)):
            p.extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


class DigitsDataModule(_ImageViews):
    """``data=digits``: scikit-learn's 8x8 digits (offline) as two views of each digit.

    Args:
        views: ``halves`` (``top`` and ``bottom`` halves of the image, each a sequence of pixel rows) or ``noisy``
            (``image`` plus a copy with Gaussian noise clipped to [0, 1]).
        layout: ``rows`` (a sequence of pixel rows) or ``flat`` (one step of pixels).
        noise_std: std of the noise of the ``noisy`` view.
        split_seed: seed of the stratified 60/20/20 train/valid/test split.
        data_seed: seed of the view noise.
        **loader: batch size, workers and shuffling seed, passed to :class:`~mmfusion.data.base.MultimodalDataModule`.
    """

    def __init__(
        self,
        views: str = "halves",
        layout: str = "rows",
        noise_std: float = 0.5,
        split_seed: int = 0,
        data_seed: int = 0,
        **loader: object,
    ) -> None:
        super().__init__(views, layout, noise_std, data_seed, **loader)
        self.split_seed = int(split_seed)

    def build(self) -> dict[str, ArrayDataset]:
        x, y = load_digits_arrays()
        images = x.reshape(-1, 8, 8)
        tr, va, te = stratified_split(y, (0.6, 0.2, 0.2), self.split_seed)
        return self._build(
            {"train": (images[tr], y[tr]), "valid": (images[va], y[va]), "test": (images[te], y[te])}
        )
