"""The package's folders name the architecture, and the import directions hold.

Each sub-package's ``__init__`` docstring says what it may import; this test parses every
module with :mod:`ast` and fails with the file and line of a forbidden import (module
level, inside functions and under ``TYPE_CHECKING`` alike).
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parents[1] / "edge"

CORE = {"types", "errors", "progress", "uuid7", "boundedjson", "signing", "compat"}
TOP_LEVEL = {"__init__", "__main__", "cli", *CORE}
PACKAGES = {
    "vision",
    "recognition",
    "watchlist",
    "delivery",
    "service",
    "evaluation",
    "dev",
    "console",
    "commands",
}
# What each part of edge may import, besides the core and itself.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "vision": set(),
    "delivery": set(),
    "dev": set(),
    "recognition": {"vision", "delivery"},
    "watchlist": {"vision", "recognition"},
    "service": {"vision", "recognition", "watchlist", "delivery"},
    "evaluation": {"vision", "recognition", "watchlist", "delivery", "service", "dev"},
    "console": {"delivery", "watchlist"},
    "commands": PACKAGES - {"commands"},  # the only part that may import console
    # cli.py loads the commands by name (importlib) and sets up logging.
    "cli": {"service"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(EDGE)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return "cli" if rel.stem in ("cli", "__main__") else "core"


def _imported_parts(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, imported module, part of edge it belongs to) for each edge import."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "edge":
                names = [f"edge.{a.name}" for a in node.names]
            else:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] != "edge" or len(parts) < 2:
                continue
            head = parts[1]
            if head in PACKAGES:
                found.append((node.lineno, name, head))
            elif head in CORE:
                found.append((node.lineno, name, "core"))
            elif head in ("cli", "__main__"):
                found.append((node.lineno, name, "cli"))
            elif head != "__version__":
                found.append((node.lineno, name, f"unknown:{head}"))
    return found


def _violations(root: Path) -> list[str]:
    bad: list[str] = []
    for path in sorted(root.rglob("*.py")):
        part = _part(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name, target in _imported_parts(tree):
            if target == part or target == "core":
                continue
            if target not in ALLOWED[part]:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {part} imports {name}")
    return bad


def test_import_directions_hold() -> None:
    bad = _violations(EDGE)
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_a_forbidden_import_is_reported_with_file_and_line(tmp_path: Path) -> None:
    fake = tmp_path / "edge"
    (fake / "vision").mkdir(parents=True)
    (fake / "vision" / "detect.py").write_text(
        "import numpy\n\ndef f():\n    from edge.delivery.alert import new_alert_id\n"
    )
    (fake / "delivery").mkdir()
    (fake / "delivery" / "alert.py").write_text("from edge import vision\n")
    global EDGE
    saved, EDGE = EDGE, fake
    try:
        bad = _violations(fake)
    finally:
        EDGE = saved
    assert bad == [
        "edge/delivery/alert.py:1: delivery imports edge.vision",
        "edge/vision/detect.py:4: vision imports edge.delivery.alert",
    ]


def test_top_level_holds_only_the_named_modules() -> None:
    modules = {p.stem for p in EDGE.glob("*.py")}
    assert modules <= TOP_LEVEL, f"modules at the top of edge/: {sorted(modules - TOP_LEVEL)}"
    folders = {p.name for p in EDGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == PACKAGES | {"schemas"}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_each_sub_package_says_what_it_owns(package: str) -> None:
    init = EDGE / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc, f"{init} has no docstring"
    if package != "commands":
        assert "May import" in doc, f"{init}: say what the package may import"


# --- no import circles between the modules of one sub-package ---------------------------------

CYCLE_FREE = sorted(PACKAGES)
"""Every sub-package: its modules must not import each other in a circle (at module level
or inside functions alike). Issue 21 broke console's (app <-> routes: the routers are
handed in) and delivery's (alert <-> alert_sign: edge/delivery/wire.py), issue 20
vision's (model_import <-> model_quantise)."""


def _module_graph(package: Path) -> dict[str, dict[str, int]]:
    """module -> {module of the same package it imports: line}."""
    prefix = f"edge.{package.name}"
    graph: dict[str, dict[str, int]] = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).with_suffix("").parts
        rel = rel[:-1] if rel[-1] == "__init__" else rel
        name = ".".join((prefix, *rel))
        deps: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # ``from edge.pkg import mod`` names a module; ``from edge.pkg.mod import x``
                # names mod (x may be a function or a submodule: the module is what runs).
                targets = ([f"{node.module}.{a.name}" for a in node.names]
                           if node.module == prefix else [node.module])  # fmt: skip
            for target in targets:
                if target.startswith(prefix + ".") and target != name:
                    deps.setdefault(target, node.lineno)
        graph[name] = deps
    return {m: {d: line for d, line in deps.items() if d in graph} for m, deps in graph.items()}


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Each circle once, as a path ``[a, b, ..., a]`` starting at its smallest module."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                found.add((*path, start))
            elif nxt not in path and nxt > start:  # each circle from its smallest member
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return [list(c) for c in sorted(found)]


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = [f"{a} imports {b} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return "; ".join(steps)


@pytest.mark.parametrize("package", CYCLE_FREE)
def test_no_import_circle_inside_a_package(package: str) -> None:
    graph = _module_graph(EDGE / package)
    circles = [_describe(graph, c) for c in _cycles(graph)]
    assert not circles, f"import circles in edge/{package}:\n" + "\n".join(circles)


def test_an_import_circle_is_reported_with_its_lines(tmp_path: Path) -> None:
    pkg = tmp_path / "edge" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""A package."""\n')
    (pkg / "a.py").write_text("from edge.pkg.b import g\n")
    (pkg / "b.py").write_text("import os\n\ndef g():\n    from edge.pkg import a\n")
    (pkg / "c.py").write_text("from edge.pkg import a, b\n")  # uses both: no circle
    graph = _module_graph(pkg)
    assert [_describe(graph, c) for c in _cycles(graph)] == [
        "edge.pkg.a imports edge.pkg.b (line 1); edge.pkg.b imports edge.pkg.a (line 4)"
    ]
