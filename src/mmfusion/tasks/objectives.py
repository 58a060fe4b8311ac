"""Tasks: the loss and the metrics of a dataset's target. Configured next to the data (config key ``data.task``)
and built by ``build.py``, which sizes it from the facts the datamodule reports (:meth:`Task.configure`); the data
code never imports a task.

Each task says which validation metric selects the checkpoint (``monitor``, ``mode``): model selection is
always on validation, never on test.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmfusion.contract import TargetFacts
from mmfusion.errors import ConfigError
from mmfusion.metrics import binary_metrics, multiclass_metrics, sentiment_metrics


class Task:
    """Loss + metrics of one kind of target."""

    name: str = "task"
    output_dim: int = 1

    def __init__(self, monitor: str, mode: str) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"task.mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = mode

    def configure(self, facts: TargetFacts) -> None:
        """Adapt to what the data's targets call for (``build.py`` calls it once the data is loaded). Scalar
        tasks (regression, binary) need nothing."""

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def metrics(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def summary_keys(self) -> list[str]:
        """Metrics printed in the final table, in order."""
        return []


class SentimentRegression(Task):
    """Continuous sentiment in [-3, 3] (CMU-MOSI/MOSEI): L1 loss by default (MMSA), all metrics of
    :func:`mmfusion.metrics.sentiment_metrics`; checkpoint on validation MAE."""

    name = "regression"
    output_dim = 1

    def __init__(self, loss: str = "l1", monitor: str = "val/MAE", mode: str = "min") -> None:
        super().__init__(monitor, mode)
        if loss not in ("l1", "mse", "smooth_l1"):
            raise ConfigError(f"task.loss must be one of l1, mse, smooth_l1; got {loss!r}")
        self.loss_name = loss

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        p = prediction.reshape(-1).float()
        y = target.reshape(-1).float()
        if self.loss_name == "l1":
            return F.l1_loss(p, y)
        if self.loss_name == "mse":
            return F.mse_loss(p, y)
        return F.smooth_l1_loss(p, y)

    def metrics(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        return sentiment_metrics(prediction.reshape(-1), target.reshape(-1))

    def summary_keys(self) -> list[str]:
        return [
            "MAE",
            "Corr",
            "Mult_acc_7",
            "Mult_acc_5",
            "Has0_acc_2",
            "Has0_F1_score",
            "Non0_acc_2",
            "Non0_F1_score",
        ]


class BinaryClassification(Task):
    """Binary target (UR-FUNNY humour): one logit, BCE-with-logits; accuracy and weighted F1."""

    name = "binary"
    output_dim = 1

    def __init__(self, monitor: str = "val/acc", mode: str = "max") -> None:
        super().__init__(monitor, mode)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(prediction.reshape(-1).float(), target.reshape(-1).float())

    def metrics(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        return binary_metrics(prediction.reshape(-1), target.reshape(-1), threshold=0.0)

    def summary_keys(self) -> list[str]:
        return ["acc", "F1"]


class MulticlassClassification(Task):
    """K-way classification: cross-entropy over logits; accuracy and macro F1."""

    name = "multiclass"

    def __init__(self, num_classes: int, monitor: str = "val/acc", mode: str = "max") -> None:
        super().__init__(monitor, mode)
        self.output_dim = int(num_classes)

    def configure(self, facts: TargetFacts) -> None:
        if facts.num_outputs != self.output_dim:
            raise ConfigError(
                f"data.task.num_classes={self.output_dim}, but the data has {facts.num_outputs} classes"
            )

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(prediction.float(), target.long().reshape(-1))

    def metrics(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        return multiclass_metrics(prediction, target)

    def summary_keys(self) -> list[str]:
        return ["acc", "F1_macro"]


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
