"""The worker's wake-up decisions (``stepline.core.wakeups.WakeState``), one row per edge case the worker's history
met (``git log -- src/stepline/core/worker.py``): each row is a state, what happened, what the worker is told to do,
and the state after."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pytest

from stepline.core.wakeups import WakeState, safety_poll, watches_data_version

NOW = 1_000_000
QUIET = {"claim_wanted": False, "reread_due": False, "timer_at": None}  # a worker asleep with nothing known


def state(**kw: Any) -> WakeState:
    return WakeState(**{"pushed": True, **QUIET, **kw})


Row = tuple[str, WakeState, Callable[[WakeState], Any], Any, dict[str, Any]]

ROWS: list[Row] = [
    # --- notifications (7636dfd: they carry the earliest due time) ---
    (
        "work due now: claim, no read",
        state(),
        lambda s: s.note_due(NOW, NOW),
        True,
        {"claim_wanted": True, "reread_due": False},
    ),
    ("work due in the past: claim", state(), lambda s: s.note_due(NOW - 5, NOW), True, {"claim_wanted": True}),
    (
        "later work sets the timer, no claim",
        state(),
        lambda s: s.note_due(NOW + 500, NOW),
        True,
        {"claim_wanted": False, "timer_at": NOW + 500},
    ),
    (
        "earlier work moves the timer earlier",
        state(timer_at=NOW + 500),
        lambda s: s.note_due(NOW + 100, NOW),
        True,
        {"timer_at": NOW + 100},
    ),
    (
        "work later than the timer: nothing to wake for",
        state(timer_at=NOW + 100),
        lambda s: s.note_due(NOW + 500, NOW),
        False,
        {"timer_at": NOW + 100, "claim_wanted": False},
    ),
    (
        "unknown (reconnected, wake-channel overflow): claim and read",
        state(),
        lambda s: s.note_due(None, NOW),
        True,
        {"claim_wanted": True, "reread_due": True},
    ),
    # --- this process's writes ---
    ("pushed: own writes come back notified, ignore", state(), lambda s: s.engine_notified(), False, {}),
    ("polling: own writes wake the worker", state(pushed=False), lambda s: s.engine_notified(), True, {}),
    # --- loop turns and timers ---
    (
        "a timer that came due: claim and read, timer spent",
        state(timer_at=NOW),
        lambda s: s.turn(NOW),
        None,
        {"timer_at": None, "claim_wanted": True, "reread_due": True},
    ),
    (
        "a timer not yet due stays",
        state(timer_at=NOW + 1),
        lambda s: s.turn(NOW),
        None,
        {"timer_at": NOW + 1, "claim_wanted": False},
    ),
    (
        "start: claim and read at once",
        state(),
        lambda s: s.started(True),
        None,
        {"claim_wanted": True, "reread_due": True, "pushed": True},
    ),
    # --- claims ---
    (
        "a full batch: claim again",
        state(),
        lambda s: s.claimed(100, 100, False),
        True,
        {"claim_wanted": True, "last_claim_got_work": True},
    ),
    (
        "a partial batch took everything due: sleep",
        state(),
        lambda s: s.claimed(3, 100, False),
        False,
        {"claim_wanted": False, "last_claim_got_work": True},
    ),
    (
        "an empty claim is remembered (no re-read after it)",
        state(),
        lambda s: s.claimed(0, 100, False),
        False,
        {"last_claim_got_work": False},
    ),
    ("notified during the claim: claim again", state(claim_wanted=True), lambda s: s.claimed(1, 100, False), True, {}),
    (
        "the function set changed during the claim (HTTP apps synced): claim and read all of it",
        state(),
        lambda s: s.claimed(0, 100, True),
        True,
        {"claim_wanted": True, "reread_due": True, "last_claim_got_work": False},
    ),
    ("claiming clears the request", state(claim_wanted=True), lambda s: s.claiming(), None, {"claim_wanted": False}),
    # --- claim pacing under load (pushed only; never after a quiet spell) ---
    ("pushed, claims 1 ms apart: wait 3 ms", state(), lambda s: round(s.claim_gap(10.0, 10.001, 0.004), 6), 0.003, {}),
    ("pushed, after a quiet spell: no wait", state(), lambda s: s.claim_gap(10.0, 11.0, 0.004), 0.0, {}),
    ("polling: never paced", state(pushed=False), lambda s: s.claim_gap(10.0, 10.001, 0.004), 0.0, {}),
    ("pacing off", state(), lambda s: s.claim_gap(10.0, 10.001, 0.0), 0.0, {}),
    # --- runs ending (224532c: a claim that left functions out is redone as runs end) ---
    (
        "pushed: a run ends, nothing waits for a slot: stay asleep",
        state(),
        lambda s: s.run_ended(),
        False,
        {"claim_wanted": False},
    ),
    (
        "pushed: a run ends and a claim waits for a slot: wake",
        state(claim_wanted=True),
        lambda s: s.run_ended(),
        True,
        {},
    ),
    (
        "a run ends after a narrowed claim: claim (its app has room now)",
        state(claim_narrowed=True),
        lambda s: s.run_ended(),
        True,
        {"claim_wanted": True},
    ),
    ("polling: a run ends: wake", state(pushed=False), lambda s: s.run_ended(), True, {"claim_wanted": False}),
    # --- errors (70462f7: the worker survives the database going away) ---
    (
        "a failed turn: claim and read again",
        state(),
        lambda s: s.failed(),
        None,
        {"claim_wanted": True, "reread_due": True},
    ),
    # --- reading next_due_at before sleeping (pushed) ---
    (
        "a read requested and functions to read for: read, once",
        state(reread_due=True),
        lambda s: s.wants_next_due(True),
        True,
        {"reread_due": False},
    ),
    (
        "no functions yet: no read, the request stays",
        state(reread_due=True),
        lambda s: s.wants_next_due(False),
        False,
        {"reread_due": True},
    ),
    ("no read requested: sleep on the timer", state(), lambda s: s.wants_next_due(True), False, {}),
    ("nothing stored: sleep", state(), lambda s: s.learned_next_due(None, NOW), False, {"claim_wanted": False}),
    (
        "stored work due later: sleep with a timer",
        state(),
        lambda s: s.learned_next_due(NOW + 50, NOW),
        False,
        {"timer_at": NOW + 50, "claim_wanted": False},
    ),
    # 9b9660a: after claiming work found on a re-read, read again (throttled starts, debounce deadlines)
    (
        "stored work due now: claim, then read again",
        state(),
        lambda s: s.learned_next_due(NOW, NOW),
        True,
        {"claim_wanted": True, "reread_due": True},
    ),
    (
        "stored work due now after an empty claim (another node took it): claim, no re-read",
        state(last_claim_got_work=False),
        lambda s: s.learned_next_due(NOW, NOW),
        True,
        {"claim_wanted": True, "reread_due": False},
    ),
    # --- sleeping (pushed) ---
    ("sleep until the safety poll", state(), lambda s: s.sleep_for(5.0, NOW), 5.0, {}),
    ("sleep until the timer when it comes first", state(timer_at=NOW + 250), lambda s: s.sleep_for(5.0, NOW), 0.25, {}),
    ("a timer in the past: no sleep", state(timer_at=NOW - 10), lambda s: s.sleep_for(5.0, NOW), 0.0, {}),
    (
        "woken: act on what woke it, nothing more",
        state(timer_at=NOW),
        lambda s: s.slept(True, NOW, True),
        None,
        {"timer_at": NOW, "claim_wanted": False},
    ),
    (
        "the timer fired: claim and read, timer spent",
        state(timer_at=NOW),
        lambda s: s.slept(False, NOW, False),
        None,
        {"timer_at": None, "claim_wanted": True, "reread_due": True},
    ),
    (
        "the safety poll came: claim and read (finds dead workers' leases)",
        state(),
        lambda s: s.slept(False, NOW, True),
        None,
        {"claim_wanted": True, "reread_due": True},
    ),
    (
        "woke early for no reason (clock jitter): sleep again",
        state(timer_at=NOW + 10),
        lambda s: s.slept(False, NOW, False),
        None,
        {"timer_at": NOW + 10, "claim_wanted": False},
    ),
    # --- polling ---
    ("polling: any end of the sleep claims", state(pushed=False), lambda s: s.polled(), None, {"claim_wanted": True}),
]


@pytest.mark.parametrize(("name", "before", "action", "answer", "after"), ROWS, ids=[r[0] for r in ROWS])
def test_wake_decision(name: str, before: WakeState, action: Callable[[WakeState], Any], answer: Any,
                       after: dict[str, Any]) -> None:  # fmt: skip
    expected = {**asdict(before), **after}
    assert action(before) == answer
    assert asdict(before) == expected


@pytest.mark.parametrize(
    ("room", "watching", "polls"),
    [
        (5, False, True),  # SQLite without a wake channel: watch data_version while a claim has room
        (0, False, False),  # all slots busy: a run ending wakes the worker
        (5, True, False),  # the wake channel wakes it: no polling at all (c4d13e2 kept the poll, this removes it)
    ],
)
def test_data_version_is_polled_only_without_a_wake_channel(room: int, watching: bool, polls: bool) -> None:
    assert watches_data_version(room, watching) is polls


def test_the_safety_poll_comes_at_least_twice_per_lease() -> None:
    assert safety_poll(1.0, 30_000) == 5.0
    assert safety_poll(1.0, 4_000) == 2.0
