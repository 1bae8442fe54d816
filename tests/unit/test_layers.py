"""The layers hold: which package of ``stepline`` may import which, read from the code (ast, no import).

``ALLOWED`` is the whole table of edges between packages; an import along any other edge fails this test, and
so does an edge of the table that no code uses any more (delete it: the table only shrinks by itself). Changing
the table is a design decision to make in review, with ``docs/architecture.md``. Counted: every ``import``
and ``from ... import`` of a ``stepline`` module anywhere in a file (top level, ``TYPE_CHECKING`` blocks,
functions), relative ones resolved.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import stepline

SRC = Path(stepline.__file__).parent

# Packages (and the modules directly under stepline/) from the bottom up. ``stepline`` is the public API
# (__init__.py): users import it, and a few modules read its __version__ or FakeClock from it.
ALLOWED: dict[str, set[str]] = {
    "protocol": {"storage"},  # the wire contract: pure, over stored records only
    "storage": {"observability"},  # records, the Store interface, backends; the metric hooks
    "observability": {"core", "storage", "protocol"},
    "core": {"storage", "observability", "realtime"},
    "realtime": {"core", "storage"},
    "client": {"core", "storage", "realtime"},
    "serving": {"stepline", "client", "core", "protocol", "realtime"},  # the SDK side of the protocol
    "server": {"core", "storage", "observability", "protocol", "realtime"},
    "testing": {"core", "realtime", "serving"},  # stepline.testing: users' own tests, on the public core
    "cli": {"stepline", "client", "core", "storage", "observability", "server"},
    "stepline": {"client", "core", "storage", "realtime", "serving"},
}

# Module-level rules inside the table's edges: (importing module prefix, imported module prefix, why).
FORBIDDEN: list[tuple[str, str, str]] = [
    ("stepline.server.dashboard", "stepline.server.rest_api", "shared reads live in server/queries.py"),
    ("stepline.serving", "stepline.core.errors._", "serving uses public names of core"),
]


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module or module.name
    line: int


def _module_name(path: Path) -> str:
    parts = ["stepline", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> Iterator[Import]:
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(module, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    origin = ".".join([*base, node.module] if node.module else base)
                else:
                    origin = node.module or ""
                for alias in node.names:  # ``from stepline import serving``: a module; ``import X``: a name
                    yield Import(module, f"{origin}.{alias.name}", node.lineno)


def _layer(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "stepline":
        return None
    if len(parts) == 1:
        return "stepline"
    layer = parts[1]
    return layer if layer in ALLOWED or (SRC / layer).is_dir() or (SRC / f"{layer}.py").exists() else "stepline"


def _edges() -> dict[tuple[str, str], list[Import]]:
    found: dict[tuple[str, str], list[Import]] = {}
    for imp in _imports():
        source, target = _layer(imp.source), _layer(imp.target)
        if source is None or target is None or source == target:
            continue
        found.setdefault((source, target), []).append(imp)
    return found


def test_every_package_is_in_the_table() -> None:
    layers = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    layers |= {p.stem for p in SRC.glob("*.py") if p.name != "__init__.py"}
    assert layers | {"stepline"} == set(ALLOWED)


def test_no_import_crosses_a_layer_the_table_does_not_allow() -> None:
    bad = [
        f"{imp.source} (line {imp.line}) imports {imp.target}: {source} -> {target} is not in ALLOWED"
        for (source, target), imports in sorted(_edges().items())
        if target not in ALLOWED[source]
        for imp in imports
    ]
    assert bad == []


def test_every_allowed_edge_is_used() -> None:
    used = set(_edges())
    stale = sorted((s, t) for s, targets in ALLOWED.items() for t in targets if (s, t) not in used)
    assert stale == [], "edges no code uses any more: remove them from ALLOWED"


def test_the_module_rules_hold() -> None:
    bad = [
        f"{imp.source} (line {imp.line}) imports {imp.target}: {why}"
        for imp in _imports()
        for source, target, why in FORBIDDEN
        if (imp.source == source or imp.source.startswith(source + "."))
        and (imp.target == target or imp.target.startswith(target if target.endswith("_") else target + "."))
    ]
    assert bad == []


def test_storage_and_protocol_do_not_import_the_engine() -> None:
    """Spelled out (it is in the table too): the engine uses storage and the protocol, never the reverse."""
    edges = _edges()
    assert [imp.target for layer in ("storage", "protocol") for imp in edges.get((layer, "core"), [])] == []


def test_the_dashboard_package_init_imports_nothing() -> None:
    """Its modules import each other directly; an ``__init__`` that imported them made importing any one of them
    run all the others first (an import cycle through the package)."""
    init = SRC / "server" / "dashboard" / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"))
    assert [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
            and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")] == []  # fmt: skip


def _top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (not in functions, not under ``if TYPE_CHECKING``)."""
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.Try):
            yield from (n for n in node.body if isinstance(n, ast.Import | ast.ImportFrom))


def test_no_import_cycle_between_modules() -> None:
    """Module by module, at import time: a cycle makes import order matter (a name not defined yet). An import
    counts as an edge to the module it names (``from a.b import c``: to ``a.b.c`` if that is a module, else to
    ``a.b``); the implicit import of parent packages does not (every package's ``__init__`` would be in a cycle
    with the submodules it re-exports)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
                origin = ".".join([*base, node.module] if node.module else base) if node.level else node.module or ""
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
            deps |= set(targets) & modules.keys()
        graph[name] = deps - {name}
    cycles = _cycles(graph)
    assert cycles == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
