"""Utilities for the entry points: instantiation, run folders, printing."""
