"""Resume after a kill: a run SIGKILLed mid-epoch and resumed with ``ckpt_path=last`` ends with exactly the
weights (and optimiser state) of an uninterrupted run: data position, RNG (dropout) and optimisers restored."""

from __future__ import annotations

import pytest
import torch

from mmfusion.callbacks.resume import WANDB_ID_FILE, continue_wandb_run, previous_wandb_id
from mmfusion.data.base import ArrayDataset, ResumableDataLoader, SeededShuffleSampler, passthrough_collate
from mmfusion.train import train

from .conftest import run_cli

# 128 / 32 = 4 batches per epoch, 3 epochs = 12 steps; mid-epoch checkpoints every 3 steps
TINY = ["data.n_train=128", "data.n_valid=32", "data.n_test=32", "data.seq_len=10", "data.min_len=3",
        "data.batch_size=32", "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "logger=none",
        "callbacks=resumable", "callbacks.step_checkpoint.every_n_train_steps=3", "~callbacks.model_summary",
        "~callbacks.early_stopping", "model.dropout=0.3", "model.input_dropout=0.2", "seed=11"]


def test_resumable_loader_skips_consumed_batches():
    ds = ArrayDataset({"x": {"a": torch.arange(10.0)[:, None]}, "y": torch.arange(10.0)})
    mk = lambda: ResumableDataLoader(ds, batch_size=3, sampler=SeededShuffleSampler(10, seed=4),  # noqa: E731
                                     collate_fn=passthrough_collate)
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


@pytest.mark.slow
@pytest.mark.parametrize("reg,steps_per_batch", [("none", 1), ("mdm_kl", 2)])
def test_resume_after_kill_equals_uninterrupted(make_cfg, tmp_path, reg, steps_per_batch):
    """``mdm_kl``: the plug-in's critic has its own Adam (one inner step per batch, so Lightning counts two
    optimiser steps per batch), a moving average and random negatives: all must resume exactly too."""
    k = steps_per_batch
    args = [*TINY, f"reg={reg}", f"callbacks.step_checkpoint.every_n_train_steps={3 * k}"]
    # uninterrupted reference, in-process
    cfg = make_cfg(args, fast=False)
    cfg.paths.output_dir = str(tmp_path / "ref")
    ref, _ = train(cfg)
    # killed when batch 8 starts (epoch 1, third batch): the newest checkpoint is after batch 6 (mid-epoch 1)
    run = tmp_path / "killed"
    proc = run_cli(["train.py", *args, f"hydra.run.dir={run}",
                    "+callbacks.preempt._target_=mmfusion.callbacks.resume.SimulatedPreemption",
                    f"+callbacks.preempt.at_step={7 * k}"])
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
