"""The house's rooms: the core (turns, store, upstream) knows no Flask.

Walks the imports of every module below ``chatapp/turns``, ``chatapp/store``
and ``chatapp/upstream`` with ``ast``, following chatapp's own modules
transitively, so that an arrow through a ground module counts too.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chatapp"
CORE = ("turns", "store", "upstream")
FORBIDDEN = ("flask", "flask_limiter", "werkzeug", "chatapp.web")


def module_path(name: str) -> Path | None:
    """Return the file of a chatapp module, or None for anything else."""
    if name != "chatapp" and not name.startswith("chatapp."):
        return None
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def direct_imports(name: str) -> frozenset[str]:
    """Every module one chatapp module imports, as absolute names."""
    path = module_path(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                # `from chatapp import sse` imports the module chatapp.sse;
                # `from chatapp.errors import X` the module chatapp.errors.
                sub = f"{base}.{alias.name}"
                found.add(sub if module_path(sub) is not None else base)
    return frozenset(found)


def chains(start: str) -> dict[str, list[str]]:
    """Reach every import from `start`, with the path that leads to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        name = todo.pop()
        for target in sorted(direct_imports(name)):
            if target in paths:
                continue
            paths[target] = [*paths[name], target]
            if module_path(target) is not None:
                todo.append(target)
    return paths


def forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


CORE_MODULES = sorted(
    module_name(path) for room in CORE for path in (PACKAGE / room).rglob("*.py")
)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_the_core_imports_no_flask_and_no_web(module: str) -> None:
    reached = chains(module)
    bad = [" -> ".join(path) for name, path in reached.items() if forbidden(name)]
    assert bad == []


STORE_MODULES = [m for m in CORE_MODULES if m.startswith("chatapp.store")]


@pytest.mark.parametrize("module", STORE_MODULES)
def test_the_store_imports_nothing_above_it(module: str) -> None:
    reached = chains(module)
    above = ("chatapp.turns", "chatapp.upstream")
    bad = [
        " -> ".join(path)
        for name, path in reached.items()
        if any(name == a or name.startswith(a + ".") for a in above)
    ]
    assert bad == []


@pytest.mark.parametrize(
    "module",
    ["chatapp.addresses", "chatapp.errors", "chatapp.sse", "chatapp.text"],
)
def test_ground_modules_import_no_flask_and_no_web(module: str) -> None:
    reached = chains(module)
    assert [" -> ".join(p) for n, p in reached.items() if forbidden(n)] == []


def test_the_walk_sees_through_ground_modules() -> None:
    # The walk must fail a core module that reaches Flask through another.
    reached = chains("chatapp.web.api")
    assert "flask" in reached
    assert len(CORE_MODULES) > 20
