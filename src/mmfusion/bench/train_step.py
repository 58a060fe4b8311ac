"""Time one full training step (forward + plug-ins + backward + optimisers) of any model x plug-in combination,
built from the real configs exactly as ``train.py`` builds it (``FusionModule.optimization_step``)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from lightning.pytorch.utilities import move_data_to_device
from omegaconf import open_dict

from mmfusion.bench.core import peak_memory_mb, reset_peak, time_fn
from mmfusion.build import build_datamodule, build_module
from mmfusion.utils.runtime import compose_train_cfg

# sequence length and feature sizes of the common releases (MulT/CMU aligned GloVe and MMSA BERT variants)
SHAPES: dict[str, dict[str, Any]] = {
    "mosi": {"seq_len": 50, "dims": {"text": 300, "audio": 74, "vision": 47}},
    "mosei": {"seq_len": 50, "dims": {"text": 300, "audio": 74, "vision": 35}},
    "mosi_bert": {"seq_len": 50, "dims": {"text": 768, "audio": 5, "vision": 20}},
    "mosei_bert": {"seq_len": 50, "dims": {"text": 768, "audio": 74, "vision": 35}},
}


def build_step(
    model: str,
    regs: list[str],
    shape: str,
    batch_size: int,
    device: str = "cpu",
    extra: list[str] | None = None,
):
    """(module, batch, optimisers) for a model x plug-ins at a named shape, on synthetic data of that shape."""
    sh = SHAPES[shape]
    dims = ",".join(f"{k}:{v}" for k, v in sh["dims"].items())
    reg = f"reg=[{','.join(regs)}]" if regs else "reg=none"
    overrides = [
        f"model={model}",
        reg,
        "data=synthetic",
        f"data.n_train={batch_size}",
        "data.n_valid=8",
        "data.n_test=8",
        f"data.seq_len={sh['seq_len']}",
        f"data.min_len={sh['seq_len']}",
        f"data.dims={{{dims}}}",
        f"data.batch_size={batch_size}",
        "optim.scheduler=null",
        "logger=none",
        *(extra or []),
    ]
    cfg = compose_train_cfg(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/mmfusion-bench"
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm).to(device)
    module.train()
    opts, _ = module.configure_optimizers()
    batch = move_data_to_device(dm.splits["train"].__getitems__(list(range(batch_size))), device)
    return module, batch, opts


def time_train_step(
    module,
    batch,
    opts,
    *,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    def step() -> None:
        ctx = (
            torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)
            if amp_dtype
            else contextlib.nullcontext()
        )
        with ctx:
            module.optimization_step(batch, opts, lambda loss: loss.backward())

    reset_peak(device)
    t = time_fn(step, warmup=warmup, repeats=repeats, device=device)
    bs = int(batch["y"].shape[0])
    return {
        **t,
        "batch_size": bs,
        "samples_per_s": bs / (t["median_ms"] / 1e3),
        "peak_mem_mb": peak_memory_mb(device),
    }


def run(args) -> list[dict[str, Any]]:
    """Suite ``core``: every --models x --regs at every --shapes x --batch-sizes."""
    rows = []
    for shape in args.shapes:
        for bs in args.batch_sizes:
            for model in args.models:
                for reg in args.regs:
                    regs = [] if reg == "none" else reg.split("+")
                    module, batch, opts = build_step(model, regs, shape, bs, args.device)
                    r = time_train_step(
                        module, batch, opts, device=args.device, warmup=args.warmup, repeats=args.repeats
                    )
                    rows.append({"suite": "core", "model": model, "reg": reg, "shape": shape, **r})
                    print(
                        f"core {model:8s} reg={reg:16s} {shape:10s} bs={bs:3d} {r['median_ms']:8.1f} ms "
                        f"{r['samples_per_s']:8.0f} samples/s"
                    )
    return rows
