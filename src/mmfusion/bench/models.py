"""Training-step throughput and peak memory of every fusion model at the real MOSI / MOSEI shapes.

Shapes: MMSA ``aligned_50`` (T = 50 word-aligned steps; text = 768-d BERT features, audio 5 / 74, vision 20 / 35
for MOSI / MOSEI); MAG-BERT gets 50 word pieces instead of text features. Sizes: MMSA's per-dataset defaults
(notes §1). One step = forward + L1 loss + backward + AdamW step; samples/s = batch / median step time. Peak
memory: each configuration runs in a fresh subprocess; ``peak_rss_mb`` is its peak resident set, and
``step_rss_mb`` the growth caused by the training steps (CUDA: peak allocated). With CUDA, a bf16-autocast row is
added. Side by side (steps interleaved in one process, so machine-load drift hits both): the MMSA implementations of
TFN (``torch.bmm`` fusion) and MFN (``LSTMCell`` loop with every network evaluated per step); MFN's step time
against the sequence length (linear fit, R^2).

    python -m mmfusion.bench.models --out docs/results/bench_models.json   (or scripts/benchmark.py --suite models)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.bench.core import device_sync, environment, peak_memory_mb, reset_peak, time_fn

SHAPES = {"mosi": {"text": 768, "audio": 5, "vision": 20}, "mosei": {"text": 768, "audio": 74, "vision": 35}}
SEQ_LEN = 50

# MMSA config_regression.json per-dataset values (notes §1.1-1.4); MAG-BERT: released code (MiniLM offline).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tfn": {
        "mosi": dict(hidden={"audio": 32, "vision": 128}, text_hidden=128, text_out=32, post_fusion_dim=64,
                     dropout=0.3, post_fusion_dropout=0.5),
        "mosei": dict(hidden={"audio": 16, "vision": 128}, text_hidden=128, text_out=128, post_fusion_dim=16,
                      dropout=0.4, post_fusion_dropout=0.4),
    },
    "lfn": {
        "mosi": dict(hidden={"audio": 16, "vision": 128}, text_hidden=128, text_out=64, rank=3, fusion_dim=None,
                     dropout=0.3),
        "mosei": dict(hidden={"audio": 16, "vision": 128}, text_hidden=128, text_out=64, rank=4, fusion_dim=None,
                      dropout=0.2),
    },
    "mfn": {
        "mosi": dict(hidden={"text": 256, "audio": 32, "vision": 256}, mem_dim=400, attn_hidden=32, attn_dropout=0.2,
                     mem_hidden=64, mem_dropout=0.0, gamma1_hidden=256, gamma1_dropout=0.7, gamma2_hidden=32,
                     gamma2_dropout=0.5, out_hidden=128, out_dropout=0.0),
        "mosei": dict(hidden={"text": 128, "audio": 32, "vision": 128}, mem_dim=128, attn_hidden=128,
                      attn_dropout=0.2, mem_hidden=128, mem_dropout=0.5, gamma1_hidden=256, gamma1_dropout=0.7,
                      gamma2_hidden=256, gamma2_dropout=0.0, out_hidden=128, out_dropout=0.5),
    },
    "ef_lstm": {"mosi": dict(hidden=128, proj_dim=64, dropout=0.5), "mosei": dict(hidden=256, proj_dim=64, dropout=0.4)},
    "magbert": {"mosi": dict(mag_dropout=0.3), "mosei": dict(mag_dropout=0.2)},
}


class MMSATFN(nn.Module):
    """MMSA ``TFN.forward``: fusion by two ``torch.bmm`` outer products, post-fusion ``nn.Dropout`` -> 3 ``nn.Linear``
    with ReLU (MMSA's own layers, not our :class:`PostFusionMLP`), on our sub-networks (the same layers as MMSA's
    ``SubNet`` / ``TextSubNet``). The output is left linear, as ours is at these sizes (no ``output_range``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoders = model.encoders
        net = model.head.net  # same shapes and initial values as ours
        self.post_fusion_dropout = nn.Dropout(net[0].p)
        self.post_fusion_layer_1, self.post_fusion_layer_2, self.post_fusion_layer_3 = net[1], net[3], net[5]

    def forward(self, batch: dict) -> Tensor:
        z = self.encoders(batch)
        b = z["text"].shape[0]
        one = z["text"].new_ones(b, 1)
        a, v, t = (torch.cat([one, z[k]], 1) for k in ("audio", "vision", "text"))
        f = torch.bmm(a.unsqueeze(2), v.unsqueeze(1)).view(b, -1, 1)
        f = torch.bmm(f, t.unsqueeze(1)).view(b, -1)
        y = F.relu(self.post_fusion_layer_1(self.post_fusion_dropout(f)), inplace=True)
        y = F.relu(self.post_fusion_layer_2(y), inplace=True)
        return self.post_fusion_layer_3(y)


class MMSAMFN(nn.Module):
    """MMSA ``MFN.forward``: LSTMCells stepped in Python, attention / memory / gate networks evaluated per step."""

    def __init__(self, dims: dict[str, int], hidden: dict[str, int], mem_dim: int, attn_hidden: int,
                 attn_dropout: float, mem_hidden: int, mem_dropout: float, gamma1_hidden: int, gamma1_dropout: float,
                 gamma2_hidden: int, gamma2_dropout: float, out_hidden: int, out_dropout: float, **_: Any) -> None:
        super().__init__()
        self.mods = tuple(dims)
        self.cells = nn.ModuleDict({m: nn.LSTMCell(dims[m], hidden[m]) for m in self.mods})
        s = sum(hidden.values())
        self.hidden, self.mem_dim = hidden, mem_dim
        self.att1_fc1, self.att1_fc2 = nn.Linear(2 * s, attn_hidden), nn.Linear(attn_hidden, 2 * s)
        self.att2_fc1, self.att2_fc2 = nn.Linear(2 * s, mem_hidden), nn.Linear(mem_hidden, mem_dim)
        self.g1_fc1, self.g1_fc2 = nn.Linear(2 * s + mem_dim, gamma1_hidden), nn.Linear(gamma1_hidden, mem_dim)
        self.g2_fc1, self.g2_fc2 = nn.Linear(2 * s + mem_dim, gamma2_hidden), nn.Linear(gamma2_hidden, mem_dim)
        self.out_fc1, self.out_fc2 = nn.Linear(s + mem_dim, out_hidden), nn.Linear(out_hidden, 1)
        self.p = (attn_dropout, mem_dropout, gamma1_dropout, gamma2_dropout, out_dropout)

    def forward(self, batch: dict) -> Tensor:
        xs = {m: batch["x"][m].transpose(0, 1) for m in self.mods}
        n, b = xs[self.mods[0]].shape[:2]
        h = {m: xs[m].new_zeros(b, self.hidden[m]) for m in self.mods}
        c = {m: xs[m].new_zeros(b, self.hidden[m]) for m in self.mods}
        mem = xs[self.mods[0]].new_zeros(b, self.mem_dim)
        p1, p2, p3, p4, p5 = self.p
        for i in range(n):
            prev = torch.cat([c[m] for m in self.mods], 1)
            for m in self.mods:
                h[m], c[m] = self.cells[m](xs[m][i], (h[m], c[m]))
            cstar = torch.cat([prev, torch.cat([c[m] for m in self.mods], 1)], 1)
            att = F.softmax(self.att1_fc2(F.dropout(F.relu(self.att1_fc1(cstar)), p1, self.training)), dim=1)
            attended = att * cstar
            chat = torch.tanh(self.att2_fc2(F.dropout(F.relu(self.att2_fc1(attended)), p2, self.training)))
            both = torch.cat([attended, mem], 1)
            g1 = torch.sigmoid(self.g1_fc2(F.dropout(F.relu(self.g1_fc1(both)), p3, self.training)))
            g2 = torch.sigmoid(self.g2_fc2(F.dropout(F.relu(self.g2_fc1(both)), p4, self.training)))
            mem = g1 * mem + g2 * chat
        last = torch.cat([h[m] for m in self.mods] + [mem], 1)
        return self.out_fc2(F.dropout(F.relu(self.out_fc1(last)), p5, self.training))


def make_batch(dims: dict[str, int], b: int, t: int, device: str, tokens: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    lens = torch.full((b,), t)  # aligned_50: every sample padded to 50; lengths = 50 (worst case)
    batch = {"x": {m: torch.randn(b, t, d, generator=g).to(device) for m, d in dims.items()},
             "lengths": {m: lens.to(device) for m in dims}, "y": torch.randn(b, generator=g).to(device)}
    if tokens:
        ids = torch.randint(1000, 29000, (b, t), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        wi = torch.arange(t)[None, :].expand(b, t) - 1
        wi[:, 0] = wi[:, -1] = -1
        batch["tokens"] = {"input_ids": ids.to(device), "attention_mask": torch.ones(b, t, dtype=torch.long).to(device),
                           "token_type_ids": torch.zeros(b, t, dtype=torch.long).to(device), "word_index": wi.to(device)}
    return batch


def build(name: str, data: str, impl: str = "ours", compile_mfn: bool = False) -> nn.Module:
    dims = SHAPES[data]
    kw = dict(SIZES[name][data])
    if name == "tfn":
        from mmfusion.models.tfn import TFN

        m = TFN(input_dims=dims, output_dim=1, **kw)
        return MMSATFN(m) if impl == "mmsa" else m
    if name == "lfn":
        from mmfusion.models.lfn import LFN

        return LFN(input_dims=dims, output_dim=1, **kw)
    if name == "mfn":
        if impl == "mmsa":
            return MMSAMFN(dims, **kw)
        from mmfusion.models.mfn import MFN

        return MFN(input_dims=dims, output_dim=1, compile=compile_mfn, **kw)
    if name == "ef_lstm":
        from mmfusion.models.ef_lstm import EFLSTM

        return EFLSTM(input_dims=dims, output_dim=1, **kw)
    if name == "magbert":
        from mmfusion.models.magbert import MAGBERT

        return MAGBERT(input_dims=dims, output_dim=1, **kw)
    raise ValueError(name)


def train_step(model: nn.Module, batch: dict, device: str, bf16: bool = False) -> Callable[[], None]:
    """One benchmark step, the same for every implementation: forward (optionally under bf16 autocast), L1 loss,
    backward, AdamW (defaults, lr 1e-4) step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch)
            pred = out.prediction if hasattr(out, "prediction") else out
        F.l1_loss(pred.float().reshape(-1), batch["y"]).backward()
        opt.step()

    return step


def measure(name: str, data: str, batch_size: int, impl: str, device: str, bf16: bool, seq_len: int,
            repeats: int, warmup: int, compile_mfn: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build(name, data, impl, compile_mfn).to(device).train()
    batch = make_batch(SHAPES[data], batch_size, seq_len, device, tokens=name == "magbert")
    step = train_step(model, batch, device, bf16)
    step()
    device_sync(device)
    reset_peak(device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t = time_fn(step, warmup=warmup, repeats=repeats, device=device)
    peak = peak_memory_mb(device)
    row = {"model": name, "impl": impl, "data": data, "batch": batch_size, "seq_len": seq_len, "device": device,
           "bf16": bf16, "compile": compile_mfn, "params": sum(p.numel() for p in model.parameters()),
           "step_ms": round(t["median_ms"], 2), "step_ms_iqr": [round(t["p25_ms"], 2), round(t["p75_ms"], 2)],
           "samples_per_s": round(batch_size / (t["median_ms"] / 1e3), 1)}
    if torch.device(device).type == "cuda":
        row["peak_cuda_mb"] = round(peak, 1)
    else:
        row["peak_rss_mb"] = round(peak, 1)
        row["step_rss_mb"] = round(peak - base, 1)
    return row


def measure_pair(name: str, data: str, batch_size: int, device: str, seq_len: int, repeats: int,
                 warmup: int) -> dict[str, Any]:
    """Ours vs the MMSA implementation, steps interleaved in one process (load drift hits both equally)."""
    steps = {}
    for impl in ("ours", "mmsa"):
        torch.manual_seed(0)
        model = build(name, data, impl).to(device).train()
        steps[impl] = train_step(model, make_batch(SHAPES[data], batch_size, seq_len, device), device)
    times: dict[str, list[float]] = {"ours": [], "mmsa": []}
    for r in range(warmup + repeats):
        for impl in ("ours", "mmsa") if r % 2 == 0 else ("mmsa", "ours"):
            t = time_fn(steps[impl], warmup=0, repeats=1, device=device)["median_ms"]
            if r >= warmup:
                times[impl].append(t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"model": name, "impl": "ours vs mmsa (interleaved)", "data": data, "batch": batch_size,
            "seq_len": seq_len, "device": device, "step_ms_ours": round(med["ours"], 2),
            "step_ms_mmsa": round(med["mmsa"], 2), "min_ms_ours": round(min(times["ours"]), 2),
            "min_ms_mmsa": round(min(times["mmsa"]), 2), "speedup_median": round(med["mmsa"] / med["ours"], 3),
            "speedup_min": round(min(times["mmsa"]) / min(times["ours"]), 3)}


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mmfusion.bench.models", "--one", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {**spec, "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    a, b = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    pred = a * np.asarray(x) + b
    ss_res = float(((np.asarray(y) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(y) - np.mean(y)) ** 2).sum())
    return {"slope_ms_per_step": float(a), "intercept_ms": float(b), "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def run(args: Any) -> list[dict]:
    device = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    models = (getattr(args, "models", None) or "tfn,lfn,mfn,ef_lstm,magbert").split(",")
    repeats, warmup = int(getattr(args, "repeats", 5) or 5), int(getattr(args, "warmup", 2) or 2)
    batches = [int(b) for b in str(getattr(args, "batches", "32,64") or "32,64").split(",")]
    rows: list[dict] = []
    base = dict(device=device, seq_len=SEQ_LEN, repeats=repeats, warmup=warmup, bf16=False, impl="ours")
    for name in models:
        for data in ("mosi", "mosei"):
            for b in batches:
                specs = [dict(base, name=name, data=data, batch_size=b)]
                if name in ("tfn", "mfn"):
                    specs.append(dict(base, name=name, data=data, batch_size=b, impl="pair"))
                if device == "cuda":
                    specs.append(dict(base, name=name, data=data, batch_size=b, bf16=True))
                for s in specs:
                    rows.append(_child(s))
                    print(json.dumps(rows[-1]), flush=True)
    if "mfn" in models:
        lens = [25, 50, 100, 200]
        pts = [_child(dict(base, name="mfn", data="mosi", batch_size=32, seq_len=t, impl="pair")) for t in lens]
        ok = [p for p in pts if "step_ms_ours" in p]
        for impl in ("ours", "mmsa"):
            ys = [p[f"step_ms_{impl}"] for p in ok]
            fit = linear_fit([p["seq_len"] for p in ok], ys) if len(ok) > 2 else {}
            rows.append({"model": "mfn", "impl": impl, "scaling": "step_ms vs seq_len", "device": device,
                         "points": {p["seq_len"]: p[f"step_ms_{impl}"] for p in ok}, **fit})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tfn,lfn,mfn,ef_lstm,magbert")
    p.add_argument("--batches", default="32,64")
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        s = json.loads(a.one)
        if s["impl"] == "pair":
            print(json.dumps(measure_pair(s["name"], s["data"], s["batch_size"], s["device"], s["seq_len"],
                                          s["repeats"], s["warmup"])))
            return
        print(json.dumps(measure(s["name"], s["data"], s["batch_size"], s["impl"], s["device"], s["bf16"],
                                 s["seq_len"], s["repeats"], s["warmup"], s.get("compile", False))))
        return
    rows = run(a)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"environment": environment(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
