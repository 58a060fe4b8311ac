"""Optimisation pieces the configs of ``configs/optim/`` point to that torch does not ship (the MCAN schedule)."""
