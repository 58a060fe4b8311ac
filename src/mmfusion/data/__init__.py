"""Datamodules (config group ``data``)."""
