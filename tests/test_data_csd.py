"""CMU-MultimodalSDK .csd reader: fixtures in the SDK layout aligned and checked against a brute-force
re-implementation; the real CMU-MOSI label file and the packaged standard folds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    from .data_fixtures import write_csd, write_csd_dataset
except ImportError:  # tests/ is not a package
    from data_fixtures import write_csd, write_csd_dataset

from mmfusion.data.csd import CSDDataModule, collapse_mean, label_segments, load_folds, read_csd
from mmfusion.errors import DataError

REAL_LABELS = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mosi" / "CMU_MOSI_Opinion_Labels.csd"
)


def _dm(fx, tmp_path, **kw):
    p = fx["paths"]
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("folds", str(fx["folds"]))
    return CSDDataModule(
        sequences={m: str(p[m]) for m in ("text", "audio", "vision")},
        labels=str(p["labels"]),
        batch_size=3,
        **kw,
    )


def _clean(a):
    a = np.asarray(a, np.float64).copy()
    a[~np.isfinite(a)] = 0
    return a


def _expected(fx, max_len=50):
    """Brute force: words with midpoint in the segment; per word the mean of overlapping frames."""
    raw, out = fx["raw"], {}
    split_of = {v: s for s, vs in fx["fold_lists"].items() for v in vs}
    for vid, (y, seg) in raw["labels"].items():
        if vid not in split_of:
            continue
        wf, wiv = raw["text"][vid]
        for i, (s, e) in enumerate(seg):
            words = [j for j in range(len(wiv)) if s <= wiv[j].mean() < e][-max_len:]
            row = {"text": _clean(wf[words])}
            for m in ("audio", "vision"):
                f, iv = raw[m][vid]
                f = _clean(f)
                steps = []
                for j in words:
                    mask = (iv[:, 0] < wiv[j, 1]) & (iv[:, 1] > wiv[j, 0])
                    steps.append(f[mask].mean(0) if mask.any() else np.zeros(f.shape[1]))
                row[m] = np.array(steps).reshape(len(words), f.shape[1])
            out[f"{vid}_{i + 1}"] = (split_of[vid], float(y[i, 0]), row)
    return out


def test_read_csd_fixture(tmp_path):
    fx = write_csd_dataset(tmp_path)
    cs = read_csd(fx["paths"]["audio"])
    assert cs.name == "COVAREP" and len(cs) == 5 and cs.dim == 4
    assert cs.metadata["root name"] == "COVAREP" and cs.metadata["dimension names"] == [
        "d0",
        "d1",
        "d2",
        "d3",
    ]
    f, iv = cs.data["vidB"]
    np.testing.assert_array_equal(f, fx["raw"]["audio"]["vidB"][0])  # raw, unsanitised
    np.testing.assert_array_equal(iv, fx["raw"]["audio"]["vidB"][1])


def test_collapse_mean_matches_brute_force():
    rng = np.random.default_rng(3)
    ref = np.sort(rng.uniform(0, 10, (30, 2)), axis=1)
    for nested in (False, True):
        st = np.sort(rng.uniform(0, 10, 200))
        iv = np.stack([st, st + (rng.uniform(0.05, 3, 200) if nested else 0.05)], 1)
        f = rng.normal(size=(200, 3))
        mean, cnt = collapse_mean(ref, iv, f)
        for j, (s, e) in enumerate(ref):
            m = (iv[:, 0] < e) & (iv[:, 1] > s)
            assert cnt[j] == m.sum()
            np.testing.assert_allclose(mean[j], f[m].mean(0) if m.any() else 0, rtol=1e-5, atol=1e-6)


def test_csd_datamodule_value_by_value_and_cache(tmp_path):
    fx = write_csd_dataset(tmp_path)
    exp = _expected(fx)
    dm = _dm(fx, tmp_path)
    dm.setup()
    assert dm.cache_hit is False and dm.cache_path.is_file()
    assert dm.input_dims == {"text": 6, "audio": 4, "vision": 3}
    n_seen = 0
    for split, loader in (
        ("train", dm.train_dataloader()),
        ("valid", dm.val_dataloader()),
        ("test", dm.test_dataloader()),
    ):
        ids = dm.ids[split]
        assert {exp[i][0] for i in ids} == {split}
        assert sorted(ids) == sorted(k for k, v in exp.items() if v[0] == split)
        for b in loader:
            for j, i in enumerate(b["index"].tolist()):
                sid = ids[i]
                _, y, row = exp[sid]
                assert float(b["y"][j]) == pytest.approx(y)
                for m in ("text", "audio", "vision"):
                    want = row[m]
                    k = max(len(want), 1)
                    assert int(b["lengths"][m][j]) == k, (sid, m)
                    got = b["x"][m][j].numpy()
                    np.testing.assert_allclose(got[: len(want)], want, rtol=1e-5, atol=1e-6)
                    assert not got[len(want) :].any()
                n_seen += 1
    assert n_seen == 12  # 4 videos in folds x 3 segments; vidE is outside the folds
    # the silent segment has no word: one zero step of length 1
    assert int(dm.splits["train"].tensors["lengths"]["text"][dm.ids["train"].index("vidA_1")]) == 1
    # second run: from the cache, identical tensors
    dm2 = _dm(fx, tmp_path)
    dm2.setup()
    assert dm2.cache_hit is True
    for s in ("train", "valid", "test"):
        for m in ("text", "audio", "vision"):
            assert torch.equal(dm2.splits[s].tensors["x"][m], dm.splits[s].tensors["x"][m])
        assert dm2.ids[s] == dm.ids[s]
    # changed input -> new key, cache miss
    os.utime(fx["paths"]["audio"], ns=(1, 1))
    dm3 = _dm(fx, tmp_path)
    dm3.setup()
    assert dm3.cache_hit is False and dm3.cache_path != dm.cache_path


def test_csd_unaligned_and_truncation(tmp_path):
    fx = write_csd_dataset(tmp_path)
    dm = _dm(fx, tmp_path, reference=None, max_len={"text": 3, "audio": 100, "vision": 100}, cache_dir=None)
    dm.setup()
    raw = fx["raw"]
    i = dm.ids["valid"].index("vidC_3")
    t = dm.splits["valid"].tensors
    s, e = raw["labels"]["vidC"][1][2]
    f, iv = raw["audio"]["vidC"]
    idx = [j for j in range(len(iv)) if s <= iv[j].mean() < e]
    assert int(t["lengths"]["audio"][i]) == len(idx)
    np.testing.assert_allclose(t["x"]["audio"][i, : len(idx)].numpy(), _clean(f[idx]), rtol=1e-6)
    wf, wiv = raw["text"]["vidC"]
    words = [j for j in range(len(wiv)) if s <= wiv[j].mean() < e]
    assert int(t["lengths"]["text"][i]) == 3  # truncated to the LAST 3 words (CMU get_tensors)
    np.testing.assert_allclose(t["x"]["text"][i].numpy(), wf[words[-3:]], rtol=1e-6)


def test_csd_errors(tmp_path):
    fx = write_csd_dataset(tmp_path)
    with pytest.raises(
        DataError, match=r"audio features have dimension 4 but the config says data.feature_dims.audio=74"
    ):
        _dm(fx, tmp_path, feature_dims={"audio": 74}, cache_dir=None).setup()
    with pytest.raises(DataError, match=r"nothere\.csd: file not found"):
        CSDDataModule(
            sequences={"text": str(tmp_path / "nothere.csd")},
            labels=str(fx["paths"]["labels"]),
            folds=str(fx["folds"]),
        ).setup()
    import h5py

    with h5py.File(tmp_path / "bad.csd", "w") as f:
        f.create_group("a")
        f.create_group("b")
    with pytest.raises(DataError, match=r"bad\.csd: expected one root group"):
        read_csd(tmp_path / "bad.csd")
    (tmp_path / "folds2.json").write_text('{"train": ["vidA", "vidZ"], "valid": ["vidC"], "test": ["vidD"]}')
    with pytest.raises(DataError, match=r"labels\.csd: fold video 'vidZ' has no label entry"):
        _dm(fx, tmp_path, folds=str(tmp_path / "folds2.json"), cache_dir=None).setup()
    (tmp_path / "folds3.json").write_text('{"train": ["vidA"], "valid": ["vidA"], "test": ["vidD"]}')
    with pytest.raises(DataError, match=r"video 'vidA' is in both 'train' and 'valid'"):
        load_folds(str(tmp_path / "folds3.json"))


@pytest.mark.skipif(not REAL_LABELS.is_file(), reason="needs ../shared/data (the shared real-data folder)")
def test_real_mosi_label_file_and_standard_folds():
    cs = read_csd(REAL_LABELS)
    assert cs.name == "Opinion Segment Labels" and len(cs) == 93
    assert cs.metadata["dataset name"] == "CMU-MOSI" and cs.dim == 1
    segs = label_segments(cs)
    assert len(segs) == 2199
    y = np.array([v[3] for v in segs.values()])
    assert y.min() >= -3 and y.max() <= 3 and np.isfinite(y).all()
    assert abs(y.mean() - 0.070) < 1e-3 and abs(y.std(ddof=1) - 1.571) < 1e-3  # shared/data/README.md
    folds = load_folds("mosi")
    assert {k: len(v) for k, v in folds.items()} == {"train": 52, "valid": 10, "test": 31}
    split_of = {v: s for s, vs in folds.items() for v in vs}
    assert set(split_of) == set(cs.data)
    counts = {s: sum(split_of[v[0]] == s for v in segs.values()) for s in folds}
    assert counts == {"train": 1284, "valid": 229, "test": 686}
    # the MFN standard-fold labels (shared/data/mosi/mfn_y_*.h5) hold the same multiset of labels per split
    import h5py

    for s, name in (("train", "train"), ("valid", "valid"), ("test", "test")):
        with h5py.File(REAL_LABELS.parent / f"mfn_y_{name}.h5", "r") as f:
            mfn = np.sort(f["data"][()].astype(np.float32))
        ours = np.sort(np.array([v[3] for v in segs.values() if split_of[v[0]] == s], np.float32))
        np.testing.assert_allclose(ours, mfn, atol=1e-5)


@pytest.mark.skipif(not REAL_LABELS.is_file(), reason="needs ../shared/data (the shared real-data folder)")
def test_real_labels_through_datamodule_with_default_folds(tmp_path):
    """Feature files covering the 93 real videos (2 words per real segment) + the REAL label file, default folds:
    the datamodule yields the standard 1,284/229/686 segments with the real labels."""
    labels = read_csd(REAL_LABELS)
    rng = np.random.default_rng(0)
    text, audio = {}, {}
    for vid, (_, iv) in labels.data.items():
        iv = iv.astype(np.float64)
        w = np.concatenate(
            [np.stack([s + 0.2 * (e - s), s + 0.4 * (e - s)], 0)[None] for s, e in iv]
            + [np.stack([s + 0.6 * (e - s), s + 0.8 * (e - s)], 0)[None] for s, e in iv]
        )
        w = w[np.argsort(w[:, 0])]
        text[vid] = (rng.normal(size=(len(w), 3)).astype(np.float32), w)
        st = np.arange(0.0, iv[:, 1].max() + 1.0, 0.25)
        audio[vid] = (rng.normal(size=(len(st), 2)).astype(np.float32), np.stack([st, st + 0.25], 1))
    write_csd(tmp_path / "t.csd", "glove_vectors", text)
    write_csd(tmp_path / "a.csd", "COVAREP", audio)
    dm = CSDDataModule(
        sequences={"text": str(tmp_path / "t.csd"), "audio": str(tmp_path / "a.csd")},
        labels=str(REAL_LABELS),
        cache_dir=None,
    )
    dm.setup()
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 1284, "valid": 229, "test": 686}
    segs = label_segments(labels)
    for s in ("train", "valid", "test"):
        want = np.array([segs[i][3] for i in dm.ids[s]], np.float32)
        np.testing.assert_array_equal(dm.splits[s].tensors["y"].numpy(), want)
        # real quirks: 94 overlapping segment boundaries, a zero-duration segment -> words counted per segment
        for i, sid in enumerate(dm.ids[s]):
            vid, s0, s1, _ = segs[sid]
            mid = text[vid][1].mean(1)
            n = int(((mid >= s0) & (mid < s1)).sum())
            assert int(dm.splits[s].tensors["lengths"]["text"][i]) == max(n, 1), sid


def test_sdk_python_folds_file_is_parsed_not_executed(tmp_path):
    (tmp_path / "cmu_x_std_folds.py").write_text(
        "import os\nos.environ['MMF_EXECUTED'] = '1'\n"
        "standard_train_fold=['a', 'b']\nstandard_valid_fold=['c']\nstandard_test_fold=['d', '123']\n"
    )
    assert load_folds(str(tmp_path / "cmu_x_std_folds.py")) == {
        "train": ["a", "b"],
        "valid": ["c"],
        "test": ["d", "123"],
    }
    assert "MMF_EXECUTED" not in os.environ


def test_packaged_mosei_folds_are_the_standard_ones():
    """The packaged CMU-MOSEI folds: the SDK's cmu_mosei_std_folds.py lists (2,249/300/678 videos), disjoint."""
    folds = load_folds("mosei")
    assert {s: len(v) for s, v in folds.items()} == {"train": 2249, "valid": 300, "test": 678}
    assert all(len(set(v)) == len(v) for v in folds.values())
    tr, va, te = (set(folds[s]) for s in ("train", "valid", "test"))
    assert not (tr & va or tr & te or va & te)
    assert len(tr | va | te) == 3227
    # spot checks against the SDK file: first/last ids of each list, numeric ids kept as strings
    assert folds["train"][0] == "hh04W3xXa5s" and folds["train"][3] == "81406"
    assert folds["valid"][0] == "188343" and folds["valid"][-1] == "Vuay0mVKkik"
    assert folds["test"][0] == "7l3BNtSE0xc" and folds["test"][-1] == "vR90Pdx9wxs"
