"""The VQA task: sigmoid + binary cross-entropy over soft answer scores, VQA accuracy (Farinhas 2021, Sect. 6.2).

Loss: MCAN's ``BCELoss(reduction='sum')`` on sigmoid outputs (``BCEWithLogits`` here, same objective, stable),
summed over the answer vocabulary and *averaged* over the batch -- MCAN sums over the batch too; the factor 1/B
leaves Adam's update unchanged up to its epsilon and keeps the logged loss comparable across batch sizes.

Metrics (on a whole split): ``vqa_acc`` = 100 * mean of the soft score of the arg-max answer
(:func:`mmfusion.metrics.vqa.soft_accuracy`; with the targets of :func:`mmfusion.metrics.vqa.official_targets`, which
the VQA-v2 datamodule uses for valid/test, it equals the official accuracy question by question),
and ``vqa_acc_<type>`` per answer type. The per-question answer type is not in the batch layout, so a question's
type is taken as the type of its highest-scored ground-truth answer (``answer_types[a]`` for each answer of the
vocabulary, set by the datamodule from the annotations). The exact official per-type numbers come from
:func:`mmfusion.metrics.vqa.vqa_accuracy` on a results file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from mmfusion.contract import TargetFacts
from mmfusion.errors import ConfigError
from mmfusion.metrics.vqa import soft_accuracy
from mmfusion.tasks.objectives import Task


def type_key(answer_type: str) -> str:
    """Metric-name-safe answer type: 'yes/no' -> 'yesno'."""
    return "".join(ch for ch in answer_type if ch.isalnum() or ch == "_")


class VQATask(Task):
    """Multi-label soft-score target ``y`` (B, A) in [0, 1]; checkpoint on ``val/vqa_acc`` (max)."""

    name = "vqa"

    def __init__(
        self,
        num_answers: int = 1,
        answer_types: Sequence[str] | None = None,
        monitor: str = "val/vqa_acc",
        mode: str = "max",
    ) -> None:
        super().__init__(monitor, mode)
        if num_answers < 1:
            raise ConfigError(f"task.num_answers must be >= 1, got {num_answers}")
        self.output_dim = int(num_answers)
        self.answer_types: list[str] | None = None
        if answer_types is not None:
            self.set_answers(num_answers, answer_types)

    def configure(self, facts: TargetFacts) -> None:
        """One output per answer of the data's vocabulary, with its answer type."""
        self.set_answers(facts.num_outputs, facts.answer_types)

    def set_answers(self, num_answers: int, answer_types: Sequence[str] | None = None) -> None:
        """Size the task to an answer vocabulary (:meth:`configure` calls it with the data's)."""
        if answer_types is not None and len(answer_types) != num_answers:
            raise ConfigError(f"VQATask: {len(answer_types)} answer types for {num_answers} answers")
        self.output_dim = int(num_answers)
        self.answer_types = list(answer_types) if answer_types is not None else None

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        if prediction.shape != target.shape:
            raise ConfigError(
                f"VQATask: prediction {tuple(prediction.shape)} and soft scores "
                f"{tuple(target.shape)} differ (answer vocabulary size vs model output_dim)"
            )
        bce = F.binary_cross_entropy_with_logits(prediction.float(), target.float(), reduction="sum")
        return bce / prediction.shape[0]

    def metrics(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        acc = soft_accuracy(prediction, target)
        out = {"vqa_acc": 100.0 * float(acc.mean())}
        if self.answer_types is not None:
            types = np.asarray(self.answer_types, dtype=object)
            gt_type = types[np.asarray(target).argmax(axis=1)]
            has_gt = np.asarray(target).max(axis=1) > 0
            for t in sorted(set(self.answer_types)):
                sel = (gt_type == t) & has_gt
                if sel.any():
                    out[f"vqa_acc_{type_key(t)}"] = 100.0 * float(acc[sel].mean())
        return out

    def summary_keys(self) -> list[str]:
        keys = ["vqa_acc"]
        if self.answer_types is not None:
            keys += [f"vqa_acc_{type_key(t)}" for t in sorted(set(self.answer_types))]
        return keys
