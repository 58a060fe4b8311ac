"""EMMA benchmarks (issue 7): inference overhead of the inserted EMMA gate, and DAE pre-training time.

* overhead: forward time (eval, no grad) of a model with the EMMA gate installed divided by the same model's time
  without it, at MOSI sizes (aligned 50 steps; text 300 / audio 74 / vision 47; batch 32). Timings are
  interleaved (A, B, A, B, ...). The target ratio (<= 1.10) is taken on the thread's CPU time (``time.thread_time``,
  robust to other load on a shared machine; run with one thread); wall-clock medians and the gate's own CPU time
  over the base forward time (``gate_share``) are reported too.
* pre-training: wall time to fit the DAEs of all three modalities on MOSI-size training representations
  (1,284 samples; the unimodal sizes of the model; the ``stage=emma_pretrain`` defaults: hidden 2x, 50 epochs,
  batch 128). Target: < 60 s on CPU.

    python -m mmfusion.bench.emma --models ef_lstm,tfn,lfn,mfn --out docs/results/bench_emma.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmfusion.bench.core import environment, random_sentiment_batch
from mmfusion.contract import FusionModel
from mmfusion.data.synthetic import MOSI_DIMS
from mmfusion.emma.attention import AttentionStep
from mmfusion.emma.composition import Composition
from mmfusion.emma.dae import TiedDAE, fit_dae
from mmfusion.emma.gate import EMMAGate
from mmfusion.utils.runtime import CONFIG_DIR, ROOT_DIR

N_TRAIN = 1284


def make_model(name: str) -> FusionModel:
    cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    return instantiate(cfg, input_dims=dict(MOSI_DIMS), output_dim=1).eval()


def make_gate(model: FusionModel, hidden_ratio: float = 2.0) -> EMMAGate:
    mods = tuple(model.modalities)
    daes = {
        m: TiedDAE(d, max(1, int(round(hidden_ratio * d))), seed=i)
        for i, (m, d) in enumerate(model.unimodal_dims.items())
    }
    return EMMAGate(mods, daes, Composition(len(mods), coldness=0.5), AttentionStep(len(mods)))


def overhead(name: str, batch: int, seq_len: int, repeats: int, warmup: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = make_model(name)
    b = random_sentiment_batch(batch, seq_len)
    gate = make_gate(model).eval()

    def fwd(with_gate: bool) -> None:
        model.set_gate(gate if with_gate else None)
        with torch.no_grad():
            model(b)

    for _ in range(warmup):
        fwd(False)
        fwd(True)
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for flag in (False, True):
            t0, c0 = time.perf_counter(), time.thread_time()
            fwd(flag)
            cpu[flag].append((time.thread_time() - c0) * 1e3)
            wall[flag].append((time.perf_counter() - t0) * 1e3)
    gate_cpu = []
    uni = model.encode(b).unimodal
    with torch.no_grad():
        for _ in range(repeats):
            c0 = time.thread_time()
            gate(uni, b)
            gate_cpu.append((time.thread_time() - c0) * 1e3)
    base_c, emma_c = float(np.median(cpu[False])), float(np.median(cpu[True]))
    gate_ms = float(np.median(gate_cpu))
    return {
        "bench": "emma_inference_overhead",
        "model": name,
        "batch": batch,
        "seq_len": seq_len,
        "threads": torch.get_num_threads(),
        "base_cpu_ms": base_c,
        "emma_cpu_ms": emma_c,
        "ratio_cpu": emma_c / base_c,
        "base_wall_ms": float(np.median(wall[False])),
        "emma_wall_ms": float(np.median(wall[True])),
        "ratio_wall": float(np.median(wall[True])) / float(np.median(wall[False])),
        "gate_only_cpu_ms": gate_ms,
        "gate_share": gate_ms / base_c,
        "target_ratio": 1.10,
        "meets_target": emma_c / base_c <= 1.10,
        "unimodal_dims": dict(model.unimodal_dims),
        "repeats": repeats,
    }


def pretrain_time(name: str, epochs: int, seed: int = 0) -> dict[str, Any]:
    model = make_model(name)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    per = {}
    for m, d in model.unimodal_dims.items():
        x = torch.randn(N_TRAIN, d, generator=g)
        _, rep = fit_dae(x, 2 * d, 0.3, epochs=epochs, batch_size=128, lr=3e-3, seed=seed)
        per[m] = rep.seconds
    total = time.perf_counter() - t0
    return {
        "bench": "emma_dae_pretrain",
        "model": name,
        "n_train": N_TRAIN,
        "epochs": epochs,
        "unimodal_dims": dict(model.unimodal_dims),
        "seconds_per_modality": per,
        "seconds_total": total,
        "target_seconds": 60.0,
        "meets_target": total < 60.0,
    }


def run(args: argparse.Namespace) -> list[dict]:
    models = [m for m in str(getattr(args, "models", "ef_lstm,tfn,lfn,mfn")).split(",") if m]
    rows = []
    for name in models:
        rows.append(
            overhead(
                name,
                int(getattr(args, "batch", 32)),
                int(getattr(args, "seq_len", 50)),
                int(getattr(args, "repeats", 30)),
                int(getattr(args, "warmup", 5)),
            )
        )
        rows.append(pretrain_time(name, int(getattr(args, "epochs", 50))))
    env = environment()
    for r in rows:
        r["env"] = env
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ef_lstm,tfn,lfn,mfn")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", dest="seq_len", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT_DIR / "docs/results/bench_emma.json"))
    args = ap.parse_args(argv)
    rows = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        if r["bench"] == "emma_inference_overhead":
            print(
                f"{r['model']:8s} forward {r['base_cpu_ms']:.2f} -> {r['emma_cpu_ms']:.2f} CPU-ms with EMMA "
                f"(x{r['ratio_cpu']:.3f}; wall x{r['ratio_wall']:.3f}; gate alone {r['gate_only_cpu_ms']:.3f} ms "
                f"= {100 * r['gate_share']:.2f}%)"
            )
        else:
            print(f"{r['model']:8s} DAE pre-training {r['seconds_total']:.1f} s for {r['n_train']} samples")


if __name__ == "__main__":
    main()
