"""Every config -> object goes through here (one place to add Hydra 1.4's execution whitelist later)."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def instantiate(cfg: Any, *args: Any, **kwargs: Any) -> Any:
    return hydra.utils.instantiate(cfg, *args, **kwargs)


def instantiate_dict(cfg: DictConfig | None) -> dict[str, Any]:
    """Instantiate each named entry that has a ``_target_`` (callbacks, loggers, plug-ins); ``None`` -> {}."""
    out: dict[str, Any] = {}
    if not cfg:
        return out
    for name, sub in cfg.items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            out[str(name)] = instantiate(sub)
    return out


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config without Hydra's own node (stored in every checkpoint)."""
    out: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra":
            continue
        node = cfg._get_node(key)
        out[str(key)] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else cfg[key]
    return out
