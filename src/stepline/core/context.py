"""What user code sees: ``ctx`` with ``ctx.step`` (async or sync flavour) and ``ctx.group.parallel``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as dt
import functools
import inspect
import logging
import typing
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from pydantic import BaseModel, TypeAdapter

from stepline.core.errors import NonRetriableError, _RunSignal
from stepline.core.events import Event, StoredEvent
from stepline.core.function import FunctionDef
from stepline.core.steps import Execute, Memo, StepDriver, sleep_until_ms
from stepline.realtime.messages import PublishError, check_channel, check_topic

T = TypeVar("T")
P = ParamSpec("P")
Duration = str | int | float | dt.timedelta


def _convert(value: Any, output_type: Any) -> Any:
    if output_type is None or value is None:
        return value
    try:
        adapter = _adapter(output_type)
    except TypeError:  # an unhashable type expression
        adapter = TypeAdapter(output_type)
    return adapter.validate_python(value)


@functools.lru_cache(maxsize=256)
def _adapter(output_type: Any) -> TypeAdapter[Any]:
    return TypeAdapter(output_type)


_MODELS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _annotated_model(fn: Callable[..., Any]) -> Any:
    """The step callable's return annotation, if it is a pydantic model (so replays return the model too)."""
    ann = getattr(fn, "__annotations__", None)
    if not ann or "return" not in ann:
        return None
    ret = ann["return"]
    if isinstance(ret, str):  # postponed annotations: resolved once per function (get_type_hints is slow)
        key = getattr(fn, "__func__", fn)
        try:
            return _MODELS[key]
        except (KeyError, TypeError):
            pass
        try:
            ret = typing.get_type_hints(fn).get("return")
        except Exception:
            ret = None
        model = ret if isinstance(ret, type) and issubclass(ret, BaseModel) else None
        try:
            _MODELS[key] = model
        except TypeError:  # not weakly referenceable
            pass
        return model
    return ret if isinstance(ret, type) and issubclass(ret, BaseModel) else None


class AsyncStep:
    """Steps for ``async def`` functions: every method is awaited."""

    def __init__(self, driver: StepDriver) -> None:
        self._d = driver

    @overload
    async def run(self, id: str, fn: Callable[..., Any], *args: Any, output_type: type[T], **kwargs: Any) -> T: ...
    @overload
    async def run(self, id: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    async def run(self, id: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def run(self, id: str, fn: Callable[..., Any], *args: Any, output_type: Any = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per run (retried on error); its JSON result is memoised.

        Typed as ``fn`` returns (awaited when it is async); a replay returns the recorded JSON, converted back to
        ``output_type`` (or to ``fn``'s pydantic return annotation) when given."""
        plan = await self._d.plan_run(id)
        out_type = output_type or _annotated_model(fn)
        if isinstance(plan, Memo):
            return _convert(plan.value, out_type)
        in_step = self._d.enter(plan)  # log records from here on belong to this step (and its span is current)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            return _convert(await self._d.finish_run(plan, error=exc), out_type)
        except BaseException:
            # Cancelled (asyncio.wait_for, a TaskGroup, shutdown) or a run signal: nothing to record; the step
            # runs again when the run is replayed.
            self._d.abandon(plan)
            raise
        finally:
            self._d.leave(in_step)
        return _convert(await self._d.finish_run(plan, value=value), out_type)

    async def sleep(self, id: str, duration: Duration) -> None:
        await self._d.sleep(id, None, duration)

    async def sleep_until(self, id: str, until: dt.datetime | str) -> None:
        await self._d.sleep(id, sleep_until_ms(until))

    async def wait_for_event(
        self, id: str, *, event: str, timeout: Duration, if_exp: str | None = None, match: str | None = None
    ) -> dict[str, Any] | None:
        """The first matching event after this step starts, or None on timeout."""
        return await self._d.wait_for_event(id, event, if_exp, match, timeout)

    async def wait_for_signal(
        self, id: str, *, signal: str, timeout: Duration | None = None, on_conflict: str = "fail"
    ) -> dict[str, Any] | None:
        """``{"signal", "data"}`` once ``client.send_signal(signal, data)`` (or ``POST /v1/signals``) resumes this
        run, or None on timeout. One run waits for a signal at a time: another run's wait makes this one fail the
        run (``on_conflict="fail"``) or take the signal over (``"replace"``)."""
        return await self._d.wait_for_signal(id, signal, timeout, on_conflict)

    async def invoke(
        self, id: str, *, function: FunctionDef | str, data: Any = None, timeout: Duration | None = None
    ) -> Any:
        """Start another function and return its result (raises StepError if it fails or times out)."""
        return await self._d.invoke(id, function, data, timeout)

    async def send_event(self, id: str, events: Event | dict[str, Any] | Sequence[Event | dict[str, Any]]) -> list[str]:
        return await self._d.send_event(id, events)

    async def publish(self, id: str, channel: str, topic: str, data: Any) -> Any:
        """Publish a realtime message once per run, as a step (the npm SDK's ``step.realtime.publish``): it is sent
        when the step first runs and memoised, so a replay returns ``data`` without sending it again."""
        check_channel(channel)
        check_topic(topic)

        async def send() -> Any:
            try:
                await self._d.publish(channel, topic, data)
            except PublishError as exc:
                raise NonRetriableError(str(exc)) from None
            return data

        return await self.run(id, send)

    async def _publish_now(self, channel: str, topic: str, data: Any) -> int | None:
        return await self._d.publish(channel, topic, data)


class SyncStep:
    """Steps for plain ``def`` functions, which run in a worker thread; every method blocks."""

    def __init__(self, driver: StepDriver, loop: asyncio.AbstractEventLoop) -> None:
        self._d = driver
        self._loop = loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @overload
    def run(self, id: str, fn: Callable[..., Any], *args: Any, output_type: type[T], **kwargs: Any) -> T: ...
    @overload
    def run(self, id: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    def run(self, id: str, fn: Callable[..., Any], *args: Any, output_type: Any = None, **kwargs: Any) -> Any:
        """``AsyncStep.run`` for sync functions: ``fn`` is a plain callable, run in this thread."""
        plan: Memo | Execute = self._call(self._d.plan_run(id))
        out_type = output_type or _annotated_model(fn)
        if isinstance(plan, Memo):
            return _convert(plan.value, out_type)
        in_step = self._d.enter(plan)
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            self._d.leave(in_step)
            return _convert(self._call(self._d.finish_run(plan, error=exc)), out_type)
        except BaseException:
            self._d.leave(in_step)
            self._loop.call_soon_threadsafe(self._d.abandon, plan)
            raise
        self._d.leave(in_step)
        return _convert(self._call(self._d.finish_run(plan, value=value)), out_type)

    def sleep(self, id: str, duration: Duration) -> None:
        self._call(self._d.sleep(id, None, duration))

    def sleep_until(self, id: str, until: dt.datetime | str) -> None:
        self._call(self._d.sleep(id, sleep_until_ms(until)))

    def wait_for_event(
        self, id: str, *, event: str, timeout: Duration, if_exp: str | None = None, match: str | None = None
    ) -> dict[str, Any] | None:
        return self._call(self._d.wait_for_event(id, event, if_exp, match, timeout))

    def wait_for_signal(
        self, id: str, *, signal: str, timeout: Duration | None = None, on_conflict: str = "fail"
    ) -> dict[str, Any] | None:
        return self._call(self._d.wait_for_signal(id, signal, timeout, on_conflict))

    def invoke(self, id: str, *, function: FunctionDef | str, data: Any = None, timeout: Duration | None = None) -> Any:
        return self._call(self._d.invoke(id, function, data, timeout))

    def send_event(self, id: str, events: Event | dict[str, Any] | Sequence[Event | dict[str, Any]]) -> list[str]:
        return self._call(self._d.send_event(id, events))

    def publish(self, id: str, channel: str, topic: str, data: Any) -> Any:
        """``AsyncStep.publish`` for sync functions."""
        check_channel(channel)
        check_topic(topic)

        def send() -> Any:
            try:
                self._call(self._d.publish(channel, topic, data))
            except PublishError as exc:
                raise NonRetriableError(str(exc)) from None
            return data

        return self.run(id, send)

    def _publish_now(self, channel: str, topic: str, data: Any) -> int | None:
        return self._call(self._d.publish(channel, topic, data))


class Group:
    """Parallel steps for sync functions: ``ctx.group.parallel((lambda: ..., lambda: ...))``.

    Async functions use ``asyncio.gather(ctx.step.run(...), ...)`` instead.
    """

    def parallel(self, callables: Sequence[Callable[[], T]]) -> list[T]:
        if not callables:
            return []
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(callables)) as pool:
            # Each branch runs in a copy of this context, so the run's log capture follows it into the thread.
            futures = [pool.submit(contextvars.copy_context().run, c) for c in callables]
            concurrent.futures.wait(futures)
        signals = [f.exception() for f in futures if isinstance(f.exception(), _RunSignal)]
        if signals:
            raise signals[0]  # type: ignore[misc]
        for f in futures:
            exc = f.exception()
            if exc is not None:
                raise exc
        return [f.result() for f in futures]


@dataclass
class BaseContext:
    """What every function's ``ctx`` has, whatever its flavour."""

    event: StoredEvent
    events: list[StoredEvent]
    run_id: str
    attempt: int
    function_id: str
    group: Group
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass
class Context(BaseContext):
    """The argument an ``async def`` function receives: its steps are awaited."""

    step: AsyncStep

    async def publish(self, channel: str, topic: str, data: Any) -> int | None:
        """Publish a realtime message to the subscribers of ``channel``/``topic``.

        At least once: code that runs again (a retried step, a retried function) publishes again, but code that a
        replay passes through on its way to the next new step (before a step recorded by an earlier execution)
        publishes nothing, since the first execution did. Returns the message's id (None when skipped). Raises
        ``PublishError`` for a bad channel or topic, data over the size limit, or once the run has ended."""
        return await self.step._publish_now(channel, topic, data)


@dataclass
class SyncContext(BaseContext):
    """The argument a plain ``def`` function receives (it runs in a worker thread): its steps block."""

    step: SyncStep

    def publish(self, channel: str, topic: str, data: Any) -> int | None:
        """``Context.publish`` for sync functions."""
        return self.step._publish_now(channel, topic, data)


Handler = Callable[[Context], Awaitable[Any]] | Callable[[SyncContext], Any]
"""A function's handler: ``async def f(ctx: Context)`` or ``def f(ctx: SyncContext)``."""


def new_context(
    step: AsyncStep | SyncStep,
    *,
    event: StoredEvent,
    events: list[StoredEvent],
    run_id: str,
    attempt: int,
    function_id: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> Context | SyncContext:
    """The context of the flavour ``step`` has (async or sync)."""
    if isinstance(step, AsyncStep):
        return Context(event, events, run_id, attempt, function_id, Group(), logger, step)
    return SyncContext(event, events, run_id, attempt, function_id, Group(), logger, step)
