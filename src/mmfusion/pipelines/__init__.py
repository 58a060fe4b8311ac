"""Multi-stage training pipelines (``stage=...`` configs): each stage is a function ``(cfg, **params) -> metrics``."""
