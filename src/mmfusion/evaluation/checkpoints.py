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

# Where a stored ``_target_`` pointed before the package layout of issue 16 (old prefix -> new prefix, the first
# match wins). Checkpoints keep the resolved run config; read_checkpoint rewrites these so that every checkpoint
# written before the move still rebuilds (weights are unaffected: no parameter name changed). ``mmfusion.tasks.X``
# needs no entry: the tasks package re-exports its objectives.
LEGACY_TARGETS: tuple[tuple[str, str], ...] = (
    ("mmfusion.tasks_vqa.", "mmfusion.tasks.vqa."),
    ("mmfusion.vqa_schedule.", "mmfusion.optim.schedules."),
    ("mmfusion.regularizers.estimators.", "mmfusion.estimators.dependence."),
    ("mmfusion.regularizers.gaussian.", "mmfusion.estimators.gaussian."),
    ("mmfusion.regularizers.", "mmfusion.plugins."),
    ("mmfusion.emma.plugin.", "mmfusion.plugins.emma."),
    ("mmfusion.attention.plugin.", "mmfusion.plugins.continuous_attention."),
    ("mmfusion.emma.inject.", "mmfusion.callbacks.emma_inject."),
    ("mmfusion.robustness.", "mmfusion.evaluation.robustness."),
    ("mmfusion.corruption.", "mmfusion.evaluation.corruption."),
    ("mmfusion.module.", "mmfusion.tasks.module."),
)


def upgrade_targets(node: Any) -> Any:
    """A stored run config with every pre-issue-16 ``_target_`` rewritten to today's module (see LEGACY_TARGETS)."""
    if isinstance(node, dict):
        out = {k: upgrade_targets(v) for k, v in node.items()}
        t = out.get("_target_")
        if isinstance(t, str):
            for old, new in LEGACY_TARGETS:
                if t.startswith(old):
                    out["_target_"] = new + t[len(old) :]
                    break
        return out
    if isinstance(node, list):
        return [upgrade_targets(v) for v in node]
    return node


def read_checkpoint(ckpt_path: str | Path) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint (read once) and the run config stored in it (``mmfusion_cfg``; targets of the old package
    layout are upgraded, :func:`upgrade_targets`)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise MMFusionError(f"ckpt_path: file not found: {ckpt_path}")
    ckpt = load_checkpoint(path, "ckpt_path")  # torch.load(weights_only=True): never runs code from the file
    if not isinstance(ckpt, dict) or "mmfusion_cfg" not in ckpt:
        raise MMFusionError(f"{ckpt_path}: not an mmfusion checkpoint (no 'mmfusion_cfg' key)")
    return ckpt, OmegaConf.create(upgrade_targets(ckpt["mmfusion_cfg"]))


def load_run_config(ckpt_path: str) -> DictConfig:
    return read_checkpoint(ckpt_path)[1]


def load_trained(ckpt_path: str | Path, strict: bool = True) -> tuple[Any, Any]:
    """(module with the checkpoint's weights, datamodule), both rebuilt from the config stored in the checkpoint."""
    ckpt, cfg = read_checkpoint(ckpt_path)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    module.load_state_dict(ckpt["state_dict"], strict=strict)
    return module, dm
