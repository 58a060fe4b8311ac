"""model=mcan end to end through train(): VQA-v2-format fixtures with every attention plug-in, and easy-VQA."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from mmfusion.metrics.vqa import vqa_accuracy
from mmfusion.train import train

from .conftest import ROOT, compose_cfg
from .vqa_fixtures import write_vqa_fixture

TINY_MCAN = [
    "model=mcan",
    "model.word_dim=16",
    "model.hidden=32",
    "model.heads=4",
    "model.ff=64",
    "model.layers=1",
    "model.flat_mlp=32",
    "model.flat_out=32",
    "model.dropout=0.0",
]
QUIET = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "~callbacks.model_summary",
    "~callbacks.early_stopping",
    "optim=mcan",
    "optim.scheduler=null",
]


def _vqa2_overrides(root, n_train: int, n_val: int) -> list[str]:
    a = write_vqa_fixture(root, layout="grid", dim=8, grid=4, n_train=n_train, n_val=n_val)
    dirs = ",".join(f"'{d}'" for d in a["feature_dirs"])
    return [
        "data=vqa2",
        f"data.train_questions='{a['train_questions']}'",
        f"data.train_annotations='{a['train_annotations']}'",
        f"data.val_questions='{a['val_questions']}'",
        f"data.val_annotations='{a['val_annotations']}'",
        f"data.feature_dirs=[{dirs}]",
        "data.layout=grid",
        "data.min_answer_count=2",
        "data.valid_fraction=0.3",
        "data.batch_size=16",
    ]


@pytest.mark.slow
def test_mcan_learns_vqa2_fixture(tmp_path) -> None:
    """Answers depend on the image features only through colour/count: far above the question-only ~44 %."""
    over = (
        _vqa2_overrides(tmp_path / "vqa", 45, 30)
        + TINY_MCAN
        + QUIET
        + ["optim.lr=3e-3", "trainer.max_epochs=12", "seed=0"]
    )
    cfg = compose_cfg(over, tmp_path)
    result, _ = train(cfg)
    assert result["selection"].startswith("val/vqa_acc")
    assert result["test"]["vqa_acc"] >= 75.0, result["test"]
    assert result["test"]["vqa_acc_yesno"] >= 75.0, result["test"]
    # the official results file of the selected checkpoint scores what the task metric reported
    spec = importlib.util.spec_from_file_location("vqa_results", ROOT / "scripts" / "vqa_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "results.json"
    assert mod.main(["--ckpt", result["best_ckpt"], "--split", "test", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows and set(rows[0]) == {"question_id", "answer"}
    anns = {
        a["question_id"]: a for a in json.loads(Path(cfg.data.val_annotations).read_text())["annotations"]
    }
    official = vqa_accuracy(rows, [anns[r["question_id"]] for r in rows])
    assert official["overall"] == pytest.approx(result["test"]["vqa_acc"], abs=0.006)
    assert official["perAnswerType"]["yes/no"] == pytest.approx(result["test"]["vqa_acc_yesno"], abs=0.006)


@pytest.mark.slow
@pytest.mark.parametrize("reg", ["cont_softmax", "cont_sparsemax", "mca"])
def test_mcan_with_continuous_attention_trains_on_vqa2_fixture(tmp_path, reg) -> None:
    over = (
        _vqa2_overrides(tmp_path / "vqa", 8, 6) + TINY_MCAN + QUIET + [f"reg={reg}", "trainer.max_epochs=1"]
    )
    cfg = compose_cfg(over, tmp_path)
    result, objs = train(cfg)
    net = objs["module"].net
    assert type(net.pools["image"]).__name__ != "AttFlat"  # the plug-in replaced the image-side pool
    assert type(net.pools["question"]).__name__ == "AttFlat"  # the question side stays discrete (thesis)
    assert all(math.isfinite(v) for v in result["test"].values()), result["test"]
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.slow
def test_mcan_learns_easyvqa_subset(tmp_path) -> None:
    """Real easy-VQA, 400 training images: colour questions far above chance (1/8) after a short CPU run."""
    pytest.importorskip("easy_vqa", reason="needs the easy-vqa package (pip install 'mmfusion[vqa]')")
    over = [
        "experiment=easyvqa_mcan",
        "data.max_train_images=400",
        "data.max_test_images=100",
        "data.batch_size=32",
        "trainer.max_epochs=4",
        "optim.scheduler=null",
        "optim.lr=1e-3",
        "seed=0",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "~callbacks.model_summary",
        "~callbacks.early_stopping",
    ]
    cfg = compose_cfg(over, tmp_path)
    result, _ = train(cfg)
    assert result["test"]["vqa_acc_color"] >= 50.0, result["test"]
    assert result["test"]["vqa_acc"] >= 65.0, result["test"]
