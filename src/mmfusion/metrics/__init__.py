"""Metrics with exact, documented conventions (see docs/metrics.md)."""

from mmfusion.metrics.classification import binary_metrics, multiclass_metrics
from mmfusion.metrics.sentiment import sentiment_metrics

__all__ = ["sentiment_metrics", "binary_metrics", "multiclass_metrics"]
