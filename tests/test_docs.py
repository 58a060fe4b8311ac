"""The front door and the API reference stay complete (issue 16, items 4 and 5).

* README.md stays a front door (<= 200 lines) and every relative link in it points at a file that exists.
* Every fusion model, plug-in, datamodule and ``FusionModule`` documents each constructor argument in a
  Google-style ``Args:`` section (``name: description``, or ``a, b: ...`` for arguments that share a description);
  the API reference in ``docs/api/`` is generated from these docstrings (``make docs``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

from mmfusion.contract import FusionModel, Plugin
from mmfusion.data.base import MultimodalDataModule
from mmfusion.tasks.module import FusionModule

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "plugins", "emma", "attention", "data")
ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_]\w*)(?: \([^)]*\))?:(?: |$)")


def documented_args(doc: str) -> list[str]:
    """Names of the entries of the ``Args:`` section of a Google-style docstring (in order)."""
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return []
    # a docstring that opens with "Args:" has it on the (dedented) first line: its entries are at indent 0
    indent = -1 if start == 0 else len(lines[start]) - len(lines[start].lstrip())
    names, entry_indent = [], None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        if ind <= indent:
            break  # the next section
        entry_indent = ind if entry_indent is None else entry_indent
        if ind == entry_indent:
            m = ENTRY.match(line.strip())
            if m:
                names.append(m.group(1).lstrip("*"))
            else:  # "a, b: shared description" documents both
                names += [n.strip().lstrip("*") for n in line.strip().split(":")[0].split(",")]
    return names


def constructor_args(cls: type) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [p.name for p in list(sig.parameters.values())[1:]]


def documented_classes() -> list[type]:
    """Models, plug-ins and datamodules defined anywhere in those packages, and FusionModule."""
    found: dict[str, type] = {"mmfusion.tasks.module.FusionModule": FusionModule}
    for pkg in PACKAGES:
        package = importlib.import_module(f"mmfusion.{pkg}")
        modules = [package] + [
            importlib.import_module(m.name)
            for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        ]
        for mod in modules:
            for _, obj in inspect.getmembers(mod, inspect.isclass):
                if obj.__module__ != mod.__name__ or obj.__name__.startswith("_"):
                    continue
                if (
                    issubclass(obj, (FusionModel, Plugin, MultimodalDataModule))
                    and obj not in (FusionModel, Plugin, MultimodalDataModule)
                    and "__init__" in vars(obj)
                ):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def test_readme_is_a_front_door_with_working_links():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links the docs pages"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_documented_args_parser():
    doc = """Summary.

    Args:
        a: first.
        b (int): second,
            continued.
        **loader: rest.

    Returns:
        nothing: not an argument.
    """
    assert documented_args(doc) == ["a", "b", "loader"]
    assert documented_args("""Args:
        a: first.
        b, c: two at once.
    """) == ["a", "b", "c"]
    assert documented_args("No section.") == []


CLASSES = documented_classes()


def test_the_classes_are_found():
    names = {c.__name__ for c in CLASSES}
    assert {
        "FusionModule",
        "TFN",
        "MFN",
        "MDM",
        "Synergy",
        "EMMAPlugin",
        "ContinuousAttention",
        "SyntheticSentiment",
        "VQA2DataModule",
    } <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_constructor_argument_is_documented(cls):
    args = [a for a in constructor_args(cls) if a not in ("args", "kwargs")]
    documented = documented_args(cls.__doc__ or "")
    assert documented, f"{cls.__module__}.{cls.__name__} has no Args: section in its class docstring"
    missing = [a for a in args if a not in documented]
    unknown = [d for d in documented if d not in constructor_args(cls)]
    assert not missing, f"{cls.__name__}: constructor arguments without an Args entry: {missing}"
    assert not unknown, f"{cls.__name__}: Args entries that are not constructor arguments: {unknown}"
