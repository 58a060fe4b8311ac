"""UR-FUNNY v2: the six pickles written by the test, read back value by value; the real labels and folds."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    from .data_fixtures import write_urfunny
except ImportError:  # tests/ is not a package
    from data_fixtures import write_urfunny

from mmfusion.data.urfunny import UrFunnyDataModule, load_labels_and_folds
from mmfusion.errors import ConfigError, DataError

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "urfunny"


def _expected(truth, sid, m, k, max_len):
    sents = truth[sid][m]
    sents = sents[-(k + 1) :] if k else sents[-1:]
    cat = np.concatenate(
        [np.asarray(s).reshape(-1, sents[-1].shape[1] if np.ndim(sents[-1]) == 2 else 300) for s in sents], 0
    )
    return cat[-max_len:]


@pytest.mark.parametrize("k,max_len", [(0, 40), (2, 6)])
def test_urfunny_value_by_value(tmp_path, k, max_len):
    fx = write_urfunny(tmp_path)
    dm = UrFunnyDataModule(
        path=str(tmp_path),
        context_sentences=k,
        max_len=max_len,
        batch_size=5,
        feature_dims={"text": 300, "audio": 81, "vision": 371},
    )
    dm.setup()
    assert dm.input_dims == {"text": 300, "audio": 81, "vision": 371}
    for split, loader, fold in (
        ("train", dm.train_dataloader(), "train"),
        ("valid", dm.val_dataloader(), "dev"),
        ("test", dm.test_dataloader(), "test"),
    ):
        assert dm.ids[split] == fx["folds"][fold]
        n = 0
        for b in loader:
            for j, i in enumerate(b["index"].tolist()):
                sid = dm.ids[split][i]
                assert float(b["y"][j]) == fx["labels"][sid]
                for m in ("text", "audio", "vision"):
                    want = _expected(fx["truth"], sid, m, k, max_len)
                    got = b["x"][m][j].numpy()
                    assert int(b["lengths"][m][j]) == max(len(want), 1), (sid, m)
                    np.testing.assert_allclose(got[: len(want)], want, rtol=1e-6, atol=1e-6)
                    assert not got[len(want) :].any() and np.isfinite(got).all()
                n += 1
        assert n == len(fx["folds"][fold])


@pytest.mark.parametrize("k,max_len", [(0, 3), (2, 2)])
def test_urfunny_truncate_first_is_the_official_rule(tmp_path, k, max_len):
    """``truncate=first``: each chosen sentence keeps its FIRST ``max_len`` words (the official loader's
    ``seq[0:max_sen_len]``), context first, punchline last; T = (k + 1) * max_len."""
    fx = write_urfunny(tmp_path)
    dm = UrFunnyDataModule(path=str(tmp_path), context_sentences=k, max_len=max_len, truncate="first")
    dm.setup()
    cut = 0
    for split in ("train", "valid", "test"):
        t = dm.splits[split].tensors
        for i, sid in enumerate(dm.ids[split]):
            for m in ("text", "audio", "vision"):
                sents = fx["truth"][sid][m]
                sents = sents[-(k + 1) :] if k else sents[-1:]
                d = t["x"][m].shape[2]
                want = np.concatenate([np.asarray(s).reshape(-1, d)[:max_len] for s in sents], 0)
                cut += sum(len(s) > max_len for s in sents)
                assert t["x"][m].shape[1] == (k + 1) * max_len
                assert int(t["lengths"][m][i]) == max(len(want), 1), (sid, m)
                np.testing.assert_allclose(t["x"][m][i, : len(want)].numpy(), want, rtol=1e-6, atol=1e-6)
                assert not t["x"][m][i, len(want) :].any()
    assert cut > 0  # the fixture has sentences longer than max_len, so the rule is exercised
    # the default keeps the LAST words instead: different on the same data
    last = UrFunnyDataModule(path=str(tmp_path), context_sentences=k, max_len=max_len)
    last.setup()
    assert not torch.equal(
        last.splits["train"].tensors["x"]["text"], dm.splits["train"].tensors["x"]["text"][:, :max_len]
    )
    with pytest.raises(ConfigError, match="data.truncate must be 'last'"):
        UrFunnyDataModule(path=str(tmp_path), truncate="middle")


def test_urfunny_errors(tmp_path):
    with pytest.raises(DataError, match=r"humor_label_sdk\.pkl: file not found.*prepare_data\.py urfunny"):
        UrFunnyDataModule(path=str(tmp_path)).setup()
    fx = write_urfunny(tmp_path)
    with pytest.raises(
        DataError, match=r"audio features have dimension 81 but the config says data.feature_dims.audio=74"
    ):
        UrFunnyDataModule(path=str(tmp_path), feature_dims={"audio": 74}).setup()
    labels = dict(fx["labels"])
    del labels[201]
    pickle.dump(labels, open(tmp_path / "humor_label_sdk.pkl", "wb"))
    with pytest.raises(DataError, match=r"humor_label_sdk\.pkl: fold id 201 \(valid\) has no label"):
        UrFunnyDataModule(path=str(tmp_path)).setup()
    pickle.dump(fx["labels"], open(tmp_path / "humor_label_sdk.pkl", "wb"))
    pickle.dump({"train": [100], "test": [300]}, open(tmp_path / "data_folds.pkl", "wb"))
    with pytest.raises(DataError, match=r"data_folds\.pkl: key 'dev' not found"):
        UrFunnyDataModule(path=str(tmp_path)).setup()
    pickle.dump(
        {"train": [100, 101], "dev": [200, 999], "test": [300]}, open(tmp_path / "data_folds.pkl", "wb")
    )
    pickle.dump({**fx["labels"], 999: 1.0}, open(tmp_path / "humor_label_sdk.pkl", "wb"))
    with pytest.raises(
        DataError, match=r"covarep_features_sdk\.pkl|language_sdk\.pkl: fold id 999 \(valid\) has no features"
    ):
        UrFunnyDataModule(path=str(tmp_path)).setup()
    dm = UrFunnyDataModule(path=str(tmp_path), missing_features="drop")
    dm.setup()
    assert dm.ids["valid"] == [200]


@pytest.mark.skipif(not (REAL / "humor_label_sdk.pkl").is_file(), reason="needs ../shared/data/urfunny")
def test_real_labels_and_folds_agree_with_fixture_features(tmp_path):
    labels, folds = load_labels_and_folds(REAL)
    assert len(labels) == 16606
    assert {k: len(v) for k, v in folds.items()} == {"train": 10598, "valid": 2626, "test": 3290}
    assert sum(v == 1.0 for v in labels.values()) == 8257 and sum(v == 0.0 for v in labels.values()) == 8349
    # features for a few REAL ids of each fold, read with the real labels and folds
    pick = {"train": folds["train"][:5], "dev": folds["valid"][:3], "test": folds["test"][:3]}
    fx = write_urfunny(tmp_path, ids_by_split=pick, write_labels_folds=False)
    dm = UrFunnyDataModule(
        path=str(tmp_path),
        files={"labels": str(REAL / "humor_label_sdk.pkl"), "folds": str(REAL / "data_folds.pkl")},
        missing_features="drop",
    )
    dm.setup()
    for split, fold in (("train", "train"), ("valid", "dev"), ("test", "test")):
        assert dm.ids[split] == pick[fold]
        np.testing.assert_array_equal(dm.splits[split].tensors["y"].numpy(), [labels[i] for i in pick[fold]])
        t = dm.splits[split].tensors
        for i, sid in enumerate(pick[fold]):
            want = fx["truth"][sid]["audio"][-1]
            np.testing.assert_allclose(t["x"]["audio"][i, : len(want)].numpy(), want, rtol=1e-6, atol=1e-6)
