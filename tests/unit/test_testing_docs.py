"""docs/testing.md's example is itself a test: its code block is loaded as a module and its tests run here."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def _example() -> types.ModuleType:
    [code] = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    module = types.ModuleType("testing_doc_example")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


EXAMPLE = _example()
TESTS = {name: fn for name, fn in vars(EXAMPLE).items() if name.startswith("test_") and inspect.iscoroutinefunction(fn)}


def test_the_example_has_its_tests() -> None:
    assert len(TESTS) == 3


async def test_a_confirmed_order_ships() -> None:
    await TESTS["test_a_confirmed_order_ships"]()


async def test_an_unconfirmed_order_times_out_after_the_sleep_and_the_wait() -> None:
    await TESTS["test_an_unconfirmed_order_times_out_after_the_sleep_and_the_wait"]()


async def test_a_declined_card_fails_the_run() -> None:
    await TESTS["test_a_declined_card_fails_the_run"]()
