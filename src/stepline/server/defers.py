"""Defers (npm SDK 4.4+, experimental): a run asks for another function to run once it has ended.

The SDK reports ``DeferAdd`` (``opts {fn_slug, input, meta?}``) and ``DeferAbort`` (``opts {target_hashed_id}``) as
lazy ops: they ride on another op (a step's result, ``RunComplete``, a checkpoint) and are applied before it. Each is
stored as a step record of the run (kinds ``defer`` and ``defer_abort``; never in the memo the SDK replays, never
ending a stretch of retries), first write wins, so the SDK's retransmits change nothing. Later calls carry the
``defers`` map ``{hashed id: {"abortable": bool}}`` so the SDK does not report them again. When the run ends
(completed or failed), each defer that was not aborted becomes one ``inngest/deferred.schedule`` event whose data is
the defer's input plus ``_inngest {fn_slug, parent_fn_slug, parent_run_id, parent_app_id, parent_fn_id}``; the
deferred function's trigger (``event.data._inngest.fn_slug == '<its id>'``) starts it.

Limits, as Inngest's: at most 20 defers per run (more are ignored, with a warning), an input of at most 4 MiB and
4 MiB for all of a run's inputs together (beyond, the defer is stored as rejected: ``failed`` with the reason). A
defer never fails its run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from stepline.core.events import Event
from stepline.protocol.calls import Op
from stepline.storage.records import StepRecord, StepUpdate

log = logging.getLogger("stepline.server.defers")
LAZY_OPS = frozenset({"DeferAdd", "DeferAbort"})
DEFER_KINDS = frozenset({"defer", "defer_abort"})
DEFERRED_SCHEDULE = "inngest/deferred.schedule"
MAX_DEFERS_PER_RUN = 20
MAX_DEFER_INPUT_BYTES = 4 * 1024 * 1024  # per defer, and for all of a run's defers together


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def _aborted(known: Mapping[str, StepRecord]) -> set[str]:
    return {str(r.output.get("target")) for r in known.values()
            if r.kind == "defer_abort" and isinstance(r.output, dict)}  # fmt: skip


def defer_update(op: Op, known: Mapping[str, StepRecord], run_id: str) -> StepUpdate | None:
    """The record a lazy op writes, given the run's records so far; None when it writes nothing (a retransmit, an
    op without what it needs, a run at its defer limit)."""
    if not op.id or op.id in known:
        return None
    if op.op == "DeferAbort":
        target = op.opts.get("target_hashed_id")
        if not isinstance(target, str) or not target:
            log.warning("run %s: a DeferAbort op without target_hashed_id was ignored", run_id)
            return None
        return StepUpdate(op.id, op.label, "defer_abort", "completed", 1, output={"target": target})
    fn_slug = op.opts.get("fn_slug")
    if not isinstance(fn_slug, str) or not fn_slug:
        log.warning("run %s: a DeferAdd op without fn_slug was ignored", run_id)
        return None
    defers = [r for r in known.values() if r.kind == "defer"]
    if len(defers) >= MAX_DEFERS_PER_RUN:
        log.warning("run %s: more than %d defers; %r was ignored", run_id, MAX_DEFERS_PER_RUN, op.label)
        return None
    value = {"fn_slug": fn_slug, "input": op.opts.get("input")}
    if op.opts.get("meta") is not None:
        value["meta"] = op.opts["meta"]
    size = _size(value["input"])
    aborted = _aborted(known)
    held = sum(_size((r.output or {}).get("input")) for r in defers if r.status == "completed" and
               r.step_id not in aborted)  # fmt: skip
    reason = None
    if size > MAX_DEFER_INPUT_BYTES:
        reason = f"the defer's input is {size} bytes; the limit is {MAX_DEFER_INPUT_BYTES}"
    elif held + size > MAX_DEFER_INPUT_BYTES:
        reason = f"the run's defers would hold {held + size} bytes of input; the limit is {MAX_DEFER_INPUT_BYTES}"
    if reason is not None:
        log.warning("run %s: defer %r rejected: %s", run_id, op.label, reason)
        return StepUpdate(op.id, op.label, "defer", "failed", 1, error={"name": "DeferRejected", "message": reason})
    return StepUpdate(op.id, op.label, "defer", "completed", 1, output=value)


def defers_map(known: Mapping[str, StepRecord]) -> dict[str, dict[str, bool]]:
    """What later calls tell the SDK: the defers it reported already, and whether each can still be aborted."""
    aborted = _aborted(known)
    return {r.step_id: {"abortable": r.status == "completed" and r.step_id not in aborted}
            for r in known.values() if r.kind == "defer"}  # fmt: skip


def schedule_events(known: Mapping[str, StepRecord], run_id: str, fn_id: str, app_id: str) -> list[Event]:
    """One ``inngest/deferred.schedule`` event per defer of the ended run that was neither aborted nor rejected."""
    aborted = _aborted(known)
    events = []
    for r in known.values():
        if r.kind != "defer" or r.status != "completed" or r.step_id in aborted or not isinstance(r.output, dict):
            continue
        data = r.output.get("input")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            log.warning("run %s: the input of defer %r is not a JSON object; not scheduled", run_id, r.display_id)
            continue
        parent = {"fn_slug": r.output["fn_slug"], "parent_fn_slug": fn_id, "parent_run_id": run_id,
                  "parent_app_id": app_id, "parent_fn_id": fn_id}  # fmt: skip
        events.append(Event(name=DEFERRED_SCHEDULE, id=f"defer-{run_id}-{r.step_id}",
                            data={**data, "_inngest": parent}))  # fmt: skip
    return events
