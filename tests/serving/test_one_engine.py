"""One engine for both kinds of function: an event fans out to an in-process function (run by the server
process itself, ``stepline dev --app``) and to an HTTP function (served by another app), and both runs look alike."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

import stepline
from stepline import Context, Stepline

from .harness import AsgiThread, Server, free_port, wait_for

served = Stepline("served")


@served.function(id="ship", trigger="shop/order.paid")
async def ship(ctx: Context) -> dict[str, Any]:
    label = await ctx.step.run("label", lambda: f"label-{ctx.event.data['order']}")
    return {"by": "http", "label": label}


IN_PROCESS_APP = textwrap.dedent(
    """
    from stepline import Stepline

    client = Stepline("billing")

    @client.function(id="invoice", trigger="shop/order.paid")
    async def invoice(ctx):
        number = await ctx.step.run("number", lambda: f"inv-{ctx.event.data['order']}")
        return {"by": "in-process", "number": number}
    """
)


def test_an_event_fans_out_to_in_process_and_http_functions_alike(tmp_path: Path) -> None:
    (tmp_path / "billing_app.py").write_text(IN_PROCESS_APP)
    port = free_port()
    server = Server(tmp_path, [f"http://127.0.0.1:{port}/"],
                    extra_args=["--app", "billing_app:client", "--app-dir", str(tmp_path)])  # fmt: skip
    app = AsgiThread(stepline.serve(served, base_url=server.url), port)
    app.start()
    try:
        server.start()
        event_id = server.send("shop/order.paid", {"order": 7})
        runs = {}
        for _ in range(2):
            for run in server.rest(f"/v1/events/{event_id}/runs"):
                runs[run["function_id"]] = server.ended(run["run_id"])
        assert set(runs) == {"billing-invoice", "served-ship"}
        assert runs["billing-invoice"]["status"] == runs["served-ship"]["status"] == "Completed"
        assert runs["billing-invoice"]["output"] == {"by": "in-process", "number": "inv-7"}
        assert runs["served-ship"]["output"] == {"by": "http", "label": "label-7"}
        shapes = {fn: [(s["name"], s["kind"], s["status"], s["attempts"]) for s in server.steps(r["run_id"])]
                  for fn, r in runs.items()}  # fmt: skip
        assert shapes == {"billing-invoice": [("number", "run", "completed", 1)],
                          "served-ship": [("label", "run", "completed", 1)]}  # fmt: skip
    finally:
        server.stop()
        app.stop()


def test_stepline_dev_discovers_an_app_on_a_usual_local_port(tmp_path: Path) -> None:

    port = None
    for candidate in range(3000, 3011):  # the discovery range a dev server scans first
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", candidate)) != 0:
                port = candidate
                break
    if port is None:
        pytest.skip("every port in 3000-3010 is taken on this machine")
    server = Server(tmp_path, [], discovery=True)
    web = Starlette()
    stepline.serve_fastapi(web, served, path="/api/inngest", base_url=server.url)
    app = AsgiThread(web, port)
    app.start()
    try:
        server.start()
        synced = wait_for(
            "discovery to find the app",
            lambda: [a for a in server.rest("/v1/apps") if a.get("app_id") == "served" and a["synced_at"]],
        )
        assert synced[0]["url"].startswith(f"http://127.0.0.1:{port}/api/inngest")
        event_id = server.send("shop/order.paid", {"order": 9})
        run = server.ended(server.run_of(event_id)["run_id"])
        assert (run["status"], run["output"]) == ("Completed", {"by": "http", "label": "label-9"})
    finally:
        server.stop()
        app.stop()
