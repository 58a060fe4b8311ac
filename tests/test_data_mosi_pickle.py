"""MOSI/MOSEI pickles (MMSA and MulT layouts): fixtures in the exact formats, read back value by value."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

try:
    from .data_fixtures import SPLITS, write_mmsa, write_mult
except ImportError:  # tests/ is not a package
    from data_fixtures import SPLITS, write_mmsa, write_mult

from mmfusion.data.mosi_pickle import MosiPickleDataModule
from mmfusion.errors import DataError


def _dm(path, **kw):
    kw.setdefault("batch_size", 4)
    return MosiPickleDataModule(path=str(path), **kw)


def _collect(dm, split):
    """All batches of a split's loader (train shuffled) put back in file order via batch['index']."""
    dm.setup()
    loader = {"train": dm.train_dataloader, "valid": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    rows = {}
    for b in loader:
        for j, i in enumerate(b["index"].tolist()):
            rows[i] = {
                "x": {m: v[j] for m, v in b["x"].items()},
                "len": {m: int(v[j]) for m, v in b["lengths"].items()},
                "y": float(b["y"][j]),
                "tokens": {k: v[j] for k, v in b.get("tokens", {}).items()},
            }
    return [rows[i] for i in range(len(rows))]


def _check_seqs(rows, truth, modalities):
    for i, row in enumerate(rows):
        for m in modalities:
            want = truth["seqs"][m][i]
            k = max(len(want), 1)  # zero-length -> one zero step
            assert row["len"][m] == k, (m, i)
            got = row["x"][m].numpy()
            if len(want):
                np.testing.assert_array_equal(got[:k], want)
            else:
                assert not got[:1].any()
            assert not got[k:].any(), f"padding of {m}[{i}] is not zero"  # right-padded
            assert np.isfinite(got).all()


@pytest.mark.parametrize("aligned", [False, True])
def test_mmsa_features_value_by_value(tmp_path, aligned):
    path = tmp_path / ("aligned_50.pkl" if aligned else "unaligned_50.pkl")
    truth = write_mmsa(path, aligned=aligned)
    dm = _dm(path, feature_dims={"audio": 5, "vision": 20})
    for s in SPLITS:
        rows = _collect(dm, s)
        assert len(rows) == len(truth[s]["ids"])
        np.testing.assert_array_equal([r["y"] for r in rows], truth[s]["y"])
        assert dm.ids[s] == truth[s]["ids"]
        _check_seqs(rows, truth[s], ("text", "audio", "vision"))
    assert dm.input_dims == {"text": 16, "audio": 5, "vision": 20}
    assert dm.resolved_format == "mmsa"
    assert dm.padding_sides["train/audio"] == "right"


def test_mmsa_tokens_mode(tmp_path):
    truth = write_mmsa(tmp_path / "a.pkl", aligned=True)
    dm = _dm(tmp_path / "a.pkl", text="tokens")
    rows = _collect(dm, "test")
    for i, r in enumerate(rows):
        tok = truth["test"]["tokens"][i]
        assert torch.equal(r["tokens"]["input_ids"], torch.as_tensor(tok[0]))
        assert torch.equal(r["tokens"]["attention_mask"], torch.as_tensor(tok[1]))
        assert torch.equal(r["tokens"]["token_type_ids"], torch.as_tensor(tok[2]))
        assert r["len"]["text"] == int(tok[1].sum())
        assert "text" not in r["x"]
    assert dm.input_dims["text"] == 768 and dm.modalities == ("text", "audio", "vision")


def test_mult_left_padding_to_right(tmp_path, caplog):
    truth = write_mult(tmp_path / "mosi_data_noalign.pkl")
    dm = _dm(tmp_path / "mosi_data_noalign.pkl")
    with caplog.at_level(logging.INFO):
        for s in SPLITS:
            rows = _collect(dm, s)
            np.testing.assert_allclose([r["y"] for r in rows], truth[s]["y"])
            assert dm.ids[s] == truth[s]["ids"]
            _check_seqs(rows, truth[s], ("text", "audio", "vision"))
    assert dm.resolved_format == "mult"
    assert {v for k, v in dm.padding_sides.items()} == {"left"}
    assert dm.input_dims == {"text": 300, "audio": 5, "vision": 20}
    # sanitising logged exactly once, with the counts
    lines = [r.message for r in caplog.records if "sanitised" in r.message]
    assert len(lines) == 1 and "inf" in lines[0] and "zero-length" in lines[0]
    dm2 = _dm(tmp_path / "mosi_data_noalign.pkl")
    with caplog.at_level(logging.INFO):
        dm2.setup()
    assert len([r for r in caplog.records if "sanitised" in r.message]) == 1


def test_pool_is_masked_mean_over_true_length(tmp_path):
    truth = write_mmsa(tmp_path / "u.pkl")
    dm = _dm(tmp_path / "u.pkl", pool=["audio", "vision"])
    rows = _collect(dm, "train")
    for i, r in enumerate(rows):
        for m in ("audio", "vision"):
            want = truth["train"]["seqs"][m][i]
            mean = want.astype(np.float64).mean(0) if len(want) else np.zeros(want.shape[1])
            assert r["x"][m].shape == (1, want.shape[1]) and r["len"][m] == 1
            np.testing.assert_allclose(r["x"][m][0].numpy(), mean, rtol=1e-6, atol=1e-6)


def test_overflow_detected(tmp_path):
    write_mmsa(tmp_path / "u.pkl")
    dm = _dm(tmp_path / "u.pkl", dataset="overflowcheck")
    dm.setup()
    a = dm.splits["train"].tensors["x"]["audio"]
    assert a.dtype == torch.float32 and torch.isfinite(a).all() and a.abs().max() < 1e6


def test_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"nope\.pkl: file not found.*prepare_data\.py mosi"):
        _dm(tmp_path / "nope.pkl").setup()
    write_mmsa(tmp_path / "u.pkl")
    with pytest.raises(
        DataError, match=r"audio features have dimension 5 but the config says data.feature_dims.audio=74"
    ):
        _dm(tmp_path / "u.pkl", feature_dims={"audio": 74}).setup()
    with pytest.raises(DataError, match=r"data.format=mult but the file has keys"):
        _dm(tmp_path / "u.pkl", modalities=["text", "audio", "vision"], format="mult").setup()
    # a wrong key: the file lacks 'vision'
    data = pickle.load(open(tmp_path / "u.pkl", "rb"))
    for s in SPLITS:
        del data[s]["vision"]
    pickle.dump(data, open(tmp_path / "novision.pkl", "wb"))
    with pytest.raises(DataError, match=r"novision\.pkl:train: key 'vision' not found"):
        _dm(tmp_path / "novision.pkl").setup()
    # an id without a label
    data = pickle.load(open(tmp_path / "u.pkl", "rb"))
    data["valid"]["regression_labels"][1] = np.nan
    pickle.dump(data, open(tmp_path / "nolabel.pkl", "wb"))
    with pytest.raises(
        DataError, match=r"nolabel\.pkl:valid/regression_labels: id 'validvid1\$_\$2' has no label"
    ):
        _dm(tmp_path / "nolabel.pkl").setup()
    # a missing split and mixed splits
    data = pickle.load(open(tmp_path / "u.pkl", "rb"))
    data["test"]["id"][0] = data["train"]["id"][0]
    pickle.dump(data, open(tmp_path / "mixed.pkl", "wb"))
    with pytest.raises(DataError, match=r"is in both 'train' and 'test'"):
        _dm(tmp_path / "mixed.pkl").setup()
    del data["test"]
    pickle.dump(data, open(tmp_path / "nosplit.pkl", "wb"))
    with pytest.raises(DataError, match=r"split 'test' not found"):
        _dm(tmp_path / "nosplit.pkl").setup()
    for err in (DataError,):
        try:
            _dm(tmp_path / "nosplit.pkl").setup()
        except err as e:
            assert "\n" not in str(e)


def test_mmsa_aligned_lengths_come_from_the_text_mask(tmp_path):
    """MMSA aligned_50: audio/vision lengths = the BERT mask's (MMSA's convention), not the trailing all-zero
    frames: sample 0 ends with a silent (all-zero) word, sample 1 has no audio at all."""
    truth = write_mmsa(tmp_path / "aligned_50.pkl", aligned=True)
    dm = _dm(tmp_path / "aligned_50.pkl")
    dm.setup()
    for s in SPLITS:
        lens = dm.splits[s].tensors["lengths"]
        mask_len = truth[s]["tokens"][:, 1].sum(axis=1)
        for m in ("text", "audio", "vision"):
            np.testing.assert_array_equal(lens[m].numpy(), mask_len, err_msg=f"{s}/{m}")
    a = dm.splits["train"].tensors["x"]["audio"]
    last = int(truth["train"]["tokens"][0, 1].sum()) - 1
    assert not a[0, last].any() and a[0, last - 1].any()  # the silent word is inside the true length
    assert not a[1].any()  # no audio at all, yet the length is the text mask's (checked above)
