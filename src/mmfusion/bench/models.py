"""Training step of every sentiment model against the peer's own code: MMSA (``mmsa`` 2.2.1, the ``bench`` extra).

For each model the benchmark builds MMSA's class (``MMSA.models.singleTask.{TFN,LMF,MFN,EF_LSTM}``) from MMSA's own
``config_regression.json`` entry for the dataset, and our model at the same sizes, with the SAME number of
trainable parameters (printed and asserted). One step = forward + L1 loss + backward + AdamW step (defaults,
lr 1e-4) on the same random batch; MMSA's TFN/LMF get time-averaged audio/vision (B, 1, D) as its loader gives
them, ours the same tensors. Steps of the two implementations alternate in one process (the order flips every
round) and each round gives one ratio ``t_mmsa / t_ours``: the median and IQR of those per-round ratios are the
figure of merit, robust to machine-load drift (the load average is recorded). Peak memory: each implementation
runs a few steps in a fresh subprocess; ``step_rss_mb`` is the growth of the peak resident set caused by the steps
(CUDA: peak allocated).

Shapes (issue 18): MOSI = 300/74/47 (GloVe / COVAREP / FACET, MulT-CMU release), batch 32; MOSEI = 768/74/35
(MMSA BERT features), batch 64; T = 50 word-aligned steps, every sample at full length.

    python -m mmfusion.bench.models --threads 1,2 --out docs/results/bench_models.json
    python -m mmfusion.bench.models --scaling --out docs/results/bench_models_scaling.json   # + docs/figures PNG
    python -m mmfusion.bench.models --device cuda [--bf16]                                   # GPU rows
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfusion.bench.core import environment, paired_times, timed

SHAPES = {"mosi": {"text": 300, "audio": 74, "vision": 47}, "mosei": {"text": 768, "audio": 74, "vision": 35}}
BATCH = {"mosi": 32, "mosei": 64}
SEQ_LEN = 50
MODELS = ("tfn", "lfn", "mfn", "ef_lstm", "mult", "magbert")
SCALING_MODELS = MODELS[:-1]  # MAG-BERT (a 6-layer BERT, ~2 s a step) is left out of the scaling grid
MMSA_CLASS = {"tfn": "TFN", "lfn": "LMF", "mfn": "MFN", "ef_lstm": "EF_LSTM", "mult": "MULT"}
MMSA_KEY = {"tfn": "tfn", "lfn": "lmf", "mfn": "mfn", "ef_lstm": "ef_lstm", "mult": "mult"}
# AdamW as our trainer runs it (configs/optim/adamw.yaml) | torch's default on CPU
OPTIMIZERS = ("fused", "forloop")
AVERAGED_AV = ("tfn", "lfn")  # MMSA feeds these time-averaged audio/vision (need_normalized)


def mmsa_params(name: str, data: str) -> dict[str, Any]:
    """``commonParams`` updated by ``datasetParams[data]`` of the model's entry in MMSA's packaged
    ``config_regression.json`` (MULT reads ``attn_mask`` / ``use_bert`` from ``commonParams``)."""
    from importlib import resources

    path = resources.files("MMSA") / "config" / "config_regression.json"
    cfg = json.loads(path.read_text())
    entry = cfg[MMSA_KEY[name]]
    return {**entry.get("commonParams", {}), **entry["datasetParams"][data]}


def build_mmsa(name: str, data: str, seq_len: int = SEQ_LEN) -> nn.Module:
    """MMSA's own model class (imported lazily: ``import MMSA`` pulls in its whole runner)."""
    import importlib

    if name == "magbert":
        from mmfusion.bench import mmsa_magbert

        return mmsa_magbert.build_mmsa(SHAPES[data], data, seq_len)

    mod = importlib.import_module(f"MMSA.models.singleTask.{MMSA_CLASS[name]}")
    dims = SHAPES[data]
    args = SimpleNamespace(
        feature_dims=[dims["text"], dims["audio"], dims["vision"]],
        seq_lens=seq_len,
        train_mode="regression",
        num_classes=1,
        **mmsa_params(name, data),
    )
    return getattr(mod, MMSA_CLASS[name])(args)


def build_ours(name: str, data: str, seq_len: int = SEQ_LEN) -> nn.Module:
    """Our model at MMSA's sizes for ``data`` (order (text, audio, video) in MMSA's lists)."""
    if name == "magbert":
        from mmfusion.bench import mmsa_magbert

        return mmsa_magbert.build_ours(SHAPES[data], data)
    p, dims = mmsa_params(name, data), SHAPES[data]
    if name in ("tfn", "lfn"):
        (ht, ha, hv), (da, dv, _dt, dp) = p["hidden_dims"], p["dropouts"]
        # MMSA's TextSubNet forces its dropout to 0 for a 1-layer LSTM (notes §1.1): ours gets that effective 0
        drop = {"text": 0.0, "audio": da, "vision": dv}
        if name == "tfn":
            from mmfusion.models.tfn import TFN

            return TFN(
                input_dims=dims,
                hidden={"audio": ha, "vision": hv},
                text_hidden=ht,
                text_out=p["text_out"],
                dropout=drop,
                post_fusion_dim=p["post_fusion_dim"],
                post_fusion_dropout=dp,
                output_range=(-3.0, 3.0),
            )
        from mmfusion.models.lfn import LFN

        return LFN(
            input_dims=dims,
            hidden={"audio": ha, "vision": hv},
            text_hidden=ht,
            text_out=ht // 2,
            dropout=drop,
            rank=p["rank"],
            fusion_dim=None,
            post_fusion_dropout=dp,
        )
    if name == "mfn":
        from mmfusion.models.mfn import MFN

        ht, ha, hv = p["hidden_dims"]
        c = {k: p[f"{k}Config"] for k in ("NN1", "NN2", "gamma1", "gamma2", "out")}
        return MFN(
            input_dims=dims,
            hidden={"text": ht, "audio": ha, "vision": hv},
            mem_dim=p["memsize"],
            window=p["windowsize"],
            attn_hidden=c["NN1"]["shapes"],
            attn_dropout=c["NN1"]["drop"],
            mem_hidden=c["NN2"]["shapes"],
            mem_dropout=c["NN2"]["drop"],
            gamma1_hidden=c["gamma1"]["shapes"],
            gamma1_dropout=c["gamma1"]["drop"],
            gamma2_hidden=c["gamma2"]["shapes"],
            gamma2_dropout=c["gamma2"]["drop"],
            out_hidden=c["out"]["shapes"],
            out_dropout=c["out"]["drop"],
        )
    if name == "ef_lstm":
        from mmfusion.models.ef_lstm import EFLSTM

        return EFLSTM(
            input_dims=dims,
            proj_dim=None,
            hidden=p["hidden_dims"],
            num_layers=p["num_layers"],
            dropout=p["dropout"],
            seq_norm=seq_len,
        )
    if name == "mult":  # MMSA's computation: valid convolutions, no positional embedding, its attn_mask
        from mmfusion.models.mult import MulT

        d, heads = p["dst_feature_dim_nheads"]
        return MulT(
            input_dims=dims,
            d_model=d,
            heads=heads,
            layers=p["nlevels"],
            kernel_size={m: p[f"conv1d_kernel_size_{k}"] for m, k in zip(dims, "lav")},
            conv_padding="valid",
            positional=False,
            causal_mask=p["attn_mask"],
            input_dropout={"text": p["text_dropout"]},
            embed_dropout=p["embed_dropout"],
            memory_attn_dropout=p["attn_dropout"],
            attn_dropout={
                m: p[k] for m, k in zip(dims, ("attn_dropout", "attn_dropout_a", "attn_dropout_v"))
            },
            relu_dropout=p["relu_dropout"],
            res_dropout=p["res_dropout"],
            output_dropout=p["output_dropout"],
        )
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_inputs(name: str, data: str, batch: int, seq_len: int, device: str) -> tuple[dict, tuple]:
    """(our batch, MMSA's (text, audio, video)) holding the same tensors."""
    if name == "magbert":  # word pieces for BERT, aligned audio / vision
        from mmfusion.bench import mmsa_magbert

        return mmsa_magbert.make_inputs(SHAPES[data], batch, seq_len, device)
    g = torch.Generator().manual_seed(0)
    dims = SHAPES[data]
    x = {}
    for m, d in dims.items():
        t = 1 if (name in AVERAGED_AV and m != "text") else seq_len
        x[m] = torch.randn(batch, t, d, generator=g).to(device)
    lens = {m: torch.full((batch,), v.shape[1], dtype=torch.long, device=device) for m, v in x.items()}
    ours = {"x": x, "lengths": lens, "y": torch.randn(batch, generator=g).to(device)}
    return ours, (x["text"], x["audio"], x["vision"])


def make_step(
    model: nn.Module, inputs: Any, y: torch.Tensor, device: str, bf16: bool = False, optimizer: str = "fused"
):
    """forward (optionally bf16 autocast) + L1 + backward + AdamW step; the same for both implementations.
    ``optimizer``: ``fused`` (one kernel, what our trainer runs) or ``forloop`` (torch's default on CPU)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}")
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=1e-4,
        fused=optimizer == "fused",
        foreach=False if optimizer == "forloop" else None,
    )
    mmsa = isinstance(inputs, tuple)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            out = model(*inputs) if mmsa else model(inputs)
            pred = out["M"] if mmsa else out.prediction
        F.l1_loss(pred.float().reshape(-1), y).backward()
        opt.step()

    return step


def pair(
    model: str,
    data: str,
    batch: int | None = None,
    seq_len: int = SEQ_LEN,
    threads: int = 1,
    device: str = "cpu",
    bf16: bool = False,
    rounds: int = 15,
    warmup: int = 3,
    optimizer: str = "fused",
) -> dict[str, Any]:
    """Ours vs MMSA, steps interleaved (order flipped every round); median / IQR of per-round ratios."""
    torch.set_num_threads(threads)
    name, batch = model, batch or BATCH[data]
    steps, params = {}, {}
    for impl in ("ours", "mmsa"):
        torch.manual_seed(0)
        net = (build_ours if impl == "ours" else build_mmsa)(name, data, seq_len).to(device).train()
        params[impl] = n_params(net)
        ours_in, mmsa_in = make_inputs(name, data, batch, seq_len, device)
        steps[impl] = make_step(
            net, ours_in if impl == "ours" else mmsa_in, ours_in["y"], device, bf16, optimizer
        )
    print(
        f"params {name} {data}: ours {params['ours']:,} mmsa {params['mmsa']:,}", file=sys.stderr, flush=True
    )
    assert params["ours"] == params["mmsa"], f"{name}/{data}: parameter counts differ {params}"
    load0 = os.getloadavg()
    t = paired_times(steps["ours"], steps["mmsa"], rounds, warmup, device, flip=True)  # wall times
    times = {"ours": t["base_wall"], "mmsa": t["wall"]}
    ratio = times["mmsa"] / times["ours"]
    return {
        "model": name,
        "data": data,
        "batch": batch,
        "seq_len": seq_len,
        "threads": threads,
        "device": device,
        "bf16": bf16,
        "optimizer": optimizer,
        "params": params["ours"],
        "rounds": rounds,
        "warmup": warmup,
        "ms_ours": round(float(np.median(times["ours"])), 2),
        "ms_mmsa": round(float(np.median(times["mmsa"])), 2),
        "ratio_median": round(float(np.median(ratio)), 3),
        "ratio_iqr": [round(float(np.percentile(ratio, 25)), 3), round(float(np.percentile(ratio, 75)), 3)],
        "ratios": [round(float(v), 3) for v in ratio],
        "loadavg_start": [round(v, 2) for v in load0],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }


def memory(
    model: str,
    data: str,
    impl: str,
    batch: int | None = None,
    seq_len: int = SEQ_LEN,
    threads: int = 1,
    device: str = "cpu",
    steps: int = 3,
    optimizer: str = "fused",
    repeat: int = 0,
) -> dict[str, Any]:
    """Peak memory of ``steps`` training steps of one implementation (run it in a fresh process; ``repeat``
    numbers the fresh processes of one setting)."""
    torch.set_num_threads(threads)
    name, batch = model, batch or BATCH[data]
    torch.manual_seed(0)
    net = (build_ours if impl == "ours" else build_mmsa)(name, data, seq_len).to(device).train()
    ours_in, mmsa_in = make_inputs(name, data, batch, seq_len, device)
    step = make_step(net, ours_in if impl == "ours" else mmsa_in, ours_in["y"], device, optimizer=optimizer)
    row = {
        "model": name,
        "data": data,
        "impl": impl,
        "batch": batch,
        "seq_len": seq_len,
        "threads": threads,
        "device": device,
        "optimizer": optimizer,
        "repeat": repeat,
    }
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(steps):
            step()
        return {**row, "step_peak_mb": round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        **row,
        "step_peak_mb": round(peak - base, 1),
        "peak_rss_mb": round(peak, 1),
        "live_peak_mb": live_tensor_peak_mb(step),
    }


def live_tensor_peak_mb(step: Callable[[], Any]) -> float | None:
    """Working memory of one more ``step``: the peak of the live CPU tensors allocated during it (saved
    activations, temporaries, gradients, optimizer-state updates; not the parameters and state that exist before
    it), from the profiler's memory timeline. Unlike the peak resident set it does not depend on how the C
    allocator maps and returns blocks. Uses torch's private ``_memory_profiler`` (None if it is unavailable)."""
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            step()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
        return round(max(sum(s) for s in sizes) / 2**20, 1)
    except Exception:  # noqa: BLE001  (a private API: report no number rather than fail the benchmark)
        return None


def _sdpa_forward(
    self: nn.Module, v: torch.Tensor, k: torch.Tensor, q: torch.Tensor, kv_valid: torch.Tensor
) -> torch.Tensor:
    """``MHAtt.forward`` through ``F.scaled_dot_product_attention`` (fused kernels on GPU). Same function: the boolean
    mask drops the masked keys as MCAN's ``masked_fill(-1e9)`` does (rows always keep a valid key)."""
    vh, kh, qh = self._split(self.linear_v(v)), self._split(self.linear_k(k)), self._split(self.linear_q(q))
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=kv_valid[:, None, None, :], dropout_p=self.dropout.p if self.training else 0.0
    )
    return self.linear_merge(out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1))


def mcan(
    device: str = "cpu",
    sdpa: bool = False,
    bf16: bool = False,
    batch: int = 64,
    regions: int = 100,
    rounds: int = 10,
    warmup: int = 3,
    threads: int = 1,
) -> dict[str, Any]:
    """MCAN-small (6 + 6 layers, d = 512) training throughput on VQA-v2 shapes (14 question tokens, ``regions``
    2048-d image features, 3129 answers, BCE loss, AdamW), with MCAN's attention or with
    ``scaled_dot_product_attention`` (``sdpa``), optionally under bf16 autocast."""
    import types

    from mmfusion.models.mcan import MCAN, MHAtt

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = (
        MCAN(input_dims={"question": 14, "image": 2048}, output_dim=3129, vocab_size=1000).to(device).train()
    )
    if sdpa:
        for mod in net.modules():
            if isinstance(mod, MHAtt):
                mod.forward = types.MethodType(_sdpa_forward, mod)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 1000, (batch, 14), generator=g)
    ids[:, 10:] = 0  # padded question tokens
    x = {"question": ids.to(device), "image": torch.randn(batch, regions, 2048, generator=g).to(device)}
    target = (torch.rand(batch, 3129, generator=g) < 0.002).float().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            pred = net({"x": x}).prediction
        F.binary_cross_entropy_with_logits(pred.float(), target).backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = [timed(step, device)[0] for _ in range(rounds)]
    med = float(np.median(times))
    return {
        "model": "mcan_small",
        "device": device,
        "sdpa": sdpa,
        "bf16": bf16,
        "batch": batch,
        "regions": regions,
        "threads": threads,
        "params": n_params(net),
        "step_ms": round(med, 2),
        "step_ms_iqr": [round(float(np.percentile(times, q)), 2) for q in (25, 75)],
        "samples_per_s": round(batch / med * 1e3, 1),
    }


def _child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mmfusion.bench.models", "--child", kind, json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(
        res.stderr
        if res.returncode
        else "".join(ln + "\n" for ln in res.stderr.splitlines() if ln.startswith("params"))
    )
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()
        return {**spec, "kind": kind, "error": err[-1] if err else "failed"}
    return {"kind": kind, **json.loads(res.stdout.strip().splitlines()[-1])}


def _jsonl_rows(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _key(r: dict) -> tuple:
    return (
        r.get("kind"),
        r.get("model"),
        r.get("data"),
        r.get("impl"),
        r.get("threads"),
        r.get("batch"),
        r.get("seq_len"),
        r.get("bf16"),
        r.get("device"),
        r.get("sdpa"),
        r.get("optimizer", "forloop"),  # rows written before the option were the for-loop AdamW
        r.get("repeat", 0),
    )


def run_specs(specs: list[tuple[str, dict]], raw: Path | None) -> list[dict]:
    """Run each (kind, spec) in a fresh process; resumable: rows already in ``raw`` (JSONL) are reused."""
    done = {_key(r): r for r in _jsonl_rows(raw) if "error" not in r}
    rows = []
    for kind, spec in specs:
        k = _key({"kind": kind, **spec})
        if k in done:
            rows.append(done[k])
            continue
        row = _child(kind, spec)
        print(json.dumps(row), flush=True)
        if raw is not None and "error" not in row:
            raw.parent.mkdir(parents=True, exist_ok=True)
            with raw.open("a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def scaling_specs(models: list[str], device: str, rounds: int) -> list[tuple[str, dict]]:
    """Step time vs T (batch 32) and vs batch (T = 50), MOSI sizes, ours and MMSA interleaved."""
    pts = [(t, 32) for t in (25, 50, 100, 200)] + [(50, b) for b in (16, 64, 128)]
    return [
        (
            "pair",
            dict(
                model=m,
                data="mosi",
                batch=b,
                seq_len=t,
                threads=1,
                device=device,
                bf16=False,
                rounds=rounds,
                warmup=1,
            ),
        )
        for m in models
        for t, b in pts
    ]


def plot_scaling(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    opt = "/".join(sorted({r.get("optimizer", "forloop") for r in rows if "ms_ours" in r}))
    colors = {m: f"C{i}" for i, m in enumerate(SCALING_MODELS)}
    for ax, (var, fixed, label) in zip(
        axes,
        (
            ("seq_len", ("batch", 32), "sequence length T (batch 32)"),
            ("batch", ("seq_len", 50), "batch size (T = 50)"),
        ),
    ):
        for m in SCALING_MODELS:
            pts = sorted(
                (r[var], r["ms_ours"], r["ms_mmsa"])
                for r in rows
                if r.get("model") == m and r.get(fixed[0]) == fixed[1] and "ms_ours" in r
            )
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.plot(x, [p[1] for p in pts], "-o", color=colors[m], label=f"{m} (ours)")
            ax.plot(x, [p[2] for p in pts], "--s", color=colors[m], alpha=0.6, label=f"{m} (MMSA)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("training step (ms, median)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"MOSI sizes (300/74/47), 1 thread, CPU: forward + L1 + backward + {opt} AdamW; ours vs MMSA 2.2.1",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--data", default="mosi,mosei")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="also bf16-autocast rows (CUDA)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--optimizer",
        default="fused,forloop",
        help="AdamW variants of the pairs: fused (our trainer's) and/or forloop (torch's CPU default); memory: the first",
    )
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-pairs", action="store_true", help="memory rows only")
    p.add_argument(
        "--memory-repeats", type=int, default=1, help="fresh processes per implementation (alternated)"
    )
    p.add_argument("--mcan", action="store_true", help="MCAN-small throughput with / without SDPA instead")
    p.add_argument("--scaling", action="store_true", help="step time vs T and batch (+ PNG next to --figure)")
    p.add_argument("--figure", default="docs/figures/bench_models_scaling.png")
    p.add_argument("--raw", default=None, help="JSONL of raw rows (resumable); default <out>.jsonl")
    p.add_argument("--out", default=None)
    p.add_argument("--table", default=None, help="print the markdown table of a result JSON and exit")
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.table:
        print(markdown_table(json.loads(Path(a.table).read_text())["rows"]))
        return
    if a.child:
        kind, spec = a.child[0], json.loads(a.child[1])
        fn = {"pair": pair, "memory": memory, "mcan": mcan}[kind]
        print(json.dumps(fn(**spec)))
        return
    models = [m for m in a.models.split(",") if m]
    raw = Path(a.raw) if a.raw else (Path(a.out).with_suffix(".jsonl") if a.out else None)
    if a.mcan:  # MCAN-small throughput, MCAN's attention vs scaled_dot_product_attention (meant for GPUs)
        specs = [
            ("mcan", dict(device=a.device, sdpa=sd, bf16=bf, rounds=a.rounds, warmup=a.warmup))
            for bf in ((False, True) if a.bf16 else (False,))
            for sd in (False, True)
        ]
    elif a.scaling:
        specs = scaling_specs([m for m in models if m in SCALING_MODELS], a.device, max(3, a.rounds // 5))
    else:
        specs = []
        bf16s = (False, True) if a.bf16 else (False,)
        optimizers = [o for o in a.optimizer.split(",") if o]
        for m in models:
            for d in a.data.split(","):
                common = dict(model=m, data=d, batch=BATCH[d], seq_len=SEQ_LEN, device=a.device)
                if not a.no_pairs:
                    specs += [
                        (
                            "pair",
                            dict(
                                common, threads=int(t), bf16=bf, rounds=a.rounds, warmup=a.warmup, optimizer=o
                            ),
                        )
                        for t in a.threads.split(",")
                        for bf in bf16s
                        for o in optimizers
                    ]
                if not a.no_memory:
                    specs += [
                        ("memory", dict(common, impl=i, threads=1, optimizer=optimizers[0], repeat=r))
                        for r in range(a.memory_repeats)
                        for i in (("ours", "mmsa") if r % 2 == 0 else ("mmsa", "ours"))
                    ]
    rows = run_specs(specs, raw)
    if a.scaling:
        plot_scaling(rows, Path(a.figure))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(
            json.dumps({"environment": environment(), "mmsa": _mmsa_version(), "rows": rows}, indent=1)
        )


def markdown_table(rows: list[dict]) -> str:
    """The pairs and the peak-memory rows of a result file as one markdown table (docs/benchmarks_models.md)."""
    mem = {
        (r["model"], r["data"], r["impl"]): r.get("step_peak_mb") for r in rows if r.get("kind") == "memory"
    }
    mem_opt = {
        (r["model"], r["data"]): r.get("optimizer", "forloop") for r in rows if r.get("kind") == "memory"
    }
    out = [
        "| model | data (batch) | threads | AdamW | params (equal) | ours ms | MMSA ms | MMSA / ours: median [IQR] "
        "| load avg (1 min) | step peak MB ours / MMSA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("kind") != "pair" or "ratio_median" not in r:
            continue
        m = (mem.get((r["model"], r["data"], "ours")), mem.get((r["model"], r["data"], "mmsa")))
        first = r["threads"] == 1 and r.get("optimizer", "forloop") == mem_opt.get((r["model"], r["data"]))
        mtxt = f"{m[0]:.0f} / {m[1]:.0f}" if first and None not in m else ""
        lo, hi = r["ratio_iqr"]
        out.append(
            f"| {r['model']} | {r['data']} ({r['batch']}) | {r['threads']}"
            f"{' bf16' if r.get('bf16') else ''} | {r.get('optimizer', 'forloop')} | {r['params']:,} | {r['ms_ours']:.0f} | {r['ms_mmsa']:.0f} "
            f"| **{r['ratio_median']:.2f}x** [{lo:.2f}, {hi:.2f}] "
            f"| {r['loadavg_start'][0]:.1f}-{r['loadavg_end'][0]:.1f} | {mtxt} |"
        )
    return "\n".join(out)


def _mmsa_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("mmsa")
    except Exception:  # pragma: no cover - bench extra not installed
        return None


def run(args: Any) -> list[dict]:
    """``scripts/benchmark.py --suite models``: the interleaved pairs at 1 thread (all models, both shapes)."""
    device = getattr(args, "device", "cpu") or "cpu"
    specs = [
        (
            "pair",
            dict(
                model=m,
                data=d,
                batch=BATCH[d],
                seq_len=SEQ_LEN,
                threads=1,
                device=device,
                bf16=False,
                rounds=int(getattr(args, "repeats", 10) or 10),
                warmup=3,
            ),
        )
        for m in MODELS
        for d in ("mosi", "mosei")
    ]
    return run_specs(specs, None)


if __name__ == "__main__":
    main()
