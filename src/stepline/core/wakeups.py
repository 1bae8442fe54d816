"""The worker's wake-up decisions, as one pure object: when to claim, when to read the store's next due time, how
long to sleep. ``Worker`` feeds it what happens (notifications, due times read, claim results, free room, runs
ending, the clock) and does what it answers; it does no I/O and reads no clock of its own, so every edge case is a
row of a table test (``tests/unit/test_wakeups.py``).

Two modes:

- **pushed** (PostgreSQL ``LISTEN``): every transaction that makes work due notifies its earliest due time. Work due
  now is claimed at once; later work sets a local timer; ``next_due_at`` is read only at start, when the timer
  fires, after an unknown notification, and at the safety poll.
- **polling** (SQLite): a wake-up (this process's writes, the local wake channel, a ``data_version`` change, the
  sleep's end) makes the worker claim, and ``next_due_at`` is read before every sleep.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WakeState:
    pushed: bool = False
    claim_wanted: bool = True  # work may be due now: claim at the next turn of the loop
    reread_due: bool = True  # pushed: read next_due_at before the next sleep
    timer_at: int | None = None  # pushed: the earliest later due time notifications told of (unix ms)
    last_claim_got_work: bool = True
    claim_narrowed: bool = False  # the last claim left some functions out (no room for them)

    # --- what happened ---
    def started(self, pushed: bool) -> None:
        """The loop starts (again): look for work at once."""
        self.pushed = pushed
        self.claim_wanted = self.reread_due = True

    def note_due(self, due_at: int | None, now: int) -> bool:
        """A notification: work is due at ``due_at`` (None: unknown, look). True if the loop has something new to
        do (wake it)."""
        if due_at is None:
            self.claim_wanted = self.reread_due = True
        elif due_at <= now:
            self.claim_wanted = True
        elif self.timer_at is None or due_at < self.timer_at:
            self.timer_at = due_at  # the sleep gets shorter
        else:
            return False  # no earlier than a timer already set
        return True

    def engine_notified(self) -> bool:
        """This process wrote something that may have made work due. Pushed: the same transaction's notification
        (with its due time) comes anyway, so nothing to do (False); polling: look (note ``None``)."""
        return not self.pushed

    def turn(self, now: int) -> None:
        """The start of a loop turn: a local timer that has come due asks for a claim and a re-read."""
        if self.timer_at is not None and self.timer_at <= now:
            self.timer_at = None  # due now; the next timer comes from the store
            self.claim_wanted = self.reread_due = True

    def claim_gap(self, last_claim: float, now: float, interval: float) -> float:
        """Pushed: seconds to wait before this claim so that claims come at most every ``interval`` under load
        (notifications arriving in between are served by one claim). A claim after a quiet spell is not delayed."""
        if not self.pushed or interval <= 0:
            return 0.0
        return max(0.0, last_claim + interval - now)

    def claiming(self) -> None:
        """A claim is about to be made: what was notified so far, it takes."""
        self.claim_wanted = False

    def claimed(self, got: int, limit: int, functions_changed: bool) -> bool:
        """A claim returned ``got`` runs of the ``limit`` it asked for. True: claim again at once if there is room.
        A full batch may have left more due; a claim that got less took everything due when it ran (work made due
        since has notified again). A new function set (an HTTP worker's apps) is looked at whole."""
        self.last_claim_got_work = got > 0
        if got >= limit:
            self.claim_wanted = True
        if functions_changed:
            self.claim_wanted = self.reread_due = True
        return self.claim_wanted

    def run_ended(self) -> bool:
        """A run's task ended (a slot is free). True: wake the loop. A function left out of the last claim for lack
        of room may have room now; pushed, the loop is woken only for a claim that waits for a slot."""
        if self.claim_narrowed:
            self.claim_wanted = True
        return self.claim_wanted or not self.pushed

    def failed(self) -> None:
        """The loop failed (the database went away): look at everything again."""
        self.claim_wanted = self.reread_due = True

    # --- sleeping, pushed ---
    def wants_next_due(self, claimable: bool) -> bool:
        """Pushed: read ``next_due_at`` before sleeping? (Consumes the request.)"""
        if self.reread_due and claimable:
            self.reread_due = False
            return True
        return False

    def learned_next_due(self, next_due: int | None, now: int) -> bool:
        """Pushed: what ``next_due_at`` said. True: work is due now, claim instead of sleeping; then read again (work
        stored for later that no notification will announce again: throttled starts, debounce deadlines), unless
        the last claim found nothing (another node took the work, and its own writes notify what follows)."""
        if next_due is None:
            return False
        self.note_due(next_due, now)
        if self.claim_wanted:
            self.reread_due = self.last_claim_got_work
            return True
        return False

    def sleep_for(self, left: float, now: int) -> float:
        """Pushed: seconds to sleep, given ``left`` until the safety poll: no later than the local timer."""
        if self.timer_at is not None:
            left = min(left, max(0.0, (self.timer_at - now) / 1000))
        return left

    def slept(self, woken: bool, now: int, deadline_passed: bool) -> None:
        """Pushed: the sleep ended. Woken (or stopping): the loop acts on what woke it. The timer fired: claim and
        read the next due time. The safety poll came: the same (it also finds the leases of dead workers)."""
        if woken:
            return
        if self.timer_at is not None and self.timer_at <= now:
            self.timer_at = None  # spent: the next one comes from the store
        elif not deadline_passed:
            return
        self.claim_wanted = self.reread_due = True

    # --- sleeping, polling ---
    def polled(self) -> None:
        """Polling: whatever ended the sleep, claim."""
        self.claim_wanted = True


def safety_poll(poll_interval: float, lease_ms: int) -> float:
    """Pushed: the safety poll's period, at least twice per lease period (how expiring leases of dead workers are
    found: those are not notified)."""
    return min(poll_interval * 5, lease_ms / 2000)


def watches_data_version(room: int, watching: bool) -> bool:
    """Polling: poll ``data_version`` while sleeping? Whenever a claim would have room (also with no functions yet:
    an HTTP worker learns of apps synced by another process at its next claim), unless the store wakes the worker
    on other processes' commits (SQLite's local wake channel)."""
    return room > 0 and not watching
