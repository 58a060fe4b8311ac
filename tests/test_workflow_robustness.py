"""Robustness suite on a tiny trained checkpoint: rows equal eval.corrupt runs, areas by the trapezoid rule,
drop modes defined as documented, outputs written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from mmfusion.errors import ConfigError
from mmfusion.eval import evaluate
from mmfusion.evaluation import corruption
from mmfusion.evaluation.robustness import DropGate, area, conditions, evaluate_suite, load_suite, unk_text
from mmfusion.train import train


def test_conditions_and_area():
    suite = load_suite("default")
    conds = conditions(suite, ("text", "audio", "vision"))
    names = [c["name"] for c in conds]
    assert names[0] == "clean"
    drops = [n for n in names if n.startswith("drop_")]
    assert drops == [
        "drop_text",
        "drop_audio",
        "drop_vision",
        "drop_text+audio",
        "drop_text+vision",
        "drop_audio+vision",
    ]
    assert sum(n.startswith("noise_text:") for n in names) == 9 and "noise_vision:0.9" in names
    assert sum(n.startswith("missing_all:") for n in names) == 9
    # trapezoid rule, and auc_norm of a constant curve is the constant
    x, v = [0.0, 0.1, 0.3, 0.9], [1.0, 0.8, 0.5, 0.2]
    a, an = area(x, v)
    assert a == pytest.approx(0.1 * 0.9 + 0.2 * 0.65 + 0.6 * 0.35)
    assert an == pytest.approx(a / 0.9)
    assert area([0, 0.5, 1.0], [0.7, 0.7, 0.7])[1] == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="unknown suite"):
        load_suite("nope")


def test_drop_gate_and_unk_and_missing_steps():
    h = {"text": torch.ones(4, 3), "audio": torch.full((4, 2), 2.0)}
    gate = DropGate(["text"])
    res = gate(h, {})
    out = res.unimodal
    assert torch.equal(out["text"], torch.zeros(4, 3)) and torch.equal(out["audio"], h["audio"])
    assert torch.equal(res.scales["text"], torch.zeros(4)) and torch.equal(res.scales["audio"], torch.ones(4))
    tok = {
        "input_ids": torch.tensor([[101, 7, 8, 102, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0]]),
        "word_index": torch.tensor([[-1, 0, 1, -1, -1]]),
    }
    assert unk_text({"tokens": tok}, 100)["tokens"]["input_ids"].tolist() == [[101, 100, 100, 102, 0]]
    del tok["word_index"]
    assert unk_text({"tokens": tok}, 100)["tokens"]["input_ids"].tolist() == [[101, 100, 100, 102, 0]]
    # missing steps: whole steps zeroed with the given probability
    x = torch.ones(200, 50, 3)
    b = corruption.apply({"x": {"a": x}}, "missing_all:0.3", ("a",), torch.Generator().manual_seed(0))
    zero_steps = (b["x"]["a"] == 0).all(-1)
    assert ((b["x"]["a"] == 0) == zero_steps[..., None]).all()  # a step is dropped as a whole
    assert abs(zero_steps.float().mean().item() - 0.3) < 0.02


@pytest.mark.slow
def test_suite_on_tiny_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg(["data.n_train=384", "data.n_test=96", "trainer.max_epochs=3", "model.dropout=0.0"])
    cfg.paths.output_dir = str(tmp_path / "train")
    res, _ = train(cfg)
    ckpt = res["best_ckpt"]
    ecfg = make_cfg(
        [f"ckpt_path={ckpt}", "eval.robustness=quick", "trainer.enable_progress_bar=false"],
        fast=False,
        config_name="eval.yaml",
    )
    ecfg.paths.output_dir = str(tmp_path / "robust")
    out = evaluate_suite(ecfg)
    rows = {r["name"]: r["metrics"] for r in out["rows"]}
    # clean row = the checkpoint's test metrics; a drop row = `eval.corrupt=drop_text` through Lightning
    assert rows["clean"]["MAE"] == pytest.approx(res["test"]["MAE"], abs=1e-6)
    ev_cfg = make_cfg([f"ckpt_path={ckpt}"], fast=False, config_name="eval.yaml")
    ev_cfg.trainer.enable_progress_bar = False
    for spec in ("drop_text", "noise_audio:0.6"):
        ev, _ = evaluate(ev_cfg, corrupt=spec)
        assert rows[spec]["MAE"] == pytest.approx(ev["metrics"]["MAE"], abs=1e-6), spec
    # dropping text hurts; noise on text grows the error
    assert rows["drop_text"]["MAE"] > rows["clean"]["MAE"] + 0.05
    c = out["curves"]["noise_text"]
    assert c["levels"] == [0.0, 0.3, 0.6, 0.9]
    assert c["metrics"]["MAE"][-1] > c["metrics"]["MAE"][0]
    assert c["auc"]["MAE"] == pytest.approx(np.trapezoid(c["metrics"]["MAE"], c["levels"]))
    # files
    d = tmp_path / "robust"
    saved = json.loads((d / "robustness.json").read_text())
    assert len(saved["rows"]) == 1 + 6 + 3 * 3 + 3
    with (d / "robustness.csv").open() as f:
        table = list(csv.DictReader(f))
    assert table[0]["name"] == "clean" and float(table[0]["MAE"]) == pytest.approx(rows["clean"]["MAE"])
    assert (d / "robustness_auc.csv").is_file() and (d / "robustness_noise.png").is_file()
    assert (d / "robustness_missing.png").is_file()
    # representation drop: zeroing h_text; differs from zeroing the input, and also hurts
    ecfg.eval.drop_mode = "representation"
    rep = {r["name"]: r["metrics"] for r in evaluate_suite(ecfg)["rows"]}
    assert rep["clean"] == rows["clean"] and rep["noise_text:0.3"] == rows["noise_text:0.3"]
    assert rep["drop_text"]["MAE"] != rows["drop_text"]["MAE"]
    assert rep["drop_text"]["MAE"] > rows["clean"]["MAE"] + 0.05
    ecfg.eval.drop_mode = "unk"
    with pytest.raises(ConfigError, match="BERT"):
        evaluate_suite(ecfg)
