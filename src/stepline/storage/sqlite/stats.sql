-- Run statistics for the dashboard's charts (SQLite). Loaded by ``SqlStatsMixin`` (storage/sql_stats.py).

-- name: add_run_stats
-- Adds to the minute's row of this process's shard (hour rows are rolled up from minute rows).
INSERT INTO run_stats (res, at, function_id, shard,
    started, completed, failed, cancelled, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14, d15,
    d16, d17, d18, d19, d20, d21, d22, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16,
    l17, l18, l19, l20, l21, l22)
VALUES (:res, :at, :function_id, :shard,
        :started, :completed, :failed, :cancelled, :d0, :d1, :d2, :d3, :d4, :d5, :d6, :d7, :d8, :d9, :d10, :d11,
        :d12, :d13, :d14, :d15, :d16, :d17, :d18, :d19, :d20, :d21, :d22, :l0, :l1, :l2, :l3, :l4, :l5, :l6, :l7,
        :l8, :l9, :l10, :l11, :l12, :l13, :l14, :l15, :l16, :l17, :l18, :l19, :l20, :l21, :l22)
ON CONFLICT (res, function_id, at, shard) DO UPDATE SET
    started = run_stats.started + excluded.started,
    completed = run_stats.completed + excluded.completed,
    failed = run_stats.failed + excluded.failed,
    cancelled = run_stats.cancelled + excluded.cancelled,
    d0 = run_stats.d0 + excluded.d0,
    d1 = run_stats.d1 + excluded.d1,
    d2 = run_stats.d2 + excluded.d2,
    d3 = run_stats.d3 + excluded.d3,
    d4 = run_stats.d4 + excluded.d4,
    d5 = run_stats.d5 + excluded.d5,
    d6 = run_stats.d6 + excluded.d6,
    d7 = run_stats.d7 + excluded.d7,
    d8 = run_stats.d8 + excluded.d8,
    d9 = run_stats.d9 + excluded.d9,
    d10 = run_stats.d10 + excluded.d10,
    d11 = run_stats.d11 + excluded.d11,
    d12 = run_stats.d12 + excluded.d12,
    d13 = run_stats.d13 + excluded.d13,
    d14 = run_stats.d14 + excluded.d14,
    d15 = run_stats.d15 + excluded.d15,
    d16 = run_stats.d16 + excluded.d16,
    d17 = run_stats.d17 + excluded.d17,
    d18 = run_stats.d18 + excluded.d18,
    d19 = run_stats.d19 + excluded.d19,
    d20 = run_stats.d20 + excluded.d20,
    d21 = run_stats.d21 + excluded.d21,
    d22 = run_stats.d22 + excluded.d22,
    l0 = run_stats.l0 + excluded.l0,
    l1 = run_stats.l1 + excluded.l1,
    l2 = run_stats.l2 + excluded.l2,
    l3 = run_stats.l3 + excluded.l3,
    l4 = run_stats.l4 + excluded.l4,
    l5 = run_stats.l5 + excluded.l5,
    l6 = run_stats.l6 + excluded.l6,
    l7 = run_stats.l7 + excluded.l7,
    l8 = run_stats.l8 + excluded.l8,
    l9 = run_stats.l9 + excluded.l9,
    l10 = run_stats.l10 + excluded.l10,
    l11 = run_stats.l11 + excluded.l11,
    l12 = run_stats.l12 + excluded.l12,
    l13 = run_stats.l13 + excluded.l13,
    l14 = run_stats.l14 + excluded.l14,
    l15 = run_stats.l15 + excluded.l15,
    l16 = run_stats.l16 + excluded.l16,
    l17 = run_stats.l17 + excluded.l17,
    l18 = run_stats.l18 + excluded.l18,
    l19 = run_stats.l19 + excluded.l19,
    l20 = run_stats.l20 + excluded.l20,
    l21 = run_stats.l21 + excluded.l21,
    l22 = run_stats.l22 + excluded.l22

-- name: run_stats_all
-- Every function's periods from :since (the (res, at) index), summed per period.
SELECT at,
    sum(started), sum(completed), sum(failed), sum(cancelled), sum(d0), sum(d1), sum(d2), sum(d3), sum(d4), sum(d5),
    sum(d6), sum(d7), sum(d8), sum(d9), sum(d10), sum(d11), sum(d12), sum(d13), sum(d14), sum(d15), sum(d16),
    sum(d17), sum(d18), sum(d19), sum(d20), sum(d21), sum(d22), sum(l0), sum(l1), sum(l2), sum(l3), sum(l4),
    sum(l5), sum(l6), sum(l7), sum(l8), sum(l9), sum(l10), sum(l11), sum(l12), sum(l13), sum(l14), sum(l15),
    sum(l16), sum(l17), sum(l18), sum(l19), sum(l20), sum(l21), sum(l22)
FROM run_stats WHERE res = :res AND at >= :since
GROUP BY at ORDER BY at

-- name: run_stats_of_function
-- One function's periods from :since (the primary key's (res, function_id, at) prefix), summed over the shards.
SELECT at,
    sum(started), sum(completed), sum(failed), sum(cancelled), sum(d0), sum(d1), sum(d2), sum(d3), sum(d4), sum(d5),
    sum(d6), sum(d7), sum(d8), sum(d9), sum(d10), sum(d11), sum(d12), sum(d13), sum(d14), sum(d15), sum(d16),
    sum(d17), sum(d18), sum(d19), sum(d20), sum(d21), sum(d22), sum(l0), sum(l1), sum(l2), sum(l3), sum(l4),
    sum(l5), sum(l6), sum(l7), sum(l8), sum(l9), sum(l10), sum(l11), sum(l12), sum(l13), sum(l14), sum(l15),
    sum(l16), sum(l17), sum(l18), sum(l19), sum(l20), sum(l21), sum(l22)
FROM run_stats WHERE res = :res AND function_id = :function_id AND at >= :since
GROUP BY at ORDER BY at

-- name: prune_run_stats
DELETE FROM run_stats WHERE res = :res AND at < :before

-- name: max_run_stats_at
-- The latest period of a resolution (the (res, at) index): for the hour rows, where the roll-up got to.
SELECT max(at) FROM run_stats WHERE res = :res

-- name: first_minute_between
SELECT min(at) FROM run_stats WHERE res = 60000 AND at >= :from AND at < :to

-- name: roll_up_hours
-- The hour rows of the settled hours in [:from, :to) from their minute rows, per function and shard. Idempotent:
-- a settled hour's minute rows no longer change, so two nodes rolling up the same hour write the same row.
INSERT INTO run_stats (res, at, function_id, shard,
    started, completed, failed, cancelled, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14, d15,
    d16, d17, d18, d19, d20, d21, d22, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16,
    l17, l18, l19, l20, l21, l22)
SELECT 3600000, at - at % 3600000, function_id, shard,
    sum(started), sum(completed), sum(failed), sum(cancelled), sum(d0), sum(d1), sum(d2), sum(d3), sum(d4),
    sum(d5), sum(d6), sum(d7), sum(d8), sum(d9), sum(d10), sum(d11), sum(d12), sum(d13), sum(d14), sum(d15),
    sum(d16), sum(d17), sum(d18), sum(d19), sum(d20), sum(d21), sum(d22), sum(l0), sum(l1), sum(l2), sum(l3),
    sum(l4), sum(l5), sum(l6), sum(l7), sum(l8), sum(l9), sum(l10), sum(l11), sum(l12), sum(l13), sum(l14),
    sum(l15), sum(l16), sum(l17), sum(l18), sum(l19), sum(l20), sum(l21), sum(l22)
FROM run_stats WHERE res = 60000 AND at >= :from AND at < :to
GROUP BY at - at % 3600000, function_id, shard
ON CONFLICT (res, function_id, at, shard) DO NOTHING
