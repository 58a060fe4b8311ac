"""data=vqa2 on fixtures in the official formats, and data=easyvqa on the real package data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmfusion.data.vqa2 import (
    VQA2DataModule,
    build_answer_vocab,
    image_id_of,
    soft_targets,
    write_feature_hdf5,
)
from mmfusion.data.vqa_text import encode_questions, tokenize
from mmfusion.errors import ConfigError, DataError
from mmfusion.metrics.vqa import vqa_accuracy
from mmfusion.tasks.vqa import VQATask

from .vqa_fixtures import image_facts, write_vqa_fixture


def _dm(tmp_path, **kw) -> VQA2DataModule:
    args = write_vqa_fixture(tmp_path / "vqa", layout=kw.pop("layout", "bottom_up"))
    args.update(min_answer_count=2, max_boxes=8, valid_fraction=0.25, batch_size=8, **kw)
    dm = VQA2DataModule(**args)
    dm.setup()
    return dm


def test_tokeniser_and_ids() -> None:
    assert tokenize("What's the man's T-shirt/hat color?") == [
        "whats",
        "the",
        "mans",
        "t",
        "shirt",
        "hat",
        "color",
    ]
    vocab = {"PAD": 0, "UNK": 1, "what": 2, "color": 3}
    ids = encode_questions(["What color? zebra", " ".join(["what"] * 20)], vocab, max_tokens=14)
    assert ids[0].tolist() == [2, 3, 1] + [0] * 11
    assert ids[1].tolist() == [2] * 14


def test_answer_vocab_and_soft_scores() -> None:
    anns = [{"multiple_choice_answer": a} for a in ["Two", "2", "2", "dog", "dog.", "cat"]]
    assert build_answer_vocab(anns, min_count=1) == ["2", "dog"]  # count > 1, first-appearance order
    ann = {"answers": [{"answer": a} for a in ["2"] * 3 + ["two"] + ["Three"] * 2 + ["dog"] * 4]}
    y = soft_targets([ann], {"2": 0, "3": 1, "dog": 2, "cat": 3})
    np.testing.assert_allclose(y[0], [1.0, 0.6, 1.0, 0.0])  # m = 4, 2, 4, 0
    assert image_id_of(__import__("pathlib").Path("COCO_val2014_000000000042.jpg.npz")) == 42


def test_vqa2_fixture_bottom_up(tmp_path) -> None:
    dm = _dm(tmp_path)
    assert dm.answers == ["blue", "no", "1", "green", "red", "yes", "2", "3"]
    assert dm.target_facts().answer_types[dm.answers.index("yes")] == "yes/no"
    assert dm.target_facts().answer_types[dm.answers.index("2")] == "number"
    tr = dm.splits["train"]
    b = tr.__getitems__([0, 1, 2])  # image 1: 'what color' (blue), 'is the car red' (no), 'how many' (1)
    assert b["y"][0].tolist() == [1.0, 0, 0, 0, 0, 0, 0, 0]
    assert b["y"][1, dm.answers.index("no")] == 1.0 and b["y"][2, dm.answers.index("1")] == 1.0
    v = dm.token_vocab
    assert b["x"]["question"][0].tolist()[:6] == [v["what"], v["color"], v["is"], v["the"], v["car"], 0]
    # features: key x is (D, K) -> transposed to (K, D), zero-padded to max_boxes
    raw = np.load(
        next(p for p in (tmp_path / "vqa" / "feats" / "train2014").iterdir() if "000000000001" in p.name)
    )
    k = raw["x"].shape[1]
    img = b["x"]["image"][0]
    assert img.shape == (8, 16) and b["lengths"]["image"][0] == k
    np.testing.assert_allclose(img[:k].numpy(), raw["x"].T)
    assert torch.all(img[k:] == 0)
    # the 'Red.' answer of red images is normalised and counted: score 1.0
    red = [i for i in range(len(tr)) if image_facts(int(tr.image_ids[i]))[0] == "red"][0]
    assert tr.targets[red, dm.answers.index("red")] == 1.0
    # valid/test: disjoint val images, together all val questions
    vi, ti = set(dm.splits["valid"].image_ids), set(dm.splits["test"].image_ids)
    assert not vi & ti and len(dm.splits["valid"]) + len(dm.splits["test"]) == 36 and len(vi) == 3
    kw = dm.model_kwargs()
    assert (
        kw["input_dims"]["image"] == 16 and dm.target_facts().num_outputs == 8 and kw["vocab_size"] == len(v)
    )
    assert kw["grid_shape"] is None and kw["pretrained_emb"] is None


def test_vqa2_grid_npz_equals_hdf5(tmp_path) -> None:
    dm = _dm(tmp_path, layout="grid")
    assert dm.store.grid_shape == (4, 4)
    ids = sorted(dm.store.files)
    feats, _ = dm.store.load(ids)
    h5 = write_feature_hdf5(tmp_path / "f.h5", ids, feats, grid_shape=(4, 4))
    args = write_vqa_fixture(tmp_path / "vqa", layout="grid")
    args.pop("feature_dirs")
    dm2 = VQA2DataModule(**{**args, "hdf5": str(h5)}, min_answer_count=2, valid_fraction=0.25)
    dm2.setup()
    assert dm2.model_kwargs()["grid_shape"] == (4, 4)
    sel = [5, 0, 7, 0]  # unsorted, repeated rows (h5py needs sorted unique indices internally)
    a, b = dm.splits["train"].__getitems__(sel), dm2.splits["train"].__getitems__(sel)
    torch.testing.assert_close(a["x"]["image"], b["x"]["image"])


def test_glove_and_visual_genome(tmp_path) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("what 0.5 0.25 1.0\ncar -1 2 3\nunrelated 9 9 9\n")
    vgq = tmp_path / "VG_questions.json"
    vga = tmp_path / "VG_annotations.json"
    qs = [
        {"image_id": 1, "question": "what color is the car", "question_id": 90001},
        {"image_id": 1, "question": "what is purple", "question_id": 90002},
        {"image_id": 777777, "question": "what color is it", "question_id": 90003},
    ]
    ans = ["red", "purple", "red"]
    vgq.write_text(json.dumps({"questions": qs}))
    vga.write_text(
        json.dumps(
            {
                "annotations": [
                    {
                        "question_id": q["question_id"],
                        "image_id": q["image_id"],
                        "multiple_choice_answer": a,
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)
                        ],
                    }
                    for q, a in zip(qs, ans)
                ]
            }
        )
    )
    dm = _dm(tmp_path, glove=str(glove), vg_questions=str(vgq), vg_annotations=str(vga))
    emb = dm.model_kwargs()["pretrained_emb"]
    assert emb.shape == (len(dm.token_vocab), 3)
    torch.testing.assert_close(emb[dm.token_vocab["car"]], torch.tensor([-1.0, 2.0, 3.0]))
    assert torch.all(emb[dm.token_vocab["color"]] == 0)  # not in the file -> zero (spaCy OOV)
    # only the VG pair with features and an in-vocabulary answer is added
    assert len(dm.splits["train"]) == 36 + 1 and dm.splits["train"].question_ids[-1] == 90001


def test_vqa2_bad_input(tmp_path) -> None:
    args = write_vqa_fixture(tmp_path / "vqa")
    with pytest.raises(DataError, match="nope.json"):
        VQA2DataModule(**{**args, "train_questions": str(tmp_path / "nope.json")}, min_answer_count=2).setup()
    with pytest.raises(ConfigError, match="exactly one"):
        VQA2DataModule(**{**args, "hdf5": "x.h5"})
    victim = next((tmp_path / "vqa" / "feats" / "val2014").glob("*000000000105*"))
    victim.unlink()
    with pytest.raises(DataError, match="image_id 105"):
        VQA2DataModule(**args, min_answer_count=2).setup()


def test_results_file_scores_like_the_soft_targets(tmp_path) -> None:
    dm = _dm(tmp_path)
    te = dm.splits["test"]
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((len(te), len(dm.answers)))
    path = dm.results("test", pred, tmp_path / "results.json")
    rows = json.loads(path.read_text())
    assert set(rows[0]) == {"question_id", "answer"} and len(rows) == len(te)
    anns = [
        a
        for a in json.loads((tmp_path / "vqa" / "raw" / "v2_mscoco_val2014_annotations.json").read_text())[
            "annotations"
        ]
        if a["question_id"] in set(te.question_ids.tolist())
    ]
    official = vqa_accuracy(rows, anns)["overall"]
    task = VQATask()
    task.configure(dm.target_facts())
    soft = task.metrics(pred, te.targets.numpy())["vqa_acc"]
    assert official == pytest.approx(soft, abs=0.01)


# -- easy-VQA -----------------------------------------------------------------------------------------------------
def test_easyvqa_real_data_layout() -> None:
    pytest.importorskip("easy_vqa", reason="needs the easy-vqa package (pip install 'mmfusion[vqa]')")
    from mmfusion.data.easyvqa import EasyVQADataModule

    dm = EasyVQADataModule(max_train_images=200, max_test_images=50, valid_fraction=0.2)
    dm.setup()
    assert len(dm.answers) == 13 and set(dm.target_facts().answer_types) == {"yes/no", "shape", "color"}
    b = dm.splits["train"].__getitems__([0, 1])
    assert b["x"]["image"].shape == (2, 3, 64, 64) and 0.0 <= float(b["x"]["image"].min())
    assert float(b["x"]["image"].max()) <= 1.0 and b["x"]["question"].shape == (2, 14)
    assert torch.all(b["y"].sum(1) == 1)
    tr, va = set(dm.splits["train"].image_rows.tolist()), set(dm.splits["valid"].image_rows.tolist())
    assert not tr & va and len(tr | va) == 200
    kw = dm.model_kwargs()
    assert kw["image_encoder"] == "cnn" and dm.target_facts().num_outputs == 13


def test_extract_grid_features_says_when_torchvision_is_missing(monkeypatch, tmp_path) -> None:
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "extract_grid_features.py"
    spec = importlib.util.spec_from_file_location("extract_grid_features", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    with pytest.raises(SystemExit) as e:
        mod.main(["--images", str(tmp_path), "--out", str(tmp_path / "f.h5")])
    msg = str(e.value)
    assert msg.startswith(mod.TORCHVISION_MESSAGE) and "\n" not in msg and "mmfusion[vision]" in msg
    assert mod.image_id(Path("COCO_val2014_000000000042.jpg")) == 42
