"""Store conformance: the dashboard's run statistics (run_stats), written by the claims and ends they count."""

from __future__ import annotations

from stepline.storage.base import Store
from stepline.storage.records import RunFinish, RunStatsRow
from stepline.storage.sql_stats import BOUNDS_MS, BUCKETS, HOUR, MINUTE, bucket_of

from .builders import DAY, LEASE, MATCH, NOW, OTHER_FN, start, start_and_claim


def test_buckets() -> None:
    assert (bucket_of(0), bucket_of(1), bucket_of(2), bucket_of(3), bucket_of(86_400_001)) == (0, 0, 1, 2, BUCKETS - 1)
    assert BUCKETS == len(BOUNDS_MS) + 1


async def test_claims_and_ends_are_counted_per_minute_and_hour_with_their_histograms(store: Store) -> None:
    base = NOW - NOW % HOUR + 5 * MINUTE  # 5 minutes into an hour
    # run 1: due at base, claimed at once, completes after 3 s
    c1 = await start_and_claim(store, now=base)
    await store.finish_run(c1.run.id, "w1", RunFinish("completed", output=1), MATCH, base + 3000)
    # run 2: due at base, claimed 1.5 s late (next minute), fails after 20 ms
    _, r2 = await start(store, now=base + 59_000)
    [c2] = await store.claim_runs("w2", [c1.run.function_id], base + 60_500, 10, LEASE)
    assert c2.run.id == r2
    await store.finish_run(r2, "w2", RunFinish("failed", error={"name": "E", "message": "x"}), MATCH, base + 60_520)
    # run 3 of another function: cancelled before it started (counted, no duration)
    _, r3 = await start(store, OTHER_FN, now=base + 61_000)
    await store.finish_run(r3, None, RunFinish("cancelled"), MATCH, base + 61_000)
    # a resumed claim is not a start: run 4 claimed, released, claimed again
    c4 = await start_and_claim(store, now=base + 62_000)
    await store.release_run(c4.run.id, "w1", base + 62_100)
    assert len(await store.claim_runs("w1", [c4.run.function_id], base + 62_200, 10, LEASE)) == 1

    minutes = await store.run_stats(MINUTE, base)
    assert [(m.at, m.started, m.completed, m.failed, m.cancelled) for m in minutes] == [
        (base, 1, 1, 0, 0),
        (base + MINUTE, 2, 0, 1, 1),
    ]
    assert minutes[0].lags[bucket_of(0)] == 1 and sum(minutes[0].lags) == 1
    assert minutes[0].durations[bucket_of(3000)] == 1 and sum(minutes[0].durations) == 1
    assert minutes[1].lags[bucket_of(1500)] == 1 and minutes[1].lags[bucket_of(0)] == 1
    assert minutes[1].durations[bucket_of(20)] == 1 and sum(minutes[1].durations) == 1  # not the cancelled one
    [hour] = await store.run_stats(HOUR, base - DAY)
    assert (hour.at, hour.started, hour.completed, hour.failed, hour.cancelled) == (base - 5 * MINUTE, 3, 1, 1, 1)
    [mine] = await store.run_stats(HOUR, base, function_id=OTHER_FN)
    assert (mine.started, mine.cancelled, sum(mine.durations)) == (0, 1, 0)
    assert await store.run_stats(MINUTE, base + 2 * MINUTE) == []


async def test_old_statistics_are_pruned(store: Store) -> None:
    c = await start_and_claim(store)
    await store.finish_run(c.run.id, "w1", RunFinish("completed"), MATCH, NOW + 1)
    await store.prune(NOW + 9 * DAY, NOW, {})
    assert await store.run_stats(MINUTE, NOW - DAY) == []
    assert len(await store.run_stats(HOUR, NOW - DAY)) == 1


async def test_hours_are_rolled_up_from_the_minutes_once_and_exactly(store: Store) -> None:
    h0 = NOW - NOW % HOUR
    for at in (h0 + 5 * MINUTE, h0 + 50 * MINUTE, h0 + HOUR + MINUTE, h0 + 3 * HOUR + 5 * MINUTE):
        c = await start_and_claim(store, now=at)
        await store.finish_run(c.run.id, "w1", RunFinish("completed", output=1), MATCH, at + 2000)

    def counts(rows: list[RunStatsRow]) -> list[tuple[int, int, int, int]]:
        return [(r.at, r.started, r.completed, sum(r.durations)) for r in rows]

    expected = [(h0, 2, 2, 2), (h0 + HOUR, 1, 1, 1), (h0 + 3 * HOUR, 1, 1, 1)]
    assert counts(await store.run_stats(HOUR, h0 - DAY)) == expected  # rolls up the settled hours h0 and h0 + 1 h
    assert counts(await store.run_stats(HOUR, h0 - DAY)) == expected, "a second read counts nothing twice"
    # a run in the hour not rolled up yet still counts; then the minutes are pruned: the hours stay
    c = await start_and_claim(store, now=h0 + 3 * HOUR + 6 * MINUTE)
    await store.finish_run(c.run.id, "w1", RunFinish("failed", error={"name": "E"}), MATCH, h0 + 3 * HOUR + 7 * MINUTE)
    expected[2] = (h0 + 3 * HOUR, 2, 1, 2)
    assert counts(await store.run_stats(HOUR, h0 - DAY)) == expected
    assert counts(await store.run_stats(HOUR, h0 + HOUR, OTHER_FN)) == []
    await store.prune(h0 + 9 * DAY, h0, {})
    assert await store.run_stats(MINUTE, h0 - DAY) == []
    assert counts(await store.run_stats(HOUR, h0 - DAY)) == expected
    [late] = await store.run_stats(HOUR, h0 + 2 * HOUR)
    assert (late.at, late.failed) == (h0 + 3 * HOUR, 1)
