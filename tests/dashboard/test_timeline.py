"""The run page's timeline: one bar per attempt of every step on the run's time axis, in order, with the errors of
the failed ones and the backoff between them; sleeps as spans; parallel steps as lanes; invoked runs expandable;
the app's spans under the step they ran in."""

from __future__ import annotations

import html
import re

from stepline import Context

from ..integration.helpers import advance, drain
from .conftest import Dash
from .dash_app import RETRY_AFTER_S


def _lane(page: str, step: str) -> str:
    start = rf'<li class="step lane [^"]*" data-step="{re.escape(step)}"'
    match = re.search(start + r'.*?(?=<li class="step lane |</ol>\s*</div>)', page, re.S)
    assert match, f"no lane for step {step!r}"
    return match.group(0)


def _bars(lane: str) -> list[tuple[str, str, float, float]]:
    """(kind, status, left %, width %) of the lane's own bars."""
    track = re.search(r'<div class="track">(.*?)</div>', lane, re.S)
    assert track
    return [(k, s, float(left), float(width)) for k, s, left, width in re.findall(
        r'class="bar b-(\w+) bs-(\w+)[^"]*"(?: data-attempt="\d+")? style="left: ([\d.]+)%; width: ([\d.]+)%"',
        track.group(1))]  # fmt: skip


async def test_every_attempt_is_a_bar_in_order_with_its_error_and_the_backoff_between(dash: Dash) -> None:
    event_id = await dash.send("dash/rates", {"key": "t1"})
    run_id = await dash.run_of(event_id)
    page = await dash.page(f"/dashboard/runs/{run_id}")
    lane = _lane(page, "fetch-rates")
    assert [b[:2] for b in _bars(lane)] == [("attempt", "failed"), ("backoff", "retrying")]
    assert "Next attempt at" in lane and "after the error above" in lane
    # the retry note says when the next attempt starts and after which error
    listed = html.unescape(await dash.page("/dashboard/runs"))
    assert re.search(
        r"Retrying step 'fetch-rates': next attempt at 2026-01-01 00:00:00Z \(in 300 ms\), "
        r"after RetryAfterError: rate service busy \(try 1\) for t1",
        listed,
    ), listed[-3000:]
    for _ in range(2):
        await advance(dash.client, dash.clock, RETRY_AFTER_S + 0.05)
    await advance(dash.client, dash.clock, RETRY_AFTER_S + 0.05)  # the sleep ends
    page = await dash.page(f"/dashboard/runs/{run_id}")
    assert 'id="run-output"' in page, "the run completed"
    lane = _lane(page, "fetch-rates")
    bars = _bars(lane)
    assert [b[:2] for b in bars] == [("attempt", "failed"), ("backoff", "completed"), ("attempt", "failed"),
                                     ("backoff", "completed"), ("attempt", "completed")]  # fmt: skip
    lefts = [b[2] for b in bars]
    assert lefts == sorted(lefts) and lefts[2] > lefts[0] and lefts[4] > lefts[2], "on the time axis, in order"
    attempts = re.findall(r'<li class="attempt a-(\w+)" data-attempt="(\d+)">(.*?)</li>', lane, re.S)
    assert [(a[1], a[0]) for a in attempts] == [("1", "failed"), ("2", "failed"), ("3", "completed")]
    assert "rate service busy (try 1) for t1" in attempts[0][2] and "(try 2)" in attempts[1][2]
    assert "busy" not in attempts[2][2]
    # the two parallel steps are lanes of their own; the sleep is a span of 0.3 s at the end
    assert [b[:2] for b in _bars(_lane(page, "fetch-fees"))] == [("attempt", "completed")]
    assert [b[:2] for b in _bars(_lane(page, "fetch-tax"))] == [("attempt", "completed")]
    [sleep] = _bars(_lane(page, "cool-down"))
    assert sleep[:2] == ("sleep", "completed") and sleep[2] >= lefts[4] and sleep[3] > 20
    assert 'id="timeline"' in page and 'class="tick"' in page


async def test_a_step_that_ran_once_has_one_attempt_bar_and_no_attempt_list(dash: Dash) -> None:
    run_id = await dash.run_of(await dash.send("dash/greet", {"name": "once"}))
    page = await dash.page(f"/dashboard/runs/{run_id}")
    lane = _lane(page, "compose")
    assert [b[:2] for b in _bars(lane)] == [("attempt", "completed")]
    assert 'class="attempts"' not in lane
    assert 'data-copy="#step-output-json-2"' in lane and 'data-copy="#run-output"' in page


async def test_invoked_runs_are_linked_and_expandable_under_their_step(dash: Dash) -> None:
    async def parent(ctx: Context) -> object:
        return await ctx.step.invoke("call-greet", function="test-app-greet", data={"name": "child"})

    dash.client.function(id="parent", trigger="dash/parent", retries=0)(parent)
    await dash.client.ready()
    run_id = await dash.run_of(await dash.send("dash/parent"))
    await advance(dash.client, dash.clock, 0.01)
    page = await dash.page(f"/dashboard/runs/{run_id}")
    lane = _lane(page, "call-greet")
    [child] = re.findall(r'<details class="child-run" id="child-(\w+)"', lane)
    assert f'href="/dashboard/runs/{child}"' in lane and "load-name" in lane and "compose" in lane
    assert "hello child" in html.unescape(lane)


async def test_the_apps_spans_nest_under_the_step_they_started_in(dash: Dash) -> None:
    run_id = await dash.run_of(await dash.send("dash/greet", {"name": "spans"}))
    [step, _] = await dash.client.engine.store.list_steps(run_id)
    at = step.started_at * 1_000_000

    def span(span_id: str, name: str, start: int, end: int, parent: str = "") -> dict[str, object]:
        return {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "parentSpanId": parent,
                "name": name, "startTimeUnixNano": str(start), "endTimeUnixNano": str(end),
                "attributes": [{"key": "sdk.run.id", "value": {"stringValue": run_id}}]}  # fmt: skip

    spans = [span("a1" * 8, "http GET /users", at, at + 1), span("b2" * 8, "parse", at, at, parent="a1" * 8),
             span("c3" * 8, "late cleanup", at + 10**15, at + 10**15 + 1)]  # fmt: skip
    resp = await dash.http.post("/v1/traces/userland", json={"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
    assert resp.status_code == 200, resp.text
    page = await dash.page(f"/dashboard/runs/{run_id}")
    lane = _lane(page, "load-name")
    assert re.search(rf'data-span="{"a1" * 8}" style="--depth: 0"', lane)
    assert re.search(rf'data-span="{"b2" * 8}" style="--depth: 1"', lane)
    assert "late cleanup" not in lane and 'id="spans-outside"' in page and "late cleanup" in page


async def test_the_time_a_throttled_run_waited_is_shown_as_throttled_for_its_length(dash: Dash) -> None:
    async def paced(ctx: Context) -> object:
        return await ctx.step.run("work", lambda: "done")

    dash.client.function(id="paced", trigger="dash/paced", retries=0, throttle={"limit": 1, "period": "1200ms"})(paced)
    await dash.client.ready()
    [first_id, second_id] = await dash.client.send([{"name": "dash/paced", "data": {"n": n}} for n in (1, 2)])
    await drain(dash.client)
    first, second = await dash.run_of(first_id), await dash.run_of(second_id)
    await advance(dash.client, dash.clock, 1.2)
    page = html.unescape(await dash.page(f"/dashboard/runs/{second}"))
    assert 'id="run-output"' in page, "the throttled run completed"
    before = re.search(r'<div class="lane lane-run" id="before-start">(.*?)</div>\s*</div>', page, re.S)
    assert before, "the time before the start has its lane"
    assert "Throttled 1.20 s" in before.group(1)
    assert re.search(r'class="bar b-gate bs-completed" style="left: 0.0%; width: ([\d.]+)%" '
                     r'title="throttled \(completed\), 1.20 s"', before.group(1))  # fmt: skip
    duration = re.search(r'id="run-duration">(.*?)</span>', page, re.S)
    assert duration and "throttled 1.20 s before its start" in duration.group(1)
    # the runs list says it too, beside the run's duration
    listed = html.unescape(await dash.page("/dashboard/runs"))
    row = re.search(rf'<tr data-run-id="{second}".*?</tr>', listed, re.S)
    assert row and '<div class="sub run-waited">throttled 1.20 s before</div>' in row.group(0)
    first_row = re.search(rf'<tr data-run-id="{first}".*?</tr>', listed, re.S)
    assert first_row and "run-waited" not in first_row.group(0)
    # the run that started at once waited for nothing: no gate, no extra row
    page = await dash.page(f"/dashboard/runs/{first}")
    assert "b-gate" not in page and "hrottled" not in page
    assert await dash.client.engine.store.get_run_wait(first) is None
