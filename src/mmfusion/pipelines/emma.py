"""EMMA's training pipeline (Werenne 2019; the module is inserted into an already-trained model).

1. baseline: ``reg=none`` training, keep the best-on-validation checkpoint;
2. :func:`pretrain` (``stage=emma_pretrain``): load and freeze the baseline, collect the unimodal representations
   of the training split, train one tied DAE per modality, save them with their training-energy statistics;
3. :func:`finetune` (``stage=emma_finetune``): insert EMMA (``reg=emma``), train it -- and, by default, the
   fusion and head; encoders stay frozen -- with abnormal modalities injected into the training batches
   (:mod:`mmfusion.callbacks.emma_inject`); then evaluate on the test split clean, with each modality noised and with each
   modality missing, for the baseline and for the EMMA model (same corrupted inputs for both).

:func:`pipeline` (``experiment=emma_pipeline``) runs all three; each stage can start from a given checkpoint
(``baseline_ckpt``, ``dae_path``). Each stage is called by ``train.py`` as ``instantiate(cfg.stage,
_partial_=True)(cfg)`` and returns its metrics (also written to ``<output_dir>/metrics.json``).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mmfusion.build import build_datamodule, build_module
from mmfusion.callbacks.emma_inject import AbnormalInjector, InjectAbnormal
from mmfusion.contract import FusionModel
from mmfusion.data.base import MultimodalDataModule
from mmfusion.emma.dae import fit_dae
from mmfusion.emma.store import save_daes
from mmfusion.errors import ConfigError
from mmfusion.evaluation import corruption
from mmfusion.tasks.module import FusionModule
from mmfusion.tasks.objectives import Task, to_numpy
from mmfusion.utils.instantiate import instantiate, instantiate_dict
from mmfusion.utils.report import save_json
from mmfusion.utils.safe_load import check_checkpoint, load_checkpoint

log = logging.getLogger(__name__)
TRAINABLE = ("emma", "fusion", "all")


# -- helpers ------------------------------------------------------------------------------------------------------
def sub_config(
    cfg: DictConfig, output_dir: str | Path, *, reg: Any = None, keep_reg: bool = False
) -> DictConfig:
    """A copy of the run config for one stage: own output folder, no ``stage``, ``reg`` replaced."""
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.stage = None
        c.paths.output_dir = str(output_dir)
        if not keep_reg:
            c.reg = OmegaConf.create(reg or {})
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return c


def _require(path: str | None, key: str) -> str:
    if not path:
        raise ConfigError(f"{key} is required (a path); run experiment=emma_pipeline to produce it")
    if not Path(path).is_file():
        raise ConfigError(f"{key}: file not found: {path}")
    return str(path)


def read_state_dict(ckpt_path: str) -> dict[str, torch.Tensor]:
    """A baseline checkpoint's ``state_dict``, read with ``torch.load(weights_only=True)`` (never runs code from
    the file; one-line error for a hostile, truncated or foreign file)."""
    ckpt = load_checkpoint(ckpt_path, "stage.base_ckpt")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"{ckpt_path}: not a Lightning checkpoint (no 'state_dict' key)")
    return ckpt["state_dict"]


def load_net_weights(
    module: FusionModule, ckpt_path: str, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Load a baseline checkpoint's model weights (``state``: its already-read ``state_dict``); only EMMA's gate
    may be missing from it."""
    state = read_state_dict(ckpt_path) if state is None else state
    net_state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    res = module.net.load_state_dict(net_state, strict=False)
    missing = [k for k in res.missing_keys if not k.startswith("gate.")]
    if missing or res.unexpected_keys:
        raise ConfigError(
            f"{ckpt_path}: does not match model {type(module.net).__name__} of this config "
            f"(missing {missing[:5]}, unexpected {list(res.unexpected_keys)[:5]}); use the same model "
            f"and data options as the baseline run"
        )


@torch.no_grad()
def collect_unimodal(net: FusionModel, dm: MultimodalDataModule, split: str) -> dict[str, torch.Tensor]:
    """The (pre-gate) unimodal representations of a whole split, ``{m: (N, d_m)}``, in eval mode."""
    was_training = net.training
    net.eval()
    out: dict[str, list[torch.Tensor]] = {m: [] for m in net.modalities}
    for batch in dm._loader(split, shuffle=False):
        enc = net.encode(batch)
        for m in net.modalities:
            out[m].append(enc.unimodal[m].detach().float().cpu())
    net.train(was_training)
    return {m: torch.cat(v) for m, v in out.items()}


def encoder_parameter_ids(net: FusionModel, batch: dict[str, Any]) -> set[int]:
    """Ids of the parameters the unimodal representations depend on (found by autograd, model-agnostic)."""
    params = [p for n, p in net.named_parameters() if not n.startswith("gate.")]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    enc = net.encode(batch)
    total = sum(u.float().sum() for u in enc.unimodal.values())
    grads = torch.autograd.grad(total, params, allow_unused=True)
    for p, f in zip(params, flags):
        p.requires_grad_(f)
    return {id(p) for p, g in zip(params, grads) if g is not None}


def set_trainable(net: FusionModel, trainable: str, batch: dict[str, Any]) -> dict[str, int]:
    """Freeze what is not trained: ``emma`` = the gate only; ``fusion`` = gate + everything downstream of the
    encoders; ``all`` = everything. The DAEs are always frozen."""
    if trainable not in TRAINABLE:
        raise ConfigError(f"stage.trainable must be one of {TRAINABLE}, got {trainable!r}")
    enc_ids = encoder_parameter_ids(net, batch) if trainable == "fusion" else set()
    counts = {"trainable": 0, "frozen": 0}
    for name, p in net.named_parameters():
        if name.startswith("gate.daes."):
            on = False
        elif name.startswith("gate."):
            on = True
        else:
            on = trainable == "all" or (trainable == "fusion" and id(p) not in enc_ids)
        p.requires_grad_(on)
        counts["trainable" if on else "frozen"] += p.numel()
    return counts


def corruption_specs(modalities: tuple[str, ...], noise_levels: list[float]) -> list[str]:
    return [
        "none",
        *[f"noise_{m}:{lv:g}" for lv in noise_levels for m in modalities],
        *[f"drop_{m}" for m in modalities],
    ]


@torch.no_grad()
def evaluate_corruptions(
    net: FusionModel,
    task: Task,
    dm: MultimodalDataModule,
    specs: list[str],
    split: str = "test",
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Task metrics (and EMMA's mean alpha/beta/system energy if present) under each corruption spec. The
    corruption of batch i uses the generator seed ``(seed, i)``, so two models see identical inputs."""
    net.eval()
    mods = tuple(net.modalities)
    results = {}
    for spec in specs:
        preds, ys, alphas, betas, energy = [], [], [], [], []
        for i, batch in enumerate(dm._loader(split, shuffle=False)):
            g = torch.Generator().manual_seed(seed * 100_003 + i)
            out = net(corruption.apply(batch, spec, mods, g))
            preds.append(out.prediction.detach().cpu())
            ys.append(batch["y"].detach().cpu())
            if "emma/alpha" in out.extras:
                alphas.append(out.extras["emma/alpha"].cpu())
                betas.append(out.extras["emma/beta"].cpu())
                energy.append(out.extras["emma/energy"].cpu())
        r: dict[str, Any] = {
            k: float(v) for k, v in task.metrics(to_numpy(torch.cat(preds)), to_numpy(torch.cat(ys))).items()
        }
        if alphas:
            a, b = torch.cat(alphas), torch.cat(betas)
            r["alpha"] = {m: float(a[:, j].mean()) for j, m in enumerate(mods)}
            r["beta"] = {m: float(b[:, j].mean()) for j, m in enumerate(mods)}
            r["system_energy"] = float(torch.cat(energy).mean())
        results[spec] = r
    return results


def summarize(res: dict[str, dict[str, Any]], metric: str) -> dict[str, float]:
    """``clean``, ``noise=<level>`` (mean over the noised modalities) and ``missing`` (mean over the dropped
    modalities) of one metric."""
    out = {"clean": res["none"][metric]}
    groups: dict[str, list[float]] = {}
    for k, v in res.items():
        if k.startswith("noise_"):
            groups.setdefault(f"noise={k.rsplit(':', 1)[-1]}", []).append(v[metric])
        elif k.startswith("drop_"):
            groups.setdefault("missing", []).append(v[metric])
    out.update({k: float(np.mean(v)) for k, v in groups.items()})
    return out


def _trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback], max_epochs: int | None) -> pl.Trainer:
    callbacks = list(instantiate_dict(cfg.get("callbacks")).values()) + extra_callbacks
    loggers = list(instantiate_dict(cfg.get("logger")).values())
    kw: dict[str, Any] = {"callbacks": callbacks, "logger": loggers or False}
    if max_epochs is not None:
        kw["max_epochs"] = int(max_epochs)
    return instantiate(cfg.trainer, **kw)


# -- stages -------------------------------------------------------------------------------------------------------
def baseline(cfg: DictConfig) -> dict[str, Any]:
    """Stage 1: the plain ``reg=none`` run of this config (``mmfusion.train.train``)."""
    from mmfusion.train import train

    result, _ = train(cfg)
    return result


def pretrain(
    cfg: DictConfig,
    base_ckpt: str | None = None,
    hidden: int | float = 2.0,
    noise_std: float = 0.3,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    standardize: bool = True,
    dae_file: str = "emma_dae.pt",
) -> dict[str, Any]:
    """Stage 2 (``stage=emma_pretrain``): DAEs on the frozen baseline's training representations.

    ``hidden``: an int (units) or a float (a multiple of the modality's dimension; 2.0 = overcomplete).
    """
    base_ckpt = _require(base_ckpt, "stage.base_ckpt")
    base_state = read_state_dict(base_ckpt)  # before anything is built
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    c = sub_config(cfg, out_dir)
    dm = build_datamodule(c)
    module = build_module(c, dm)
    load_net_weights(module, base_ckpt, base_state)
    module.net.requires_grad_(False)
    t0 = time.perf_counter()
    reps = collect_unimodal(module.net, dm, "train")
    reps_val = collect_unimodal(module.net, dm, "valid")
    t_collect = time.perf_counter() - t0
    daes, fits = {}, {}
    for m, x in reps.items():
        units = int(hidden) if isinstance(hidden, int) else max(1, int(round(float(hidden) * x.shape[1])))
        daes[m], rep = fit_dae(
            x,
            units,
            noise_std,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            standardize=standardize,
            x_val=reps_val[m],
            seed=int(cfg.get("seed") or 0),
        )
        fits[m] = {
            "hidden": units,
            "dim": int(x.shape[1]),
            "n_train": int(x.shape[0]),
            "epochs": epochs,
            "train_loss": rep.train_loss,
            "val_loss": rep.val_loss,
            "seconds": rep.seconds,
        }
        log.info(
            "EMMA DAE %s: dim %d, %d hidden, loss %.4f (val %.4f), %.1fs",
            m,
            x.shape[1],
            units,
            rep.train_loss,
            rep.val_loss,
            rep.seconds,
        )
    path = out_dir / dae_file
    blob = save_daes(path, daes, reps, fits)
    val = evaluate_corruptions(module.net, module.task, dm, ["none"], split="valid")[
        "none"
    ]  # the frozen baseline's
    result = {
        "stage": "emma_pretrain",
        "base_ckpt": base_ckpt,
        "dae_path": str(path),
        "dae": fits,
        "val": val,
        "collect_seconds": t_collect,
        "fit_seconds": sum(f["seconds"] for f in fits.values()),
        "v_min": blob["v_min"],
        "v_std": blob["v_std"],
    }
    save_json(out_dir / "metrics.json", result)
    return result


def finetune(
    cfg: DictConfig,
    base_ckpt: str | None = None,
    dae_path: str | None = None,
    trainable: str = "fusion",
    noise_rate: float = 0.25,
    drop_rate: float = 0.25,
    noise_level: float | list[float] = (0.5, 3.0),
    max_corrupted: int | None = None,
    max_epochs: int | None = 10,
    eval_noise: float | list[float] = (1.0, 3.0),
    use_emma: bool = True,
    seed: int | None = None,
) -> dict[str, Any]:
    """Stage 3 (``stage=emma_finetune``): insert EMMA into the baseline and train it with injected abnormal
    modalities; evaluate baseline and EMMA on the clean, noised and missing-modality test split.

    ``use_emma: false`` is the control: the same fine-tuning (injection, trainable part) without EMMA.
    """
    base_ckpt = _require(base_ckpt, "stage.base_ckpt")
    base_state = read_state_dict(base_ckpt)  # before anything is built
    out_dir = Path(cfg.paths.output_dir)
    seed = int(cfg.get("seed") or 0) if seed is None else int(seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    if use_emma:
        if "emma" not in (cfg.get("reg") or {}):
            raise ConfigError("stage=emma_finetune needs reg=emma (the EMMA module's settings)")
        reg = OmegaConf.to_container(cfg.reg.emma, resolve=True)
        reg["dae_path"] = _require(dae_path or reg.get("dae_path"), "stage.dae_path")
        check_checkpoint(reg["dae_path"], "stage.dae_path")  # before anything is built
        reg_cfg = {"emma": reg}
    else:
        reg_cfg = {}
    c = sub_config(cfg, out_dir, reg=reg_cfg)
    dm = build_datamodule(c)

    # the baseline, unchanged, for the comparison
    base_module = build_module(sub_config(cfg, out_dir), dm)
    load_net_weights(base_module, base_ckpt, base_state)

    module = build_module(c, dm)
    load_net_weights(module, base_ckpt, base_state)
    first = next(iter(dm._loader("train", shuffle=False)))
    counts = set_trainable(module.net, trainable, first)
    noise_level = [float(v) for v in noise_level] if hasattr(noise_level, "__iter__") else float(noise_level)
    injector = AbnormalInjector(
        tuple(module.net.modalities), noise_rate, drop_rate, noise_level, max_corrupted
    )
    trainer = _trainer(c, [InjectAbnormal(injector, seed)], max_epochs)
    trainer.fit(module, datamodule=dm)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        module.load_state_dict(load_checkpoint(best, "best checkpoint")["state_dict"])
    module.to("cpu")

    levels = [float(v) for v in eval_noise] if hasattr(eval_noise, "__iter__") else [float(eval_noise)]
    specs = corruption_specs(tuple(module.net.modalities), levels)
    name = "emma" if use_emma else "control"
    res = {
        "baseline": evaluate_corruptions(base_module.net, base_module.task, dm, specs, seed=seed),
        name: evaluate_corruptions(module.net, module.task, dm, specs, seed=seed),
    }
    metric = module.task.monitor.split("/", 1)[-1]
    result = {
        "stage": "emma_finetune" if use_emma else "emma_control",
        "base_ckpt": base_ckpt,
        "dae_path": reg_cfg.get("emma", {}).get("dae_path"),
        "best_ckpt": best or None,
        "trainable": trainable,
        "parameters": counts,
        "injection": {
            "noise_rate": noise_rate,
            "drop_rate": drop_rate,
            "noise_level": noise_level,
            "max_corrupted": injector.max_corrupted,
        },
        "metric": metric,
        "summary": {k: summarize(v, metric) for k, v in res.items()},
        "val": evaluate_corruptions(module.net, module.task, dm, ["none"], split="valid", seed=seed)["none"],
        "test": res[name]["none"],
        "robustness": res,
    }
    save_json(out_dir / "metrics.json", result)
    return result


def pipeline(
    cfg: DictConfig,
    baseline_ckpt: str | None = None,
    dae_path: str | None = None,
    pretrain: dict[str, Any] | None = None,
    finetune: dict[str, Any] | None = None,
    control: bool = False,
    **_: Any,
) -> dict[str, Any]:
    """``experiment=emma_pipeline``: baseline -> DAE pre-training -> EMMA fine-tuning (-> optional control).
    ``baseline_ckpt`` / ``dae_path`` skip the stages that produce them."""
    out = Path(cfg.paths.output_dir)
    skip = ("base_ckpt", "dae_path", "use_emma")  # set by the pipeline itself
    pre = {k: v for k, v in dict(pretrain or {}).items() if not str(k).startswith("_") and k not in skip}
    ft = {k: v for k, v in dict(finetune or {}).items() if not str(k).startswith("_") and k not in skip}
    result: dict[str, Any] = {"stage": "emma_pipeline"}
    if not baseline_ckpt:
        b = baseline(sub_config(cfg, out / "baseline"))
        baseline_ckpt = b.get("best_ckpt")
        if not baseline_ckpt:
            raise ConfigError(
                "the baseline stage produced no checkpoint (is callbacks.model_checkpoint off?)"
            )
        result["baseline"] = {k: b[k] for k in ("best_ckpt", "val", "test") if k in b}
    if not dae_path:
        p = _pretrain_fn(sub_config(cfg, out / "pretrain", keep_reg=True), base_ckpt=baseline_ckpt, **pre)
        dae_path = p["dae_path"]
        result["pretrain"] = p
    f = _finetune_fn(
        sub_config(cfg, out / "finetune", keep_reg=True), base_ckpt=baseline_ckpt, dae_path=dae_path, **ft
    )
    result["finetune"] = {
        k: f[k] for k in ("best_ckpt", "summary", "robustness", "trainable", "injection", "metric")
    }
    if control:
        k = _finetune_fn(
            sub_config(cfg, out / "control", keep_reg=True), base_ckpt=baseline_ckpt, use_emma=False, **ft
        )
        result["control"] = {a: k[a] for a in ("best_ckpt", "summary", "robustness")}
    result["summary"] = {**f["summary"], **(result.get("control", {}).get("summary", {}))}
    result["val"], result["test"] = f["val"], f["test"]  # EMMA model, clean (what sweepers optimise)
    save_json(out / "metrics.json", result)
    return result


_pretrain_fn, _finetune_fn = pretrain, finetune
