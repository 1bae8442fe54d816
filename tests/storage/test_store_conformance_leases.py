"""Store conformance: claiming runs, leases (renew, release, takeover), retries and next_due_at."""

from __future__ import annotations

from stepline.core.ids import new_ulid
from stepline.storage.base import Store
from stepline.storage.records import RunFinish

from .builders import (
    FN,
    LEASE,
    MATCH,
    NOW,
    OTHER_FN,
    SEC,
    event,
    ingest,
    memo,
    new_run,
    sid,
    sleeping,
    start,
    start_and_claim,
)

# --- claim_runs ---------------------------------------------------------------------------------------------


async def test_claim_turns_a_queued_run_into_a_leased_running_run(store: Store) -> None:
    ev, run_id = await start(store, data={"x": 1})
    (claimed,) = await store.claim_runs("w1", [FN], NOW + 7, 10, LEASE)
    assert claimed.run.id == run_id
    assert (claimed.run.status, claimed.run.started_at) == ("running", NOW + 7)
    assert (claimed.run.lease_owner, claimed.run.lease_expires_at) == ("w1", NOW + 7 + LEASE)
    assert claimed.event == ev
    assert claimed.events == [ev]
    assert claimed.steps == {}
    stored = await store.get_run(run_id)
    assert stored is not None
    assert (stored.status, stored.started_at, stored.lease_owner) == ("running", NOW + 7, "w1")


async def test_claim_only_takes_due_runs(store: Store) -> None:
    _, now_id = await start(store)
    _, later_id = await start(store, due_at=NOW + 10 * SEC)
    assert [c.run.id for c in await store.claim_runs("w1", [FN], NOW, 10, LEASE)] == [now_id]
    later = await store.get_run(later_id)
    assert later is not None and (later.status, later.lease_owner, later.started_at) == ("queued", None, None)
    assert await store.claim_runs("w1", [FN], NOW + 10 * SEC - 1, 10, LEASE) == []
    assert [c.run.id for c in await store.claim_runs("w1", [FN], NOW + 10 * SEC, 10, LEASE)] == [later_id]


async def test_claim_only_takes_runs_of_the_given_functions(store: Store) -> None:
    _, mine = await start(store, FN)
    _, theirs = await start(store, OTHER_FN)
    assert await store.claim_runs("w1", [], NOW, 10, LEASE) == []
    assert await store.claim_runs("w1", ["app-unknown"], NOW, 10, LEASE) == []
    assert [c.run.id for c in await store.claim_runs("w1", [FN], NOW, 10, LEASE)] == [mine]
    other = await store.get_run(theirs)
    assert other is not None and (other.status, other.lease_owner) == ("queued", None)
    assert [c.run.id for c in await store.claim_runs("w2", [FN, OTHER_FN], NOW, 10, LEASE)] == [theirs]


async def test_claim_takes_at_most_limit_earliest_due_first(store: Store) -> None:
    ev = event()
    dues = [NOW + 3, NOW + 1, NOW + 4, NOW + 2, NOW + 5]
    runs = [new_run(ev, due_at=d) for d in dues]
    await ingest(store, [ev], runs)
    by_due = [r.id for r in sorted(runs, key=lambda r: r.due_at)]
    first = await store.claim_runs("w1", [FN], NOW + 10, 2, LEASE)
    assert {c.run.id for c in first} == set(by_due[:2])
    (third,) = await store.claim_runs("w1", [FN], NOW + 10, 1, LEASE)
    assert third.run.id == by_due[2]
    rest = await store.claim_runs("w1", [FN], NOW + 10, 10, LEASE)
    assert {c.run.id for c in rest} == set(by_due[3:])
    assert await store.claim_runs("w1", [FN], NOW + 10, 10, LEASE) == []


async def test_claim_never_takes_ended_runs(store: Store) -> None:
    _, run_id = await start(store)
    await store.finish_run(run_id, None, RunFinish("cancelled"), MATCH, NOW)
    assert await store.claim_runs("w1", [FN], NOW + 1, 10, LEASE) == []


async def test_leased_run_is_not_claimed_again_until_its_lease_expires(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    expires = NOW + LEASE
    assert await store.claim_runs("w1", [FN], NOW + 1, 10, LEASE) == []  # not even by its owner
    assert await store.claim_runs("w2", [FN], expires - 1, 10, LEASE) == []
    (taken,) = await store.claim_runs("w2", [FN], expires + 1, 10, LEASE)
    assert taken.run.id == claimed.run.id
    assert (taken.run.lease_owner, taken.run.lease_expires_at) == ("w2", expires + 1 + LEASE)
    assert (taken.run.status, taken.run.started_at) == ("running", NOW)  # started_at is the first start
    assert taken.event == claimed.event
    # the old owner's writes are now refused
    outcome = await store.record_step(claimed.run.id, "w1", memo("s", 1), MATCH, expires + 2)
    assert outcome.status == "lost"


async def test_claim_carries_batch_events_in_order(store: Store) -> None:
    evs = [event(data={"i": i}) for i in range(3)]
    run = new_run(evs[0], batch=tuple(e.internal_id for e in evs))
    await ingest(store, evs, [run])
    (claimed,) = await store.claim_runs("w1", [FN], NOW, 10, LEASE)
    assert claimed.event == evs[0]
    assert claimed.events == evs


async def test_claim_of_a_resumed_run_carries_its_recorded_steps(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    run_id = claimed.run.id
    await store.record_step(run_id, "w1", memo("a", {"v": 1}), MATCH, NOW + 1)
    wake = NOW + 60 * SEC
    assert (await store.suspend_run(run_id, "w1", [sleeping("nap", wake)], {"kind": "sleeping"}, MATCH,
                                    NOW + 2)).status == "ok"  # fmt: skip
    assert await store.claim_runs("w2", [FN], wake - 1, 10, LEASE) == []
    (resumed,) = await store.claim_runs("w2", [FN], wake, 10, LEASE)
    assert resumed.run.id == run_id
    assert set(resumed.steps) == {sid("a"), sid("nap")}
    a, nap = resumed.steps[sid("a")], resumed.steps[sid("nap")]
    assert (a.display_id, a.status, a.output, a.attempts) == ("a", "completed", {"v": 1}, 1)
    assert (nap.display_id, nap.kind, nap.status, nap.wake_at) == ("nap", "sleep", "sleeping", wake)
    assert resumed.event == claimed.event


async def test_claim_of_a_resumed_run_only_carries_its_own_steps(store: Store) -> None:
    one = await start_and_claim(store, "w1")
    two = await start_and_claim(store, "w1", data={"second": True})
    await store.record_step(one.run.id, "w1", memo("a", 1), MATCH, NOW)
    await store.record_step(two.run.id, "w1", memo("b", 2), MATCH, NOW)
    for c in (one, two):
        await store.retry_run(c.run.id, "w1", NOW + 5, {"name": "Error", "message": "boom"}, NOW)
    got = {c.run.id: set(c.steps) for c in await store.claim_runs("w2", [FN], NOW + 5, 10, LEASE)}
    assert got == {one.run.id: {sid("a")}, two.run.id: {sid("b")}}


# --- renew_leases -------------------------------------------------------------------------------------------


async def test_renew_extends_own_leases(store: Store) -> None:
    one = await start_and_claim(store, "w1")
    two = await start_and_claim(store, "w1")
    ids = [one.run.id, two.run.id]
    assert await store.renew_leases("w1", ids, NOW + 20 * SEC, LEASE) == []
    for run_id in ids:
        run = await store.get_run(run_id)
        assert run is not None and (run.lease_owner, run.lease_expires_at) == ("w1", NOW + 20 * SEC + LEASE)
    assert await store.claim_runs("w2", [FN], NOW + LEASE + 1, 10, LEASE) == []  # the old expiry passed
    assert len(await store.claim_runs("w2", [FN], NOW + 20 * SEC + LEASE + 1, 10, LEASE)) == 2


async def test_renew_reports_leases_no_longer_held(store: Store) -> None:
    kept = await start_and_claim(store, "w1")
    lost = await start_and_claim(store, "w1")
    await store.renew_leases("w1", [kept.run.id], NOW + 20 * SEC, LEASE)
    (taken,) = await store.claim_runs("w2", [FN], NOW + LEASE + 1, 10, LEASE)  # w1 missed one renewal
    assert taken.run.id == lost.run.id
    unknown = new_ulid()
    renewed_at = NOW + LEASE + 2
    assert await store.renew_leases("w1", [kept.run.id, lost.run.id, unknown], renewed_at, LEASE) == [
        lost.run.id,
        unknown,
    ]
    run = await store.get_run(lost.run.id)
    assert run is not None and (run.lease_owner, run.lease_expires_at) == ("w2", NOW + LEASE + 1 + LEASE)


async def test_renew_reports_runs_that_ended(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    await store.finish_run(claimed.run.id, None, RunFinish("cancelled"), MATCH, NOW + 1)
    assert await store.renew_leases("w1", [claimed.run.id], NOW + 2, LEASE) == [claimed.run.id]


# --- release_run --------------------------------------------------------------------------------------------


async def test_released_run_is_claimable_at_its_due_time_by_another_owner(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    await store.release_run(claimed.run.id, "w1", NOW + 5 * SEC)
    run = await store.get_run(claimed.run.id)
    assert run is not None
    assert (run.status, run.lease_owner, run.lease_expires_at, run.due_at) == ("running", None, None, NOW + 5 * SEC)
    assert await store.claim_runs("w2", [FN], NOW + 5 * SEC - 1, 10, LEASE) == []
    (taken,) = await store.claim_runs("w2", [FN], NOW + 5 * SEC, 10, LEASE)
    assert taken.run.id == claimed.run.id and taken.run.lease_owner == "w2"


async def test_release_by_a_non_owner_changes_nothing(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    await store.release_run(claimed.run.id, "w2", NOW + 1)
    run = await store.get_run(claimed.run.id)
    assert run is not None and (run.lease_owner, run.lease_expires_at) == ("w1", NOW + LEASE)
    assert await store.claim_runs("w2", [FN], NOW + 1, 10, LEASE) == []


# --- retry_run ----------------------------------------------------------------------------------------------


async def test_retry_bumps_attempt_and_reschedules(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    due = NOW + 30 * SEC
    error = {"name": "ValueError", "message": "boom"}
    assert (await store.retry_run(claimed.run.id, "w1", due, error, NOW + 1)).status == "ok"
    run = await store.get_run(claimed.run.id)
    assert run is not None
    assert (run.status, run.attempt, run.due_at) == ("running", 1, due)
    assert run.idle_reason == {"kind": "retrying", "until": due, "error": "ValueError: boom"}
    assert run.error == error
    assert (run.lease_owner, run.lease_expires_at) == (None, None)
    assert await store.claim_runs("w2", [FN], due - 1, 10, LEASE) == []
    (again,) = await store.claim_runs("w2", [FN], due, 10, LEASE)
    assert again.run.attempt == 1
    await store.retry_run(claimed.run.id, "w2", due + 1, error, due)
    assert (await store.get_run(claimed.run.id)).attempt == 2  # type: ignore[union-attr]


async def test_retry_and_suspend_set_the_attempt_of_the_next_stretch(store: Store) -> None:
    """The executor decides the attempt number (a new step restarts it at 0): retry_run and suspend_run store it."""
    claimed = await start_and_claim(store, "w1")
    error = {"name": "Error", "message": "x"}
    await store.retry_run(claimed.run.id, "w1", NOW + 5, error, NOW, attempt=3)
    (again,) = await store.claim_runs("w1", [FN], NOW + 5, 10, LEASE)
    assert again.run.attempt == 3
    await store.suspend_run(again.run.id, "w1", [sleeping("nap", NOW + 50)], {"kind": "sleeping"}, MATCH, NOW + 6)
    (again,) = await store.claim_runs("w1", [FN], NOW + 50, 10, LEASE)
    assert again.run.attempt == 3  # unchanged when not given
    await store.suspend_run(again.run.id, "w1", [sleeping("nap2", NOW + 90)], {"kind": "sleeping"}, MATCH, NOW + 51,
                            attempt=0)  # fmt: skip
    (again,) = await store.claim_runs("w1", [FN], NOW + 90, 10, LEASE)
    assert again.run.attempt == 0
    await store.retry_run(again.run.id, "w1", NOW + 95, error, NOW + 91)
    assert (await store.get_run(again.run.id)).attempt == 1  # type: ignore[union-attr]


async def test_retry_by_a_non_owner_or_on_an_ended_run_is_refused(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    error = {"name": "Error", "message": "x"}
    assert (await store.retry_run(claimed.run.id, "w2", NOW + 5, error, NOW)).status == "lost"
    run = await store.get_run(claimed.run.id)
    assert run is not None and (run.attempt, run.lease_owner, run.error) == (0, "w1", None)
    await store.finish_run(claimed.run.id, None, RunFinish("cancelled"), MATCH, NOW + 1)
    assert (await store.retry_run(claimed.run.id, "w1", NOW + 5, error, NOW + 2)).status == "cancelled"
    assert (await store.get_run(claimed.run.id)).status == "cancelled"  # type: ignore[union-attr]


# --- next_due_at --------------------------------------------------------------------------------------------


async def test_next_due_at_is_none_without_due_work(store: Store) -> None:
    assert await store.next_due_at([FN]) is None
    _, run_id = await start(store, OTHER_FN)
    assert await store.next_due_at([FN]) is None
    assert await store.next_due_at([]) is None
    await store.finish_run(run_id, None, RunFinish("completed"), MATCH, NOW)
    assert await store.next_due_at([OTHER_FN]) is None


async def test_next_due_at_is_the_earliest_due_time_of_those_functions(store: Store) -> None:
    await start(store, FN, due_at=NOW + 50)
    await start(store, FN, due_at=NOW + 20)
    await start(store, OTHER_FN, due_at=NOW + 10)
    assert await store.next_due_at([FN]) == NOW + 20
    assert await store.next_due_at([FN, OTHER_FN]) == NOW + 10


async def test_next_due_at_counts_a_leased_run_as_due_when_its_lease_expires(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    assert await store.next_due_at([FN]) == NOW + LEASE
    await store.renew_leases("w1", [claimed.run.id], NOW + 10 * SEC, LEASE)
    assert await store.next_due_at([FN]) == NOW + 10 * SEC + LEASE
    await start(store, due_at=NOW + 20 * SEC)  # queued work due before the lease expires
    assert await store.next_due_at([FN]) == NOW + 20 * SEC


async def test_next_due_at_follows_a_suspended_run(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    wake = NOW + 3600 * SEC
    await store.suspend_run(claimed.run.id, "w1", [sleeping("nap", wake)], {"kind": "sleeping"}, MATCH, NOW + 1)
    assert await store.next_due_at([FN]) == wake


async def test_a_run_is_claimable_at_the_time_next_due_at_reports(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    due = await store.next_due_at([FN])
    assert due == NOW + LEASE
    taken = await store.claim_runs("w2", [FN], due, 10, LEASE)
    assert [c.run.id for c in taken] == [claimed.run.id]
