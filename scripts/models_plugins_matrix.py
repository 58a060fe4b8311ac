"""Every sentiment baseline x every sentiment loss plug-in, end to end through the config system (short runs).

Each cell is ``train.py model=<m> reg=<r> data=<data> ...`` run in-process (small synthetic data by default, a few
epochs) and records the test metrics, or the error. EMMA runs its own pipeline (``experiment=emma_pipeline``:
DAE pre-training, then the gated fine-tuning). Writes ``<out>.json`` and a Markdown table ``<out>.md``.

    python scripts/models_plugins_matrix.py --out docs/results/models_plugins [--data mosi_utterance --epochs 10]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import traceback
from pathlib import Path

from mmfusion.train import train
from mmfusion.utils.runtime import compose_train_cfg

MODELS = ["ef_lstm", "tfn", "lfn", "mfn", "magbert"]
REGS = [
    "none",
    "synergy_mmd",
    "synergy_kl",
    "mdm_kl",
    "mdm_f",
    "mdm_wasserstein",
    "contrastive",
    "dcca",
    "autoencoder",
    "emma",
]
SMALL = {
    "tfn": ["model.hidden=8", "model.text_hidden=32", "model.text_out=8", "model.post_fusion_dim=32"],
    "lfn": ["model.hidden=16", "model.text_hidden=32", "model.text_out=16"],
    "mfn": ["model.hidden={text:32,audio:16,vision:16}", "model.mem_dim=32"],
    "ef_lstm": ["model.hidden=64", "model.proj_dim=32"],
    "magbert": ["model.bert_layers=2", "data.max_tokens=24"],
}
SYNTH = [
    "data.n_train=512",
    "data.n_valid=128",
    "data.n_test=256",
    "data.seq_len=12",
    "data.min_len=4",
    "data.dims={text:32,audio:16,vision:16}",
]


def cell(model: str, reg: str, data: str, epochs: int, out_dir: Path) -> dict:
    ov = [
        f"model={model}",
        f"data={data}",
        f"trainer.max_epochs={epochs}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
    ]
    ov += SMALL.get(model, []) + (SYNTH if data == "synthetic" else [])
    ov += ["experiment=emma_pipeline"] if reg == "emma" else [f"reg={reg}"]
    t0 = time.time()
    try:
        result, _ = train(compose_train_cfg(ov, out_dir))
        test = result.get("test") or result.get("finetune", {}).get("test") or {}
        if not test and isinstance(result, dict):  # stage pipelines may nest their final result
            for v in result.values():
                if isinstance(v, dict) and isinstance(v.get("test"), dict):
                    test = v["test"]
        ok = bool(test) and all(math.isfinite(float(v)) for v in test.values() if isinstance(v, (int, float)))
        return {
            "model": model,
            "reg": reg,
            "ok": ok,
            "seconds": round(time.time() - t0, 1),
            "test": {k: test[k] for k in ("MAE", "Corr", "Has0_acc_2") if k in test},
        }
    except Exception as e:  # recorded, not hidden: the table shows the error
        return {
            "model": model,
            "reg": reg,
            "ok": False,
            "seconds": round(time.time() - t0, 1),
            "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
            "trace": traceback.format_exc()[-1500:],
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--regs", default=",".join(REGS))
    p.add_argument("--data", default="synthetic")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="docs/results/models_plugins")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.models.split(","):
            for r in a.regs.split(","):
                rows.append(cell(m, r, a.data, a.epochs, Path(tmp) / f"{m}_{r}"))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "trace"}), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"data": a.data, "epochs": a.epochs, "rows": rows}, indent=1)
    )
    regs = a.regs.split(",")
    lines = [
        f"Models x plug-ins, data={a.data}, {a.epochs} epochs (test MAE / Has0_acc_2; `ERR` = failed)",
        "",
        "| model | " + " | ".join(regs) + " |",
        "|---|" + "---|" * len(regs),
    ]
    for m in a.models.split(","):
        cells = []
        for r in regs:
            row = next(x for x in rows if x["model"] == m and x["reg"] == r)
            t = row.get("test", {})
            cells.append(f"{t['MAE']:.3f} / {t['Has0_acc_2']:.3f}" if row["ok"] and "MAE" in t else "ERR")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
