"""Config validation right after composition, before any data or model is built.

Every check raises :class:`~mmfusion.errors.ConfigError` with one line ``<key>=<value>: expected <what>`` (plus a
spelling suggestion for unknown keys), which the entry points print as ``error: ...`` with exit status 2.

What is checked (``check_train_cfg``):

- ``seed``: an integer in [0, 2**32 - 1] or null; ``train``/``test``: booleans.
- ``trainer.*``: the keys are ``lightning.pytorch.Trainer`` arguments; epochs/steps/batch limits/devices/precision
  have the types and ranges the Trainer accepts (``max_epochs >= 1``; ``-1`` only with ``max_steps`` or
  ``max_time``).
- ``data.*``: ``batch_size >= 1``, ``num_workers >= 0``; the task's ``monitor`` is a ``val/`` metric and ``mode``
  is min|max; every key is an argument of the datamodule (or task) class.
- ``optim.*``: ``lr > 0``, ``weight_decay >= 0``, ``grad_clip_val`` null or > 0, the scheduler interval and the
  clipping algorithm are known words; a learning rate >= 1 is logged as a warning.
- ``model.*`` and ``reg.<name>.*``: every key is an argument of the ``_target_`` class; scalar values have the
  type of the argument's default (a number where the default is a number, a boolean where it is a boolean);
  ``*dropout*`` in [0, 1); ``lr``/``*_lr`` > 0; ``weight``/``*_weight`` >= 0; widths, depths and head counts >= 1.
- the model and the data fit together: arguments the model requires from the data (e.g. MCAN's
  ``vocab_size``) must be among those the datamodule provides.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import math
import re
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mmfusion.errors import ConfigError

log = logging.getLogger(__name__)

_MISSING = object()
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
ACCELERATORS = {"auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu", "xla"}
PRECISIONS = {
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "64",
    "32",
    "16",
    "bf16",
}
TRAINER_BOOLS = (
    "enable_checkpointing",
    "enable_progress_bar",
    "enable_model_summary",
    "benchmark",
    "inference_mode",
    "use_distributed_sampler",
    "detect_anomaly",
    "barebones",
    "sync_batchnorm",
    "enable_autolog_hparams",
)
# names of integer arguments that count units (widths, depths, heads): >= 1
_POSITIVE_INT = re.compile(r"(^|_)(hidden|dim|layers|heads|rank|ff|window|glimpses|mlp|out|unroll)$")


# -- value helpers ------------------------------------------------------------------------------------------------
def _show(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    return repr(value)


def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{key}={_show(value)}: expected {expected}")


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (int or float, not a bool), else None. Strings are not
    numbers here: Hydra and OmegaConf already parse ``1e-3``, ``3`` and ``nan`` on the command line and in YAML."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def as_int(value: Any) -> int | None:
    """``value`` when it is an int (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def get(cfg: DictConfig, key: str, default: Any = _MISSING) -> Any:
    """``cfg[key]`` (dotted) resolved; a value that does not resolve is a one-line ConfigError."""
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_missing=True)
    except Exception as exc:  # noqa: BLE001 - interpolation/missing errors become one line
        raise ConfigError(f"{key}: {str(exc).splitlines()[0]}") from None
    return value


def require_int(
    key: str,
    value: Any,
    lo: int | None = None,
    hi: int | None = None,
    allow: Iterable = (),
    expected: str | None = None,
) -> None:
    if value is None and None in tuple(allow):
        return
    i = as_int(value)
    if i is not None and i in tuple(allow):
        return
    rng = f" >= {lo}" if lo is not None and hi is None else (f" in [{lo}, {hi}]" if lo is not None else "")
    if i is None or (lo is not None and i < lo) or (hi is not None and i > hi):
        raise _fail(key, value, expected or f"an integer{rng}")


def require_number(
    key: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    nullable: bool = False,
    expected: str | None = None,
) -> float | None:
    if value is None and nullable:
        return None
    x = as_number(value)
    ok = x is not None and math.isfinite(x)
    if ok and lo is not None:
        ok = x > lo if lo_open else x >= lo
    if ok and hi is not None:
        ok = x < hi if hi_open else x <= hi
    if not ok:
        if expected is None:
            parts = []
            if lo is not None:
                parts.append(f"{'>' if lo_open else '>='} {lo:g}")
            if hi is not None:
                parts.append(f"{'<' if hi_open else '<='} {hi:g}")
            expected = (
                "a number" + (" " + " and ".join(parts) if parts else "") + (" or null" if nullable else "")
            )
        raise _fail(key, value, expected)
    return x


def require_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise _fail(key, value, "one of " + ", ".join(str(c) for c in choices))


def require_bool(key: str, value: Any, nullable: bool = False) -> None:
    if isinstance(value, bool) or (value is None and nullable):
        return
    raise _fail(key, value, "true or false" + (" or null" if nullable else ""))


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (difflib, ratio >= 0.6), or None."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean '<prefix>x'?"`` for the closest candidate, else ``""``."""
    c = closest(name, candidates)
    return f"; did you mean {prefix + c!r}?" if c else ""


# -- targets ------------------------------------------------------------------------------------------------------
def locate(target: str, key: str) -> Any:
    module, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{key}._target_={target!r}: cannot import it ({exc})") from None


def signature_params(obj: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The named parameters of a class/function (``self`` dropped) and whether it takes ``**kwargs``."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}, True
    params.pop("self", None)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {
        n: p
        for n, p in params.items()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    return named, var_kw


def _check_by_name(key: str, name: str, value: Any) -> None:
    """Range rules that follow from an argument's name (applied to scalars and to the values of a mapping)."""
    values = list(value.values()) if isinstance(value, dict) else [value]
    for v in values:
        if v is None or isinstance(v, list | dict):
            continue
        if "dropout" in name:
            require_number(key, v, 0.0, 1.0, hi_open=True, expected="a dropout probability in [0, 1)")
        elif name == "lr" or name.endswith("_lr"):
            require_number(key, v, 0.0, lo_open=True, expected="a learning rate > 0")
        elif name == "weight" or name.endswith("_weight"):
            require_number(key, v, 0.0, expected="a number >= 0")
        elif _POSITIVE_INT.search(name) and as_number(v) is not None and as_int(v) is not None:
            require_int(key, v, 1)


def check_target_node(node: DictConfig, prefix: str, skip: Iterable[str] = ()) -> None:
    """Keys of an ``_target_`` node against its class's arguments; scalar types against the defaults' types."""
    target = get(node, "_target_", None)
    if not target:
        return
    obj = locate(target, prefix)
    params, var_kw = signature_params(obj)
    skip = set(skip)
    for name in node:
        name = str(name)
        if name in INSTANTIATE_KEYS or name in skip:
            continue
        key = f"{prefix}.{name}"
        if params and name not in params and not var_kw:
            raise ConfigError(
                f"{key}: unknown argument of {obj.__name__}{suggest(name, params)} "
                f"(valid: {', '.join(sorted(params))})"
            )
        raw = get(node, name)
        value = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else raw
        p = params.get(name)
        default = p.default if p is not None else inspect.Parameter.empty
        if value is not None and not isinstance(value, list | dict):
            if isinstance(default, bool):
                require_bool(key, value)
            elif isinstance(default, int | float) and as_number(value) is None:
                kind = "an integer" if isinstance(default, int) else "a number"
                raise _fail(key, value, kind)
        _check_by_name(key, name, value)


# -- sections -----------------------------------------------------------------------------------------------------
def check_seed(cfg: DictConfig) -> None:
    require_int(
        "seed",
        get(cfg, "seed", None),
        0,
        2**32 - 1,
        allow=(None,),
        expected="an integer in [0, 4294967295] or null",
    )


def check_trainer(cfg: DictConfig) -> None:
    tr = cfg.get("trainer")
    if not tr:
        return
    from lightning.pytorch import Trainer

    params, _ = signature_params(Trainer)
    for name in tr:
        name = str(name)
        if name in INSTANTIATE_KEYS:
            continue
        if name in ("logger", "callbacks"):
            raise ConfigError(f"trainer.{name}: set by the run; choose it with {name}=<config> instead")
        if name not in params:
            raise ConfigError(f"trainer.{name}: unknown Trainer argument{suggest(name, params)}")
    g = lambda k: get(tr, k, None)  # noqa: E731
    max_steps = g("max_steps")
    require_int(
        "trainer.max_steps", max_steps, -1, allow=(None,), expected="an integer >= 1, or -1 (no limit)"
    )
    if max_steps is not None and as_int(max_steps) == 0:
        raise _fail("trainer.max_steps", max_steps, "an integer >= 1, or -1 (no limit)")
    max_epochs = g("max_epochs")
    unlimited_ok = (max_steps is not None and as_int(max_steps) > 0) or g("max_time") is not None
    require_int(
        "trainer.max_epochs",
        max_epochs,
        1,
        allow=(None, -1) if unlimited_ok else (None,),
        expected="an integer >= 1" + (" or -1" if unlimited_ok else ""),
    )
    require_int("trainer.min_epochs", g("min_epochs"), 0, allow=(None,))
    require_int("trainer.min_steps", g("min_steps"), 0, allow=(None,))
    if (me := as_int(max_epochs)) and me > 0 and (mn := as_int(g("min_epochs"))) and mn > me:
        raise _fail("trainer.min_epochs", g("min_epochs"), f"at most trainer.max_epochs ({me})")
    for k in (
        "limit_train_batches",
        "limit_val_batches",
        "limit_test_batches",
        "limit_predict_batches",
        "overfit_batches",
    ):
        v = g(k)
        if v is None:
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            require_int(f"trainer.{k}", v, 0)
        else:
            require_number(
                f"trainer.{k}",
                v,
                0.0,
                1.0,
                expected="a number of batches (integer >= 0) or a fraction in [0, 1]",
            )
    v = g("val_check_interval")
    if v is not None:
        if isinstance(v, int) and not isinstance(v, bool):
            require_int("trainer.val_check_interval", v, 1)
        else:
            require_number(
                "trainer.val_check_interval",
                v,
                0.0,
                1.0,
                lo_open=True,
                expected="a number of batches (integer >= 1) or a fraction in (0, 1]",
            )
    v = g("fast_dev_run")
    if v is not None and not isinstance(v, bool):
        require_int("trainer.fast_dev_run", v, 0, expected="true/false or a number of batches >= 0")
    require_int("trainer.check_val_every_n_epoch", g("check_val_every_n_epoch"), 1, allow=(None,))
    require_int("trainer.log_every_n_steps", g("log_every_n_steps"), 1, allow=(None,))
    require_int("trainer.num_sanity_val_steps", g("num_sanity_val_steps"), -1, allow=(None,))
    require_int("trainer.accumulate_grad_batches", g("accumulate_grad_batches"), 1, allow=(None,))
    require_int("trainer.num_nodes", g("num_nodes"), 1, allow=(None,))
    require_int(
        "trainer.reload_dataloaders_every_n_epochs", g("reload_dataloaders_every_n_epochs"), 0, allow=(None,)
    )
    require_number("trainer.gradient_clip_val", g("gradient_clip_val"), 0.0, nullable=True)
    if g("gradient_clip_algorithm") is not None:
        require_choice("trainer.gradient_clip_algorithm", g("gradient_clip_algorithm"), ("norm", "value"))
    if (acc := g("accelerator")) is not None and isinstance(acc, str):
        require_choice("trainer.accelerator", acc, sorted(ACCELERATORS))
    prec = g("precision")
    if prec is not None and str(prec) not in PRECISIONS:
        raise _fail("trainer.precision", prec, "one of " + ", ".join(sorted(PRECISIONS)))
    dev = g("devices")
    if dev is not None and not (isinstance(dev, list | ListConfig) or dev == "auto"):
        require_int(
            "trainer.devices", dev, 1, allow=(-1,), expected="an integer >= 1, -1, 'auto' or a list of ids"
        )
    det = g("deterministic")
    if det is not None and not isinstance(det, bool) and det != "warn":
        raise _fail("trainer.deterministic", det, "true, false or 'warn'")
    for k in TRAINER_BOOLS:
        require_bool(f"trainer.{k}", g(k), nullable=True)


def check_data(cfg: DictConfig) -> None:
    data = cfg.get("data")
    if not data:
        return
    require_int("data.batch_size", get(data, "batch_size", 1), 1)
    require_int("data.eval_batch_size", get(data, "eval_batch_size", None), 1, allow=(None,))
    require_int("data.num_workers", get(data, "num_workers", 0), 0)
    task = data.get("task")
    if task:
        mon = get(task, "monitor", None)
        if mon is not None and not str(mon).startswith("val/"):
            raise _fail(
                "data.task.monitor", mon, "a validation metric 'val/<name>' (selection is on validation)"
            )
        if get(task, "mode", None) is not None:
            require_choice("data.task.mode", get(task, "mode"), ("min", "max"))
        check_target_node(task, "data.task", skip=("monitor", "mode"))
    check_target_node(data, "data", skip=("task",))


def check_optim(cfg: DictConfig) -> None:
    optim = cfg.get("optim")
    if not optim:
        return
    lr = require_number("optim.lr", get(optim, "lr", 1e-3), 0.0, lo_open=True, expected="a learning rate > 0")
    if lr is not None and lr >= 1.0:
        log.warning(
            "optim.lr=%g is unusually large (Adam-type optimisers use about 1e-5..1e-2); expect divergence",
            lr,
        )
    require_number("optim.weight_decay", get(optim, "weight_decay", 0.0), 0.0)
    require_number("optim.grad_clip_val", get(optim, "grad_clip_val", None), 0.0, lo_open=True, nullable=True)
    require_choice("optim.grad_clip_algorithm", get(optim, "grad_clip_algorithm", "norm"), ("norm", "value"))
    require_choice("optim.scheduler_interval", get(optim, "scheduler_interval", "epoch"), ("epoch", "step"))
    for part in ("optimizer", "scheduler"):
        node = optim.get(part)
        if OmegaConf.is_config(node) and not isinstance(node, ListConfig):
            check_target_node(node, f"optim.{part}")


def check_model(cfg: DictConfig) -> None:
    if cfg.get("model"):
        check_target_node(cfg.model, "model")


def check_reg(cfg: DictConfig) -> None:
    reg = cfg.get("reg")
    if not reg:
        return
    for name in reg:
        node = reg.get(name)
        if not OmegaConf.is_config(node) or isinstance(node, ListConfig):
            raise _fail(f"reg.{name}", node, "a plug-in config with a _target_")
        check_target_node(node, f"reg.{name}")


def _choice(group: str) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            c = HydraConfig.get().runtime.choices.get(group)
            return str(c) if c else None
    except Exception:  # noqa: BLE001
        return None
    return None


def check_model_data(cfg: DictConfig) -> None:
    """The arguments the model requires from the data (no default, not in ``model``) must be provided by the
    datamodule: the base ``MultimodalDataModule.model_kwargs`` provides ``input_dims``, and ``build.py`` adds
    the task's ``output_dim``."""
    model, data = cfg.get("model"), cfg.get("data")
    if not model or not data or not model.get("_target_") or not data.get("_target_"):
        return
    from mmfusion.data.base import MultimodalDataModule

    model_cls, data_cls = locate(model._target_, "model"), locate(data._target_, "data")
    if not (inspect.isclass(data_cls) and issubclass(data_cls, MultimodalDataModule)):
        raise ConfigError(
            f"data._target_={data._target_!r}: not a training datamodule (MultimodalDataModule)"
        )
    if data_cls.model_kwargs is not MultimodalDataModule.model_kwargs:
        return  # the datamodule provides more; it is checked when the model is built
    params, _ = signature_params(model_cls)
    provided = {"input_dims", "output_dim"}
    needs = sorted(
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty and n not in provided and n not in model
    )
    if needs:
        m = _choice("model") or model_cls.__name__
        d = _choice("data") or data_cls.__name__
        raise ConfigError(
            f"model={m} needs {', '.join(needs)} from the data, which data={d} "
            f"({data_cls.__name__}) does not provide; use a dataset made for {model_cls.__name__} "
            f"(e.g. a VQA dataset: data=easyvqa or data=vqa2)"
            if "vocab_size" in needs
            else f"model={m} needs {', '.join(needs)} from the data, which data={d} "
            f"({data_cls.__name__}) does not provide"
        )


def check_train_cfg(cfg: DictConfig) -> None:
    """All checks of a composed ``train.yaml``; raises ConfigError (one line) on the first problem."""
    check_seed(cfg)
    for k in ("train", "test"):
        require_bool(k, get(cfg, k, True))
    check_trainer(cfg)
    check_optim(cfg)
    check_data(cfg)
    check_model(cfg)
    check_reg(cfg)
    check_model_data(cfg)


def check_eval_cfg(cfg: DictConfig) -> None:
    """Checks of a composed ``eval.yaml`` (the checkpoint's own config was validated when it trained)."""
    check_seed(cfg)
    check_trainer(cfg)
    require_choice("split", get(cfg, "split", "test"), ("test", "valid"))
