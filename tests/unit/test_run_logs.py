"""The run log capture on its own: what the handler takes, how messages are cut, ctx.logger below the configured level,
the limit per execution, and logging.lastResort kept working."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from stepline.core import run_logs
from stepline.core.run_logs import RunLogCapture, RunLogger, activate, deactivate, enter_step, leave_step
from stepline.storage.records import RUN_LOG_LIMIT, RUN_LOG_MESSAGE_LIMIT, RunLogs

log = logging.getLogger("tests.unit.run_logs")


@pytest.fixture
def capture() -> Iterator[RunLogCapture]:
    cap = RunLogCapture(lambda: 42)
    token = activate(cap)
    try:
        yield cap
    finally:
        deactivate(token)


def taken(cap: RunLogCapture) -> RunLogs:
    logs = cap.take()
    assert logs is not None
    return logs


def test_records_get_time_level_logger_step_and_formatted_message(capture: RunLogCapture) -> None:
    log.warning("a %s b", "x")
    token = enter_step("step-hash")
    try:
        log.error("in a step")
    finally:
        leave_step(token)
    logging.getLogger("stepline.worker").error("Stepline's own: skipped")
    logging.getLogger("stepline").error("skipped too")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed\x00")
    first, second, third = taken(capture).lines
    assert (first.ts, first.level, first.logger, first.message, first.step_id) == (
        42, "WARNING", "tests.unit.run_logs", "a x b", None)  # fmt: skip
    assert (second.message, second.step_id) == ("in a step", "step-hash")
    assert third.message.startswith("failed\\x00\nTraceback") and third.message.endswith("ValueError: boom")


def test_bad_format_arguments_and_long_messages(capture: RunLogCapture) -> None:
    bad = logging.makeLogRecord({"msg": "%d", "args": ("not a number",)})
    assert run_logs.format_message(bad) == "'%d' % ('not a number',)"
    log.warning("x" * (RUN_LOG_MESSAGE_LIMIT + 3))
    [long] = taken(capture).lines
    assert long.message == "x" * RUN_LOG_MESSAGE_LIMIT + "… [3 more characters]"


def test_ctx_logger_is_captured_at_info_even_below_the_configured_level(capture: RunLogCapture) -> None:
    inner = logging.getLogger("stepline.fn.unit-test")
    assert not inner.isEnabledFor(logging.INFO)  # the root logger's default level, WARNING
    logger = RunLogger(inner, {"run_id": "r1"})
    logger.debug("not captured")
    logger.info("captured %d", 1)
    try:
        raise KeyError("k")
    except KeyError:
        logger.info("with a traceback", exc_info=True)
    logger.warning("through logging")
    lines = taken(capture).lines
    assert [(line.level, line.logger, line.message.splitlines()[0]) for line in lines] == [
        ("INFO", "stepline.fn.unit-test", "captured 1"),
        ("INFO", "stepline.fn.unit-test", "with a traceback"),
        ("WARNING", "stepline.fn.unit-test", "through logging")]  # fmt: skip
    assert "KeyError: 'k'" in lines[1].message


def test_replaying_drops_records_and_an_execution_keeps_at_most_the_limit(capture: RunLogCapture) -> None:
    capture.replaying = True
    log.warning("replayed")
    assert capture.take() is None
    capture.replaying = False
    for i in range(RUN_LOG_LIMIT + 7):
        log.warning("line %d", i)
    logs = taken(capture)
    assert (len(logs.lines), logs.dropped) == (RUN_LOG_LIMIT, 7)
    log.warning("more")
    assert taken(capture) == RunLogs((), 1)  # the execution's limit holds across takes


def test_outside_a_run_nothing_is_captured_and_last_resort_still_prints(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_logs.install()
    monkeypatch.setattr(logging.root, "handlers", [run_logs._handler])  # as in a process that configured nothing
    log.warning("nobody configured logging")
    log.info("below lastResort's level")
    assert capsys.readouterr().err == "nobody configured logging\n"
    other = io.StringIO()
    monkeypatch.setattr(log, "handlers", [logging.StreamHandler(other)])
    log.warning("handled by another handler")
    assert capsys.readouterr().err == "" and other.getvalue() == "handled by another handler\n"


async def test_a_task_the_run_started_logs_nothing_into_it_once_the_execution_ended(capture: RunLogCapture) -> None:
    import asyncio

    async def background() -> None:  # e.g. a library's connection-pool task, created while the run executed
        await asyncio.sleep(0)
        log.warning("from the background")

    log.warning("while running")
    capture.closed = True  # what the executor sets after the run's last write
    await asyncio.create_task(background())  # it inherited the run's context
    assert [line.message for line in taken(capture).lines] == ["while running"]
    assert capture.take() is None
