"""The SDK call protocol's pure parts: what a response means, and what a call carries."""

from __future__ import annotations

import json

from stepline.core.events import StoredEvent
from stepline.protocol.calls import CallState, call_body, memo_value, parse_response, retry_after_ms
from stepline.storage.records import StepRecord

NOW = 1_800_000_000_000
SDK = {"x-inngest-sdk": "inngest-py:v0.5.19"}


def step(kind: str, status: str, output: object = None, error: dict[str, str] | None = None) -> StepRecord:
    return StepRecord("r", "s", "d", kind, status, 1, output, error, None, NOW, NOW)


def event(name: str = "app/x") -> StoredEvent:
    return StoredEvent("01J0000000000000000000000", "e1", name, {"a": 1}, {}, NOW, None, NOW)


def test_a_200_completes_with_the_body_as_output() -> None:
    out = parse_response(200, SDK, b'{"ok": true}', NOW)
    assert (out.kind, out.output) == ("complete", {"ok": True})
    assert parse_response(200, SDK, b"", NOW).output is None


def test_a_2xx_without_the_sdk_header_is_a_retriable_failure() -> None:
    out = parse_response(200, {}, b"<html>hello</html>", NOW)
    assert out.kind == "error" and out.retriable
    assert "X-Inngest-SDK" in (out.error or {})["message"]


def test_206_ops_are_parsed_and_a_single_object_is_accepted() -> None:
    body = json.dumps([{"op": "StepRun", "id": "abc", "displayName": "first", "data": {"x": 1}},
                       {"op": "Sleep", "id": "def", "name": "5s", "opts": None}]).encode()  # fmt: skip
    out = parse_response(206, SDK, body, NOW)
    assert out.kind == "ops"
    assert [(o.op, o.id, o.label) for o in out.ops] == [("StepRun", "abc", "first"), ("Sleep", "def", "5s")]
    assert out.ops[0].data == {"x": 1} and out.ops[1].opts == {}
    single = parse_response(206, SDK, b'{"op": "StepPlanned", "id": "p"}', NOW)
    assert [o.op for o in single.ops] == ["StepPlanned"]
    assert parse_response(206, SDK, b"[{}]", NOW).kind == "error"


def test_function_errors_keep_the_sdk_error_and_no_retry_and_retry_after() -> None:
    body = b'{"name": "ValueError", "message": "bad input", "stack": "...", "code": "x"}'
    out = parse_response(500, {**SDK, "x-inngest-no-retry": "true"}, body, NOW)
    assert out.kind == "error" and not out.retriable
    assert out.error == {"name": "ValueError", "message": "bad input", "stack": "...", "code": "x"}
    later = parse_response(500, {**SDK, "retry-after": "30"}, body, NOW)
    assert later.retriable and later.retry_at == NOW + 30_000
    garbage = parse_response(502, {}, b"Bad Gateway", NOW)
    assert garbage.retriable and "HTTP 502" in (garbage.error or {})["message"]


def test_retry_after_reads_seconds_and_dates_and_caps_at_a_day() -> None:
    assert retry_after_ms("2", NOW) == NOW + 2000
    assert retry_after_ms("2027-01-15T08:00:05Z", NOW) == NOW + 5000  # ISO dates (the Python SDK sends these)
    assert retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == NOW  # in the past: now
    assert retry_after_ms("999999999", NOW) == NOW + 24 * 3600 * 1000
    assert retry_after_ms("soon", NOW) is None and retry_after_ms(None, NOW) is None


def test_streamed_responses_are_unwrapped() -> None:
    inner = {"status": 206, "headers": {"X-Inngest-SDK": "js:v4"}, "body": json.dumps([{"op": "StepRun", "id": "a"}])}
    out = parse_response(201, {}, b"   \n " + json.dumps(inner).encode(), NOW)
    assert out.kind == "ops" and out.ops[0].id == "a"


def test_memo_values_have_the_shape_each_sdk_step_expects() -> None:
    assert memo_value(step("run", "completed", output=5)) == {"data": 5}
    assert memo_value(step("run", "failed", error={"name": "E", "message": "m"})) == {
        "error": {"name": "E", "message": "m"}
    }
    assert memo_value(step("sleep", "completed")) is None
    assert memo_value(step("wait_for_event", "completed", output={"name": "x"})) == {"name": "x"}
    assert memo_value(step("wait_for_event", "completed")) is None
    assert memo_value(step("invoke", "completed", output=3)) == {"data": 3}


def test_the_call_body_names_system_events_as_inngest_does_and_inlines_small_state() -> None:
    state = CallState("run1", event("stepline/function.failed"), [], {"h": {"data": 1}}, ["h"], 2, 5)
    body, use_api = call_body(state)
    assert not use_api
    assert body["event"]["name"] == "inngest/function.failed"
    assert body["ctx"] == {"run_id": "run1", "attempt": 2, "max_attempts": 5, "disable_immediate_execution": False,
                           "use_api": False, "stack": {"stack": ["h"], "current": 1}}  # fmt: skip
    assert body["steps"] == {"h": {"data": 1}} and body["use_api"] is False and body["version"] == -1
    assert isinstance(body["event"]["id"], str) and isinstance(body["event"]["ts"], int)


def test_large_state_is_left_for_the_sdk_to_fetch() -> None:
    big = {"h": {"data": "x" * (5 * 1024 * 1024)}}
    body, use_api = call_body(CallState("run1", event(), [], big, ["h"], 0, 5))
    assert use_api and body["use_api"] is True and body["ctx"]["use_api"] is True
    assert body["steps"] == {} and body["events"] == []
