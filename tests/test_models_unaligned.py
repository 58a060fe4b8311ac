"""Every sentiment model on unaligned data (an MMSA ``unaligned_50.pkl``-layout file: text, audio and vision with
different T and per-sample ``*_lengths``): it trains and learns (``accepts_unaligned = True``: TFN, LFN, MulT) or
it refuses at start, before the model is built, with one line naming the model and what to use instead
(``accepts_unaligned = False``: EF-LSTM, MFN, MAG-BERT; exit status 2 from the command line)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from mmfusion.build import build_datamodule, time_steps
from mmfusion.errors import ConfigError
from mmfusion.train import train
from mmfusion.utils.runtime import compose_train_cfg

ROOT = Path(__file__).resolve().parents[1]
T = {"text": 10, "audio": 24, "vision": 30}
DIMS = {"text": 16, "audio": 5, "vision": 20}  # data=mosi's feature_dims for audio/vision
N = {"train": 192, "valid": 48, "test": 96}
QUIET = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "~callbacks.model_summary",
    "callbacks.early_stopping.patience=100",
]
ACCEPT = {
    "tfn": [
        "model.hidden=8",
        "model.text_hidden=16",
        "model.text_out=8",
        "model.post_fusion_dim=16",
        "model.dropout=0.0",
        "model.post_fusion_dropout=0.0",
        "optim.lr=3e-3",
    ],
    "lfn": [
        "model.hidden=8",
        "model.text_hidden=16",
        "model.text_out=8",
        "model.dropout=0.0",
        "optim.lr=3e-3",
    ],
    "mult": [
        "model.d_model=8",
        "model.heads=2",
        "model.layers=1",
        "model.kernel_size=3",
        "model.input_dropout={text:0.0}",
        "model.embed_dropout=0.0",
        "model.output_dropout=0.0",
        "optim.lr=3e-3",
    ],
}
REFUSE = {"ef_lstm": "EFLSTM", "mfn": "MFN", "magbert": "MAGBERT"}


def write_unaligned(path: Path, seed: int = 0) -> None:
    """MMSA unaligned layout (thuiar/MMSA README section 2): right-padded sequences, ``audio_lengths`` /
    ``vision_lengths``, ``text_bert`` [ids, mask, segments]. Each sample has a sentiment ``s``; every modality's
    frames carry it (``s w_m`` plus frame noise), and ``y = clip(1.5 s, -3, 3)``."""
    rng = np.random.default_rng(seed)
    w = {m: rng.normal(size=d) / np.sqrt(d) * 3.0 for m, d in DIMS.items()}
    data = {}
    for split, n in N.items():
        s = rng.normal(size=n)
        lens = {m: rng.integers(max(2, T[m] // 3), T[m] + 1, n) for m in T}
        arrays = {}
        for m in T:
            a = np.zeros((n, T[m], DIMS[m]), np.float32)
            for i in range(n):
                a[i, : lens[m][i]] = s[i] * w[m] + rng.normal(scale=1.0, size=(lens[m][i], DIMS[m]))
            arrays[m] = a
        tb = np.zeros((n, 3, T["text"]), np.float32)
        for i in range(n):
            tb[i, 0, : lens["text"][i]] = rng.integers(1000, 20000, lens["text"][i])
            tb[i, 0, 0] = 101
            tb[i, 1, : lens["text"][i]] = 1
        y = np.clip(1.5 * s, -3, 3).astype(np.float32)
        data[split] = {
            "raw_text": np.array([f"utterance {i}" for i in range(n)]),
            "text": arrays["text"],
            "text_bert": tb,
            "audio": arrays["audio"],
            "vision": arrays["vision"],
            "audio_lengths": lens["audio"].tolist(),
            "vision_lengths": lens["vision"].tolist(),
            "regression_labels": y,
            "classification_labels": (y > 0).astype(np.float32),
            "annotations": np.array(["Positive" if v > 0 else "Negative" for v in y]),
            "id": [f"{split}vid{i // 4}$_${i % 4}" for i in range(n)],
        }
    with open(path, "wb") as f:
        pickle.dump(data, f)


@pytest.fixture(scope="module")
def unaligned(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("mmsa") / "unaligned_50.pkl"
    write_unaligned(p)
    return p


def _cfg(path: Path, model: str, tmp: Path, extra: list[str]):
    return compose_train_cfg(["data=mosi", f"data.path={path}", f"model={model}", *QUIET, *extra], tmp)


def test_fixture_is_unaligned(unaligned: Path, tmp_path: Path) -> None:
    dm = build_datamodule(_cfg(unaligned, "mult", tmp_path, []))
    GlobalHydra.instance().clear()
    assert time_steps(dm) == T
    lens = dm.splits["train"].tensors["lengths"]
    assert all(int(lens[m].max()) <= T[m] and int(lens[m].min()) < T[m] for m in T)


@pytest.mark.parametrize("model", sorted(ACCEPT))
def test_models_that_accept_unaligned_input_learn(model: str, unaligned: Path, tmp_path: Path) -> None:
    cfg = _cfg(unaligned, model, tmp_path, ["trainer.max_epochs=8", "data.batch_size=32", *ACCEPT[model]])
    try:
        result, objs = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert objs["module"].net.accepts_unaligned
    dm = objs["datamodule"]
    y_train = dm.splits["train"].tensors["y"].numpy()
    y_test = dm.splits["test"].tensors["y"].numpy()
    mean_mae = float(np.abs(y_test - y_train.mean()).mean())
    assert result["test"]["MAE"] < 0.7 * mean_mae, (result["test"], mean_mae)
    assert result["test"]["Corr"] > 0.6, result["test"]


@pytest.mark.parametrize("model", sorted(REFUSE))
def test_models_that_need_aligned_input_refuse_before_they_are_built(
    model: str, unaligned: Path, tmp_path: Path, monkeypatch
) -> None:
    import importlib

    cls = getattr(importlib.import_module(f"mmfusion.models.{model}"), REFUSE[model])
    assert cls.accepts_unaligned is False

    def never(*_a, **_k):
        raise AssertionError(f"{model} was built although its input is unaligned")

    monkeypatch.setattr(cls, "__init__", never)
    extra = ["data.text=tokens"] if model == "magbert" else []
    with pytest.raises(ConfigError) as e:
        try:
            train(_cfg(unaligned, model, tmp_path, ["trainer.max_epochs=1", *extra]))
        finally:
            GlobalHydra.instance().clear()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"model={model} ({REFUSE[model]}) needs word-aligned input")
    assert "audio: 24, vision: 30" in msg and str(unaligned) in msg
    assert "aligned_50.pkl" in msg and "model=mult" in msg


def test_refusal_is_one_line_and_exit_2_from_the_command_line(unaligned: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "train.py",
            "data=mosi",
            f"data.path={unaligned}",
            "model=mfn",
            "logger=none",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [ln for ln in r.stderr.splitlines() if "Traceback" in ln or ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: model=mfn (MFN) needs word-aligned input")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("model", ["ef_lstm", "mfn"])
def test_aligned_input_is_not_refused(model: str, tmp_path: Path) -> None:
    """The same models on the word-aligned MMSA layout (one T for every modality) train."""
    try:
        from .data_fixtures import write_mmsa
    except ImportError:  # tests/ is not a package
        from data_fixtures import write_mmsa

    write_mmsa(tmp_path / "aligned_50.pkl", aligned=True)
    try:
        result, objs = train(
            _cfg(
                tmp_path / "aligned_50.pkl",
                model,
                tmp_path / "run",
                ["trainer.max_epochs=1", "data.batch_size=4"],
            )
        )
    finally:
        GlobalHydra.instance().clear()
    assert len(set(time_steps(objs["datamodule"]).values())) == 1
    assert np.isfinite(result["test"]["MAE"])
