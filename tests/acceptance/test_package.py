"""The package a user installs: the built wheel holds every SQL file, template and static asset and works from
where it is installed; one version; the license; a PyPI description without links that break there; and the
README's code sample is examples/quickstart.py, which runs as shown."""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import stepline

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "stepline"


def _fenced_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)], cwd=ROOT,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    [built] = out.glob("stepline-*.whl")
    return built


def test_the_wheel_holds_every_file_of_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    data_files = [p for p in SOURCE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
                  and "__pycache__" not in p.parts]  # fmt: skip
    kinds = {p.suffix for p in data_files}
    assert {".sql", ".html", ".css", ".js", ".typed"} <= kinds  # what must be there, checked as found below
    missing = [str(p.relative_to(SOURCE.parent)) for p in data_files if str(p.relative_to(SOURCE.parent)) not in names]
    assert missing == []
    modules = [str(p.relative_to(SOURCE.parent)) for p in SOURCE.rglob("*.py")]
    assert [m for m in modules if m not in names] == []


def test_the_wheel_metadata(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    [meta_name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    meta = email.message_from_bytes(archive.read(meta_name))
    assert meta["Version"] == stepline.__version__  # one version, written in src/stepline/__init__.py
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert meta["Description-Content-Type"] == "text/markdown"
    description = meta.get_payload()
    assert isinstance(description, str) and "stepline" in description.lower()
    # PyPI shows the description on its own: no relative links or images (README.md has both).
    targets = re.findall(r"\]\(([^)]*)\)", description)
    assert [t for t in targets if not t.startswith("https://")] == []
    assert "![" not in description and "<img" not in description
    assert (
        f"## {stepline.__version__}" in (ROOT / "CHANGELOG.md").read_text()
        or "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()
    )


def test_the_installed_wheel_finds_its_migrations_templates_and_assets(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=120)  # fmt: skip
    probe = """
import asyncio, sys
import stepline
assert stepline.__file__.startswith(sys.argv[1]), stepline.__file__
from starlette.testclient import TestClient
from stepline.core.engine import Engine
from stepline.server.app import create_app
from stepline.server.config import ServerConfig
from stepline.storage import store_from_url

async def main():
    store = store_from_url(sys.argv[2])
    await store.open()  # runs every SQLite migration from the installed files
    print("schema", store.schema_version())
    app = create_app(Engine(store), ServerConfig(kind="dev"))
    with TestClient(app, base_url="http://localhost") as http:  # a loopback Host: dev mode refuses others
        for path in ("/dashboard/runs", "/dashboard/functions", "/dashboard/events", "/dashboard/apps",
                     "/dashboard/static/dashboard.css", "/dashboard/static/dashboard.js"):
            assert http.get(path).status_code == 200, path
    await store.close()
    print("ok")

asyncio.run(main())
"""
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", probe, str(target), str(tmp_path / "s.db")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    migrations = len(list((SOURCE / "storage" / "sqlite" / "migrations").glob("*.sql")))
    assert proc.stdout.split() == ["schema", str(migrations), "ok"]


def test_the_readme_code_sample_is_the_quickstart_file() -> None:
    quickstart = (ROOT / "examples" / "quickstart.py").read_text()
    for doc in ("README.md", "README.pypi.md"):
        assert quickstart in _fenced_blocks((ROOT / doc).read_text(), "python"), f"{doc} differs from quickstart.py"


def test_the_quickstart_runs_as_shown_in_seconds(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STEPLINE_DB"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    emailed, result = proc.stdout.splitlines()
    assert emailed == "emailing ada@example.com the receipt of order 42"
    assert result.startswith("run completed: {'status': 'sent'}; its steps: stepline runs show ")
    assert (tmp_path / ".stepline" / "quickstart.db").exists()
