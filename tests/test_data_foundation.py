"""Default datamodules: synthetic properties, the real MOSI utterance features, and bad-input errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mmfusion.data.base import ArrayDataset, sanitize
from mmfusion.data.mosi_utterance import MOSIUtterance
from mmfusion.data.synthetic import SyntheticSentiment
from mmfusion.errors import DataError

from .conftest import SHARED

MOSI = SHARED / "mosi"


def test_synthetic_shapes_determinism_and_padding():
    dm = SyntheticSentiment(n_train=64, n_valid=16, n_test=16, data_seed=3)
    dm.setup()
    b = dm.splits["train"].__getitems__(list(range(64)))
    assert b["x"]["text"].shape == (64, 50, 300) and b["x"]["audio"].shape == (64, 50, 74)
    assert b["x"]["vision"].shape == (64, 50, 47)
    assert float(b["y"].abs().max()) <= 3.0
    # right padding: everything after the true length is zero
    lens = b["lengths"]["text"]
    t = torch.arange(50)[None, :]
    assert float(b["x"]["text"][(t >= lens[:, None])].abs().sum()) == 0.0
    dm2 = SyntheticSentiment(n_train=64, n_valid=16, n_test=16, data_seed=3)
    dm2.setup()
    assert torch.equal(dm2.splits["train"].tensors["x"]["audio"], dm.splits["train"].tensors["x"]["audio"])
    assert dm.transcripts["train"][0] == dm2.transcripts["train"][0]


def test_synthetic_missing_rate_never_drops_all():
    dm = SyntheticSentiment(n_train=500, n_valid=16, n_test=16, missing_rate=0.6, seq_len=8, min_len=2)
    dm.setup()
    c = dm.splits["train"].tensors["corrupt"]
    assert not c.all(1).any() and 0.4 < float(c.float().mean()) < 0.65
    x = dm.splits["train"].tensors["x"]["text"]
    assert float(x[c[:, 0]].abs().sum()) == 0.0


def test_mosi_utterance_real_files():
    dm = MOSIUtterance(path=str(MOSI), valid_videos=6)
    dm.setup()
    n = {k: len(v) for k, v in dm.splits.items()}
    assert n["train"] + n["valid"] == 1447 and n["test"] == 752
    y = dm.splits["test"].tensors["y"].numpy()
    assert y.min() >= -3 and y.max() <= 3
    assert (
        y >= 0
    ).sum() == 467  # the majority class (62.1 %) is non-negative, as the README of shared/data says
    audio = dm.splits["train"].tensors["x"]["audio"][:, 0].numpy()
    assert np.allclose(audio.mean(0), 0, atol=1e-4) and np.allclose(
        audio.std(0)[audio.std(0) > 0], 1, atol=1e-3
    )
    assert len(dm.transcripts["test"]) == 752


def _copy_mosi(tmp_path):
    dst = tmp_path / "mosi"
    shutil.copytree(
        MOSI / "bclstm_utterance_features",
        dst / "bclstm_utterance_features",
        ignore=shutil.ignore_patterns("*.pickle", "text_train.csv", "text_test.csv"),
    )
    shutil.copy(MOSI / "mosi_index.csv", dst / "mosi_index.csv")
    return dst


def test_wrong_feature_dimension_names_file(tmp_path):
    dst = _copy_mosi(tmp_path)
    f = dst / "bclstm_utterance_features" / "audio" / "audio_test0.csv"
    rows = f.read_text().splitlines()
    f.write_text("\n".join(",".join(r.split(",")[1:]) for r in rows) + "\n")  # drop one column
    with pytest.raises(DataError, match=r"audio_test0\.csv: expected 74 columns"):
        MOSIUtterance(path=str(dst)).setup()


def test_missing_file_and_missing_label(tmp_path):
    dst = _copy_mosi(tmp_path)
    (dst / "bclstm_utterance_features" / "video" / "video_train0.csv").unlink()
    with pytest.raises(DataError, match=r"video_train0\.csv: file not found"):
        MOSIUtterance(path=str(dst)).setup()
    dst2 = _copy_mosi(tmp_path / "b")
    idx = dst2 / "mosi_index.csv"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(ln for ln in lines if ",test,0," not in ln) + "\n")
    with pytest.raises(DataError, match=r"no label for bc-LSTM row \(test, 0\)"):
        MOSIUtterance(path=str(dst2)).setup()


def test_nan_inf_sanitised_and_reported():
    report: dict[str, int] = {}
    a = np.array([[1.0, np.nan], [-np.inf, 1e39]])
    out = sanitize(a, "audio", report)
    assert out.dtype == np.float32 and np.array_equal(out, np.array([[1, 0], [0, 0]], dtype=np.float32))
    assert report == {"audio: nan": 1, "audio: inf": 1, "audio: float32 overflow": 1}


def test_empty_split_is_an_error():
    with pytest.raises(DataError, match="empty"):
        ArrayDataset({"x": {"a": torch.zeros(0, 3)}, "y": torch.zeros(0)}, name="mosi/test")
    with pytest.raises(DataError, match="same number of samples"):
        ArrayDataset({"x": {"a": torch.zeros(4, 3)}, "y": torch.zeros(5)}, name="mosi/test")
