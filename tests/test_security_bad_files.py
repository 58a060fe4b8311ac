"""Corrupt input files end in one line and exit 2, never a traceback: the ``data=mosi_utterance`` CSVs (a
non-numeric label, binary garbage, a row cut in half) and a truncated checkpoint (issue 15, item 2)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from mmfusion.data.mosi_utterance import MOSIUtterance
from mmfusion.errors import DataError

from .conftest import SHARED, run_cli

MOSI = SHARED / "mosi"
TEXT = Path("bclstm_utterance_features/text/text_train0.csv")
AUDIO = Path("bclstm_utterance_features/audio/audio_test0.csv")
INDEX = Path("mosi_index.csv")

pytestmark = pytest.mark.skipif(not (MOSI / "mosi_index.csv").is_file(), reason="needs ../shared/data/mosi")


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "mosi"
    shutil.copytree(
        MOSI / "bclstm_utterance_features",
        dst / "bclstm_utterance_features",
        ignore=shutil.ignore_patterns("*.pickle", "text_train.csv", "text_test.csv"),
    )
    shutil.copy(MOSI / "mosi_index.csv", dst / "mosi_index.csv")
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def _non_numeric_label(p: Path) -> str:
    """The label of the 4th data row: the last column of a feature CSV, ``label`` in the index (after its
    header, i.e. line 5)."""
    lines = p.read_text().splitlines()
    if p.name == "mosi_index.csv":
        cells = lines[4].split(",")
        cells[4] = "positive"
        lines[4] = ",".join(cells)
        p.write_text("\n".join(lines) + "\n")
        return r"line 5 \(segment '[^']+'\): label 'positive' is not a finite number"
    cells = lines[3].split(",")
    cells[-1] = '"positive"'
    lines[3] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")
    return rf"row 4, column {len(cells)} \(the label\): 'positive' is not a number"


def _binary_garbage(p: Path) -> str:
    p.write_bytes(bytes(range(128, 256)) * 40)
    return r"not a text CSV \(byte 0 is not UTF-8"


def _row_cut_in_half(p: Path) -> str:
    lines = p.read_text().splitlines()
    k = 10
    n_fields = len(lines[k].split(","))
    lines[k] = ",".join(lines[k].split(",")[: n_fields // 2])
    p.write_text("\n".join(lines) + "\n")
    if p.name == "mosi_index.csv":
        return rf"line {k + 1} has {n_fields // 2} fields, expected {n_fields} \(a row cut short\?\)"
    return rf"expected {n_fields} columns \(features \+ label\), row {k + 1} has {n_fields // 2} \(a row cut short\?\)"


@pytest.mark.parametrize("target", [TEXT, AUDIO, INDEX], ids=["text_csv", "audio_csv", "index"])
@pytest.mark.parametrize("corrupt", [_non_numeric_label, _binary_garbage, _row_cut_in_half])
def test_mosi_utterance_bad_files_are_one_line(tmp_path, target, corrupt):
    root = _copy(tmp_path)
    path = root / target
    expected = corrupt(path)
    with pytest.raises(DataError) as e:
        MOSIUtterance(path=str(root)).setup()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    assert re.search(expected, msg), (expected, msg)


def test_mosi_utterance_file_cut_short_names_the_index(tmp_path):
    root = _copy(tmp_path)
    raw = (root / INDEX).read_bytes()
    (root / INDEX).write_bytes(raw[: raw.rfind(b"\n", 0, len(raw) // 2) + 1])  # whole rows, half of them
    with pytest.raises(DataError, match=rf"{root / INDEX}: no label for bc-LSTM row .*it has \d+ rows"):
        MOSIUtterance(path=str(root)).setup()


def test_cli_bad_csv_and_truncated_checkpoint_exit_2(tmp_path):
    root = _copy(tmp_path)
    _binary_garbage(root / AUDIO)
    proc = run_cli(
        [
            "train.py",
            "data=mosi_utterance",
            f"data.path={root}",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(root / AUDIO) in errors[0], proc.stderr[-2000:]

    ckpt = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "mmfusion_cfg": {}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    proc = run_cli(["train.py", f"ckpt_path={ckpt}", "logger=none", f"hydra.run.dir={tmp_path / 'resume'}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "cut.ckpt: not a readable ckpt_path: truncated" in errors[0], proc.stderr[
        -2000:
    ]
