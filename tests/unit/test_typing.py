"""The user API's types, as a user's editor sees them: mypy over a sample user module.

Every line marked ``# error`` must be reported by mypy, and no other line: a ``step.run`` that stops inferring its
callable's return type (``Any`` passes ``assert_type`` against nothing), or a context that stops telling async from
sync steps, fails this test."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = """
from __future__ import annotations

import datetime as dt
from typing import Any, assert_type

from pydantic import BaseModel

from stepline import Context, Stepline, SyncContext
from stepline.core.events import StoredEvent


class Order(BaseModel):
    id: str
    total: int


def count(n: int, *, scale: int = 1) -> int:
    return n * scale


async def fetch(order_id: str) -> Order:
    return Order(id=order_id, total=3)


def name() -> str:
    return "x"


app = Stepline(app_id="typing-sample")


@app.function(id="typed-async", trigger="sample/async")
async def typed_async(ctx: Context) -> dict[str, Any]:
    assert_type(ctx.event, StoredEvent)
    assert_type(await ctx.step.run("count", count, 2), int)
    assert_type(await ctx.step.run("scaled", count, 2, scale=3), int)
    assert_type(await ctx.step.run("fetch", fetch, "o-1"), Order)
    assert_type(await ctx.step.run("lambda", lambda: [1, 2]), list[int])
    assert_type(await ctx.step.run("as-model", name, output_type=Order), Order)
    assert_type(await ctx.step.sleep("nap", "1s"), None)
    assert_type(await ctx.step.sleep_until("until", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)), None)
    assert_type(await ctx.step.wait_for_event("wait", event="e/x", timeout="1h"), dict[str, Any] | None)
    assert_type(await ctx.step.wait_for_signal("sig", signal="s"), dict[str, Any] | None)
    assert_type(await ctx.step.send_event("send", {"name": "e/y"}), list[str])
    assert_type(await ctx.publish("ch", "t", {"a": 1}), int | None)
    await ctx.step.run("bad-arg", count, "two")  # error
    await ctx.step.run("bad-kwarg", count, 2, scal=3)  # error
    await ctx.step.sleep("nap2")  # error
    await ctx.step.wait_for_event("wait2", event="e/x", timeout="1h", iff="x")  # error
    text: str = await ctx.step.run("wrong-type", count, 1)  # error
    return {"n": await ctx.step.invoke("inv", function="other", data={})}


@app.function(id="typed-sync", trigger="sample/sync")
def typed_sync(ctx: SyncContext) -> int:
    assert_type(ctx.step.run("count", count, 2), int)
    assert_type(ctx.step.run("lambda", lambda: "s"), str)
    assert_type(ctx.step.wait_for_event("wait", event="e/x", timeout=60), dict[str, Any] | None)
    assert_type(ctx.group.parallel([lambda: ctx.step.run("a", count, 1), lambda: ctx.step.run("b", count, 2)]),
                list[int])
    assert_type(ctx.publish("ch", "t", 1), int | None)
    ctx.step.run("bad-arg", count, "two")  # error
    ctx.step.run("async-in-sync", fetch, "o-1").id  # error
    return ctx.step.run("count2", count, 3)


async def not_awaited(ctx: Context) -> int:
    return ctx.step.run("count", count, 2)  # error


@app.function(id="sync-with-async-context", trigger="sample/wrong")  # error
def sync_with_async_context(ctx: Context) -> int:
    return 1
"""


def test_user_api_types_are_inferred(tmp_path: Path) -> None:
    sample = tmp_path / "user_module.py"
    sample.write_text(textwrap.dedent(SAMPLE))
    expected = {i for i, line in enumerate(SAMPLE.splitlines(), 1) if line.endswith("# error")}
    out, err, _status = mypy_api.run([
        "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache"),
        "--no-error-summary", "--show-error-codes", str(sample),
    ])  # fmt: skip
    reported: dict[int, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"(?:.*/)?user_module\.py:(\d+): error: (.*)", line)  # (mypy's cache may name an earlier path)
        if m:
            reported.setdefault(int(m.group(1)), []).append(m.group(2))
    unexpected = {n: msgs for n, msgs in reported.items() if n not in expected}
    missing = sorted(expected - set(reported))
    lines = SAMPLE.splitlines()
    assert not unexpected, (
        "mypy reported errors on correct user code:\n"
        + "\n".join(f"{lines[n - 1].strip()}\n    {m}" for n, msgs in unexpected.items() for m in msgs)
        + f"\n{err}"
    )
    assert not missing, "mypy accepted wrong user code:\n" + "\n".join(lines[n - 1].strip() for n in missing)


@pytest.mark.parametrize("example", ["examples/shop/app.py", "examples/csv_bulk/app.py"])
def test_the_example_apps_type_check(example: str) -> None:
    """The examples are what users copy: their handlers' ``ctx`` annotations match their flavour."""
    out, err, status = mypy_api.run([
        "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache"),
        "--no-error-summary", str(ROOT / example),
    ])  # fmt: skip
    assert status == 0, out + err
