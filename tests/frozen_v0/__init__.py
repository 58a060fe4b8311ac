"""Frozen copies of the fusion models before the issue-18 speed work (test references only)."""
