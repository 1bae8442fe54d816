"""A database holding data upgrades from every earlier schema version, and the data reads back through the store.

For each version k: migrate an empty database to k, write the rows a server of that version would have written
(every table that exists at k, with the columns it has at k), open it as a ``Store`` (which applies the rest),
and read every row back through the store API. A migration that rewrites a column (PostgreSQL's 0007 turns
jsonb into json) or recreates a table must carry the rows over in a form the current code reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stepline.storage.base import Store
from stepline.storage.records import RunWait

from .dbs import MigrationDb, SQLiteDb, latest_version

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, unix ms
LATER = T0 + 10**12  # an expiry that has not passed

RUN = {
    "id": "01JRUN000000000000000000A1", "function_id": "app-fn", "event_id": "01JEVT000000000000000000A1",
    "status": "completed", "attempt": 1, "output": json.dumps({"total": 3, "big": 1e20}), "created_at": T0,
    "started_at": T0 + 1, "ended_at": T0 + 2,
}  # fmt: skip

# version -> rows (table, columns) a database of that version holds; a row is written at the first version whose
# schema has its table and columns, so every later version's data is the union of the earlier ones.
SEEDS: dict[int, list[tuple[str, dict[str, Any]]]] = {
    1: [
        ("events", {"internal_id": RUN["event_id"], "id": "order-1", "name": "shop/order.created",
                    "data": json.dumps({"order": 1, "items": ["a", "b"]}), "user": "{}", "ts": T0, "v": "2",
                    "received_at": T0}),
        ("functions", {"id": "app-fn", "app_id": "app", "slug": "fn", "name": "Fn",
                       "config": json.dumps({"triggers": [{"event": "shop/order.created"}], "retries": 2}),
                       "updated_at": T0}),
        ("runs", RUN),
        ("runs", {"id": "01JRUN000000000000000000A2", "function_id": "app-fn", "event_id": RUN["event_id"],
                  "status": "running", "attempt": 0, "idle_reason": json.dumps({"kind": "sleep", "until": T0 + 5}),
                  "created_at": T0, "started_at": T0, "due_at": T0 + 5,
                  "batch": json.dumps([RUN["event_id"]])}),
        ("steps", {"run_id": RUN["id"], "step_id": "s1", "display_id": "charge", "kind": "run",
                   "status": "completed", "attempts": 1, "output": json.dumps("ok"), "started_at": T0,
                   "ended_at": T0 + 1, "seq": 1}),
        ("steps", {"run_id": RUN["id"], "step_id": "s2", "display_id": "ship", "kind": "run", "status": "failed",
                   "attempts": 3, "error": json.dumps({"name": "Error", "message": "no stock"}), "started_at": T0,
                   "ended_at": T0 + 2, "seq": 2}),
    ],
    3: [
        ("apps", {"url": "http://app.test/api/inngest", "app_id": "app", "sdk": "py:v0.5.19", "framework": "fastapi",
                  "app_version": "1", "checksum": "c" * 64, "synced_at": T0, "created_at": T0, "updated_at": T0}),
        ("cancellations", {"id": "01JCAN000000000000000000A1", "app_id": "app", "function_id": "app-fn",
                           "started_before": T0, "expression": "event.data.order == 1", "cancelled": 4,
                           "created_at": T0}),
    ],
    5: [("cron_state", {"function_id": "app-fn", "cron": "0 * * * *", "last_fire": T0 - 3_600_000})],
    6: [("run_logs", {"run_id": RUN["id"], "seq": 1, "ts": T0, "level": "INFO", "logger": "app", "message": "hi",
                      "step_id": "s1"})],
    8: [
        ("expression_errors", {"function_id": "app-fn", "place": "trigger", "expression": "event.data.x >",
                               "message": "syntax error", "count": 2, "first_at": T0, "last_at": T0 + 1}),
        ("dashboard_sessions", {"sid": "sid-1", "created_at": T0, "expires_at": LATER}),
        ("login_failures", {"address": "192.0.2.1", "minute": T0 // 60000, "count": 3}),
    ],
    9: [
        ("cluster_leases", {"name": "alerts", "owner": "node-a", "expires_at": LATER,
                            "state": json.dumps({"cursor": 7})}),
        ("run_spans", {"run_id": RUN["id"], "seq": 1, "received_at": T0,
                       "span": json.dumps({"name": "db.query", "traceId": "ab" * 16, "spanId": "cd" * 8})}),
    ],
    11: [
        ("realtime_messages", {"origin": "hub-1", "channel": "orders", "topic": "status", "kind": "data",
                               "payload": json.dumps({"data": "packed"}), "created_at": T0}),
        ("realtime_keys", {"name": "tokens", "secret": "s" * 64, "created_at": T0}),
    ],
    12: [
        ("function_pauses", {"function_id": "app-fn", "paused_at": T0}),
    ],
    13: [
        ("step_attempts", {"run_id": RUN["id"], "step_id": "s-ship", "attempt": 1, "status": "failed",
                           "started_at": T0, "ended_at": T0 + 1, "error": json.dumps({"message": "no stock"}),
                           "retry_at": T0 + 5}),
        ("run_stats", {"res": 60000, "at": T0 - T0 % 60000, "function_id": "app-fn", "shard": 0, "started": 2,
                       "completed": 1, "failed": 1, "d3": 2, "l1": 2}),
        ("run_stats", {"res": 3600000, "at": T0 - T0 % 3600000, "function_id": "app-fn", "shard": 0, "started": 2,
                       "completed": 1, "failed": 1, "d3": 2, "l1": 2}),  # (written with the minutes until 14)
    ],
    14: [
        ("run_waits", {"run_id": RUN["id"], "kind": "throttled", "since": T0, "until": T0 + 1}),
    ],
}  # fmt: skip


async def _check_readable(store: Store) -> None:
    event = await store.get_event(RUN["event_id"])
    assert event is not None
    assert (event.id, event.name, event.data, event.user, event.ts, event.v, event.traceparent) == (
        "order-1", "shop/order.created", {"order": 1, "items": ["a", "b"]}, {}, T0, "2", None,
    )  # fmt: skip
    [fn] = await store.list_functions()
    assert (fn.id, fn.app_id, fn.slug, fn.name, fn.config["retries"]) == ("app-fn", "app", "fn", "Fn", 2)

    run = await store.get_run(RUN["id"])
    assert run is not None
    assert (run.status, run.attempt, run.output, run.ended_at) == ("completed", 1, {"total": 3, "big": 1e20}, T0 + 2)
    sleeping = await store.get_run("01JRUN000000000000000000A2")
    assert sleeping is not None
    assert (sleeping.status, sleeping.idle_reason, sleeping.due_at, sleeping.batch) == (
        "running", {"kind": "sleep", "until": T0 + 5}, T0 + 5, [RUN["event_id"]],
    )  # fmt: skip
    steps = await store.list_steps(RUN["id"])
    assert [(s.display_id, s.status, s.output, s.error, s.race) for s in steps] == [
        ("charge", "completed", "ok", None, None),
        ("ship", "failed", None, {"name": "Error", "message": "no stock"}, None),
    ]

    [app] = await store.list_apps()
    assert (app.url, app.app_id, app.sdk, app.synced_at, app.error) == (
        "http://app.test/api/inngest", "app", "py:v0.5.19", T0, None,
    )  # fmt: skip
    [cancellation] = await store.list_cancellations()
    assert (cancellation.function_id, cancellation.started_after, cancellation.cancelled) == ("app-fn", None, 4)
    assert await store.init_cron_schedules("app-fn", {"0 * * * *": T0}) == {"0 * * * *": T0 - 3_600_000}
    [log] = await store.list_run_logs(RUN["id"])
    assert (log.seq, log.level, log.message, log.step_id) == (1, "INFO", "hi", "s1")

    [failure] = await store.list_expression_errors()
    assert (failure.place, failure.count, failure.last_at) == ("trigger", 2, T0 + 1)
    assert await store.dashboard_session_valid("sid-1", T0 + 1)
    assert await store.login_failures("192.0.2.1", T0) == 3

    assert await store.take_cluster_lease("alerts", "node-b", T0, 30_000) is None  # node-a holds it
    [span] = await store.list_run_spans(RUN["id"])
    assert (span.seq, span.span["name"]) == (1, "db.query")

    [message] = await store.realtime_messages_after(0, 10)
    assert (message.channel, message.topic, message.kind, json.loads(message.payload)) == (
        "orders", "status", "data", {"data": "packed"},
    )  # fmt: skip
    assert await store.realtime_secret("tokens", T0) == "s" * 64
    assert await store.paused_functions() == {"app-fn": T0}
    [attempt] = await store.list_step_attempts(RUN["id"])
    assert (attempt.step_id, attempt.attempt, attempt.status, attempt.error, attempt.retry_at) == (
        "s-ship", 1, "failed", {"message": "no stock"}, T0 + 5,
    )  # fmt: skip
    [stats] = await store.run_stats(60000, T0 - 60000, "app-fn")
    assert (stats.started, stats.completed, stats.failed, stats.durations[3], stats.lags[1]) == (2, 1, 1, 2, 2)
    assert await store.get_run_wait(RUN["id"]) == RunWait("throttled", T0, T0 + 1)
    [hour] = await store.run_stats(3600000, T0 - 3600000, "app-fn")  # counted once: the hour row or its minutes
    assert (hour.started, hour.completed, hour.failed) == (2, 1, 1)


def _seed(db: MigrationDb, version: int) -> None:
    for table, row in SEEDS.get(version, []):
        db.insert(table, row)


def test_the_seeds_cover_every_table(tmp_path: Path) -> None:
    """A new table needs rows here (and reads in ``_check_readable``), or its upgrade goes untested."""
    seeded = {table for rows in SEEDS.values() for table, _ in rows}
    unseeded = {"registry_version", "waits", "idempotency", "flow_buckets", "flow_pending"}  # engine-internal
    db = SQLiteDb(tmp_path / "latest.db")
    db.migrate()
    tables = set(db.schema().columns) - {"schema_migrations"}
    assert tables - seeded - unseeded == set()


@pytest.mark.parametrize("start", range(1, latest_version() + 1))
async def test_data_written_at_an_earlier_version_reads_back_after_upgrading(db: MigrationDb, start: int) -> None:
    for version in range(1, start + 1):
        assert db.migrate(version) == version
        _seed(db, version)  # the rows of every version up to ``start``, each into the schema of its own version
    assert db.version() == start
    # The rows no version up to ``start`` could hold are written after upgrading: the store reads one set.
    store = db.store()
    await store.open()
    try:
        assert store.schema_version() == latest_version()
        for version in range(start + 1, latest_version() + 1):
            _seed(db, version)
        await _check_readable(store)
    finally:
        await store.close()
