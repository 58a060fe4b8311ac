"""Run-time glue shared by ``train.py`` and ``eval.py``: config location, resolvers, error reporting, W&B
clean-up, checkpoint lookup."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmfusion.errors import MMFusionError
from mmfusion.utils.cli import exit_on_bad_overrides
from mmfusion.utils.wandb_offline import offline_unless_logged_in

log = logging.getLogger("mmfusion")

ROOT_DIR = Path(os.environ.get("MMFUSION_ROOT", Path(__file__).resolve().parents[3]))
CONFIG_DIR = Path(os.environ.get("MMFUSION_CONFIG_DIR", ROOT_DIR / "configs"))

if not OmegaConf.has_resolver("mmf_root"):
    OmegaConf.register_new_resolver("mmf_root", lambda: str(ROOT_DIR))


def compose_train_cfg(
    overrides: list[str], output_dir: str | Path | None = None, config_name: str = "train.yaml"
) -> DictConfig:
    """``configs/<config_name>`` composed with ``overrides`` outside the CLI, as ``train.py`` sees it: the Hydra
    config is included and registered (run names, tags and ``${hydra:...}`` resolve), and with ``output_dir`` the
    run's ``paths.output_dir`` and ``paths.log_dir`` point there. For scripts, benchmarks and tests."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir)
    return cfg


# -- sweeps: W&B grouping/tags, Optuna storage (configs/logger/wandb.yaml, configs/hparams_search/) ---------------
def _hydra_cfg() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_group() -> str | None:
    """In a multirun: the sweep folder relative to the log dir (e.g. ``multirun/2026-11-21/18-40-00-123``),
    which groups the sweep's runs in W&B; ``None`` for single runs."""
    hc = _hydra_cfg()
    if hc is None or str(hc.mode) != "RunMode.MULTIRUN":
        return None
    d = Path(str(hc.sweep.dir))
    return "/".join(d.parts[-3:])


def run_choices() -> dict[str, str]:
    hc = _hydra_cfg()
    if hc is None:
        return {}
    ch = hc.runtime.choices
    return {k: str(ch.get(k)) for k in ("model", "reg", "data", "experiment", "hparams_search") if ch.get(k)}


def run_tags(user_tags: Any, seed: Any) -> list[str]:
    """User tags + ``model:<m>``, ``reg:<r>``, ``data:<d>``, ``seed:<s>`` (+ experiment/search when set)."""
    tags = [str(t) for t in (user_tags or [])]
    tags += [f"{k}:{v}"[:64] for k, v in run_choices().items() if v not in ("None", "null")]
    if seed is not None:
        tags.append(f"seed:{seed}")
    return tags


def run_name(seed: Any) -> str | None:
    ch = run_choices()
    if "model" not in ch:  # e.g. eval.py: W&B picks a name
        return None
    parts = [ch.get("model", ""), ch.get("reg", ""), ch.get("data", "")]
    name = "-".join(p for p in parts if p) + (f"-s{seed}" if seed is not None else "")
    hc = _hydra_cfg()
    if hc is not None and str(hc.mode) == "RunMode.MULTIRUN":
        name += f"-j{hc.job.num}"
    return name


def sqlite_url(path: str) -> str:
    """``sqlite:///<absolute path>``, creating the folder (SQLite cannot create it)."""
    p = Path(path).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def checkpoint_run_dir(ckpt_path: Any, fallback: Any) -> str:
    """The training run a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` -> ``<run>``; else the checkpoint's
    folder), where ``eval.py`` writes its results (``<run>/eval/<time>``); ``fallback`` without a checkpoint."""
    if ckpt_path in (None, "", "???"):
        return str(fallback)
    p = Path(str(ckpt_path)).expanduser().resolve()
    return str(p.parent.parent if p.parent.name == "checkpoints" else p.parent)


for _name, _fn in (
    ("mmf_sweep_group", sweep_group),
    ("mmf_run_tags", run_tags),
    ("mmf_run_name", run_name),
    ("mmf_sqlite", sqlite_url),
    ("mmf_ckpt_run", checkpoint_run_dir),
    ("mmf_wandb_offline", offline_unless_logged_in),  # logger=wandb without a login
    ("mmf_direction", lambda mode: "maximize" if str(mode).startswith("max") else "minimize"),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def quiet_third_party() -> None:
    """Silence known noise (Lightning's adverts, torch pytree deprecation) but nothing of ours."""
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*The anonymous setting has no effect.*")
    warnings.filterwarnings(
        "ignore", message=".*callbacks used to create the checkpoint need to be provided.*"
    )
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda r: "litlogger" not in r.getMessage() and "litmodels" not in r.getMessage()
    )


def prepare_cli(config_dir: Path, config_name: str = "train.yaml") -> None:
    """Before Hydra parses argv: one-line errors for unknown choices and keys, ``trainer.<arg>=`` without ``+``,
    quiet logs."""
    exit_on_bad_overrides(config_dir, config_name)
    quiet_third_party()


def find_mmfusion_error(exc: BaseException) -> MMFusionError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MMFusionError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def task_wrapper(cfg: DictConfig) -> Iterator[None]:
    """Bad input -> ``error: <one line>`` on stderr and exit status 2; always close a W&B run (otherwise Hydra
    multirun jobs silently share one run id)."""
    quiet_third_party()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is bad input
        err = find_mmfusion_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        if sweep_group() is not None:  # multirun: the launcher records this job as failed; the sweep goes on
            raise _sweep_job_error(
                err
            ) from exc  # one line (not a traceback) when Hydra re-raises it at the end
        raise SystemExit(2) from None
    finally:
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.finish()


def _sweep_job_error(err: MMFusionError) -> Exception:
    """``err`` as an instance of its own class *and* Hydra's ``CompactHydraException``: sweepers still see the
    class (``DivergenceError`` -> a failed trial), and when Hydra's basic sweeper re-raises the first failed job
    after running all of them it prints one line instead of a traceback."""
    from hydra.errors import CompactHydraException

    hc = _hydra_cfg()
    num = OmegaConf.select(hc, "job.num", default=None, throw_on_missing=False) if hc is not None else None
    task = (
        OmegaConf.select(hc, "overrides.task", default=None, throw_on_missing=False)
        if hc is not None
        else None
    )
    job = "sweep job" + (f" {num}" if num is not None else "") + (f" ({' '.join(task)})" if task else "")
    cls = type(type(err).__name__, (type(err), CompactHydraException), {})
    return cls(f"error: {job} failed: {err}")


def resolve_ckpt_path(ckpt: str | None, cfg: DictConfig) -> str | None:
    """``ckpt_path=last`` -> the newest ``last*.ckpt`` under this run's output folder (resume); ``auto`` -> the
    same if there is one, else start from scratch (re-submitted cluster jobs)."""
    if ckpt in (None, "", "null"):
        return None
    if ckpt in ("last", "auto"):
        cands = sorted(Path(cfg.paths.output_dir).glob("**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not cands and ckpt == "auto":
            return None
        if not cands:
            raise MMFusionError(
                f"ckpt_path=last: no last.ckpt under {cfg.paths.output_dir}; set hydra.run.dir to the run to resume"
            )
        return str(cands[-1])
    if not Path(ckpt).is_file():
        raise MMFusionError(f"ckpt_path: file not found: {ckpt}")
    return str(ckpt)


def log_run_info(trainer: Any, module: Any, cfg: DictConfig) -> None:
    if not trainer.is_global_zero:
        return
    n = sum(p.numel() for p in module.net.parameters())
    plugins = ", ".join(module.plugins.keys()) or "none"
    log.info(
        "model=%s (%s parameters) reg=%s data=%s -> %s",
        type(module.net).__name__,
        f"{n:,}",
        plugins,
        type(trainer.datamodule).__name__
        if getattr(trainer, "datamodule", None)
        else cfg.data.get("_target_"),
        cfg.paths.output_dir,
    )
    for lg in trainer.loggers:
        with contextlib.suppress(Exception):
            from mmfusion.utils.instantiate import to_container

            lg.log_hyperparams({**to_container(cfg), "model/params/total": n})


def objective(result: dict[str, Any], cfg: DictConfig) -> float | None:
    """What a sweeper optimises: ``optimized_metric``; a non-finite value (diverged run, NaN correlation) becomes
    the worst value for the sweep's direction (``+inf`` when minimising, ``-inf`` when maximising), because
    Optuna 2.10 cannot record a NaN objective (the Hydra plugin then crashes the study)."""
    import math

    value = metric_value(result, cfg.get("optimized_metric"))
    if value is None or math.isfinite(value):
        return value
    hc = _hydra_cfg()
    direction = str(getattr(getattr(hc, "sweeper", None), "direction", None) or "")
    if not direction:
        mode = str(((cfg.get("data") or {}).get("task") or {}).get("mode", "min"))
        direction = "maximize" if mode.startswith("max") else "minimize"
    worst = float("-inf") if "max" in direction else float("inf")
    log.warning(
        "optimized_metric %s = %s: reporting %s to the sweeper", cfg.get("optimized_metric"), value, worst
    )
    return worst


def metric_value(result: dict[str, Any], name: str | None) -> float | None:
    """The metric an Optuna sweep optimises, e.g. ``val/MAE`` -> ``result['val']['MAE']``."""
    if not name:
        return None
    split, _, key = str(name).partition("/")
    value = result.get(split, {}).get(key)
    if value is None:
        raise MMFusionError(
            f"optimized_metric {name!r} was not computed; available: {sorted(result.get(split, {}))}"
        )
    return float(value)
