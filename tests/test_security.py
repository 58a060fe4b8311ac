"""Reading a dataset file or a checkpoint never runs code from it (docs/security.md).

Every hostile file here carries a payload that creates a marker file when unpickled; ``test_payloads_are_live``
shows that an unrestricted load does create it, so "the marker does not exist" is a real check. Each reader and
each checkpoint entry point must refuse the file with one line (naming the file and the refused global), exit 2
through the CLI error path, and leave no marker.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    from .data_fixtures import (
        ExecPayload,
        MarkerPayload,
        inject_payload,
        numpy1_names,
        py2_pickle_bytes,
        write_mmsa,
        write_mult,
        write_urfunny,
    )
except ImportError:  # tests/ is not a package
    from data_fixtures import (
        ExecPayload,
        MarkerPayload,
        inject_payload,
        numpy1_names,
        py2_pickle_bytes,
        write_mmsa,
        write_mult,
        write_urfunny,
    )

from mmfusion.data.mosi_pickle import MosiPickleDataModule
from mmfusion.data.urfunny import FILES as URFUNNY_FILES
from mmfusion.data.urfunny import UrFunnyDataModule
from mmfusion.errors import DataError
from mmfusion.utils.safe_load import ALLOWED_GLOBALS, check_checkpoint, load_checkpoint, load_data_pickle

from .conftest import SHARED, run_cli

SYSTEM = f"{os.system.__module__}.system"  # posix.system: what MarkerPayload's pickle names


def _deep_equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            type(a) is type(b)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and (
                np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
                if a.dtype != object
                else all(_deep_equal(x, y) for x, y in zip(a.ravel(), b.ravel()))
            )
        )
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or (a != a and b != b))


def _assert_refused(msg: str, path: Path, marker: Path, global_name: str | None = None) -> None:
    assert not marker.exists(), "code from the file ran"
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    if global_name:
        assert global_name in msg, msg


# --------------------------------------------------------------------------------------------------------------
# controls: the payloads do run under an unrestricted load


def test_payloads_are_live(tmp_path):
    for kind in (MarkerPayload, ExecPayload):
        marker = tmp_path / f"{kind.__name__}.marker"
        pickle.loads(pickle.dumps({"train": kind(marker)}))
        assert marker.exists()
    marker = tmp_path / "ckpt.marker"
    torch.save({"state_dict": {}, "x": MarkerPayload(marker)}, tmp_path / "evil.ckpt")
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------------------------------------------
# what the released formats contain still loads, identically


def _fixture_files(root: Path) -> list[Path]:
    (root / "u").mkdir(), (root / "a").mkdir(), (root / "m").mkdir(), (root / "f").mkdir()
    write_mmsa(root / "u" / "unaligned_50.pkl")
    write_mmsa(root / "a" / "aligned_50.pkl", aligned=True)
    write_mult(root / "m" / "mosi_data_noalign.pkl")
    write_urfunny(root / "f")
    return [
        root / "u" / "unaligned_50.pkl",
        root / "a" / "aligned_50.pkl",
        root / "m" / "mosi_data_noalign.pkl",
        *[root / "f" / n for n in URFUNNY_FILES.values()],
    ]


def test_every_fixture_format_loads_identically(tmp_path):
    """MMSA aligned/unaligned, MulT, the six UR-FUNNY pickles; each also as protocol 0/2/5, with numpy 1.x
    names, and as a Python-2 pickle (8-bit strings, read again as latin1)."""
    files = _fixture_files(tmp_path)
    assert len(files) == 9
    for p in files:
        with open(p, "rb") as f:
            want = pickle.load(f)
        assert _deep_equal(load_data_pickle(p), want), p
        for proto in (0, 2, 5):
            q = p.with_suffix(f".p{proto}")
            q.write_bytes(pickle.dumps(want, protocol=proto))
            assert _deep_equal(load_data_pickle(q), want), (p, proto)
        q = p.with_suffix(".np1")
        q.write_bytes(numpy1_names(pickle.dumps(want, protocol=2)))
        assert b"numpy._core" not in q.read_bytes()
        assert _deep_equal(load_data_pickle(q), want), (p, "numpy1")
        q = p.with_suffix(".py2")
        q.write_bytes(py2_pickle_bytes(want))
        assert b"numpy._core" not in q.read_bytes() and b"builtins" not in q.read_bytes()
        assert _deep_equal(load_data_pickle(q), pickle.loads(q.read_bytes(), encoding="latin1")), (p, "py2")


def test_python2_fixture_reads_like_the_python3_one(tmp_path):
    """The MMSA reader on a Python-2 pickle yields the same tensors as on the Python-3 file."""
    write_mmsa(tmp_path / "u.pkl")
    with open(tmp_path / "u.pkl", "rb") as f:
        (tmp_path / "u2.pkl").write_bytes(py2_pickle_bytes(pickle.load(f)))
    with pytest.raises(UnicodeDecodeError):  # a true Python-2 pickle: its 8-bit strings decode only as latin1
        pickle.loads((tmp_path / "u2.pkl").read_bytes())
    a = MosiPickleDataModule(path=str(tmp_path / "u.pkl"), batch_size=4)
    b = MosiPickleDataModule(path=str(tmp_path / "u2.pkl"), batch_size=4)
    a.setup(), b.setup()
    for s in ("train", "valid", "test"):
        ta, tb = a.splits[s].tensors, b.splits[s].tensors
        assert a.ids[s] == b.ids[s]
        for m in ta["x"]:
            assert torch.equal(ta["x"][m], tb["x"][m]) and torch.equal(ta["lengths"][m], tb["lengths"][m])
        assert torch.equal(ta["y"], tb["y"])


@pytest.mark.parametrize(
    "rel",
    [
        "mosi/bclstm_utterance_features/audio_contextual_padded.pickle",
        "urfunny/humor_label_sdk.pkl",
        "urfunny/data_folds.pkl",
    ],
)
def test_real_shared_pickles_load_identically(rel):
    p = SHARED / rel
    assert p.is_file(), f"{p} missing: ../shared/data is laid beside every checkout and CI run"
    with open(p, "rb") as f:
        try:
            want = pickle.load(f)
        except UnicodeDecodeError:  # the Python-2 file
            f.seek(0)
            want = pickle.load(f, encoding="latin1")
    assert _deep_equal(load_data_pickle(p), want)


def test_allowed_globals_are_the_documented_list():
    assert set(ALLOWED_GLOBALS) == {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("builtins", "bytes"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }
    # the numpy entries resolve to what the running numpy pickles with (1.x and 2.x names alike)
    assert ALLOWED_GLOBALS[("numpy.core.multiarray", "_reconstruct")] is np.zeros(1).__reduce__()[0]


def test_codecs_encode_only_latin1(tmp_path):
    p = tmp_path / "rot.pkl"
    p.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError, match=r"rot\.pkl: not a readable pickle .*only latin-1"):
        load_data_pickle(p)


# --------------------------------------------------------------------------------------------------------------
# every reader refuses a hostile pickle


def _evil_copy(src: Path, dst: Path, payload, *keys, py2: bool = False, proto: int = 4) -> None:
    with open(src, "rb") as f:
        obj = pickle.load(f)  # trusted: written by the test
    node = obj
    for k in keys[:-1]:
        node = node[k]
    if keys:
        node[keys[-1]] = payload
    else:
        obj = payload
    dst.write_bytes(py2_pickle_bytes(obj) if py2 else pickle.dumps(obj, protocol=proto))


@pytest.mark.parametrize(
    "layout,keys,kind,py2,proto",
    [
        ("mmsa_unaligned", ("train", "audio"), MarkerPayload, False, 4),
        ("mmsa_aligned", ("valid", "text"), ExecPayload, False, 5),
        ("mmsa_unaligned", (), MarkerPayload, False, 0),  # the whole file is the payload
        ("mult", ("test", "labels"), MarkerPayload, False, 2),
        ("mult", ("train", "vision"), ExecPayload, True, 2),  # a Python-2 pickle (__builtin__.exec)
    ],
)
def test_mosi_pickle_reader_refuses(tmp_path, layout, keys, kind, py2, proto):
    src = tmp_path / "clean.pkl"
    (write_mult if layout == "mult" else write_mmsa)(
        src, **({"aligned": True} if layout == "mmsa_aligned" else {})
    )
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.pkl"
    _evil_copy(src, evil, kind(marker), *keys, py2=py2, proto=proto)
    with pytest.raises(DataError) as e:
        MosiPickleDataModule(path=str(evil), batch_size=4).setup()
    glob = (
        "__builtin__.exec"
        if py2 and kind is ExecPayload
        else ("builtins.exec" if kind is ExecPayload else SYSTEM)
    )
    _assert_refused(str(e.value), evil, marker, glob)
    assert "refused to load" in str(e.value)


@pytest.mark.parametrize("which", list(URFUNNY_FILES))
def test_urfunny_reader_refuses_each_of_the_six_pickles(tmp_path, which):
    write_urfunny(tmp_path)
    p = tmp_path / URFUNNY_FILES[which]
    marker = tmp_path / "PWNED"
    with open(p, "rb") as f:
        obj = pickle.load(f)
    if isinstance(obj, dict):
        obj[next(iter(obj))] = MarkerPayload(marker)
    else:
        obj[0] = MarkerPayload(marker)
    p.write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError) as e:
        UrFunnyDataModule(path=str(tmp_path)).setup()
    _assert_refused(str(e.value), p, marker, SYSTEM)


def test_csd_sdk_folds_file_is_never_executed(tmp_path):
    """The CMU SDK's ``cmu_mosi_std_folds.py`` is read with ``ast``; code in it does not run."""
    from mmfusion.data.csd import load_folds

    marker = tmp_path / "PWNED"
    p = tmp_path / "cmu_mosi_std_folds.py"
    p.write_text(
        f"import os\nos.system('touch {marker}')\nstandard_train_fold = ['a']\n"
        "standard_valid_fold = ['b']\nstandard_test_fold = [__import__('os').getcwd()]\n"
    )
    with pytest.raises(ValueError):  # a non-literal list is not evaluated
        load_folds(str(p))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------------
# checkpoints


def _evil_ckpt(path: Path, marker: Path, legacy: bool = False) -> Path:
    torch.save(
        {"state_dict": {}, "mmfusion_cfg": {}, "x": MarkerPayload(marker)},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_load_checkpoint_refuses_hostile_and_unknown_types(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    evil = _evil_ckpt(tmp_path / "evil.ckpt", marker, legacy)
    for fn in (load_checkpoint, check_checkpoint):
        with pytest.raises(DataError) as e:
            fn(evil)
        _assert_refused(str(e.value), evil, marker, SYSTEM)
    # a checkpoint that needs more than plain types (here argparse.Namespace, numpy arrays) is refused too
    import argparse

    more = tmp_path / "more.ckpt"
    torch.save({"state_dict": {}, "hparams": argparse.Namespace(lr=1.0), "arr": np.zeros(2)}, more)
    with pytest.raises(DataError, match=r"more\.ckpt: refused to load .*argparse\.Namespace") as e:
        load_checkpoint(more)
    assert "\n" not in str(e.value)


def test_truncated_and_garbage_checkpoints_are_one_line(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}, "mmfusion_cfg": {"a": 1}}, good)
    assert torch.equal(load_checkpoint(good)["state_dict"]["w"], torch.arange(1000.0))
    raw = good.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(raw[: len(raw) // 2])
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(bytes(range(256)) * 4)
    for p, what in ((cut, "truncated"), (junk, "corrupt")):
        with pytest.raises(DataError, match=rf"{p.name}: not a readable ckpt_path: {what}") as e:
            load_checkpoint(p, "ckpt_path")
        assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_our_checkpoints_need_no_extra_globals(make_cfg, tmp_path):
    """A real training checkpoint (mid-epoch resume callbacks included) and EMMA's DAE file load with
    ``weights_only=True`` as they are; so do the ``read_checkpoint`` of eval.py and EMMA's ``load_daes``."""
    from omegaconf import open_dict

    from mmfusion.emma.dae import fit_dae
    from mmfusion.emma.store import load_daes, save_daes
    from mmfusion.evaluation.checkpoints import read_checkpoint
    from mmfusion.train import train

    cfg = make_cfg(
        [
            "trainer.max_epochs=1",
            "data.n_train=64",
            "data.n_valid=32",
            "data.n_test=32",
            "callbacks=resumable",
            "reg=mdm_kl",
            "test=false",
        ]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    train(cfg)
    ckpts = sorted((tmp_path / "run").glob("**/*.ckpt"))
    assert ckpts
    for c in ckpts:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(c)) == [], c
        assert "mmfusion_cfg" in read_checkpoint(c)[0]
    x = torch.randn(40, 6)
    dae, rep = fit_dae(x, 4, 0.1, epochs=1, batch_size=20)
    fit = {
        "t": {
            "hidden": 4,
            "dim": 6,
            "train_loss": rep.train_loss,
            "val_loss": rep.val_loss,
            "seconds": rep.seconds,
        }
    }
    save_daes(tmp_path / "dae.pt", {"t": dae}, {"t": x}, fit)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "dae.pt")) == []
    daes, blob = load_daes(tmp_path / "dae.pt", ("t",), {"t": 6})
    got, want = daes["t"].state_dict(), dae.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert blob["fit"] == fit


# --------------------------------------------------------------------------------------------------------------
# the entry points: exit 2, one line, nothing executed


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def _in_process(cfg, capsys) -> str:
    """``train(cfg)`` through the CLI's error path (runtime.task_wrapper): the printed line, after exit 2."""
    from mmfusion.train import train
    from mmfusion.utils import runtime

    with pytest.raises(SystemExit) as e, runtime.task_wrapper(cfg):
        train(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_train_refuses_hostile_data_pickle(tmp_path):
    src, evil, marker = tmp_path / "clean.pkl", tmp_path / "evil.pkl", tmp_path / "PWNED"
    write_mmsa(src)
    _evil_copy(src, evil, MarkerPayload(marker), "train", "vision")
    proc = run_cli(
        [
            "train.py",
            "data=mosi",
            f"data.path={evil}",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
            "trainer.max_epochs=1",
        ]
    )
    _assert_refused(_one_error_line(proc), evil, marker, SYSTEM)


def test_cli_eval_refuses_hostile_and_truncated_checkpoints(tmp_path):
    marker = tmp_path / "PWNED"
    evil = _evil_ckpt(tmp_path / "evil.ckpt", marker)
    proc = run_cli(["eval.py", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'e1'}"])
    _assert_refused(_one_error_line(proc), evil, marker, SYSTEM)
    raw = evil.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(raw[: len(raw) // 2])
    proc = run_cli(["eval.py", f"ckpt_path={cut}", f"hydra.run.dir={tmp_path / 'e2'}"])
    assert "truncated" in _one_error_line(proc)


def test_eval_refuses_in_process(make_cfg, tmp_path, capsys):
    """eval.py's ``evaluate`` through the CLI error path: hostile and truncated checkpoints, one line, exit 2."""
    from mmfusion.eval import evaluate
    from mmfusion.utils import runtime

    marker = tmp_path / "PWNED"
    evil = _evil_ckpt(tmp_path / "evil.ckpt", marker)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(evil.read_bytes()[:300])
    for path, expected in ((evil, SYSTEM), (cut, "truncated")):
        cfg = make_cfg([f"ckpt_path={path}"], fast=False, config_name="eval.yaml")
        with pytest.raises(SystemExit) as e, runtime.task_wrapper(cfg):
            evaluate(cfg)
        assert e.value.code == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1
        _assert_refused(lines[0], path, marker, expected)


def test_urfunny_and_resume_refuse_in_process(make_cfg, tmp_path, capsys):
    """data=urfunny with a hostile pickle; ``ckpt_path=`` (resume) with a hostile and a truncated checkpoint:
    refused before data or model are built."""
    (tmp_path / "uf").mkdir()
    write_urfunny(tmp_path / "uf")
    marker = tmp_path / "PWNED"
    inject_payload(tmp_path / "uf" / "language_sdk.pkl", MarkerPayload(marker))
    cfg = make_cfg(["data=urfunny", f"data.path={tmp_path / 'uf'}", "logger=none"], fast=False)
    _assert_refused(_in_process(cfg, capsys), tmp_path / "uf" / "language_sdk.pkl", marker, SYSTEM)

    evil = _evil_ckpt(tmp_path / "evil.ckpt", marker)
    cfg = make_cfg([f"ckpt_path={evil}"])
    _assert_refused(_in_process(cfg, capsys), evil, marker, SYSTEM)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(evil.read_bytes()[:300])
    cfg = make_cfg([f"ckpt_path={cut}"])
    assert "truncated" in _in_process(cfg, capsys)


def test_emma_stages_refuse_hostile_files(make_cfg, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = _evil_ckpt(tmp_path / "evil.ckpt", marker)
    cfg = make_cfg(["stage=emma_pretrain", f"stage.base_ckpt={evil}"])
    _assert_refused(_in_process(cfg, capsys), evil, marker, SYSTEM)
    cfg = make_cfg(["reg=emma", "stage=emma_finetune", f"stage.base_ckpt={evil}", f"stage.dae_path={evil}"])
    _assert_refused(_in_process(cfg, capsys), evil, marker, SYSTEM)
    # a clean baseline checkpoint, a hostile DAE file
    base = tmp_path / "base.ckpt"
    torch.save({"state_dict": {}}, base)
    cfg = make_cfg(["reg=emma", "stage=emma_finetune", f"stage.base_ckpt={base}", f"stage.dae_path={evil}"])
    _assert_refused(_in_process(cfg, capsys), evil, marker, SYSTEM)
    # and where the reg=emma plug-in itself loads the DAE file (emma/store.py)
    cfg = make_cfg(["reg=emma", f"reg.emma.dae_path={evil}"])
    _assert_refused(_in_process(cfg, capsys), evil, marker, SYSTEM)
