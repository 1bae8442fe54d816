"""Every named query the shared SQL code uses is defined for every backend (``storage/<backend>/*.sql``).

The mixins shared by the SQL backends (``storage/sql_*.py``) look queries up by name in the concrete backend's
files; a name missing from one backend fails only when that code path runs there. These checks read the code
(string subscripts such as ``self.Q["claim_runs"]``, ``q["..."]``, ``self._realtime_queries["..."]``) and the
``-- name:`` headers, with no database.
"""

from __future__ import annotations

import ast
from importlib import resources
from pathlib import Path

import pytest

from stepline.storage.sql import parse_queries

STORAGE = Path(resources.files("stepline.storage"))  # type: ignore[arg-type]
BACKENDS = ("sqlite", "postgres")


def _sql_files(backend: str) -> dict[str, dict[str, str]]:
    return {p.name: parse_queries(p.read_text(encoding="utf-8")) for p in sorted((STORAGE / backend).glob("*.sql"))}


def _is_query_table(node: ast.expr) -> bool:
    """``Q``, ``self.Q``, ``q``, ``query``/``queries`` and ``self._<x>_queries``: the names query dicts go by."""
    if isinstance(node, ast.Name):
        return node.id in {"Q", "q", "queries", "QUERIES"}
    if isinstance(node, ast.Attribute):
        return node.attr == "Q" or node.attr.endswith("_queries")
    return False


def _used_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.slice.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript)
        and _is_query_table(node.value)
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    }


def test_both_backends_have_the_same_sql_files() -> None:
    files = {backend: set(_sql_files(backend)) for backend in BACKENDS}
    assert files["sqlite"] == files["postgres"]
    assert "queries.sql" in files["sqlite"]


def test_every_query_the_shared_code_uses_is_defined_for_every_backend() -> None:
    shared = sorted(STORAGE.glob("sql*.py"))
    assert len(shared) >= 5, "the shared SQL modules moved: update this test"
    defined = {backend: {n for qs in _sql_files(backend).values() for n in qs} for backend in BACKENDS}
    used = {name: path.name for path in shared for name in _used_names(path)}
    assert len(used) > 50, "the query lookups were not found: the way code names its queries changed"
    missing = {
        backend: sorted(f"{name} (used in {used[name]})" for name in used if name not in defined[backend])
        for backend in BACKENDS
    }
    assert missing == {backend: [] for backend in BACKENDS}


@pytest.mark.parametrize("side", BACKENDS)
def test_a_query_of_one_backend_only_is_used_by_that_backend(side: str) -> None:
    """A query only one backend defines is that backend's own optimisation, looked up by its own store module
    (where the shared code cannot reach it); one the shared code used would fail on the other backend."""
    other = next(b for b in BACKENDS if b != side)
    mine = {n for qs in _sql_files(side).values() for n in qs}
    theirs = {n for qs in _sql_files(other).values() for n in qs}
    own_code = _used_names(STORAGE / side / "store.py") | {
        node.value
        for node in ast.walk(ast.parse((STORAGE / side / "store.py").read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    unused = sorted(name for name in mine - theirs if name not in own_code)
    assert unused == []


@pytest.mark.parametrize("side", BACKENDS)
def test_every_defined_query_is_used(side: str) -> None:
    """A query no code looks up is dead SQL that drifts unnoticed (and hides a missing rename)."""
    code = [*STORAGE.glob("sql*.py"), STORAGE / side / "store.py"]
    strings = {
        node.value
        for path in code
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    dead = sorted(f"{file}: {name}" for file, qs in _sql_files(side).items() for name in qs if name not in strings)
    assert dead == []
