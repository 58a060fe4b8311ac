"""Tasks: what is optimised and measured, and the Lightning module that trains a fusion model for it.

* :mod:`~mmfusion.tasks.objectives`     loss + metrics per kind of target (regression, binary, multi-class);
* :mod:`~mmfusion.tasks.vqa`            the VQA task (soft scores, official VQA accuracy per answer type);
* :mod:`~mmfusion.tasks.training_step`  the one training step, Lightning-free (module, benchmarks, tests);
* :mod:`~mmfusion.tasks.module`         ``FusionModule``, the LightningModule composing model, task and plug-ins.

The objectives are re-exported here (``mmfusion.tasks.SentimentRegression``) for configs written before the
package existed.
"""

from mmfusion.tasks.objectives import (
    BinaryClassification,
    MulticlassClassification,
    SentimentRegression,
    Task,
)
from mmfusion.tasks.vqa import VQATask

__all__ = ["BinaryClassification", "MulticlassClassification", "SentimentRegression", "Task", "VQATask"]
