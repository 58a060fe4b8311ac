"""The Lightning module that composes a fusion model, a task and any number of plug-ins.

Training uses manual optimisation so that plug-ins can own optimisers and inner steps (MDM's critic, the
synergy C-network) without the module knowing which plug-in it has. One training step:

1. ``out = net(batch)`` (gates / replaced pools installed by plug-ins act inside the model);
2. each plug-in's ``inner_step`` (its own optimisers, detached inputs);
3. ``loss = task.loss(out.prediction, y) + sum(plugin.loss(...).value)``; one backward; clipping of the task
   model's gradients (``grad_clip_val``, by norm or value); the task optimiser and scheduler step;
4. each plug-in's ``after_backward`` (plug-ins that train jointly on the same loss step their optimisers).

Validation/test gather predictions (deduplicated by sample index under DDP) and compute the task's metrics on
the whole split, logged as ``val/<metric>`` and ``test/<metric>``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from mmfusion.contract import FusionModel, ModelInfo, Plugin
from mmfusion.evaluation import corruption
from mmfusion.plugins.influence import gradient_influence
from mmfusion.tasks.objectives import Task, to_numpy
from mmfusion.tasks.training_step import active_plugins, clip_by, training_step


class FusionModule(pl.LightningModule):
    """The LightningModule that trains any fusion model with any stack of plug-ins (manual optimisation).

    It attaches every plug-in to ``net`` at construction, steps the task optimiser and the plug-ins' own optimisers
    in one training step, and computes the task's metrics on whole validation/test splits. ``build.build_module``
    constructs it from a config.

    Args:
        net: the fusion model.
        task: loss, metrics and validation monitor of the data.
        plugins: ``{name: plug-in}`` (``reg=``), attached to ``net`` in order; ``None``: the plain baseline.
        optimizer: factory of the task optimiser, called on ``net.param_groups(lr, weight_decay)``; ``None``: fused AdamW
            (``configs/optim/adamw.yaml``).
        scheduler: factory of a learning-rate scheduler on the task optimiser (given ``num_training_steps`` when it
            takes that argument); ``None``: no scheduler.
        scheduler_interval: ``epoch`` or ``step``: when the scheduler steps.
        lr: learning rate of the task model's parameter groups.
        weight_decay: weight decay of the task model's parameter groups.
        grad_clip_val: clip the task model's gradients at this norm (or value) before its step; ``None``/0: off.
        grad_clip_algorithm: ``norm`` or ``value``.
        data_info: data facts passed to the plug-ins (``ModelInfo.data``).
        test_corruption: a test-time corruption (``eval.corrupt``, e.g. ``drop_text``) applied to every test batch.
        corruption_seed: seed of the test corruption's random draws (one generator per batch).
    """

    def __init__(
        self,
        net: FusionModel,
        task: Task,
        plugins: dict[str, Plugin] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        grad_clip_val: float | None = None,
        grad_clip_algorithm: str = "norm",
        data_info: dict[str, Any] | None = None,
        test_corruption: str | None = None,
        corruption_seed: int = 0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.task = task
        self.plugins = torch.nn.ModuleDict(plugins or {})
        self.optimizer_factory = optimizer or functools.partial(torch.optim.AdamW, fused=True)
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.lr, self.weight_decay = lr, weight_decay
        self.grad_clip_val, self.grad_clip_algorithm = grad_clip_val, grad_clip_algorithm
        self.test_corruption = test_corruption
        self.corruption_seed = corruption_seed
        self.data_info = dict(data_info or {})
        info = ModelInfo(net.modalities, dict(net.unimodal_dims), int(net.fused_dim), self.data_info)
        for p in self.plugins.values():
            p.attach(net, info)
        self._opt_slices: dict[str, slice] = {}
        self._outputs: dict[str, list[dict[str, Tensor]]] = {"val": [], "test": []}
        self.extra_checkpoint: dict[str, Any] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}
        # plug-in diagnostics: batches too small for a plug-in's term (skipped, counted), and the gradient
        # influence of each plug-in term every `influence_every` steps (0 = off; set by callbacks.PluginInfluence)
        self.skipped_batches: dict[str, int] = {name: 0 for name in self.plugins}
        self.influence_every = 0
        self.influence_history: list[dict[str, float]] = []
        self.plugin_diagnostics: dict[str, dict[str, float]] = {}  # last validation epoch's, per plug-in
        self._n_steps = 0

    # -- optimisers ---------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = self.net.param_groups(self.lr, self.weight_decay)
        main = self.optimizer_factory(groups)
        opts = [main]
        for name, p in self.plugins.items():
            own = p.configure_optimizers()
            self._opt_slices[name] = slice(len(opts), len(opts) + len(own))
            opts.extend(own)
        scheds = []
        if self.scheduler_factory is not None:
            kwargs = {}
            params = inspect.signature(self.scheduler_factory).parameters
            if "num_training_steps" in params:
                kwargs["num_training_steps"] = int(self.trainer.estimated_stepping_batches)
            sched = self.scheduler_factory(main, **kwargs)
            scheds.append({"scheduler": sched, "interval": self.scheduler_interval})
        return opts, scheds

    def on_train_start(self) -> None:
        """Tell the plug-ins the run's length (:meth:`Plugin.set_total_steps`). Here rather than in
        ``configure_optimizers``: ``trainer.estimated_stepping_batches`` sets the train loader up, and set up that
        early, a resumed run's loader position is never restored (it replays consumed batches)."""
        if self.plugins:
            total = int(self.trainer.estimated_stepping_batches)
            for p in self.plugins.values():
                p.set_total_steps(total)

    def _optimizers(self) -> list:
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    # -- steps --------------------------------------------------------------------------------------------------
    def forward(self, batch):
        return self.net(batch)

    def optimization_step(
        self, batch, opts: list, backward: Callable[[Tensor], None], clip: Callable[[Any], None] | None = None
    ) -> tuple[Tensor, Tensor, dict]:
        """One full training step, :func:`mmfusion.tasks.training_step.training_step` (the single, Lightning-free step
        that the benchmarks and plug-in tests call too) with this module's parts: ``opts[0]`` is the task
        optimiser, the plug-ins' own follow in :meth:`configure_optimizers` order. ``backward``/``clip`` are
        Lightning's ``manual_backward``/``clip_gradients`` in training; with ``clip=None`` the task model's
        gradients are clipped by ``grad_clip_val`` in plain torch. Every ``influence_every`` steps the plug-in
        terms' gradient influence is measured before the backward; batches too small for a plug-in's term are
        counted (``train/reg/<name>/skipped_batches``, cumulative)."""
        plugin_opts = {name: opts[self._opt_slices.get(name, slice(0, 0))] for name in self.plugins}
        self._n_steps += 1
        measure = self.influence_every > 0 and (self._n_steps - 1) % self.influence_every == 0
        if clip is None:
            clip = clip_by(self.grad_clip_val, self.grad_clip_algorithm)
        elif not self.grad_clip_val:
            clip = None
        res = training_step(
            self.net,
            self.task.loss,
            dict(self.plugins),
            batch,
            opts[0],
            plugin_opts,
            backward,
            clip=clip,
            before_backward=self._log_influence if measure else None,
            skipped=self.skipped_batches,
        )
        logs = {
            f"train/reg/{name}/skipped_batches": float(self.skipped_batches.get(name, 0))
            for name in self.plugins
        }
        logs.update(res.logs)
        return res.loss, res.task_loss, logs

    def _log_influence(self, task_loss: Tensor, terms: dict[str, Tensor]) -> None:
        """Gradient-norm ratio and cosine of each plug-in term against the task loss over the task model's
        parameters (:func:`mmfusion.plugins.influence.gradient_influence`); logged as epoch means of the
        measured steps, ``train/reg/<name>/influence`` and ``train/reg/<name>/cosine``."""
        params = [p for g in self.net.param_groups(self.lr, self.weight_decay) for p in g["params"]]
        res = gradient_influence(task_loss, terms, params)
        record: dict[str, float] = {"step": float(self._n_steps)}
        for name, vals in res.items():
            for k, v in vals.items():
                record[f"{name}/{k}"] = v
                if self._trainer is not None and math.isfinite(v):
                    self.log(
                        f"train/reg/{name}/{k}",
                        v,
                        on_step=False,
                        on_epoch=True,
                        batch_size=int(task_loss.numel()),
                    )
        self.influence_history.append(record)

    def training_step(self, batch, batch_idx: int):
        loss, task_loss, logs = self.optimization_step(
            batch,
            self._optimizers(),
            self.manual_backward,
            clip=lambda opt: self.clip_gradients(
                opt, gradient_clip_val=self.grad_clip_val, gradient_clip_algorithm=self.grad_clip_algorithm
            ),
        )
        sch = self.lr_schedulers()
        if sch is not None and self.scheduler_interval == "step":
            sch.step()
        bs = int(batch["y"].shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/task_loss", task_loss, batch_size=bs)
        if logs:
            self.log_dict(
                {k: (v.detach() if isinstance(v, Tensor) else float(v)) for k, v in logs.items()},
                batch_size=bs,
            )
        return loss

    def on_train_epoch_end(self) -> None:
        sch = self.lr_schedulers()
        if sch is not None and self.scheduler_interval == "epoch":
            sch.step()

    def _eval_step(self, batch, stage: str, batch_idx: int) -> None:
        if stage == "test" and self.test_corruption:
            g = torch.Generator().manual_seed(self.corruption_seed * 100_003 + batch_idx)
            batch = corruption.apply(batch, self.test_corruption, tuple(self.net.modalities), g)
        out = self.net(batch)
        bs = int(batch["y"].shape[0])
        self.log(f"{stage}/loss", self.task.loss(out.prediction, batch["y"]), batch_size=bs, sync_dist=True)
        for name, p in active_plugins(self.plugins, batch).items():
            term = p.loss(out, batch, stage)
            if term is not None:
                self.log(
                    f"{stage}/reg/{name}/loss", term.value.detach().float(), batch_size=bs, sync_dist=True
                )
            if batch_idx == 0 and stage == "val":
                diag = p.diagnostics(out, batch)
                if diag:
                    self.log_dict(
                        {f"val/reg/{name}/{k}": v for k, v in diag.items()}, batch_size=bs, sync_dist=True
                    )
        self._outputs[stage].append(
            {"pred": out.prediction.detach(), "y": batch["y"].detach(), "index": batch["index"].detach()}
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", batch_idx)

    def _epoch_metrics(self, stage: str) -> dict[str, float]:
        outs = self._outputs[stage]
        self._outputs[stage] = []
        if not outs:
            return {}
        pred = torch.cat([o["pred"] for o in outs])
        y = torch.cat([o["y"] for o in outs])
        idx = torch.cat([o["index"] for o in outs])
        if (
            self.trainer.world_size > 1
        ):  # gather the whole split, drop the DistributedSampler's padding repeats
            pred = self.all_gather(pred).flatten(0, 1)
            y = self.all_gather(y).flatten(0, 1)
            idx = self.all_gather(idx).flatten(0, 1)
        idx_np = to_numpy(idx).astype(np.int64)
        _, first = np.unique(idx_np, return_index=True)
        metrics = self.task.metrics(to_numpy(pred)[first], to_numpy(y)[first])
        # the split's loss on the deduplicated predictions too (the logged `<stage>/loss` is a mean of per-rank
        # batch means, which under DDP counts the sampler's padding repeats); reported in metrics.json, not logged
        keep = torch.as_tensor(first, device=pred.device)
        loss = float(self.task.loss(pred[keep], y[keep]))
        self.last_metrics[stage] = {**metrics, "loss": loss}
        return metrics

    def on_validation_epoch_end(self) -> None:
        for name, p in self.plugins.items():
            diag = p.validation_epoch_diagnostics()
            if diag:
                self.plugin_diagnostics[name] = {k: float(v) for k, v in diag.items()}
                self.log_dict({f"val/reg/{name}/{k}": v for k, v in diag.items()}, sync_dist=True)
        metrics = self._epoch_metrics("val")
        if metrics and not self.trainer.sanity_checking:
            mon = self.task.monitor.split("/", 1)[-1]
            for k, v in metrics.items():
                self.log(f"val/{k}", float(v), prog_bar=(k == mon))

    def on_test_epoch_end(self) -> None:
        metrics = self._epoch_metrics("test")
        if metrics:
            self.log_dict({f"test/{k}": float(v) for k, v in metrics.items()})

    # -- checkpoints --------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(self.extra_checkpoint)
        # diagnostics' counters, so a resumed run measures influence on the same steps and keeps its counts
        checkpoint["mmfusion_counters"] = {
            "steps": int(self._n_steps),
            "skipped_batches": dict(self.skipped_batches),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("mmfusion_counters") or {}
        self._n_steps = int(counters.get("steps", self._n_steps))
        self.skipped_batches.update({k: int(v) for k, v in (counters.get("skipped_batches") or {}).items()})
