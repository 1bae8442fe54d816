"""Store conformance: run logs, written with a run's own writes (steps, suspension, retry, end), capped, pruned."""

from __future__ import annotations

import dataclasses

from stepline.storage.base import Store
from stepline.storage.records import RUN_LOG_LIMIT, RunFinish, RunLogLine, RunLogs

from .builders import DAY, MATCH, NOW, memo, sid, sleeping, start_and_claim


def lines(*messages: str, step: str | None = None, ts: int = NOW) -> RunLogs:
    return RunLogs(tuple(RunLogLine(ts, "INFO", "app.mod", m, None if step is None else sid(step)) for m in messages))


def shown(found: list[RunLogLine]) -> list[tuple[int, str]]:
    return [(line.seq, line.message) for line in found]


async def test_logs_are_stored_with_a_step_and_read_in_order(store: Store) -> None:
    c = await start_and_claim(store)
    both = RunLogs(lines("body").lines + lines("in a", step="a").lines)
    await store.record_step(c.run.id, "w1", memo("a", 1, logs=both), MATCH, NOW + 1)
    await store.record_step(c.run.id, "w1", memo("b", 2, logs=lines("in b", step="b", ts=NOW + 2)), MATCH, NOW + 2)
    found = await store.list_run_logs(c.run.id)
    assert shown(found) == [(1, "body"), (2, "in a"), (3, "in b")]
    assert found[1] == RunLogLine(NOW, "INFO", "app.mod", "in a", sid("a"), 2)
    assert (found[0].step_id, found[2].ts) == (None, NOW + 2)
    assert shown(await store.list_run_logs(c.run.id, limit=2)) == [(1, "body"), (2, "in a")]
    assert await store.list_run_logs("no-such-run") == []


async def test_a_memo_that_lost_first_write_wins_drops_its_logs(store: Store) -> None:
    c = await start_and_claim(store)
    await store.record_step(c.run.id, "w1", memo("a", 1, logs=lines("first")), MATCH, NOW + 1)
    await store.record_step(c.run.id, "w1", memo("a", 2, logs=lines("second execution")), MATCH, NOW + 2)
    assert shown(await store.list_run_logs(c.run.id)) == [(1, "first")]


async def test_logs_are_stored_by_suspend_retry_and_finish(store: Store) -> None:
    c = await start_and_claim(store)
    outcome = await store.suspend_run(c.run.id, "w1", [sleeping("nap", NOW + 10)], {"kind": "sleeping"}, MATCH,
                                      NOW + 1)  # fmt: skip
    assert outcome.status == "ok"
    nap = dataclasses.replace(sleeping("nap", NOW + 10), logs=lines("before the nap"))
    # A suspend by the lease holder stores the lines of its pending updates.
    [again] = await store.claim_runs("w1", [c.run.function_id], NOW + 10, 10, 30_000)
    await store.suspend_run(again.run.id, "w1", [nap], {"kind": "sleeping"}, MATCH, NOW + 11)
    [third] = await store.claim_runs("w1", [c.run.function_id], NOW + 20, 10, 30_000)
    await store.retry_run(third.run.id, "w1", NOW + 30, {"name": "Error", "message": "x"}, NOW + 21,
                          logs=lines("before the error"))  # fmt: skip
    [fourth] = await store.claim_runs("w1", [c.run.function_id], NOW + 30, 10, 30_000)
    finish = RunFinish("completed", output=1, logs=lines("done"))
    assert (await store.finish_run(fourth.run.id, "w1", finish, MATCH, NOW + 31)).status == "ok"
    assert shown(await store.list_run_logs(c.run.id)) == [(1, "before the nap"), (2, "before the error"), (3, "done")]


async def test_writes_refused_for_a_lost_lease_store_no_logs(store: Store) -> None:
    c = await start_and_claim(store)
    await store.suspend_run(c.run.id, "w2", [dataclasses.replace(sleeping("nap", NOW + 10), logs=lines("x"))],
                            {"kind": "sleeping"}, MATCH, NOW + 1)  # fmt: skip
    await store.retry_run(c.run.id, "w2", NOW + 30, {"name": "Error"}, NOW + 1, logs=lines("y"))
    await store.finish_run(c.run.id, "w2", RunFinish("completed", logs=lines("z")), MATCH, NOW + 1)
    assert await store.list_run_logs(c.run.id) == []


async def test_logs_are_capped_per_run_with_one_line_counting_the_dropped_ones(store: Store) -> None:
    c = await start_and_claim(store)
    many = lines(*(f"line {i}" for i in range(RUN_LOG_LIMIT - 2)))
    await store.record_step(c.run.id, "w1", memo("a", logs=many), MATCH, NOW + 1)
    over = RunLogs(lines("x1", "x2", "x3", "x4").lines, dropped=10)  # 2 fit; 2 + 10 are dropped
    await store.record_step(c.run.id, "w1", memo("b", logs=over), MATCH, NOW + 2)
    await store.record_step(c.run.id, "w1", memo("c", logs=lines("x5")), MATCH, NOW + 3)
    found = await store.list_run_logs(c.run.id)
    assert len(found) == RUN_LOG_LIMIT + 1
    assert shown(found[-3:]) == [
        (RUN_LOG_LIMIT - 1, "x1"), (RUN_LOG_LIMIT, "x2"),
        (RUN_LOG_LIMIT + 1, f"13 more records dropped (a run keeps at most {RUN_LOG_LIMIT} log records)"),
    ]  # fmt: skip
    assert (found[-1].level, found[-1].logger, found[-1].ts) == ("WARNING", "stepline", NOW + 3)


async def test_messages_keep_any_text(store: Store) -> None:
    c = await start_and_claim(store)
    text = 'ü "quoted" \\ back\nslash\ttab 🎉 ' + "x" * 9000
    await store.record_step(c.run.id, "w1", memo("a", logs=lines(text)), MATCH, NOW + 1)
    [line] = await store.list_run_logs(c.run.id)
    assert line.message == text


async def test_prune_deletes_the_logs_of_pruned_runs(store: Store) -> None:
    old = await start_and_claim(store)
    await store.record_step(old.run.id, "w1", memo("a", logs=lines("old")), MATCH, NOW + 1)
    await store.finish_run(old.run.id, "w1", RunFinish("completed", logs=lines("end")), MATCH, NOW + 2)
    kept = await start_and_claim(store, now=NOW + 2 * DAY)
    await store.record_step(kept.run.id, "w1", memo("a", logs=lines("kept")), MATCH, NOW + 2 * DAY)
    result = await store.prune(NOW + 3 * DAY, NOW + DAY, {})
    assert result.runs == 1
    assert await store.list_run_logs(old.run.id) == []
    assert shown(await store.list_run_logs(kept.run.id)) == [(1, "kept")]
