"""Config -> objects: the datamodule, the fusion model sized to it, the plug-ins and the Lightning module."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmfusion.data.base import MultimodalDataModule
from mmfusion.errors import ConfigError
from mmfusion.module import FusionModule
from mmfusion.utils.instantiate import instantiate, instantiate_dict


def build_datamodule(cfg: DictConfig) -> MultimodalDataModule:
    dm = instantiate(cfg.data)
    if not isinstance(dm, MultimodalDataModule):
        raise ConfigError(f"data: _target_ must build a MultimodalDataModule, got {type(dm).__name__}")
    dm.setup()
    return dm


def build_module(cfg: DictConfig, dm: MultimodalDataModule) -> FusionModule:
    """The fusion model gets its data-dependent arguments from ``dm.model_kwargs()``."""
    net = instantiate(cfg.model, _partial_=True)(**dm.model_kwargs())
    plugins = instantiate_dict(cfg.get("reg"))
    optim = cfg.get("optim") or {}
    module = FusionModule(
        net=net,
        task=dm.task,
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


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config without Hydra's own node (stored in every checkpoint)."""
    out: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra":
            continue
        node = cfg._get_node(key)
        out[str(key)] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else cfg[key]
    return out
