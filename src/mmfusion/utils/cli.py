"""One-line errors for unknown config choices, checked before Hydra composes (Hydra's own message spans lines).

``model=foo`` with no ``configs/model/foo.yaml`` -> ``error: unknown model 'foo'; valid choices: ef_lstm, tfn``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# groups whose choice names a file; hydra/... groups are left to Hydra.
CHECKED = ("data", "model", "reg", "trainer", "logger", "callbacks", "paths", "experiment", "hparams_search",
           "debug", "optim", "stage", "extras")


def choices(config_dir: Path, group: str) -> list[str]:
    d = config_dir / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _values(v: str) -> list[str]:
    v = v.strip()
    for prefix in ("choice(", "range("):
        if v.startswith(prefix):
            return [] if prefix == "range(" else [x.strip() for x in v[len(prefix):-1].split(",")]
    if v.startswith("[") and v.endswith("]"):
        v = v[1:-1]
    return [x.strip() for x in v.split(",") if x.strip()]


def check_overrides(argv: list[str], config_dir: Path) -> str | None:
    """Return a one-line error for the first unknown group choice in ``argv``, else None."""
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key not in CHECKED:
            continue
        valid = choices(config_dir, key)
        for v in _values(value):
            if v in ("null", "none") and "none" not in valid:
                continue
            if v not in valid and "*" not in v:
                return f"error: unknown {key} {v!r}; valid choices: {', '.join(valid)}"
    return None


def exit_on_bad_overrides(config_dir: Path) -> None:
    msg = check_overrides(sys.argv[1:], config_dir)
    if msg:
        print(msg, file=sys.stderr)
        raise SystemExit(2)
