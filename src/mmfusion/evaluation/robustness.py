"""Robustness suite: ``python eval.py ckpt_path=... eval.robustness=default [eval.drop_mode=input]``.

One checkpoint is evaluated on the test split (``split=valid`` for validation) under every corruption of a suite
(``configs/eval_robustness/<name>.yaml``):

* **drop** each modality and each pair of modalities, defined by ``eval.drop_mode``:

  - ``input``: the modality's input features are zeroed (``corruption.py`` ``drop_<m>``). A BERT model reads text
    as token ids, not features, so ``input`` refuses to drop text for it (use ``unk`` or ``representation``);
  - ``representation``: the encoded unimodal representation ``h_m`` is zeroed between encoder and fusion, by a
    temporary gate installed with ``model.set_gate`` (wrapping any gate already there, e.g. EMMA's). Models that
    fuse sequences (EF-LSTM, MFN) receive ``gate_scales = 0`` for that modality, i.e. its whole sequence is
    zeroed where it enters the fusion;
  - ``unk``: text word pieces are replaced by the tokenizer's ``[UNK]`` (special tokens and padding kept), other
    modalities are zeroed as in ``input``. Needs a model reading ``batch["tokens"]``.

* **noise** on each modality at levels 0.1 ... 0.9 (std = level x the feature's std in the batch, valid steps only);
* **missing time steps** at rates 0.1 ... 0.9 (each valid step zeroed independently).

Random corruptions use ``Generator(seed * 100003 + batch_idx)``, exactly as ``eval.corrupt=...`` does, so a row
of the table equals ``python eval.py eval.corrupt=<spec>`` (input drop mode).

Outputs in the run folder: ``robustness.json`` (rows, curves, areas), ``robustness.csv`` (one row per condition),
``robustness_auc.csv`` and one PNG curve per corruption family. A curve starts at the clean score (level 0); its
area is the trapezoid rule over [0, max level], and ``auc_norm`` divides it by the level range (the mean score
over the range; for the clean model it equals the clean score), so different level grids stay comparable.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mmfusion.contract import GateOutput
from mmfusion.errors import ConfigError
from mmfusion.evaluation import corruption
from mmfusion.utils import runtime
from mmfusion.utils.report import save_json, write_csv

log = logging.getLogger(__name__)

DROP_MODES = ("input", "representation", "unk")
SUITE_DIR = runtime.CONFIG_DIR / "eval_robustness"  # follows MMFUSION_CONFIG_DIR


# -- the suite ---------------------------------------------------------------------------------------------------
def load_suite(spec: str | Mapping | None, config_dir: Path | None = None) -> dict[str, Any]:
    """``default`` -> ``configs/eval_robustness/default.yaml``; a mapping is used as is."""
    if isinstance(spec, Mapping) or OmegaConf.is_config(spec):
        return OmegaConf.to_container(OmegaConf.create(spec), resolve=True)  # type: ignore[arg-type]
    d = Path(config_dir or SUITE_DIR)
    path = d / f"{spec}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in d.glob("*.yaml"))
        raise ConfigError(f"eval.robustness: unknown suite {spec!r}; valid: {', '.join(valid)} (in {d})")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]


def _mods(value: Any, modalities: tuple[str, ...]) -> list[str]:
    if value in (None, "all"):
        return list(modalities)
    out = [str(v) for v in value]
    return out


def conditions(suite: Mapping[str, Any], modalities: tuple[str, ...]) -> list[dict[str, Any]]:
    """The list of conditions: ``{"name", "family", "modality", "level", "kind", "mods"}``."""
    out: list[dict[str, Any]] = [
        {"name": "clean", "family": "clean", "modality": "", "level": 0.0, "kind": "none", "mods": []}
    ]
    drop = suite.get("drop")
    if drop:
        if drop == "singles_and_pairs":
            sets = [[m] for m in modalities] + [list(p) for p in itertools.combinations(modalities, 2)]
        else:
            sets = [str(s).split("+") for s in drop]
        for s in sets:
            for m in s:
                if m not in modalities:
                    raise ConfigError(
                        f"eval.robustness.drop: unknown modality {m!r}; this model has {list(modalities)}"
                    )
            out.append(
                {
                    "name": "drop_" + "+".join(s),
                    "family": "drop",
                    "modality": "+".join(s),
                    "level": 1.0,
                    "kind": "drop",
                    "mods": s,
                }
            )
    noise = suite.get("noise") or {}
    for m in _mods(noise.get("modalities"), modalities) if noise else []:
        if m not in modalities:
            raise ConfigError(
                f"eval.robustness.noise: unknown modality {m!r}; this model has {list(modalities)}"
            )
        for lv in noise.get("levels", []):
            out.append(
                {
                    "name": f"noise_{m}:{float(lv):g}",
                    "family": f"noise_{m}",
                    "modality": m,
                    "level": float(lv),
                    "kind": "noise",
                    "mods": [m],
                }
            )
    miss = suite.get("missing_steps") or {}
    for m in (miss.get("modalities") or ["all"]) if miss else []:
        for r in miss.get("rates", []):
            out.append(
                {
                    "name": f"missing_{m}:{float(r):g}",
                    "family": f"missing_{m}",
                    "modality": m,
                    "level": float(r),
                    "kind": "missing",
                    "mods": [m],
                }
            )
    return out


# -- representation-level drop and [UNK] text --------------------------------------------------------------------
class DropGate(nn.Module):
    """Zero the unimodal representations of ``drop`` after any existing gate; scales ``0`` for sequence fusion."""

    def __init__(self, drop: list[str], inner: nn.Module | None = None) -> None:
        super().__init__()
        self.drop = set(drop)
        self.inner = inner

    def forward(self, unimodal: dict[str, Tensor], batch: Mapping[str, Any]) -> GateOutput:
        scales: dict[str, Tensor] = {}
        extras: dict[str, Any] = {}
        if self.inner is not None:
            inner: GateOutput = self.inner(unimodal, batch)
            unimodal, scales, extras = inner.unimodal, dict(inner.scales or {}), dict(inner.extras)
        out, new_scales = {}, {}
        for m, h in unimodal.items():
            s = scales.get(m, torch.ones(h.shape[0], device=h.device, dtype=h.dtype))
            if m in self.drop:
                h, s = torch.zeros_like(h), torch.zeros_like(s)
            out[m], new_scales[m] = h, s
        return GateOutput(out, scales=new_scales, extras=extras)


def unk_text(batch: Mapping[str, Any], unk_id: int) -> dict[str, Any]:
    """Replace every word piece of the text (not [CLS]/[SEP]/padding) by ``unk_id``."""
    tok = dict(batch["tokens"])
    ids = tok["input_ids"].clone()
    if "word_index" in tok:
        words = tok["word_index"] >= 0
    else:  # no alignment: every attended position but the first and the last ([CLS] ... [SEP])
        mask = tok["attention_mask"].bool()
        pos = torch.arange(mask.shape[1], device=mask.device)[None, :]
        words = mask & (pos > 0) & (pos < mask.long().sum(1, keepdim=True) - 1)
    ids[words] = int(unk_id)
    tok["input_ids"] = ids
    out = dict(batch)
    out["tokens"] = tok
    return out


# -- evaluation --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_condition(
    module: Any, loader: Any, cond: Mapping[str, Any], drop_mode: str, seed: int, unk_id: int | None = None
) -> dict[str, float]:
    """The task's metrics on the whole split under one condition (eval mode, no gradients)."""
    net = module.net
    mods = tuple(net.modalities)
    device = next(module.parameters()).device
    prev_gate = net.gate
    spec = None
    if cond["kind"] == "drop":
        if drop_mode == "representation":
            net.set_gate(DropGate(cond["mods"], prev_gate))
        else:
            rest = [m for m in cond["mods"] if not (drop_mode == "unk" and m == "text")]
            spec = "drop_" + "+".join(rest) if rest else None
    elif cond["kind"] == "noise":
        spec = f"noise_{cond['modality']}:{cond['level']}"
    elif cond["kind"] == "missing":
        spec = f"missing_{cond['modality']}:{cond['level']}"
    preds, ys = [], []
    try:
        for batch_idx, batch in enumerate(loader):
            batch = move_data_to_device(batch, device)
            if cond["kind"] == "drop" and "text" in cond["mods"] and drop_mode != "representation":
                if drop_mode == "unk":
                    if "tokens" not in batch:
                        raise ConfigError(
                            "eval.drop_mode=unk needs a model that reads text as tokens (BERT); "
                            "this data has no batch['tokens']: use input or representation"
                        )
                    batch = unk_text(batch, int(unk_id))
                elif "tokens" in batch:
                    raise ConfigError(
                        "eval.drop_mode=input zeroes text FEATURES, which this BERT model does not "
                        "read (it reads batch['tokens']); use eval.drop_mode=unk or representation"
                    )
            if spec:
                g = torch.Generator().manual_seed(seed * 100_003 + batch_idx)
                batch = corruption.apply(batch, spec, mods, g)
            out = net(batch)
            preds.append(out.prediction.detach().cpu())
            ys.append(batch["y"].detach().cpu())
    finally:
        net.set_gate(prev_gate)
    pred, y = torch.cat(preds), torch.cat(ys)
    metrics = dict(module.task.metrics(pred.numpy(), y.numpy()))
    metrics["loss"] = float(module.task.loss(pred, y))
    return {k: float(v) for k, v in metrics.items()}


def area(levels: list[float], values: list[float]) -> tuple[float, float]:
    """Trapezoid area under ``values`` over ``levels`` and the same divided by the level range."""
    x, v = np.asarray(levels, float), np.asarray(values, float)
    if len(x) < 2 or not np.all(np.isfinite(v)):
        return float("nan"), float("nan")
    a = float(np.sum((x[1:] - x[:-1]) * (v[1:] + v[:-1]) / 2.0))
    return a, a / float(x[-1] - x[0])


def curves(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, Any]]:
    """Per family (``noise_<m>``, ``missing_<m>``): levels (0 = clean first), metric values and areas."""
    clean = next(r for r in rows if r["family"] == "clean")
    fams: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["family"] not in ("clean", "drop"):
            fams.setdefault(r["family"], []).append(r)
    out = {}
    for fam, rs in fams.items():
        rs = sorted(rs, key=lambda r: r["level"])
        levels = [0.0] + [r["level"] for r in rs]
        c: dict[str, Any] = {"levels": levels, "metrics": {}, "auc": {}, "auc_norm": {}}
        for k in keys:
            vals = [clean["metrics"].get(k, math.nan)] + [r["metrics"].get(k, math.nan) for r in rs]
            c["metrics"][k] = vals
            c["auc"][k], c["auc_norm"][k] = area(levels, vals)
        out[fam] = c
    return out


def plot_curves(curv: dict[str, dict[str, Any]], key: str, out_dir: Path, title: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    paths = []
    groups: dict[str, list[str]] = {}
    for fam in curv:
        groups.setdefault(fam.split("_", 1)[0], []).append(fam)
    for kind, fams in groups.items():
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for fam in fams:
            c = curv[fam]
            ax.plot(
                c["levels"],
                c["metrics"][key],
                marker="o",
                ms=3,
                label=f"{fam.split('_', 1)[1]} (AUC {c['auc_norm'][key]:.3f})",
            )
        ax.set_xlabel("noise level (x feature std)" if kind == "noise" else "missing-step rate")
        ax.set_ylabel(key)
        ax.set_title(title or f"{key} under {kind}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"robustness_{kind}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def run_suite(
    module: Any,
    datamodule: Any,
    suite: Mapping[str, Any],
    drop_mode: str = "input",
    split: str = "test",
    seed: int = 0,
    out_dir: str | Path | None = None,
    loggers: list[Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every condition of ``suite``; write JSON/CSV/PNG to ``out_dir``; log to ``loggers``."""
    if drop_mode not in DROP_MODES:
        raise ConfigError(f"eval.drop_mode must be one of {DROP_MODES}, got {drop_mode!r}")
    module.eval()
    mods = tuple(module.net.modalities)
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    unk_id = None
    if drop_mode == "unk":
        from mmfusion.tokens import load_tokenizer

        tok_name = getattr(datamodule, "text_tokenizer", None)
        if not tok_name:
            raise ConfigError("eval.drop_mode=unk needs a BERT model (the data has no text_tokenizer)")
        unk_id = int(load_tokenizer(tok_name).unk_token_id)
    task = module.task
    keys = ["loss", *[k for k in task.summary_keys() if k != "loss"]]
    rows = []
    for cond in conditions(suite, mods):
        metrics = evaluate_condition(module, loader, cond, drop_mode, seed, unk_id)
        rows.append({k: cond[k] for k in ("name", "family", "modality", "level")} | {"metrics": metrics})
        log.info("%-22s %s", cond["name"], "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics))
    curv = curves(rows, keys)
    primary = task.monitor.split("/", 1)[-1]
    result = {
        "split": split,
        "drop_mode": drop_mode,
        "primary_metric": primary,
        "keys": keys,
        "rows": rows,
        "curves": curv,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "robustness.json", result)
        write_csv(
            out / "robustness.csv",
            [{k: r[k] for k in ("name", "family", "modality", "level")} | r["metrics"] for r in rows],
        )
        write_csv(
            out / "robustness_auc.csv",
            [
                {"family": f, "metric": k, "auc": c["auc"][k], "auc_norm": c["auc_norm"][k]}
                for f, c in curv.items()
                for k in keys
            ],
        )
        result["figures"] = [str(p) for p in plot_curves(curv, primary, out)]
    if loggers:
        log_results(result, loggers)
    return result


def log_results(result: Mapping[str, Any], loggers: list[Any]) -> None:
    flat = {f"robust/{r['name']}/{k}": v for r in result["rows"] for k, v in r["metrics"].items()}
    flat.update(
        {f"robust_auc/{fam}/{k}": v for fam, c in result["curves"].items() for k, v in c["auc_norm"].items()}
    )
    for lg in loggers:
        lg.log_metrics(flat, step=0)
        kind = type(lg).__name__
        for p in result.get("figures", []):
            name = f"robustness/{Path(p).stem}"
            if kind == "WandbLogger":
                import wandb

                lg.experiment.log({name: wandb.Image(p)})
                lg.experiment.log(
                    {
                        "robustness_table": wandb.Table(
                            columns=["name", *result["rows"][0]["metrics"].keys()],
                            data=[[r["name"], *r["metrics"].values()] for r in result["rows"]],
                        )
                    }
                )
            elif kind == "TensorBoardLogger":
                import matplotlib.image as mpimg

                img = mpimg.imread(p)
                lg.experiment.add_image(name, img[..., :3], dataformats="HWC")
        lg.save()


def evaluate_suite(cfg: DictConfig) -> dict[str, Any]:
    """Entry used by ``eval.py`` when ``eval.robustness`` is set: rebuild the run from the checkpoint's config,
    load its weights and run the suite; outputs go to ``cfg.paths.output_dir``."""
    import lightning.pytorch as pl

    from mmfusion.build import build_datamodule, build_module
    from mmfusion.evaluation.checkpoints import read_checkpoint
    from mmfusion.utils.instantiate import instantiate_dict

    ev = cfg.get("eval") or {}
    suite = load_suite(ev.get("robustness"))
    ck, run_cfg = read_checkpoint(cfg.ckpt_path)
    run_cfg.data = OmegaConf.merge(run_cfg.data, ev.get("data") or {})
    run_cfg.eval = {"corrupt": None}
    pl.seed_everything(int(cfg.get("seed", 1234)), workers=True, verbose=False)
    dm = build_datamodule(run_cfg)
    module = build_module(run_cfg, dm)
    module.load_state_dict(ck["state_dict"])
    module.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    loggers = list(instantiate_dict(cfg.get("logger")).values())
    result = run_suite(
        module,
        dm,
        suite,
        drop_mode=str(ev.get("drop_mode", "input")),
        split=str(cfg.get("split", "test")),
        seed=int(ev.get("corruption_seed", 0)),
        out_dir=cfg.paths.output_dir,
        loggers=loggers,
    )
    result["ckpt_path"] = str(cfg.ckpt_path)
    result["suite"] = suite
    save_json(Path(cfg.paths.output_dir) / "robustness.json", result)  # with the checkpoint and the suite
    return result


def print_table(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = [k for k in result.get("keys", []) if k in result["rows"][0]["metrics"]][:6] or list(
        result["rows"][0]["metrics"]
    )
    t = Table(title=f"Robustness ({result['split']} split, drop_mode={result['drop_mode']})")
    for k in ["condition", *keys]:
        t.add_column(k, justify="left" if k == "condition" else "right")
    for r in result["rows"]:
        t.add_row(r["name"], *[f"{r['metrics'][k]:.4f}" for k in keys])
    Console().print(t)
    primary = result["primary_metric"]
    a = Table(title=f"Area under each curve ({primary}; auc_norm = area / level range)")
    for k in ("corruption", "auc", "auc_norm"):
        a.add_column(k)
    for fam, c in result["curves"].items():
        a.add_row(fam, f"{c['auc'][primary]:.4f}", f"{c['auc_norm'][primary]:.4f}")
    Console().print(a)
