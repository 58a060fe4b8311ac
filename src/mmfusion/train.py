"""Training entry point: ``python train.py model=X reg=Y data=Z trainer=W logger=V ...`` (see README).

``train(cfg)`` is separate from the Hydra entry point so that tests (and pipelines) can call it in-process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from mmfusion.build import build_datamodule, build_module
from mmfusion.callbacks.divergence import DivergenceGuard
from mmfusion.callbacks.figures import save_learning_curve
from mmfusion.callbacks.resume import check_resume, continue_wandb_run
from mmfusion.utils import runtime, validate
from mmfusion.utils.instantiate import instantiate, instantiate_dict
from mmfusion.utils.report import print_metrics, save_json
from mmfusion.utils.safe_load import check_checkpoint

log = logging.getLogger(__name__)
CONFIG_DIR = runtime.CONFIG_DIR


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit on train, select on validation, test the best-on-validation checkpoint. Returns (metrics, objects)."""
    validate.check_train_cfg(cfg)  # types/ranges of the config: one-line ConfigError before anything is built
    if cfg.get("stage"):
        fn = instantiate(cfg.stage, _partial_=True)
        return fn(cfg), {}
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    check_checkpoint(runtime.resolve_ckpt_path(cfg.get("ckpt_path"), cfg))  # hostile/truncated: one line, now
    check_resume(cfg, cfg.paths.output_dir)  # a resume that changes model/data/reg: one line, nothing touched
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    ckpt_path = runtime.resolve_ckpt_path(cfg.get("ckpt_path"), cfg)
    continue_wandb_run(cfg, ckpt_path)  # resume: same W&B run (id saved next to the checkpoint)
    callbacks = [
        DivergenceGuard(),
        *instantiate_dict(cfg.get("callbacks")).values(),
    ]  # NaN loss/metric: error
    loggers = list(instantiate_dict(cfg.get("logger")).values())
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    runtime.log_run_info(trainer, module, cfg)

    if cfg.get("train", True):
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        save_learning_curve(
            trainer, Path(cfg.paths.output_dir) / "learning_curve.png"
        )  # from csv/metrics.csv
    ckpt_cb = trainer.checkpoint_callback
    monitor = getattr(ckpt_cb, "monitor", None)
    selection = (
        f"{monitor} ({getattr(ckpt_cb, 'mode', '')})" if monitor else "last epoch (no monitored checkpoint)"
    )
    result: dict[str, Any] = {"selection": selection}
    best = ckpt_cb.best_model_path if ckpt_cb else ""
    if cfg.get("train", True):
        result["best_ckpt"] = best or None
        if not best:
            log.warning("no best checkpoint (no validation ran?): testing the final weights")
    if cfg.get("test", True):
        which = best or (ckpt_path if not cfg.get("train", True) else None)
        trainer.validate(module, datamodule=dm, ckpt_path=which, verbose=False, weights_only=True)
        trainer.test(module, datamodule=dm, ckpt_path=which, verbose=False, weights_only=True)
        # exact float64 metrics and loss of the whole deduplicated split (the logged copies are float32)
        result["val"] = dict(module.last_metrics.get("val", {}))
        result["test"] = dict(module.last_metrics.get("test", {}))
        result["test_corruption"] = module.test_corruption
        if trainer.is_global_zero:
            keys = ["loss", *module.task.summary_keys()]
            title = f"TEST split, checkpoint selected on {result['selection']}"
            print_metrics(title, result["test"], keys)
    out_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        save_json(out_dir / "metrics.json", result)
        print(f"run folder: {out_dir}\nmetrics:    {out_dir / 'metrics.json'}")
    return result, {"trainer": trainer, "module": module, "datamodule": dm}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train.yaml")
def _hydra_main(cfg: DictConfig) -> float | None:
    with runtime.task_wrapper(cfg):
        result, _ = train(cfg)
    return runtime.objective(result, cfg)


def main() -> None:
    runtime.prepare_cli(CONFIG_DIR)
    _hydra_main()


if __name__ == "__main__":
    main()
