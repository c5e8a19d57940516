"""The architecture of core/: wings by duty, imported bottom to top, no import circle, no module over 600 lines.

The import graph is built with :mod:`ast` from every ``import`` and ``from ... import`` statement in core/,
function-level imports included (a lazy import is still a dependency).
"""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "core"

#: Floors of core/, bottom to top; a module may import only from its own floor or the floors below.
FLOORS = {
    "core.errors": 0, "core.metrics": 0,
    "core.io": 1,
    "core.models": 2,
    "core.attacks": 3,
    "core.training": 4,
    "core.field": 5,
    "core.studies": 6,
    "core.api": 7,
    "core.cli": 8, "core.__main__": 8, "core": 8,
}
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Edges module -> imported core module, for every module of core/ (function-level imports included)."""
    files = {_module_name(p): p for p in CORE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != mod and not mod.startswith(t + "."):
                    edges[mod].add(t)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with two or more modules (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def floor(mod: str) -> int:
    while mod not in FLOORS:
        mod = mod.rpartition(".")[0]
    return FLOORS[mod]


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_core_has_no_import_circle():
    found = circles(import_graph())
    assert not found, f"import circles in core/: {found}"


def test_every_wing_imports_only_from_the_floors_below():
    wrong = [(m, t) for m, ts in import_graph().items() for t in ts if floor(t) > floor(m)]
    assert not wrong, "upward imports (module -> imported): " + ", ".join(f"{m} -> {t}" for m, t in sorted(wrong))


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE.parent)))
def test_no_core_module_exceeds_600_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(CORE.parent)} has {n} lines (at most {MAX_LINES})"


@pytest.mark.parametrize("wing", ["io", "models", "attacks", "training", "field", "studies", "cli"])
def test_every_wing_says_its_duty_and_what_it_may_import(wing):
    init = CORE / wing / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    assert len(doc) > 80, f"core/{wing}/__init__.py needs a docstring saying its duty and what it may import"
    assert "import" in doc, f"core/{wing}/__init__.py's docstring does not say what the wing may import"


def test_core_never_imports_streamlit():
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "streamlit" for n in names), f"{path} imports streamlit"
