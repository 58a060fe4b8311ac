"""The thesis' experiments reproduced offline (Werenne 2019, Sect. 5): 2-D manifolds and digits.

The logic lives here so that tests can run it at small sizes; ``scripts/emma_manifolds.py`` and
``scripts/emma_digits.py`` are the command-line front ends writing figures and JSON.
"""
