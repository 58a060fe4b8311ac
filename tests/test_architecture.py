"""The import graph of ``src/mmfusion`` keeps the architecture's arrows (docs/architecture.md): no import circles,
models import no plug-in, data or training code, data imports no task, model or plug-in, numerics import
no Lightning. Function-level imports count too
(an import hidden inside a function is still an arrow)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mmfusion"

# models know no plug-in, no data, no task and no training loop
MODELS_MAY_NOT_IMPORT = (
    "mmfusion.plugins",
    "mmfusion.estimators",
    "mmfusion.data",
    "mmfusion.tasks",
    "mmfusion.evaluation",
    "mmfusion.callbacks",
    "mmfusion.build",
    "mmfusion.train",
    "mmfusion.eval",
)
# numerics know no Lightning (EMMA's Lightning callback lives in callbacks/, the LightningModule in tasks/module)
NUMERICS = (
    "mmfusion.models",
    "mmfusion.attention",
    "mmfusion.emma",
    "mmfusion.estimators",
    "mmfusion.plugins",
    "mmfusion.metrics",
    "mmfusion.contract",
    "mmfusion.tasks.objectives",
    "mmfusion.tasks.vqa",
    "mmfusion.tasks.training_step",
    "mmfusion.evaluation.corruption",
    "mmfusion.tokens",
)
# data knows no task (build.py configures the task from dm.target_facts()), no model and no plug-in
DATA_MAY_NOT_IMPORT = (
    "mmfusion.tasks",
    "mmfusion.models",
    "mmfusion.plugins",
    "mmfusion.estimators",
    "mmfusion.emma",
    "mmfusion.attention",
    "mmfusion.evaluation",
    "mmfusion.build",
)


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between mmfusion modules, third-party top-level packages each module imports)."""
    mods = _modules()

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name

    edges: dict[str, set[str]] = {m: set() for m in mods}
    external: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] if base.startswith("mmfusion") else [base]
            for t in targets:
                if t.startswith("mmfusion"):
                    r = resolve(t)
                    if r and r != m:
                        edges[m].add(r)
                elif t:
                    external[m].add(t.split(".")[0])
    return edges, external


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def _violations(
    edges: dict[str, set[str]], sources: tuple[str, ...], forbidden: tuple[str, ...]
) -> list[str]:
    def under(m: str, prefixes: tuple[str, ...]) -> bool:
        return any(m == p or m.startswith(p + ".") for p in prefixes)

    return sorted(
        f"{m} -> {t}" for m, ts in edges.items() if under(m, sources) for t in ts if under(t, forbidden)
    )


def test_no_import_circles() -> None:
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_models_import_no_plugins_data_or_training() -> None:
    edges, _ = _graph()
    assert _violations(edges, ("mmfusion.models",), MODELS_MAY_NOT_IMPORT) == []


def test_data_imports_no_tasks_models_or_plugins() -> None:
    edges, _ = _graph()
    assert _violations(edges, ("mmfusion.data",), DATA_MAY_NOT_IMPORT) == []


def test_numerics_import_no_lightning() -> None:
    edges, external = _graph()
    numerics = [m for m in external if any(m == p or m.startswith(p + ".") for p in NUMERICS)]
    assert numerics and sorted(m for m in numerics if "lightning" in external[m]) == []


def test_the_checks_see_a_forbidden_arrow_and_a_circle() -> None:
    """The graph checks themselves can fail: a synthetic circle and a model importing a plug-in are caught."""
    edges = {"mmfusion.a": {"mmfusion.b"}, "mmfusion.b": {"mmfusion.a"}, "mmfusion.c": set()}
    assert _cycles(edges) == [["mmfusion.a", "mmfusion.b"]]
    bad = {"mmfusion.models.tfn": {"mmfusion.plugins.mdm"}}
    assert _violations(bad, ("mmfusion.models",), MODELS_MAY_NOT_IMPORT) == [
        "mmfusion.models.tfn -> mmfusion.plugins.mdm"
    ]
    real, _ = _graph()
    assert "mmfusion.contract" in real["mmfusion.tasks.module"]  # the parser sees real imports
