"""MNIST IDX reader (gzip or not) and the digits fallback, read back through the datamodules value by value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

try:
    from .data_fixtures import mnist_fixture, write_idx
except ImportError:  # tests/ is not a package
    from data_fixtures import mnist_fixture, write_idx

from mmfusion.data.mnist import (
    DigitsDataModule,
    MnistDataModule,
    load_digits_arrays,
    read_idx,
    stratified_split,
)
from mmfusion.errors import DataError


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "dtype,code",
    [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)],
)
def test_read_idx_roundtrip(tmp_path, gz, dtype, code):
    a = (np.arange(2 * 3 * 5) * 7 % 251).reshape(2, 3, 5).astype(dtype)
    p = tmp_path / "a.idx"
    write_idx(p, a, code, gz)
    b = read_idx(p)
    assert b.shape == (2, 3, 5) and b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, b)


def test_read_idx_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing: file not found"):
        read_idx(tmp_path / "missing")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match=r"bad: not an IDX file"):
        read_idx(tmp_path / "bad")
    a = np.zeros((4, 2), np.uint8)
    write_idx(tmp_path / "short", a, 0x08, False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataError, match=r"header says shape \(4, 2\)"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_datamodule_halves(tmp_path, gz):
    data = mnist_fixture(tmp_path, np.random.default_rng(0), gz)
    dm = MnistDataModule(path=str(tmp_path), n_valid=5, batch_size=7)
    dm.setup()
    assert dm.modalities == ("top", "bottom") and dm.input_dims == {"top": 28, "bottom": 28}
    xtr, ytr = data["train"]
    parts = {"train": (xtr[:25], ytr[:25]), "valid": (xtr[25:], ytr[25:]), "test": data["t10k"]}
    for split, loader in (
        ("train", dm.train_dataloader()),
        ("valid", dm.val_dataloader()),
        ("test", dm.test_dataloader()),
    ):
        xs, ys = parts[split]
        seen = 0
        for b in loader:
            idx = b["index"].numpy()
            np.testing.assert_array_equal(b["y"].numpy(), ys[idx])
            np.testing.assert_allclose(b["x"]["top"].numpy(), xs[idx, :14] / 255.0, rtol=0, atol=1e-7)
            np.testing.assert_allclose(b["x"]["bottom"].numpy(), xs[idx, 14:] / 255.0, rtol=0, atol=1e-7)
            assert (b["lengths"]["top"] == 14).all()
            seen += len(idx)
        assert seen == len(ys)


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\[\.gz\] not found.*prepare_data\.py mnist"):
        MnistDataModule(path=str(tmp_path)).setup()


def test_digits_arrays_and_split():
    x, y = load_digits_arrays()
    from sklearn.datasets import load_digits

    d = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x, d.data / 16.0, rtol=0, atol=1e-7)
    assert x.min() == 0.0 and x.max() == 1.0
    parts = stratified_split(y, (0.6, 0.2, 0.2), seed=0)
    allidx = np.concatenate(parts)
    assert len(allidx) == 1797 and len(np.unique(allidx)) == 1797  # a partition: no split mixing
    for c in range(10):  # stratified: each class split 60/20/20 up to rounding
        nc = (y == c).sum()
        assert abs((y[parts[0]] == c).sum() - 0.6 * nc) <= 1


def test_digits_noisy_view_flat():
    dm = DigitsDataModule(views="noisy", layout="flat", noise_std=0.1, batch_size=64)
    dm.setup()
    x, y = load_digits_arrays()
    tr, va, te = stratified_split(y, (0.6, 0.2, 0.2), 0)
    t = dm.splits["valid"].tensors
    assert dm.input_dims == {"image": 64, "noisy": 64}
    np.testing.assert_allclose(t["x"]["image"][:, 0].numpy(), x[va], atol=1e-7)
    np.testing.assert_array_equal(t["y"].numpy(), y[va])
    noisy = t["x"]["noisy"][:, 0].numpy()
    assert noisy.min() >= 0 and noisy.max() <= 1
    resid = (noisy - x[va])[(x[va] > 0.35) & (x[va] < 0.65)]  # unclipped region: residual std ~ noise_std
    assert abs(resid.std() - 0.1) < 0.01
    dm2 = DigitsDataModule(views="noisy", layout="flat", noise_std=0.1)
    dm2.setup()
    assert torch.equal(dm2.splits["valid"].tensors["x"]["noisy"], t["x"]["noisy"])  # deterministic
