"""Group commit: one writer thread (per connection) applies queued write operations, many per transaction.

A write operation is a function of a connection. The writer takes every operation that is waiting (up to
``max_batch``), runs them in one transaction (an operation that fails is taken out and the others run again,
so one failing operation does not undo the others), commits once, and only then completes the callers'
futures: a caller that sees its result knows it is durable. One fsync covers the whole group, which is what
lets many small writes per second through.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from stepline.observability import hooks
from stepline.storage.sql import Conn

T = TypeVar("T")
WriteOp = Callable[[Conn], T]

log = logging.getLogger(__name__)


class WriterClosedError(RuntimeError):
    pass


_tx = threading.local()  # the writer thread's transaction: what to do once it commits


def after_commit(action: Callable[[], None]) -> None:
    """Run ``action`` once the writer transaction this is called in commits, and never if it is rolled back (its
    operations then run again, and call this again); at once outside a writer transaction. For what must happen
    once per committed change, such as counting a flow-control decision in the metrics."""
    pending: list[Callable[[], None]] | None = getattr(_tx, "pending", None)
    if pending is None:
        action()
    else:
        pending.append(action)


class _Waiter:
    """Who waits for one write: a thread (a concurrent future) or a coroutine (an asyncio future).

    Results for coroutines are handed back to their event loop in one call per batch, not one per write:
    waking a loop from another thread is the expensive part of a small write.
    """

    __slots__ = ("afut", "cfut", "loop")

    def __init__(
        self,
        cfut: concurrent.futures.Future[Any] | None = None,
        afut: asyncio.Future[Any] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.cfut, self.afut, self.loop = cfut, afut, loop

    def start(self) -> bool:
        """False if the caller gave up (cancelled) before its write ran: then the write is skipped."""
        if self.cfut is not None:
            return self.cfut.running() or self.cfut.set_running_or_notify_cancel()
        assert self.afut is not None
        return not self.afut.done()

    def done(self) -> bool:
        return self.cfut.done() if self.cfut is not None else bool(self.afut is not None and self.afut.done())


def _settle_async(results: list[tuple[_Waiter, Any, BaseException | None]]) -> None:
    for waiter, value, error in results:
        fut = waiter.afut
        if fut is None or fut.done():  # cancelled meanwhile
            continue
        if error is None:
            fut.set_result(value)
        else:
            fut.set_exception(error)


def settle(results: list[tuple[_Waiter, Any, BaseException | None]]) -> None:
    """Complete every waiter: threads directly, coroutines with one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Waiter, Any, BaseException | None]]] = {}
    for item in results:
        waiter, value, error = item
        if waiter.cfut is not None:
            if waiter.cfut.done():
                continue
            if error is None:
                waiter.cfut.set_result(value)
            else:
                waiter.cfut.set_exception(error)
        elif waiter.loop is not None:
            by_loop.setdefault(waiter.loop, []).append(item)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_async, items)
        except RuntimeError:  # the loop was closed: nobody is waiting any more
            pass


class GroupCommitWriter:
    def __init__(
        self,
        connect: Callable[[], Any],
        max_batch: int = 1000,
        *,
        begin: str = "BEGIN IMMEDIATE",
        is_transient: Callable[[BaseException], bool] = lambda exc: False,
        is_disconnect: Callable[[BaseException], bool] = lambda exc: False,
        retry_for: float = 120.0,
        name: str = "stepline-writer",
        before_commit: Callable[[Conn], None] | None = None,
        commit: Callable[[Conn], None] | None = None,
        after_commit: Callable[[Conn], None] | None = None,
        exclusive: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self._connect = connect
        # Held around each transaction (SQLite: a file lock that queues the writers of several processes)
        self._exclusive = exclusive or contextlib.nullcontext
        self._max_batch = max_batch
        self._begin = begin
        self._is_transient = is_transient
        self._is_disconnect = is_disconnect
        self._retry_for = retry_for
        self._before_commit = before_commit  # e.g. one NOTIFY per transaction
        self._commit = commit  # instead of COMMIT (PostgreSQL: the NOTIFYs and the COMMIT in one round trip)
        self._after_commit = after_commit  # e.g. one wake-up of other processes per transaction (never raises)
        self._conn: Any = None
        self._closed_hard = False
        self._queue: queue.SimpleQueue[tuple[WriteOp[Any], _Waiter] | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self.commits = 0
        self.ops = 0

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def submit(self, op: WriteOp[T]) -> concurrent.futures.Future[T]:
        if self._closed:
            raise WriterClosedError("the store is closed")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((op, _Waiter(cfut=fut)))
        return fut

    async def run(self, op: WriteOp[T]) -> T:
        """Apply ``op`` in a group commit and return its result once the transaction is committed."""
        if self._closed:
            raise WriterClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, _Waiter(afut=fut, loop=loop)))
        return await fut

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        try:
            self._conn = self._connect()
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            stop = False
            while not stop:
                item = self._queue.get()
                if item is None:
                    break
                batch = [item]
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                try:
                    self._apply_with_retries(batch)
                except BaseException as exc:  # never let the writer thread die: fail this batch, go on
                    log.exception("writer failed a batch of %d writes", len(batch))
                    settle([(w, None, exc) for _, w in batch])
        finally:
            self._close_conn()

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def _apply_with_retries(self, batch: list[tuple[WriteOp[Any], _Waiter]]) -> None:
        """Apply a batch; on a transient error (deadlock, lost connection) roll back, reconnect, try again.

        Gives up after ``retry_for`` seconds and fails every write of the batch with the last error.
        """
        deadline = time.monotonic() + self._retry_for
        delay = 0.05
        while True:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                with self._exclusive():
                    outcome = self._apply(self._conn, batch)
            except BaseException as exc:
                if not self._is_transient(exc) or time.monotonic() > deadline or self._closed_hard:
                    if self._is_transient(exc):
                        log.error("writes failed for %.0f s, giving up on %d: %s", self._retry_for, len(batch), exc)
                    settle([(w, None, exc) for _, w in batch])
                    if self._is_transient(exc):
                        self._close_conn()
                    else:
                        self._rollback_quietly()
                    return
                log.warning("transient write error, retrying %d writes: %s", len(batch), exc)
                if (obs := hooks.current) is not None:
                    obs.store_retry()
                self._rollback_quietly()
                if self._is_disconnect(exc):
                    self._close_conn()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            settle(outcome)
            return

    def _rollback_quietly(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute("ROLLBACK")
        except Exception:
            self._close_conn()

    def _apply(
        self, conn: Conn, batch: list[tuple[WriteOp[Any], _Waiter]]
    ) -> list[tuple[_Waiter, Any, BaseException | None]]:
        """One transaction for the whole batch. Raises on a transient error (the caller retries the batch).

        Operations run without savepoints (two statements fewer each). If one raises, the transaction is rolled
        back, that operation's caller gets the error, and the rest of the batch runs again without it: errors
        are rare, so the common path stays short.

        Operations of the same kind that can be applied together (``MergeableOp`` with the same ``merge``
        function) are applied by one call, at the place of the first of them: multi-row statements instead of
        a few statements each. If that call raises, the batch runs again with those operations one by one, so
        that an error stays with the operation that caused it.
        """
        failed: list[tuple[_Waiter, Any, BaseException | None]] = []
        # A caller that gave up (its asyncio task was cancelled) cancelled its future: skip its op.
        batch = [(op, w) for op, w in batch if w.start()]
        merging = True
        started = time.perf_counter()
        try:
            return self._transact(conn, batch, failed, merging, started)
        finally:
            _tx.pending = None  # a rolled-back attempt's actions are dropped

    def _transact(self, conn: Any, batch: list[tuple[WriteOp[Any], _Waiter]],
                  failed: list[tuple[_Waiter, Any, BaseException | None]], merging: bool,
                  started: float) -> list[tuple[_Waiter, Any, BaseException | None]]:  # fmt: skip
        while batch:
            conn.execute(self._begin)
            _tx.pending = []
            results: list[tuple[_Waiter, Any, BaseException | None]] = []
            units = _units(batch) if merging else [[i] for i in range(len(batch))]
            for unit in units:
                try:
                    if len(unit) == 1:
                        op, waiter = batch[unit[0]]
                        results.append((waiter, op(conn), None))
                    else:
                        ops = [batch[i][0] for i in unit]
                        values = ops[0].merge(conn, ops)  # type: ignore[attr-defined]
                        results.extend((batch[i][1], v, None) for i, v in zip(unit, values, strict=True))
                except BaseException as exc:
                    if self._is_transient(exc):
                        raise
                    conn.execute("ROLLBACK")
                    if len(unit) > 1:
                        merging = False  # find the one that fails
                    else:
                        failed.append((batch[unit[0]][1], None, exc))
                        del batch[unit[0]]
                    break
            else:
                if self._before_commit is not None:
                    self._before_commit(conn)
                if self._commit is not None:
                    self._commit(conn)
                else:
                    conn.execute("COMMIT")
                if self._after_commit is not None:
                    self._after_commit(conn)
                committed, _tx.pending = _tx.pending, None
                for action in committed:
                    try:
                        action()
                    except Exception:  # the writes are committed: their callers get their results regardless
                        log.exception("an after-commit action failed")
                self.commits += 1
                self.ops += len(batch)
                if (obs := hooks.current) is not None:
                    obs.store_commit(len(batch), time.perf_counter() - started)
                return results + failed
        return failed


class MergeableOp(abc.ABC):
    """A write operation that can be applied together with others of its kind (see ``GroupCommitWriter._apply``).

    ``merge(conn, ops)`` applies every op of the list and returns their results in order; ``__call__(conn)``
    applies one. Subclasses set ``merge`` (ops with the same ``merge`` function are merged).
    """

    __slots__ = ()

    @abc.abstractmethod
    def merge(self, conn: Conn, ops: list[Any]) -> list[Any]:
        """Apply ``ops`` (all of this op's type, this one first) in order; their results in the same order."""

    def __call__(self, conn: Conn) -> Any:
        return self.merge(conn, [self])[0]


def _units(batch: list[tuple[WriteOp[Any], _Waiter]]) -> list[list[int]]:
    """Indexes of the batch in the order they run: mergeable ops of one kind together, at the first one's place."""
    units: list[list[int]] = []
    groups: dict[Any, list[int]] = {}
    for i, (op, _) in enumerate(batch):
        if isinstance(op, MergeableOp):
            key = type(op).merge
            group = groups.get(key)
            if group is not None:
                group.append(i)
                continue
            groups[key] = group = [i]
            units.append(group)
        else:
            units.append([i])
    return units
