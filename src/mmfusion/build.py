"""Config -> objects: the datamodule, the fusion model sized to it, the plug-ins and the Lightning module."""

from __future__ import annotations

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from mmfusion.data.base import MultimodalDataModule
from mmfusion.errors import ConfigError
from mmfusion.tasks.module import FusionModule
from mmfusion.tasks.objectives import Task
from mmfusion.utils.instantiate import instantiate, instantiate_dict, to_container


def build_datamodule(cfg: DictConfig) -> MultimodalDataModule:
    """The datamodule from ``cfg.data`` without its ``task`` node (the data never builds or sees the task)."""
    node = OmegaConf.to_container(cfg.data, resolve=True)
    node.pop("task", None)
    dm = instantiate(OmegaConf.create(node))
    if not isinstance(dm, MultimodalDataModule):
        raise ConfigError(f"data: _target_ must build a MultimodalDataModule, got {type(dm).__name__}")
    dm.setup()
    return dm


def time_steps(dm: MultimodalDataModule) -> dict[str, int]:
    """Padded number of time steps T per modality as the datamodule holds them (1 for utterance vectors);
    {} for datamodules that do not hold their splits as tensors."""
    tensors = getattr((dm.splits or {}).get("train"), "tensors", None)
    x = tensors.get("x") if isinstance(tensors, dict) else None
    if not isinstance(x, dict):
        return {}
    return {str(m): int(v.shape[1]) if v.dim() == 3 else 1 for m, v in x.items() if hasattr(v, "dim")}


def check_alignment(cfg: DictConfig, dm: MultimodalDataModule) -> None:
    """A model that declares ``accepts_unaligned = False`` refuses data whose modalities differ in T (one line,
    before the model is built)."""
    target = str((cfg.get("model") or {}).get("_target_", ""))
    try:
        cls = get_object(target)
    except Exception:  # noqa: BLE001 - a bad _target_ is reported by instantiate with its own message
        return
    if getattr(cls, "accepts_unaligned", True):
        return
    steps = time_steps(dm)
    if len(set(steps.values())) <= 1:
        return
    from mmfusion.utils.runtime import run_choices

    name = run_choices().get("model") or target.rsplit(".", 2)[-2]
    where = f" (data.path={cfg.data.path})" if cfg.get("data") and cfg.data.get("path") else ""
    shown = ", ".join(f"{m}: {t}" for m, t in steps.items())
    raise ConfigError(
        f"model={name} ({getattr(cls, '__name__', target)}) needs word-aligned input (the same number "
        f"of time steps for every modality), but the data has T = {{{shown}}}{where}; use word-aligned "
        f"data (e.g. MMSA aligned_50.pkl, MulT mosi_data.pkl) or a model that accepts unaligned "
        f"sequences: model=mult, model=tfn or model=lfn"
    )


def build_task(cfg: DictConfig, dm: MultimodalDataModule) -> Task:
    """The task of ``cfg.data.task``, configured from the facts the datamodule reports about its targets."""
    node = (cfg.get("data") or {}).get("task")
    if not node:
        raise ConfigError(
            "data.task: missing; the data config must name its task (a _target_ in mmfusion.tasks.objectives)"
        )
    task = instantiate(node)
    if not isinstance(task, Task):
        raise ConfigError(f"data.task: _target_ must build a Task, got {type(task).__name__}")
    task.configure(dm.target_facts())
    return task


def build_module(cfg: DictConfig, dm: MultimodalDataModule) -> FusionModule:
    """The task from ``cfg.data.task`` sized to the data; the fusion model gets its data-dependent arguments from
    ``dm.model_kwargs()`` and its ``output_dim`` from the task."""
    check_alignment(cfg, dm)
    task = build_task(cfg, dm)
    net = instantiate(cfg.model, _partial_=True)(**dm.model_kwargs(), output_dim=task.output_dim)
    plugins = instantiate_dict(cfg.get("reg"))
    optim = cfg.get("optim") or {}
    module = FusionModule(
        net=net,
        task=task,
        plugins=plugins,
        optimizer=instantiate(optim.get("optimizer")) if optim.get("optimizer") else None,
        scheduler=instantiate(optim.get("scheduler")) if optim.get("scheduler") else None,
        scheduler_interval=optim.get("scheduler_interval", "epoch"),
        lr=float(optim.get("lr", 1e-3)),
        weight_decay=float(optim.get("weight_decay", 0.0)),
        grad_clip_val=optim.get("grad_clip_val"),
        grad_clip_algorithm=optim.get("grad_clip_algorithm", "norm"),
        data_info=dm.info(),
        test_corruption=(cfg.get("eval") or {}).get("corrupt"),
    )
    module.extra_checkpoint["mmfusion_cfg"] = to_container(cfg)
    return module
