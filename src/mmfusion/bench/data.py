"""Data benchmarks (issue 5): time to load a MOSEI-size MMSA pickle and data-loader throughput vs the samples/s a
training step of TFN and MFN consumes ("loading must never be the bottleneck").

The pickle is synthetic but of the real size and layout (MMSA ``unaligned_50.pkl``, thuiar/MMSA README §2): the
16,326 MOSEI training samples with text (50, 768) BERT features + ``text_bert`` ids, audio (500, 74) with true
lengths and some -inf, vision (500, 35), stored float32 with pickle protocol 4, i.e. 6.1 GB for train alone
(valid/test are kept small: the reader treats all splits alike, so the train split is what costs). It is written to
a temporary folder and deleted afterwards; the load runs in a fresh process so its peak memory is its own.

    python -m mmfusion.bench.data --out docs/results/bench_data.json [--scale 0.25]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion.bench.core import environment
from mmfusion.utils.runtime import CONFIG_DIR, ROOT_DIR

MOSEI = {"n_train": 16326, "text": (50, 768), "audio": (500, 74), "vision": (500, 35)}


def write_mosei_like(path: Path, scale: float = 1.0, n_small: int = 64, seed: int = 0) -> dict[str, Any]:
    """Write the synthetic MOSEI-size pickle; returns its size and the time taken."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    data = {}
    for split, n in (("train", int(round(MOSEI["n_train"] * scale))), ("valid", n_small), ("test", n_small)):
        d: dict[str, Any] = {
            "id": [f"{split}{i}$_$0" for i in range(n)],
            "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
            "raw_text": np.array(["a sentence"] * n),
        }
        tl = rng.integers(5, 51, n)
        tb = np.zeros((n, 3, 50), np.float32)
        tb[:, 0] = rng.integers(100, 30000, (n, 50))
        tb[:, 1] = np.arange(50)[None, :] < tl[:, None]
        d["text_bert"] = tb
        d["text"] = rng.standard_normal((n, *MOSEI["text"]), dtype=np.float32)
        for m in ("audio", "vision"):
            t, dim = MOSEI[m]
            lens = rng.integers(20, t + 1, n)
            x = rng.standard_normal((n, t, dim), dtype=np.float32)
            for i in range(0, n, 2048):  # zero the padding (right side), chunkwise
                sl = slice(i, i + 2048)
                x[sl] *= (np.arange(t)[None, :] < lens[sl, None])[..., None]
            if m == "audio":
                x[rng.integers(0, n, 200), 0, 0] = -np.inf  # COVAREP's -inf
            d[m], d[f"{m}_lengths"] = x, lens
        data[split] = d
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return {
        "file_gb": path.stat().st_size / 1e9,
        "write_s": time.perf_counter() - t0,
        "n_train": len(data["train"]["id"]),
    }


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def _load_child(path: str) -> dict[str, Any]:
    """Run in a fresh process: restricted unpickling alone; the conversion alone (sanitising, lengths, padding, tensors) on
    the loaded object; loader throughput; then one full ``setup()`` (load + convert) with text as tokens."""
    import resource

    import mmfusion.data.mosi_pickle as mp
    from mmfusion.utils.safe_load import RestrictedUnpickler

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    with open(path, "rb") as f:  # the reader's own restricted unpickler (mmfusion.utils.safe_load)
        obj = RestrictedUnpickler(f).load()
    out["pickle_load_s"] = time.perf_counter() - t0
    original = mp.load_pickle
    mp.load_pickle = lambda *a, _o=obj, **k: _o  # time the conversion alone
    try:
        dm = mp.MosiPickleDataModule(
            path=path,
            dataset="bench-features",
            feature_dims={"audio": 74, "vision": 35},
            batch_size=32,
        )
        t0 = time.perf_counter()
        dm.setup()
        out["convert_s_text_features"] = time.perf_counter() - t0
    finally:
        mp.load_pickle = original
    del obj
    out["padding_sides"] = sorted(set(dm.padding_sides.values()))
    for bs in (32, 128):
        dm.batch_size = bs
        n, t0 = 0, time.perf_counter()
        for k, b in enumerate(dm.train_dataloader()):
            n += len(b["y"])
            if k == 150:
                break
        out[f"loader_samples_per_s_bs{bs}"] = n / (time.perf_counter() - t0)
        del b
    del dm
    gc.collect()
    out["rss_after_free_gb"] = _rss_gb()
    t0 = time.perf_counter()
    dm = mp.MosiPickleDataModule(path=path, dataset="bench-tokens", text="tokens", batch_size=32)
    dm.setup()
    out["setup_s_text_tokens"] = time.perf_counter() - t0
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def step_throughput(model_name: str, batch: int, seq: dict[str, int], repeats: int = 5) -> dict[str, Any]:
    """Samples/s of one training step (forward, L1 loss, backward, Adam step) on MOSEI-shaped random batches."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    dims = {"text": 768, "audio": 74, "vision": 35}
    cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{model_name}.yaml")
    model = instantiate(cfg, input_dims=dims, output_dim=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    lengths = {m: torch.randint(max(1, seq[m] // 2), seq[m] + 1, (batch,)) for m in dims}
    b = {
        "x": {m: torch.randn(batch, seq[m], d) for m, d in dims.items()},
        "lengths": lengths,
        "y": torch.randn(batch),
        "index": torch.arange(batch),
    }

    def step() -> None:
        opt.zero_grad()
        loss = torch.nn.functional.l1_loss(model(b).prediction.reshape(-1), b["y"])
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {
        "model": model_name,
        "batch": batch,
        "seq": seq,
        "step_ms": med * 1e3,
        "samples_per_s": batch / med,
    }


def run(args: Any) -> list[dict]:
    scale = float(getattr(args, "scale", 1.0))
    rows: list[dict] = []
    env = environment()
    with tempfile.TemporaryDirectory(dir=getattr(args, "tmp_dir", None)) as tmp:
        path = Path(tmp) / "unaligned_50.pkl"
        w = write_mosei_like(path, scale)
        code = f"import json,sys; from mmfusion.bench.data import _load_child; print(json.dumps(_load_child({str(path)!r})))"
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        if r.returncode != 0:
            raise RuntimeError(f"load benchmark failed: {r.stderr[-2000:]}")
        load = json.loads(r.stdout.strip().splitlines()[-1])
    rows.append({"bench": "mosei_pickle_load", "scale": scale, **w, **load, "env": env})
    batch = int(getattr(args, "batch_size", 32))
    for name, seq in (
        ("tfn", {"text": 50, "audio": 500, "vision": 500}),
        ("mfn", {"text": 50, "audio": 50, "vision": 50}),
    ):
        rows.append({"bench": "train_step", **step_throughput(name, batch, seq), "env": env})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the 16,326 training samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tmp-dir", default=None)
    p.add_argument("--out", type=Path, default=ROOT_DIR / "docs" / "results" / "bench_data.json")
    a = p.parse_args(argv)
    rows = run(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
