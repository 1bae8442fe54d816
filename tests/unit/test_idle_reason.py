"""An idle reason has one rendering: the CLI (``runs list``/``runs show``) and the dashboard print the same words."""

from __future__ import annotations

from typing import Any

import pytest

from stepline.cli.runs import run_note
from stepline.server.dashboard.views import idle_text
from stepline.storage.records import RunRecord
from stepline.storage.states import IdleReason, describe_idle, idle_of

T = 1_767_229_200_000  # 2026-01-01 01:00:00Z
NOW = T - 90_000

CASES: list[tuple[IdleReason, str]] = [
    ({"kind": "sleeping", "step": "nap", "until": T}, "Sleeping in step 'nap' until 2026-01-01 01:00:00.000Z"),
    ({"kind": "waiting", "step": "w", "event": "order/paid", "until": T},
     "Waiting for event 'order/paid' in step 'w' until 2026-01-01 01:00:00.000Z (then it times out)"),
    ({"kind": "waiting", "step": "s", "signal": "order-7", "until": T, "message": "waiting for signal 'order-7'"},
     "Waiting for signal 'order-7' in step 's' until 2026-01-01 01:00:00.000Z (then it times out)"),
    ({"kind": "invoking", "step": "i", "function": "app-child", "run_id": "R1", "until": T},
     "Waiting for the invoked function 'app-child' (run R1) to finish in step 'i' until 2026-01-01 01:00:00.000Z"),
    ({"kind": "retrying", "step": "call", "until": T},
     "Retrying step 'call': next attempt at 2026-01-01 01:00:00.000Z, after an error"),
    ({"kind": "retrying", "until": T, "error": "RuntimeError: card declined"},
     "Retrying the function: next attempt at 2026-01-01 01:00:00.000Z, after RuntimeError: card declined"),
    ({"kind": "rerun", "run_id": "R0", "from_step": "b"}, "Rerun of run R0 from step 'b': queued to start"),
    ({"kind": "queued", "memo_steps": 2}, "Queued to start"),
    ({"kind": "concurrency", "key": "u42", "limit": 5, "active": 5, "message": "concurrency key u42 at 5 of 5"},
     "concurrency key u42 at 5 of 5"),
    ({"kind": "mystery", "until": T, "n": 1}, "Mystery (until: 2026-01-01 01:00:00.000Z, n: 1)"),  # type: ignore[typeddict-unknown-key]
]  # fmt: skip


def _run(status: Any, reason: IdleReason | None) -> RunRecord:
    return RunRecord("R", "app-fn", "E", status, 0, reason, None, None, 0, None, None, None, T, None, None, None,
                     None, None)  # fmt: skip


@pytest.mark.parametrize(("reason", "words"), CASES)
def test_every_kind_in_words_the_same_for_the_cli_and_the_dashboard(reason: IdleReason, words: str) -> None:
    assert describe_idle(reason) == words
    assert run_note(_run("running", reason)) == words  # the CLI's NOTE column and `runs show`
    # The dashboard: the same words in its own time format (no milliseconds), at the time itself (nothing left to
    # count down; a retry says it is due).
    assert idle_text(reason, T).replace(" (due now)", "") == words.replace(".000Z", "Z")


def test_the_dashboard_adds_how_far_off_a_time_is() -> None:
    assert idle_text({"kind": "sleeping", "step": "nap", "until": T}, NOW) == (
        "Sleeping in step 'nap' until 2026-01-01 01:00:00Z (in 1 m 30 s)")  # fmt: skip


def test_parallel_steps_are_multiple_reasons_earliest_first() -> None:
    late: IdleReason = {"kind": "sleeping", "step": "late", "until": T + 1}
    early: IdleReason = {"kind": "retrying", "step": "early", "until": T}
    both = idle_of([late, early])
    assert both == {"kind": "multiple", "reasons": [early, late]}
    assert idle_of([late]) == late
    assert describe_idle(both) == ("Retrying step 'early': next attempt at 2026-01-01 01:00:00.000Z, after an error; "
                                   "Sleeping in step 'late' until 2026-01-01 01:00:00.001Z")  # fmt: skip
