"""Store conformance: a claim past a queued run's start deadline (``timeouts.start``) leases it without starting it,
so its worker cancels it from ``queued`` (docs/state_machine.md); a claim in time starts it."""

from __future__ import annotations

from stepline.storage.base import Store
from stepline.storage.records import RunFinish

from .builders import FN, LEASE, MATCH, NOW, SEC, event, ingest, new_run


async def test_a_claim_past_the_start_deadline_leases_the_run_but_leaves_it_queued(store: Store) -> None:
    late_ev, on_time_ev = event(data={"n": 1}), event(data={"n": 2})
    late = new_run(late_ev, start_deadline=NOW + 30 * SEC)
    on_time = new_run(on_time_ev, start_deadline=NOW + 60 * SEC)
    await ingest(store, [late_ev, on_time_ev], [late, on_time])
    claimed = {c.run.id: c.run for c in await store.claim_runs("w1", [FN], NOW + 45 * SEC, 10, LEASE)}
    assert (claimed[late.id].status, claimed[late.id].started_at, claimed[late.id].lease_owner) == (
        "queued",
        None,
        "w1",
    )
    assert (claimed[on_time.id].status, claimed[on_time.id].started_at) == ("running", NOW + 45 * SEC)

    outcome = await store.finish_run(late.id, "w1", RunFinish("cancelled", error={"name": "StartTimeout"}), MATCH,
                                     NOW + 46 * SEC)  # fmt: skip
    assert outcome.status == "ok"
    stored = await store.get_run(late.id)
    assert stored is not None and (stored.status, stored.started_at) == ("cancelled", None)
