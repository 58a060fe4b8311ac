"""Resume after a kill: a run SIGKILLed mid-epoch and resumed with ``ckpt_path=last`` ends with exactly the
weights (and optimiser state) of an uninterrupted run: data position, RNG (dropout) and optimisers restored."""

from __future__ import annotations

import csv
import hashlib

import pytest
import torch

from mmfusion.callbacks.resume import WANDB_ID_FILE, continue_wandb_run, previous_wandb_id
from mmfusion.data.base import ArrayDataset, ResumableDataLoader, SeededShuffleSampler, passthrough_collate
from mmfusion.train import train

from .conftest import SMALL_DATA, run_cli


@pytest.fixture(autouse=True)
def _one_thread():
    """Bit-equality between an in-process run and a CLI run (``run_cli`` sets OMP_NUM_THREADS=1) needs the same
    thread count: CPU reductions split their work by thread, so 1 and 2 threads differ in the last bits."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# 128 / 32 = 4 batches per epoch, 3 epochs = 12 steps; mid-epoch checkpoints every 3 steps
TINY = [
    "data.n_train=128",
    "data.n_valid=32",
    "data.n_test=32",
    "data.seq_len=10",
    "data.min_len=3",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks=resumable",
    "callbacks.step_checkpoint.every_n_train_steps=3",
    "~callbacks.model_summary",
    "~callbacks.early_stopping",
    "model.dropout=0.3",
    "model.input_dropout=0.2",
    "seed=11",
]


def test_resumable_loader_skips_consumed_batches():
    ds = ArrayDataset({"x": {"a": torch.arange(10.0)[:, None]}, "y": torch.arange(10.0)})

    def mk():
        return ResumableDataLoader(
            ds,
            batch_size=3,
            sampler=SeededShuffleSampler(10, seed=4),  # noqa: E731
            collate_fn=passthrough_collate,
        )

    full = [b["index"].tolist() for b in mk()]
    dl = mk()
    it = iter(dl)
    next(it), next(it)
    state = dl.state_dict()
    assert state == {"batches": 2}
    dl2 = mk()
    dl2.load_state_dict(state)
    assert [b["index"].tolist() for b in dl2] == full[2:]
    assert [b["index"].tolist() for b in dl2] == full  # the skip applies to one iteration only
    dl2.load_state_dict({"batches": len(dl2)})  # saved at the end of an epoch: nothing to skip
    assert [b["index"].tolist() for b in dl2] == full


def _final_state(path):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    return ck["state_dict"], ck["optimizer_states"], ck["global_step"], ck["epoch"]


def _csv_rows(run):
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.reader(f))


def _no_duplicate_checkpoints(ckpt_dir):
    """No two regular files with the same bytes: ``last.ckpt`` is a link when it is the best checkpoint."""
    files = [p for p in ckpt_dir.iterdir() if p.is_file() and not p.is_symlink()]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert len(set(digests)) == len(digests), [p.name for p in files]


@pytest.mark.slow
@pytest.mark.parametrize("reg,steps_per_batch", [("none", 1), ("mdm_kl", 2)])
def test_resume_after_kill_equals_uninterrupted(make_cfg, tmp_path, reg, steps_per_batch):
    """``mdm_kl``: the plug-in's critic has its own Adam (one inner step per batch, so Lightning counts two
    optimiser steps per batch), a moving average and random negatives: all must resume exactly too. The CSV
    log of the killed-and-resumed run has exactly the rows of the uninterrupted one (history kept)."""
    k = steps_per_batch
    args = [
        *TINY,
        f"reg={reg}",
        f"callbacks.step_checkpoint.every_n_train_steps={3 * k}",
        "logger=csv",
        "trainer.log_every_n_steps=1",
    ]
    # uninterrupted reference, in-process
    cfg = make_cfg(args, fast=False)
    cfg.paths.output_dir = str(tmp_path / "ref")
    ref, _ = train(cfg)
    # killed when batch 8 starts (epoch 1, third batch): the newest checkpoint is after batch 6 (mid-epoch 1)
    run = tmp_path / "killed"
    proc = run_cli(
        [
            "train.py",
            *args,
            f"hydra.run.dir={run}",
            "+callbacks.preempt._target_=mmfusion.callbacks.resume.SimulatedPreemption",
            f"+callbacks.preempt.at_step={7 * k}",
        ]
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL: no clean shutdown
    ck = torch.load(run / "checkpoints" / "last-step.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 6 * k and ck["epoch"] == 1  # mid-epoch (epoch 1, 2 of 4 batches done)
    assert len(ck["optimizer_states"]) == (2 if reg == "mdm_kl" else 1)
    assert not (run / "metrics.json").exists()
    # resume in-process from the same folder
    cfg = make_cfg([*args, "ckpt_path=last"], fast=False)
    cfg.paths.output_dir = str(run)
    res, _ = train(cfg)
    sd_ref, opt_ref, step_ref, ep_ref = _final_state(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    sd_res, opt_res, step_res, ep_res = _final_state(run / "checkpoints" / "last.ckpt")
    assert (step_res, ep_res) == (step_ref, ep_ref) == (12 * k, 2)
    assert sd_ref.keys() == sd_res.keys()
    for name in sd_ref:
        assert torch.equal(sd_ref[name], sd_res[name]), name
    assert len(opt_ref) == len(opt_res)
    for a, b in zip(opt_ref, opt_res):
        for pid in a["state"]:
            for name, t in a["state"][pid].items():
                assert torch.equal(torch.as_tensor(t), torch.as_tensor(b["state"][pid][name])), (pid, name)
    assert res["test"] == ref["test"]
    ref_rows, res_rows = _csv_rows(tmp_path / "ref"), _csv_rows(run)
    assert res_rows[0] == ref_rows[0]  # header
    epochs = {r[ref_rows[0].index("epoch")] for r in ref_rows[1:]}
    assert {"0", "1", "2"} <= epochs and len(ref_rows) > 12  # every step and epoch is in the log
    assert res_rows == ref_rows
    for d in (tmp_path / "ref" / "checkpoints", run / "checkpoints"):
        _no_duplicate_checkpoints(d)


def test_wandb_run_id_is_reused_on_resume(tmp_path):
    from omegaconf import OmegaConf

    (tmp_path / WANDB_ID_FILE).write_text("abc123\n")
    ckpt = str(tmp_path / "last.ckpt")
    assert previous_wandb_id(ckpt) == "abc123"
    cfg = OmegaConf.create({"logger": {"wandb": {"_target_": "x", "id": None}}})
    OmegaConf.set_struct(cfg, True)
    continue_wandb_run(cfg, ckpt)
    assert cfg.logger.wandb.id == "abc123" and cfg.logger.wandb.resume == "allow"
    cfg2 = OmegaConf.create({"logger": {"wandb": {"id": "mine"}}})
    continue_wandb_run(cfg2, ckpt)
    assert cfg2.logger.wandb.id == "mine"  # an explicit id wins
    assert previous_wandb_id(str(tmp_path / "nothing" / "last.ckpt")) is None


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_resume_that_changes_the_run_is_refused_and_touches_nothing(tmp_path):
    """``ckpt_path=last`` with another model (or data): one line, exit 2, no file of the run deleted or rewritten
    (csv/metrics.csv and .hydra/config.yaml included)."""
    run = tmp_path / "run"
    base = [
        "train.py",
        *SMALL_DATA,
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "~callbacks.model_summary",
        f"hydra.run.dir={run}",
    ]
    proc = run_cli(base)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "csv" / "metrics.csv").is_file() and (run / ".hydra" / "config.yaml").is_file()
    before = _snapshot(run)
    for change, key in (("model=tfn", "model._target_"), ("data.noise=0.5", "data.noise")):
        proc = run_cli([*base, change, "ckpt_path=last"])
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(
            "error: ckpt_path=last: this config changes the run"
        ), lines
        assert key in lines[0]
        assert _snapshot(run) == before
