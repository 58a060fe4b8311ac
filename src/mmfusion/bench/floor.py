"""The GEMM floor of a training step: how fast ANY exact float32 implementation of a model could be on this machine,
and so the largest speed-up over MMSA's code that is possible at all (issue 18's targets).

The floor counts only the matrix products that an exact step of the model cannot avoid (forward, weight gradients
and the input gradients something needs; the recurrences' products one time step at a time, since step ``t``
needs step ``t - 1``; everything that does not depend on a recurrence batched over all steps), times each shape
alone (1 thread, into a preallocated output, median of repeats: the speed MKL reaches for that shape in isolation,
an optimistic figure), adds the fused AdamW update of the parameters, and takes everything else (nonlinearities,
dropout, memory traffic, the autograd engine, Python) as free. So ``t_MMSA / floor`` bounds any
``t_MMSA / t_ours`` from above. A stricter-still bound runs every product at the machine's peak (the best
float32 GEMM rate measured on large square products): a target above ``t_MMSA / peak floor`` cannot be met in
float32 on this machine by any implementation. ``t_MMSA`` is taken from the interleaved pairs of
:mod:`mmfusion.bench.models` (``--pairs``, 1 thread, fused AdamW) and also measured here.

    python -m mmfusion.bench.floor --pairs docs/results/bench_models_20261205.json \
        --out docs/results/bench_models_floor_20261205.json
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from mmfusion.bench.core import environment, time_fn
from mmfusion.bench.models import (
    BATCH,
    SEQ_LEN,
    SHAPES,
    build_mmsa,
    make_inputs,
    make_step,
    mmsa_params,
    n_params,
)

Gemm = tuple[int, int, int]  # (m, k, n): an (m, k) x (k, n) product
TARGETS = {"ef_lstm": 1.5, "lfn": 1.5, "tfn": 1.5, "mfn": 2.0}


def lstm_gemms(b: int, t: int, d: int, h: int, input_grad: bool) -> Counter[Gemm]:
    """The products of one LSTM layer's forward + backward over ``t`` steps (Hochreiter & Schmidhuber 1997; the
    gate pre-activations ``W_ih x_t + W_hh h_{t-1} + b``): the input projection of all steps at once, ``t - 1``
    recurrent products (``h_0 = 0``), ``t - 1`` recurrent gradient products, the two weight gradients over all
    steps, and the input gradient if ``input_grad`` (not for data)."""
    g = Counter({(b * t, d, 4 * h): 1, (b, h, 4 * h): t - 1, (b, 4 * h, h): t - 1})
    g[(4 * h, b * (t - 1), h)] += 1  # dW_hh
    g[(4 * h, b * t, d)] += 1  # dW_ih
    if input_grad:
        g[(b * t, 4 * h, d)] += 1
    return g


def linear_gemms(rows: int, d_in: int, d_out: int, input_grad: bool, times: int = 1) -> Counter[Gemm]:
    """Forward, weight gradient and (optionally) input gradient of a Linear on ``rows`` rows, ``times`` times."""
    g = Counter({(rows, d_in, d_out): times, (d_out, rows, d_in): times})
    if input_grad:
        g[(rows, d_out, d_in)] += times
    return g


def model_gemms(name: str, data: str, batch: int, t: int = SEQ_LEN) -> Counter[Gemm]:
    """The unavoidable products of one training step of MMSA's model ``name`` at its configuration for ``data``."""
    p, dims = mmsa_params(name, data), SHAPES[data]
    g: Counter[Gemm] = Counter()
    if name == "ef_lstm":  # BatchNorm over steps -> LSTM(num_layers) -> Linear -> Linear
        h, d = p["hidden_dims"], sum(dims.values())
        for layer in range(p["num_layers"]):
            # layer 0's input gradient only feeds the BatchNorm's affine gradients, which need <dX, x^> per step:
            # obtainable without dX (fold the affine into the projection), so it is not counted
            g += lstm_gemms(batch, t, d if layer == 0 else h, h, input_grad=layer > 0)
        g += linear_gemms(batch, h, h, True) + linear_gemms(batch, h, 1, True)
    elif name in ("lfn", "tfn"):  # the text LSTM dominates; audio/vision sub-networks on (B, D) averages
        ht, ha, hv = p["hidden_dims"]
        g += lstm_gemms(batch, t, dims["text"], ht, input_grad=False)
        text_out = p["text_out"] if name == "tfn" else ht // 2
        g += linear_gemms(batch, ht, text_out, True)
        for d, hm in ((dims["audio"], ha), (dims["vision"], hv)):
            g += linear_gemms(batch, d, hm, False) + linear_gemms(batch, hm, hm, True, times=2)
        if name == "tfn":
            fused = (text_out + 1) * (ha + 1) * (hv + 1)
            g += linear_gemms(batch, fused, p["post_fusion_dim"], True)
    elif name == "mfn":  # Zadeh et al. 2018: System of LSTMs, Delta-memory attention, Multi-view gated memory
        hs = dict(zip(("text", "audio", "vision"), p["hidden_dims"]))
        for m, d in dims.items():
            g += lstm_gemms(batch, t, d, hs[m], input_grad=False)
        c = 2 * sum(hs.values())  # c* = [c_{t-1}; c_t]
        mem, bt = p["memsize"], batch * t
        a1, a2 = p["NN1Config"]["shapes"], p["NN2Config"]["shapes"]
        g1, g2 = p["gamma1Config"]["shapes"], p["gamma2Config"]["shapes"]
        # no recurrence: attention NN1 (c* -> a1 -> c*), NN2 (c^ -> a2 -> mem), the c^ part of both gates' first layer
        g += linear_gemms(bt, c, a1, True) + linear_gemms(bt, a1, c, True)
        g += linear_gemms(bt, c, a2, True) + linear_gemms(bt, a2, mem, True)
        g += linear_gemms(bt, c, g1, True) + linear_gemms(bt, c, g2, True)
        # the memory recurrence: each gate's first layer on u_{t-1} and its second layer, step by step (forward,
        # the gradient to the inputs step by step, the weight gradients batched over the steps)
        for gh in (g1, g2):
            for d_in, d_out in ((mem, gh), (gh, mem)):
                g[(batch, d_in, d_out)] += t
                g[(batch, d_out, d_in)] += t
                g[(d_out, bt, d_in)] += 1
        out = p["outConfig"]["shapes"]
        g += linear_gemms(batch, sum(hs.values()) + mem, out, True) + linear_gemms(batch, out, 1, True)
    else:
        raise ValueError(f"no GEMM floor for {name!r}; expected one of {sorted(TARGETS)}")
    return g


def time_gemm(m: int, k: int, n: int, repeats: int = 15) -> float:
    """Median ms of one (m, k) x (k, n) float32 product into a preallocated output, after a warm-up."""
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    return time_fn(lambda: torch.mm(a, b, out=out), warmup=3, repeats=repeats)["median_ms"]


def time_fused_adamw(numel: int, repeats: int = 10) -> float:
    """Median ms of one fused AdamW update of ``numel`` parameters (one flat tensor: the least it can cost)."""
    w = torch.nn.Parameter(torch.randn(numel))
    w.grad = torch.randn(numel)
    opt = torch.optim.AdamW([w], lr=1e-4, fused=True)
    return time_fn(opt.step, warmup=1, repeats=repeats)["median_ms"]


def peak_gflops() -> float:
    """The best float32 GEMM rate of one thread on large square products (GFLOP/s)."""
    torch.set_num_threads(1)
    return max(2 * n**3 / time_gemm(n, n, n, repeats=5) / 1e6 for n in (512, 1024, 2048))


def floor_row(
    name: str, data: str, rounds: int = 10, peak: float | None = None, pair_mmsa_ms: float | None = None
) -> dict[str, Any]:
    """GEMM floor of ``name`` at ``data`` (per shape and at the ``peak`` rate), MMSA's step time (the pair's
    ``pair_mmsa_ms`` if given, else measured here with fused AdamW), and the largest possible ratios."""
    torch.set_num_threads(1)
    batch = BATCH[data]
    torch.manual_seed(0)
    net = build_mmsa(name, data).train()  # MMSA's step first, before the GEMM timings fill the heap
    ours_in, mmsa_in = make_inputs(name, data, batch, SEQ_LEN, "cpu")
    step = make_step(net, mmsa_in, ours_in["y"], "cpu", optimizer="fused")
    here_ms = time_fn(step, warmup=2, repeats=rounds)["median_ms"]
    adamw_ms = time_fused_adamw(n_params(net))
    del net, step
    gemms = model_gemms(name, data, batch)
    per_shape = {s: time_gemm(*s) for s in gemms}
    gemm_ms = sum(per_shape[s] * c for s, c in gemms.items())
    gflop = sum(2 * m * k * n * c for (m, k, n), c in gemms.items()) / 1e9
    peak = peak or peak_gflops()
    mmsa_ms = pair_mmsa_ms or here_ms
    floor = gemm_ms + adamw_ms
    peak_floor = gflop / peak * 1e3 + adamw_ms
    return {
        "model": name,
        "data": data,
        "batch": batch,
        "seq_len": SEQ_LEN,
        "threads": 1,
        "gemm_gflop": round(gflop, 3),
        "gemm_floor_ms": round(gemm_ms, 2),
        "gemm_gflops_at_floor": round(gflop / gemm_ms * 1e3, 1),
        "fused_adamw_ms": round(adamw_ms, 2),
        "floor_ms": round(floor, 2),
        "peak_gflops": round(peak, 1),
        "peak_floor_ms": round(peak_floor, 2),
        "mmsa_ms": round(mmsa_ms, 2),
        "mmsa_ms_source": "pair" if pair_mmsa_ms else "here",
        "mmsa_ms_here": round(here_ms, 2),
        "max_ratio": round(mmsa_ms / floor, 3),
        "max_ratio_at_peak": round(mmsa_ms / peak_floor, 3),
        "target": TARGETS[name],
        "target_possible": mmsa_ms / floor >= TARGETS[name],
        "target_possible_at_peak": mmsa_ms / peak_floor >= TARGETS[name],
        "shapes": [[m, k, n, c, round(per_shape[(m, k, n)], 4)] for (m, k, n), c in sorted(gemms.items())],
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="ef_lstm,lfn,tfn,mfn")
    p.add_argument("--data", default="mosi,mosei")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument(
        "--pairs", default=None, help="bench.models result JSON: take t_MMSA from its 1-thread fused pairs"
    )
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    pairs = {}
    if a.pairs:
        for r in json.loads(Path(a.pairs).read_text())["rows"]:
            if r.get("kind") == "pair" and r.get("threads") == 1 and r.get("optimizer") == "fused":
                pairs[(r["model"], r["data"])] = r["ms_mmsa"]
    peak = peak_gflops()
    rows = []
    for m in a.models.split(","):
        for d in a.data.split(","):
            r = floor_row(m, d, a.rounds, peak, pairs.get((m, d)))
            rows.append(r)
            print(
                f"{m:8s} {d:6s} GEMMs {r['gemm_gflop']:.2f} GFLOP, floor {r['floor_ms']:.1f} ms "
                f"({r['gemm_gflops_at_floor']} GFLOP/s), at peak {r['peak_floor_ms']:.1f} ms; MMSA {r['mmsa_ms']:.1f} ms "
                f"({r['mmsa_ms_source']}; here {r['mmsa_ms_here']:.1f}) -> at most {r['max_ratio']:.2f}x "
                f"/ {r['max_ratio_at_peak']:.2f}x at peak (target {r['target']}x)",
                flush=True,
            )
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"environment": environment(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
