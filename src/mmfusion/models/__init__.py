"""Fusion models (config group ``model``); each is a :class:`mmfusion.contract.FusionModel`."""
