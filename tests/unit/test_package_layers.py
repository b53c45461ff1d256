"""The direction of dependencies between the project's packages (docs/architecture.md, "Package
map"): every module of every package is parsed with ``ast`` and each import checked against
``LAYERS``; a failure names the module and line.

Every import counts: at the top of a module, inside a function (a late import is still a
dependency, and hiding one in a function is how a cycle creeps back in), and under
``if TYPE_CHECKING:`` (a type-only import creates no cycle at run time, but the module still
knows the other package's types, and mypy and the reader follow it; an upward one means the
type lives in the wrong package). So does ``importlib.import_module`` or ``__import__`` of a
literal name. Finding modules by configuration is not importing them: ``app`` lists
``agents`` and ``web`` in Faust's ``autodiscover``, which is how the Faust app at the bottom
reaches the agents and views above it.
"""

from __future__ import annotations

import ast
import graphlib
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]

#: each package of the product and the packages it may import, lowest layer first
LAYERS: dict[str, frozenset[str]] = {
    "analytics": frozenset(),
    "models": frozenset({"analytics"}),
    "app": frozenset({"analytics"}),
    "tables": frozenset({"analytics", "app"}),
    "sinks": frozenset({"analytics", "app", "models"}),
    "agents": frozenset({"analytics", "app", "models", "tables", "sinks"}),
    "web": frozenset({"analytics", "app", "models", "tables", "sinks", "agents"}),
    "generator": frozenset({"analytics", "app"}),
}
#: packages of the repository outside the product: they may import any package, none of the
#: product's may import them
TOOLS = frozenset({"tests", "bench"})


@dataclass(frozen=True, slots=True)
class Import:
    """One import of a module: the module imported, where, and how."""

    path: Path
    line: int
    module: str
    kind: str  # "import", "import in a function", "type-only import"

    @property
    def package(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        return f"{self.path.relative_to(PROJECT)}:{self.line}: {self.kind} of {self.module}"


def _module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _resolve(path: Path, node: ast.ImportFrom) -> list[str]:
    """The absolute names ``from … import`` brings in (relative ones resolved)."""
    if node.level == 0:
        return [node.module or ""]
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    if node.module:
        return [".".join([*base, node.module])]
    return [".".join([*base, alias.name]) for alias in node.names]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _by_name(call: ast.Call) -> str | None:
    """The literal module name of ``importlib.import_module("x")`` or ``__import__("x")``."""
    func = call.func
    name = (
        func.id
        if isinstance(func, ast.Name)
        else func.attr
        if isinstance(func, ast.Attribute)
        else ""
    )
    if name not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(path: Path, source: str | None = None) -> list[Import]:
    """Every import in the module at ``path`` (its text: ``source``, else the file's)."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    found: list[Import] = []

    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(path, node.lineno, alias.name, kind) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.extend(Import(path, node.lineno, name, kind) for name in _resolve(path, node))
        elif isinstance(node, ast.Call) and (name := _by_name(node)) is not None:
            found.append(Import(path, node.lineno, name, kind))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.body:
                visit(statement, "type-only import")
            for statement in node.orelse:
                visit(statement, kind)
            return
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            and kind == "import"
        ):
            kind = "import in a function"
        for child in ast.iter_child_nodes(node):
            visit(child, kind)

    visit(tree, "import")
    return found


def modules(package: str) -> Iterator[Path]:
    yield from sorted((PROJECT / package).rglob("*.py"))


def violations(package: str) -> list[str]:
    """The imports of ``package``'s modules that go against LAYERS."""
    project = LAYERS.keys() | TOOLS
    allowed = LAYERS[package] | {package}
    return [
        f"{found}: {package} may import only {', '.join(sorted(LAYERS[package])) or 'nothing'}"
        for path in modules(package)
        for found in imports_of(path)
        if found.package in project and found.package not in allowed
    ]


def test_every_package_of_the_product_has_its_layer() -> None:
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    packages = {name.split(".")[0] for name in pyproject["tool"]["setuptools"]["packages"]}
    assert packages == LAYERS.keys(), "place each package in LAYERS (and the Package map)"


def test_the_layers_have_no_cycle() -> None:
    order = list(graphlib.TopologicalSorter(LAYERS).static_order())
    assert order.index("analytics") < order.index("sinks") < order.index("agents")


def test_a_package_may_import_whatever_its_imports_may() -> None:
    """The map is drawn as arrows between neighbours; what they allow is its closure."""
    for package, allowed in LAYERS.items():
        for below in allowed:
            assert LAYERS[below] <= allowed, f"{package} may import {below} but not all it imports"


def test_analytics_imports_no_other_project_package() -> None:
    assert LAYERS["analytics"] == frozenset()
    assert violations("analytics") == []


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_follow_the_layers(package: str) -> None:
    found = violations(package)
    assert found == [], "imports against the package map:\n" + "\n".join(found)


def test_imports_in_functions_type_checking_and_relative_ones_are_found() -> None:
    """The parser itself: the checks above pass only if it sees every kind of import."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "from . import health\n"
        "from ..web import views\n"
        "if TYPE_CHECKING:\n"
        "    from agents.outputs import Record\n"
        "def late() -> None:\n"
        "    from app import metrics\n"
        "    importlib.import_module('tables.history')\n"
    )
    found = imports_of(PROJECT / "sinks" / "example.py", source)
    assert [(f.line, f.module, f.kind) for f in found if f.package in LAYERS] == [
        (3, "sinks.health", "import"),
        (4, "web", "import"),
        (6, "agents.outputs", "type-only import"),
        (8, "app", "import in a function"),
        (9, "tables.history", "import in a function"),
    ]
    assert str(found[3]) == "sinks/example.py:4: import of web"
