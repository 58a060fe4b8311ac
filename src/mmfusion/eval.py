"""Evaluation entry point: ``python eval.py ckpt_path=... [split=test] [eval.corrupt=drop_text]``; with
``eval.robustness=default`` the whole corruption suite of :mod:`mmfusion.evaluation.robustness`.

Rebuilds the run from the config stored in the checkpoint (so the same data, model and plug-ins), loads the
weights, and reports the same metrics as training. ``eval.data`` is merged on top of the stored data config
(e.g. ``+eval.data.path=/elsewhere``). The printed table and ``metrics.json`` name the split and corruption.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from mmfusion.build import build_datamodule, build_module
from mmfusion.errors import MMFusionError
from mmfusion.evaluation import robustness
from mmfusion.evaluation.checkpoints import load_run_config
from mmfusion.utils import runtime, validate
from mmfusion.utils.instantiate import instantiate, instantiate_dict
from mmfusion.utils.report import print_metrics, save_json

log = logging.getLogger(__name__)
CONFIG_DIR = runtime.CONFIG_DIR


def evaluate(cfg: DictConfig, corrupt: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split`` (test by default) with an optional corruption."""
    run_cfg = load_run_config(cfg.ckpt_path)
    extra = cfg.get("eval", {}).get("data") or {}
    run_cfg.data = OmegaConf.merge(run_cfg.data, extra)
    corrupt = corrupt if corrupt is not None else cfg.get("eval", {}).get("corrupt")
    run_cfg.eval = {"corrupt": corrupt}
    pl.seed_everything(int(cfg.get("seed", 1234)), workers=True, verbose=False)
    dm = build_datamodule(run_cfg)
    module = build_module(run_cfg, dm)
    loggers = list(instantiate_dict(cfg.get("logger")).values())
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[], devices=1)
    split = cfg.get("split", "test")
    if split == "test":
        trainer.test(module, datamodule=dm, ckpt_path=cfg.ckpt_path, verbose=False, weights_only=True)
        metrics = dict(
            module.last_metrics.get("test", {})
        )  # float64, whole deduplicated split, with its loss
    elif split == "valid":
        if corrupt:
            raise MMFusionError("eval.corrupt is applied on split=test only")
        trainer.validate(module, datamodule=dm, ckpt_path=cfg.ckpt_path, verbose=False, weights_only=True)
        metrics = dict(module.last_metrics.get("val", {}))
    else:
        raise MMFusionError(f"split must be 'test' or 'valid', got {split!r}")
    result = {"ckpt_path": str(cfg.ckpt_path), "split": split, "corruption": corrupt, "metrics": metrics}
    return result, {"trainer": trainer, "module": module, "datamodule": dm}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval.yaml")
def _hydra_main(cfg: DictConfig) -> None:
    with runtime.task_wrapper(cfg):
        validate.check_eval_cfg(cfg)  # one-line ConfigError before the checkpoint is read
        if (cfg.get("eval") or {}).get(
            "robustness"
        ):  # the corruption suite (mmfusion/evaluation/robustness.py)
            robustness.print_table(robustness.evaluate_suite(cfg))
            out = Path(cfg.paths.output_dir)
            print(
                f"results folder: {out}\nresults:        {out / 'robustness.json'} (+ .csv, _auc.csv, figures)"
            )
            return
        result, objs = evaluate(cfg)
        keys = ["loss", *objs["module"].task.summary_keys()]
        print_metrics(
            f"{result['split'].upper()} split, corruption: {result['corruption'] or 'none'}",
            result["metrics"],
            keys,
        )
        save_json(Path(cfg.paths.output_dir) / "metrics.json", result)
        print(
            f"results folder: {cfg.paths.output_dir}\nmetrics:        {Path(cfg.paths.output_dir) / 'metrics.json'}"
        )


def main() -> None:
    runtime.prepare_cli(CONFIG_DIR, "eval.yaml")
    _hydra_main()


if __name__ == "__main__":
    main()
