"""Reading an mmfusion checkpoint: the file (weights-only, never runs code from it) and the run config stored in
it (``mmfusion_cfg``), and rebuilding the trained run from that config. Used by ``eval.py``, the robustness suite
and the scripts; depends on :mod:`mmfusion.build`, never on the entry points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmfusion.build import build_datamodule, build_module
from mmfusion.errors import MMFusionError
from mmfusion.utils.safe_load import load_checkpoint


def read_checkpoint(ckpt_path: str | Path) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint (read once) and the run config stored in it (``mmfusion_cfg``)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise MMFusionError(f"ckpt_path: file not found: {ckpt_path}")
    ckpt = load_checkpoint(path, "ckpt_path")  # torch.load(weights_only=True): never runs code from the file
    if not isinstance(ckpt, dict) or "mmfusion_cfg" not in ckpt:
        raise MMFusionError(f"{ckpt_path}: not an mmfusion checkpoint (no 'mmfusion_cfg' key)")
    return ckpt, OmegaConf.create(ckpt["mmfusion_cfg"])


def load_run_config(ckpt_path: str) -> DictConfig:
    return read_checkpoint(ckpt_path)[1]


def load_trained(ckpt_path: str | Path, strict: bool = True) -> tuple[Any, Any]:
    """(module with the checkpoint's weights, datamodule), both rebuilt from the config stored in the checkpoint."""
    ckpt, cfg = read_checkpoint(ckpt_path)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    module.load_state_dict(ckpt["state_dict"], strict=strict)
    return module, dm
