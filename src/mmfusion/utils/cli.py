"""One-line errors for unknown config choices and keys, checked before Hydra composes (Hydra's own messages span
lines), and ``trainer.<arg>=...`` for any Trainer argument without a ``+``.

``model=foo`` with no ``configs/model/foo.yaml`` -> ``error: unknown model 'foo'; valid choices: ef_lstm, tfn``;
``optim.lrr=1e-3`` -> ``error: unknown config key 'optim.lrr' (...); did you mean 'optim.lr'? ...``;
``trainer.fast_dev_run=true`` -> ``++trainer.fast_dev_run=true`` (sets the key whether or not the config has it).
"""

from __future__ import annotations

import sys
from pathlib import Path

# groups whose choice names a file; hydra/... groups are left to Hydra.
CHECKED = (
    "data",
    "model",
    "reg",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "experiment",
    "hparams_search",
    "debug",
    "optim",
    "stage",
    "extras",
)


def choices(config_dir: Path, group: str) -> list[str]:
    d = config_dir / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _values(v: str) -> list[str]:
    v = v.strip()
    for prefix in ("choice(", "range("):
        if v.startswith(prefix):
            return [] if prefix == "range(" else [x.strip() for x in v[len(prefix) : -1].split(",")]
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


# -- keys: `trainer.<Trainer argument>=` without `+`, unknown keys with a spelling suggestion ----------------------
SKIP_FLAGS = (
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
)


def trainer_args() -> list[str]:
    """The keyword arguments of ``lightning.pytorch.Trainer`` (``logger``/``callbacks`` are set by the run)."""
    import inspect

    from lightning.pytorch import Trainer

    return [
        n for n in inspect.signature(Trainer.__init__).parameters if n not in ("self", "logger", "callbacks")
    ]


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def rewrite_trainer_overrides(argv: list[str]) -> list[str]:
    """``trainer.<arg>=v`` -> ``++trainer.<arg>=v`` for every Trainer argument, so that arguments absent from
    ``configs/trainer/*.yaml`` (``fast_dev_run``, ``limit_train_batches``, ...) need no ``+``; ``++`` sets the
    key whether or not the config has it. Other arguments are returned unchanged."""
    names = set(trainer_args())
    out = []
    for arg in argv:
        key = arg.partition("=")[0]
        if (
            _is_override(arg)
            and "=" in arg
            and key.startswith("trainer.")
            and key.count(".") == 1
            and key.split(".", 1)[1] in names
        ):
            arg = "++" + arg
        out.append(arg)
    return out


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def _unknown_key_message(cfg, key: str, arg: str, where_choice: str = "") -> str:
    from omegaconf import DictConfig, OmegaConf

    from mmfusion.utils.validate import suggest

    parts = key.split(".")
    for i in range(len(parts) - 1, -1, -1):
        parent = ".".join(parts[:i])
        node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
        if isinstance(node, DictConfig):
            break
    name = parts[i]
    cands = [str(k) for k in node.keys()]
    if parent == "trainer":
        hint = suggest(name, sorted(set(cands) | set(trainer_args())), "trainer.")
        return f"error: {key!r} is not a Trainer argument ({arg}){hint}"
    where = f"{parent!r} has no key {name!r}" if parent else f"no top-level key {name!r}"
    hint = suggest(name, cands, f"{parent}." if parent else "").replace("; did", " (did").replace("?", "?)")
    add = "" if arg.startswith("~") else f"; a new key needs a '+': +{arg}"
    return f"error: unknown config key {key!r} ({arg}): {where}{where_choice}{hint or ''}{add}"


def check_keys(argv: list[str], config_dir: Path, config_name: str = "train.yaml") -> str | None:
    """A one-line error for the first plain ``key=value`` / ``~key`` override whose key is not in the composed
    config (with a difflib suggestion), or for an override Hydra cannot parse; else None. Group choices and
    ``+``/``++`` additions are composed first, so keys they bring in are known. Sweeps: the key must be in the
    config of every value of a swept group (each job composes it)."""
    if any(a.split("=")[0] in SKIP_FLAGS for a in argv):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parser = OverridesParser.create()
    compose_args: list[str] = []
    swept: list[tuple[int, list[str]]] = []
    plain: list[tuple[str, str]] = []
    for arg in (a for a in argv if _is_override(a)):
        try:
            (o,) = parser.parse_overrides([arg])
        except Exception as exc:  # noqa: BLE001 - Hydra's parse errors span several lines
            return f"error: cannot parse override {arg!r}: {_first_line(exc)}"
        key = o.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        is_group = "/" in key or "@" in key or (config_dir / key).is_dir()
        if is_group:
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    return None  # range/interval over a group: leave it to Hydra
                vals = list(o.sweep_string_iterator())
                swept.append((len(compose_args), [f"{o.get_key_element()}={v}" for v in vals]))
                compose_args.append(f"{o.get_key_element()}={vals[0]}")
            else:
                compose_args.append(arg)
        elif o.type in (OverrideType.ADD, OverrideType.FORCE_ADD):
            compose_args.append(f"{o.get_key_element()}=null")
        else:
            plain.append((key, arg))
    if not plain:
        return None

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def composed(args: list[str]):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
                return compose(config_name=config_name, overrides=args)
        except Exception:  # noqa: BLE001 - composition problems are Hydra's to report
            return None
        finally:
            GlobalHydra.instance().clear()

    cfg = composed(compose_args)
    if cfg is None:
        return None
    cfgs = [(cfg, compose_args[swept[0][0]] if swept else "")]
    for i, alts in swept:  # every value of a swept group (one group varied at a time)
        for alt in alts[1:]:
            c = composed(compose_args[:i] + [alt] + compose_args[i + 1 :])
            if c is not None:
                cfgs.append((c, alt))
    for key, arg in plain:
        for c, choice in cfgs:
            if not _has_key(c, key):
                return _unknown_key_message(c, key, arg, f" with {choice.lstrip('+')}" if choice else "")
    return None


def _has_key(cfg, key: str) -> bool:
    """Whether the dotted ``key`` exists in ``cfg``, whatever its value: a mandatory ``???`` value or an
    interpolation that does not resolve yet (``paths.output_dir`` before Hydra runs) still counts as present."""
    from omegaconf import OmegaConf

    node = cfg
    for part in key.split("."):
        if OmegaConf.is_list(node):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                return False
            node = node._get_node(int(part))
        elif OmegaConf.is_dict(node):
            if part not in node.keys():
                return False
            node = node._get_node(part)
        else:
            return False
    return True


def _sweep_excepthook(exc_type, exc, tb) -> None:  # noqa: ANN001 - sys.excepthook's signature
    """After a multirun, Hydra's basic sweeper re-raises the first failed job's exception: bad input
    (``MMFusionError``, e.g. a diverged job) and Hydra's own compact errors end in one ``error: ...`` line (exit 1);
    anything else is a bug and keeps its traceback."""
    from hydra.errors import CompactHydraException

    from mmfusion.errors import MMFusionError

    if isinstance(exc, MMFusionError | CompactHydraException):
        msg = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
        print(msg if msg.startswith("error: ") else f"error: {msg}", file=sys.stderr)
        return
    sys.__excepthook__(exc_type, exc, tb)


def one_line_sweep_errors(argv: list[str]) -> None:
    """In a multirun (``-m``), let Hydra re-raise a failed job's exception (``HYDRA_FULL_ERROR=1``) instead of
    printing a trimmed traceback plus a hint, and print bad input as one line (:func:`_sweep_excepthook`). A
    ``HYDRA_FULL_ERROR=1`` set by the user keeps Hydra's behaviour (full tracebacks)."""
    import os

    if any(a in ("-m", "--multirun") for a in argv) and os.environ.get("HYDRA_FULL_ERROR", "") in ("", "0"):
        os.environ["HYDRA_FULL_ERROR"] = "1"
        sys.excepthook = _sweep_excepthook


def exit_on_bad_overrides(config_dir: Path, config_name: str = "train.yaml") -> None:
    """Unknown choices or keys, unparsable overrides: one line on stderr and exit 2. Then ``trainer.<arg>=`` is
    rewritten to ``++trainer.<arg>=`` in ``sys.argv`` (any Trainer argument, no ``+`` needed), and a multirun's
    failed jobs end in one line (:func:`one_line_sweep_errors`)."""
    argv = rewrite_trainer_overrides(sys.argv[1:])
    msg = check_overrides(argv, config_dir) or check_keys(argv, config_dir, config_name)
    if msg:
        print(msg, file=sys.stderr)
        raise SystemExit(2)
    sys.argv[1:] = argv
    one_line_sweep_errors(argv)
