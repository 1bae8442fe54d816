"""The run page lists the spans an app sent for the run (POST /v1/traces/userland), with their own attributes."""

from __future__ import annotations

from .conftest import Dash


async def test_the_run_page_shows_the_apps_spans(dash: Dash) -> None:
    run_id = await dash.run_of(await dash.send("dash/greet", {"name": "ada"}))
    page = await dash.page(f"/dashboard/runs/{run_id}")
    assert 'id="run-spans"' not in page  # none sent: no section
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "SELECT users",
            "startTimeUnixNano": "1000000", "endTimeUnixNano": "13500000",
            "attributes": [{"key": "sdk.run.id", "value": {"stringValue": run_id}},
                           {"key": "db.system", "value": {"stringValue": "postgresql"}}],
            "status": {"code": 2, "message": "relation missing"}}  # fmt: skip
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    resp = await dash.http.post("/v1/traces/userland", json=body)
    assert resp.status_code == 200, resp.text
    page = await dash.page(f"/dashboard/runs/{run_id}")
    assert 'id="run-spans"' in page and "SELECT users" in page and "eee19b7ec3c1b174" in page
    assert "db.system=postgresql" in page and "sdk.run.id" not in page  # the SDK's own attributes are left out
    assert "relation missing" in page and "12 ms" in page
