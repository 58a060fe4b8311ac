"""mmfusion: multimodal fusion research framework."""

__version__ = "0.1.0"
