"""Lightning callbacks of the research workflow (``configs/callbacks/``): exact resume, diagnostics, figures."""

from mmfusion.callbacks.diagnostics import GradNormMonitor, PredictionScatter
from mmfusion.callbacks.figures import FigureLogger, log_figure
from mmfusion.callbacks.resume import ExactResume, SimulatedPreemption

__all__ = [
    "ExactResume",
    "FigureLogger",
    "GradNormMonitor",
    "PredictionScatter",
    "SimulatedPreemption",
    "log_figure",
]
