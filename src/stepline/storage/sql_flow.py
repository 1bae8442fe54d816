"""Flow control in the SQL stores: the gates a new run passes at ingest, and concurrency-aware claims.

Everything here runs inside the caller's write transaction. On PostgreSQL, per-key advisory locks (``_lock_key``)
serialise the nodes that count or change the same key; buckets and open runs are rows locked by an upsert. On
SQLite the single writer already serialises everything.

At ingest (``_admit``), in this order: rate limit (skip), singleton (skip, or cancel the live run), debounce (the
open run takes this event and moves later), batching (this event joins the open batch), throttle (GCRA: the run is
due when the bucket admits it). At claim (``_claim_gated``): a run takes a slot of each concurrency key it has; if
a key is full the run waits, ``blocked_on`` that key, until a run holding one of its slots drops its lease
(``_free_slots``: the first waiting run becomes due) or, as a fallback, until the earliest holder's lease expires.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepline.observability import hooks
from stepline.storage.records import (
    BatchKey,
    DebounceKey,
    IngestResult,
    NewRun,
    RateLimitKey,
    RunFinish,
    SingletonKey,
    ThrottleKey,
)
from stepline.storage.sql import Conn
from stepline.storage.writer import after_commit


def _j(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def when(ms: int) -> str:
    """A due time as people read it in a reason: ``2026-11-23 12:03:05 UTC``."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _period(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


LONG_RECHECK_LEASES = 10  # runs waiting behind the first on a full key check again after this many lease periods
_NS = 1_000_000  # bucket times are in nanoseconds: period / limit is often not a whole number of ms
_MAX_TAT = 2**62  # stays a BIGINT whatever backlog a throttle queues (year 2116)


def _gcra(tat: int, now: int, period_ms: int, limit: int, allowance: int) -> tuple[int, int]:
    """Generic cell rate algorithm. ``allowance`` starts may happen at once (the bucket's depth); after that one
    start every ``period / limit``. ``tat`` (the bucket's theoretical arrival time) is in ns, ``now`` in ms.
    Returns (earliest start in ms, rounded up; the bucket's new theoretical arrival time in ns).

    The interval is rounded up to a whole ns: starts are never closer than ``period / limit`` (in whole ms the
    error piled up, and with ``limit`` above ``period`` in ms the bucket never filled)."""
    interval = -(-period_ms * _NS // limit)
    now_ns = now * _NS
    tat = max(tat, now_ns)
    start = max(now_ns, tat - interval * (allowance - 1))
    return -(-start // _NS), min(tat + interval, _MAX_TAT)


_GATES = {"debounced": "debounce", "batch": "batch", "throttled": "throttle"}  # idle reason kind -> gate


@dataclass(slots=True)
class _Admission:
    """What the ingest gates decided so far for a run they let through: when it is due, why it waits, its batch."""

    due: int
    idle: dict[str, Any] | None = None
    batch: list[str] | None = None


def _count(function_id: str, gate: str, action: str) -> None:
    """A flow-control decision, for the metrics (``stepline_flow_control_total``): counted when its transaction
    commits, so that a batch the writer runs again (an operation of it failed, a transient error) counts it once."""
    if (obs := hooks.current) is not None:
        after_commit(lambda: obs.flow(function_id, gate, action))


class SqlFlowMixin:
    """Flow-control steps shared by the SQL stores (mixed into ``SqlStore``)."""

    Q: dict[str, str]

    def _lock_key(self, conn: Conn, key: str, shared: bool = False) -> None:
        """Serialise transactions that count or change this flow key (PostgreSQL: an advisory lock). ``shared``:
        for freeing slots, which conflicts with claims counting the key but not with other frees."""

    if TYPE_CHECKING:

        def _notify_work(self, conn: Conn, due_at: int) -> None: ...

        def _finish(self, conn: Conn, run_id: str, finish: RunFinish, matcher: Any, now: int) -> bool: ...

    # --- rows ---
    def _insert_run_row(
        self,
        conn: Conn,
        run: NewRun,
        due_at: int | None,
        *,
        status: str = "queued",
        idle_reason: dict[str, Any] | None = None,
        batch: list[str] | None = None,
        ended_at: int | None = None,
    ) -> int:
        flow = run.flow
        conc = flow.concurrency if flow is not None else ()
        batch = batch if batch is not None else (list(run.batch) if run.batch else None)
        cur = conn.execute(
            self.Q["insert_run"],
            {"id": run.id, "function_id": run.function_id, "event_id": run.event_id, "batch": _j(batch),
             "status": status, "created_at": run.created_at, "start_deadline": run.start_deadline,
             "due_at": due_at, "parent_run_id": run.parent_run_id, "parent_step_id": run.parent_step_id,
             "idle_reason": _j(idle_reason),
             "flow": _j({"c": [[c.key, c.limit, c.shown] for c in conc]}) if conc else None,
             "ckey1": conc[0].key if conc else None, "ckey2": conc[1].key if len(conc) > 1 else None,
             "priority_ms": flow.priority_ms if flow is not None else 0,
             "singleton_key": flow.singleton.key if flow is not None and flow.singleton else None,
             "ended_at": ended_at},
        )  # fmt: skip
        return int(cur.rowcount)

    def _insert_skipped(self, conn: Conn, run: NewRun, now: int, reason: dict[str, Any], result: IngestResult) -> None:
        if self._insert_run_row(conn, run, None, status="skipped", idle_reason=reason, ended_at=now):
            result.flow_skipped_run_ids.append(run.id)
            _count(run.function_id, "rate_limit" if reason["kind"] == "rate_limited" else "singleton", "skipped")

    # --- ingest ---
    def _admit(
        self, conn: Conn, run: NewRun, now: int, matcher: Any, result: IngestResult, replayed: bool = False
    ) -> bool:
        """Pass a new run through its ingest gates and store it (or what it became). Returns False if nothing of
        it remains to insert by the caller: skipped (stored as such) or merged into an open run.

        ``replayed``: the run's event was already stored, by an earlier application of this very write (the
        writer runs a batch again when a COMMIT's acknowledgement was lost). The gates already ran then: running
        them again would charge buckets twice, add the event to a batch twice or cancel the run's own singleton.
        """
        flow = run.flow
        assert flow is not None
        if replayed:
            return self._admitted_before(conn, run, result)
        # Each gate returns False when the run is gone (skipped, merged into an open run); the later ones may move
        # the run's start (``admission.due``) and say why it waits.
        admission = _Admission(due=run.due_at)
        if flow.rate_limit is not None and not self._gate_rate_limit(conn, run, flow.rate_limit, now, result):
            return False
        if flow.singleton is not None and not self._gate_singleton(conn, run, flow.singleton, now, matcher, result):
            return False
        if flow.debounce is not None and not self._gate_debounce(conn, run, flow.debounce, now, result, admission):
            return False
        if flow.batch is not None and not self._gate_batch(conn, run, flow.batch, now, result, admission):
            return False
        if flow.throttle is not None:
            self._gate_throttle(conn, flow.throttle, admission)
        due, idle = admission.due, admission.idle
        if not self._insert_run_row(conn, run, due, idle_reason=idle, batch=admission.batch):
            return False  # already stored (this transaction retried after a lost commit)
        self._notify_work(conn, due)
        if due > now and idle is not None:  # the run starts later than it arrived: debounced, batching, throttled
            _count(run.function_id, _GATES.get(idle["kind"], str(idle["kind"])), "delayed")
        return True

    def _admitted_before(self, conn: Conn, run: NewRun, result: IngestResult) -> bool:
        """What the first application of a replayed write did with the run (see ``_admit``)."""
        row = conn.execute(self.Q["run_lease"], {"run_id": run.id}).fetchone()
        if row is None:  # merged into an open debounce/batch run the first time
            result.merged_run_ids.append(run.id)
            return False
        if row[0] == "skipped":
            result.flow_skipped_run_ids.append(run.id)
            return False
        return True

    def _gate_rate_limit(self, conn: Conn, run: NewRun, rate: RateLimitKey, now: int, result: IngestResult) -> bool:
        """Rate limit: a run past the bucket's limit is stored as skipped."""
        key, limit, period = rate.key, rate.limit, rate.period_ms
        tat = int(conn.execute(self.Q["flow_bucket"], {"key": key}).fetchone()[0])
        start, new_tat = _gcra(tat, now, period, limit, limit)
        if start > now:
            shown = key.split(":", 2)[2]
            self._insert_skipped(conn, run, now, {
                "kind": "rate_limited", "key": shown, "limit": limit, "period_ms": period,
                "message": f"rate limited (skipped): {limit} per {_period(period)}"
                           + (f" for key {shown}" if shown else "")}, result)  # fmt: skip
            return False
        conn.execute(self.Q["flow_set_bucket"], {"key": key, "tat": new_tat})
        return True

    def _gate_singleton(
        self, conn: Conn, run: NewRun, singleton: SingletonKey, now: int, matcher: Any, result: IngestResult
    ) -> bool:
        """Singleton: with a live run of the key, ``skip`` stores this run as skipped, ``cancel`` cancels that one."""
        key = singleton.key
        self._lock_key(conn, key)
        row = conn.execute(self.Q["flow_singleton_live"], {"key": key}).fetchone()
        if row is None:
            return True
        live_id = row[0]
        shown = key.split(":", 2)[2]
        if singleton.mode == "skip":
            self._insert_skipped(conn, run, now, {
                "kind": "singleton", "key": shown, "run_id": live_id,
                "message": f"skipped: run {live_id} is live for singleton key {shown!r}"}, result)  # fmt: skip
            return False
        reason = {"name": "Cancelled", "message": f"cancelled by run {run.id} (singleton, mode cancel)"}
        if self._finish(conn, live_id, RunFinish("cancelled", error=reason), matcher, now):
            result.cancelled_run_ids.append(live_id)
            _count(run.function_id, "singleton", "cancelled")
        return True

    def _gate_debounce(
        self, conn: Conn, run: NewRun, debounce: DebounceKey, now: int, result: IngestResult, admission: _Admission
    ) -> bool:
        """Debounce: the key's open run takes this event and starts a period later (at most ``timeout`` after its
        first event); without an open run this run opens one."""
        key, period, timeout = debounce.key, debounce.period_ms, debounce.timeout_ms
        pending_id, first_at, _ = conn.execute(
            self.Q["flow_pending"], {"key": key, "run_id": run.id, "now": now}
        ).fetchone()
        cap = None if timeout is None else first_at + timeout
        due = now + period if cap is None else min(now + period, cap)
        idle: dict[str, Any] = {"kind": "debounced", "until": due, "message": f"debounced until {when(due)}"}
        if pending_id != run.id:
            moved = conn.execute(
                self.Q["flow_debounce_run"],
                {"id": pending_id, "event_id": run.event_id, "due_at": due, "idle_reason": _j(idle)},
            ).rowcount
            if moved:
                result.merged_run_ids.append(run.id)
                self._notify_work(conn, due)
                _count(run.function_id, "debounce", "merged")
                return False
            # The open run has started: this event opens the next one.
            due = now + period if timeout is None else min(now + period, now + timeout)
            idle = {"kind": "debounced", "until": due, "message": f"debounced until {when(due)}"}
            conn.execute(self.Q["flow_replace_pending"], {"key": key, "run_id": run.id, "now": now})
        admission.due, admission.idle = due, idle
        return True

    def _gate_batch(
        self, conn: Conn, run: NewRun, batching: BatchKey, now: int, result: IngestResult, admission: _Admission
    ) -> bool:
        """Batching: the key's open batch takes this event (starting once full, or ``timeout`` after its first
        event); without one, or once it has started, this run opens the next batch."""
        key, max_size, timeout = batching.key, batching.max_size, batching.timeout_ms
        pending_id, first_at, size = conn.execute(
            self.Q["flow_pending"], {"key": key, "run_id": run.id, "now": now}
        ).fetchone()
        if pending_id != run.id:
            open_run = conn.execute(self.Q["flow_open_run"], {"id": pending_id}).fetchone()
            if open_run is not None and size < max_size:
                batch_text, open_due, open_idle = open_run
                events = [*json.loads(batch_text or "[]"), run.event_id]
                full = len(events) >= max_size
                due = now if full else first_at + timeout
                idle = None if full else self._batch_reason(len(events), max_size, due)
                if open_due is not None and int(open_due) > first_at + timeout and int(open_due) > due:
                    # A throttle gave the open run a later start: filling it does not start it earlier.
                    due, idle = int(open_due), json.loads(open_idle) if open_idle else idle
                params = {"id": pending_id, "batch": _j(events), "due_at": due, "idle_reason": _j(idle)}
                # The update finds nothing if a worker claimed the open run since it was read (its timeout
                # came): then this event opens the next batch.
                if conn.execute(self.Q["flow_batch_run"], params).rowcount:
                    conn.execute(self.Q["flow_close_pending" if full else "flow_grow_pending"], {"key": key})
                    result.merged_run_ids.append(run.id)
                    self._notify_work(conn, due)
                    _count(run.function_id, "batch", "merged")
                    return False
            conn.execute(self.Q["flow_replace_pending"], {"key": key, "run_id": run.id, "now": now})
        admission.batch = [run.event_id]
        if max_size <= 1:
            conn.execute(self.Q["flow_close_pending"], {"key": key})
        else:
            admission.due = now + timeout
            admission.idle = self._batch_reason(1, max_size, admission.due)
        return True

    def _gate_throttle(self, conn: Conn, throttle: ThrottleKey, admission: _Admission) -> None:
        """Throttle (GCRA): the run starts when the bucket admits it, at or after the start the gates before gave."""
        key = throttle.key
        tat = int(conn.execute(self.Q["flow_bucket"], {"key": key}).fetchone()[0])
        start, new_tat = _gcra(tat, admission.due, throttle.period_ms, throttle.limit, throttle.limit + throttle.burst)
        conn.execute(self.Q["flow_set_bucket"], {"key": key, "tat": new_tat})
        if start > admission.due:
            admission.due = start
            shown = key.split(":", 2)[2]
            message = f"throttled until {when(start)}" + (f" (key {shown})" if shown else "")
            admission.idle = {"kind": "throttled", "until": start, "key": shown, "message": message}

    @staticmethod
    def _batch_reason(size: int, max_size: int, due: int) -> dict[str, Any]:
        return {"kind": "batch", "size": size, "max_size": max_size, "until": due,
                "message": f"waiting in batch {size} of {max_size} (starts by {when(due)})"}  # fmt: skip

    # --- claims ---
    def _claim_gated(
        self, conn: Conn, owner: str, function_ids: list[str], now: int, limit: int, lease_ms: int
    ) -> list[tuple[Any, ...]]:
        """Claim due runs of flow-controlled functions in priority order, each only if every concurrency key it
        has a slot free; the others wait (``blocked_on``). Returns the claimed runs' rows."""
        candidates = conn.execute(
            self.Q["flow_claim_candidates"], {"now": now, "limit": limit, "function_ids": json.dumps(function_ids)}
        ).fetchall()
        held: dict[str, tuple[int, int | None]] = {}  # key -> (slots held, earliest holder lease expiry)
        fallback_given: set[str] = set()
        claimed: list[tuple[Any, ...]] = []
        parsed = [(run_id, json.loads(flow_text)["c"] if flow_text else []) for run_id, flow_text, _, _ in candidates]
        function_of = {run_id: function_id for run_id, _, function_id, _ in candidates}
        waiting = {run_id for run_id, _, _, blocked_on in candidates if blocked_on is not None}
        # Every key these runs need, locked in one order (sorted): two claims (or a claim and a release) taking
        # them in the order their runs come would deadlock.
        for key in sorted({k[0] for _, keys in parsed for k in keys}):
            self._lock_key(conn, key)
        for run_id, keys in parsed:
            full: tuple[str, int, str, int, int | None] | None = None
            passed: list[str] = []  # keys with a free slot this run passed before finding one full
            for key, key_limit, shown in keys:
                if key not in held:
                    count, first_expiry = conn.execute(self.Q["flow_slots_held"], {"key": key, "now": now}).fetchone()
                    held[key] = (int(count), None if first_expiry is None else int(first_expiry))
                count, first_expiry = held[key]
                if count >= key_limit:
                    full = (key, key_limit, shown, count, first_expiry)
                    break
                passed.append(key)
            if full is not None:
                key, key_limit, shown, count, first_expiry = full
                # Freed slots wake waiting runs one by one. The fallback (a holder may die without freeing its slot:
                # check again when its lease expires) is needed by one waiting run per key: the first this claim
                # blocks. The others check again much later, or every run waiting on a hot key would be re-read
                # and blocked again each time the holders' leases come round.
                if key in fallback_given:
                    recheck = now + LONG_RECHECK_LEASES * lease_ms
                else:
                    fallback_given.add(key)
                    recheck = first_expiry if first_expiry is not None else now + lease_ms
                reason = {"kind": "concurrency", "key": shown, "limit": key_limit, "active": count,
                          "message": f"concurrency key {shown} at {count} of {key_limit}"}  # fmt: skip
                conn.execute(self.Q["flow_block"],
                             {"id": run_id, "key": key, "due_at": recheck, "idle_reason": _j(reason)})  # fmt: skip
                if run_id not in waiting:  # counted when it starts waiting, not each time it is checked again
                    _count(function_of[run_id], "concurrency", "blocked")
                # This run may have been the one woken for a slot of an earlier key, which it cannot use now:
                # hand that wake on, or the next run waiting for that key sleeps until its fallback.
                for free_key in passed:
                    if conn.execute(self.Q["flow_wake_blocked"], {"key": free_key, "now": now}).rowcount:
                        self._notify_work(conn, now)
                continue
            row = conn.execute(
                self.Q["flow_claim_one"], {"id": run_id, "owner": owner, "now": now, "lease_until": now + lease_ms}
            ).fetchone()
            for key, _, _ in keys:
                count, first_expiry = held[key]
                held[key] = (count + 1, first_expiry)
            claimed.append(row)
        return claimed

    def _free_slots(self, conn: Conn, keys: tuple[Any, ...] | None, now: int) -> None:
        """A run holding slots of these concurrency keys dropped its lease: the first run waiting on each is due."""
        if not keys:
            return
        for key in sorted(k for k in keys if k is not None):  # the order claims lock keys in
            # Shared: frees of one key run side by side (each wakes a different run: the wake skips locked rows);
            # a claim counting the key holds it exclusively, so a wake is never missed by a claim blocking a run.
            self._lock_key(conn, key, shared=True)
            if conn.execute(self.Q["flow_wake_blocked"], {"key": key, "now": now}).rowcount:
                self._notify_work(conn, now)

    def _prune_flow(self, conn: Conn, now: int, limit: int) -> int:
        n = conn.execute(self.Q["flow_prune_buckets"], {"now": now * _NS, "limit": limit}).rowcount
        return int(n) + int(conn.execute(self.Q["flow_prune_pending"], {"limit": limit}).rowcount)
