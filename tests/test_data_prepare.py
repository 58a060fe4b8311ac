"""scripts/prepare_data.py: offline instructions, checksum verification, never an implicit download."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _script():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts" / "prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["prepare_data"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_offline_prints_where_files_go(tmp_path, capsys):
    pd = _script()
    pd.network_up = lambda url, timeout=5.0: pytest.fail("--offline must not touch the network")
    assert pd.main(["mosi", "--data-dir", str(tmp_path), "--offline"]) == 2
    out = capsys.readouterr().out
    assert f"{tmp_path}/MOSI/Processed/unaligned_50.pkl" in out and "Google Drive" in out
    assert "data=mosi data.path=" in out
    assert not any(tmp_path.iterdir())  # nothing created


def test_checksums_verified(tmp_path, capsys):
    pd = _script()
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"not mnist")
    assert pd.main(["mnist", "--data-dir", str(tmp_path), "--check"]) & 1
    assert "md5 MISMATCH" in capsys.readouterr().out


@pytest.mark.skipif(
    not (SHARED / "mosi" / "CMU_MOSI_Opinion_Labels.csd").is_file(), reason="needs ../shared/data"
)
def test_real_files_pass_their_checksums(tmp_path, capsys):
    pd = _script()
    (tmp_path / "cmumosi").mkdir()
    shutil.copy(SHARED / "mosi" / "CMU_MOSI_Opinion_Labels.csd", tmp_path / "cmumosi")
    (tmp_path / "urfunny").mkdir()
    for f in ("data_folds.pkl", "humor_label_sdk.pkl"):
        shutil.copy(SHARED / "urfunny" / f, tmp_path / "urfunny")
    pd.main(["mosi_csd", "--data-dir", str(tmp_path), "--check"])
    pd.main(["urfunny", "--data-dir", str(tmp_path), "--check"])
    out = capsys.readouterr().out
    assert out.count("sha256 OK") == 3 and "MISMATCH" not in out
    assert "folds {'train': 10598, 'valid': 2626, 'test': 3290} (as released)" in out
