"""The spans of in-process runs, as a real OTLP receiver gets them from ``stepline worker``: a run without a sending
trace is a root whose steps hang under it, a sampler's decision covers a run's every span, failures carry their
error, and sleeps appear when the run resumes."""

from __future__ import annotations

from pathlib import Path

from stepline import Stepline

from .harness import STEPLINE, free_port, process, wait_for
from .otlp_receiver import Span, running_receiver

APP = """
from stepline import Context, Stepline

client = Stepline("spans")


@client.function(id="one", trigger="sp/one")
async def one(ctx: Context) -> int:
    return await ctx.step.run("only", lambda: ctx.event.data["i"])


@client.function(id="boom", trigger="sp/boom", retries=0)
async def boom(ctx: Context) -> float:
    return await ctx.step.run("divide", lambda: 1 / 0)


@client.function(id="nap", trigger="sp/nap")
async def nap(ctx: Context) -> str:
    await ctx.step.sleep("short", "1s")
    return await ctx.step.run("after", lambda: "awake")
"""
ERROR = 2  # OTLP status code


def test_sampled_runs_have_every_span_under_their_run_span(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    db = tmp_path / "s.db"
    with running_receiver() as rx:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5",
                "OTEL_SERVICE_NAME": "spans-worker"}  # fmt: skip
        port = free_port()
        cmd = [*STEPLINE, "worker", "app:client", "--db", str(db), "--metrics-port", str(port)]
        with process("stepline worker", cmd, tmp_path, f"http://127.0.0.1:{port}/metrics", **otel):
            sender = Stepline("sender", str(db))
            sender.send_sync([{"name": "sp/one", "data": {"i": i}} for i in range(200)])
            sender.close_sync()

            def ones(spans: list[Span]) -> list[Span] | None:
                runs = [s for s in spans if s.name == "run spans-one"]
                return runs if len(runs) > 40 and len(runs) == len({s.parent_id for s in spans if s.name == "step only"}
                                                                   ) else None  # fmt: skip

            rx.wait("the spans of the sampled runs", ones)
            # Every other run is sampled as a whole: a failure and a sleep, with 100 % of their spans.
            for name in ("sp/boom", "sp/nap"):
                for _ in range(40):
                    Stepline("sender", str(db)).send_sync({"name": name})
            wait_for("a sampled failed run and a sampled napping run", lambda: rx.wait(
                "them", lambda spans: any(s.name == "run spans-boom" for s in spans) and any(
                    s.name == "sleep short" for s in spans), timeout=30.0))  # fmt: skip
    spans = rx.snapshot()
    assert all(s.service == "spans-worker" for s in spans)
    runs = {s.attributes["stepline.run.id"]: s for s in spans if s.name == "run spans-one"}
    steps = [s for s in spans if s.name == "step only"]
    assert 0.3 < len(runs) / 200 < 0.7, len(runs)  # the ratio sampler, over runs
    assert len(steps) == len(runs)  # a run that is sampled has all its spans, one that is not has none
    for step in steps:
        run = runs[step.attributes["stepline.run.id"]]
        assert run.parent_id == "" and step.parent_id == run.span_id and step.trace_id == run.trace_id
        assert run.start_ns <= step.start_ns <= step.end_ns <= run.end_ns
        assert step.attributes["stepline.step.outcome"] == "completed"
    assert len({r.trace_id for r in runs.values()}) == len(runs)  # one trace per run
    boom = next(s for s in spans if s.name == "run spans-boom")
    assert boom.status_code == ERROR and "exception" in boom.events
    divide = next(s for s in spans if s.name == "step divide" and s.parent_id == boom.span_id)
    assert divide.status_code == ERROR and divide.attributes["stepline.step.outcome"] == "failed"
    sleep = next(s for s in spans if s.name == "sleep short")
    nap = next(s for s in spans if s.name == "run spans-nap" and s.trace_id == sleep.trace_id)
    assert sleep.parent_id == nap.span_id and sleep.end_ns - sleep.start_ns >= 900_000_000  # about 1 s
    after = next(s for s in spans if s.name == "step after" and s.trace_id == nap.trace_id)
    assert after.start_ns >= sleep.end_ns
