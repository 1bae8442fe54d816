"""Group commit for SQLite: one writer thread applies queued write operations, many per transaction.

A write operation is a function of a connection. The writer takes every operation that is waiting (up to
``max_batch``), runs each inside its own SAVEPOINT (so one failing operation does not undo the others),
commits once, and only then completes the callers' futures: a caller that sees its result knows it is
durable. One fsync covers the whole group, which is what lets many small writes per second through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], T]

log = logging.getLogger(__name__)


class WriterClosedError(RuntimeError):
    pass


class GroupCommitWriter:
    def __init__(self, connect: Callable[[], sqlite3.Connection], max_batch: int = 1000) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[WriteOp[Any], concurrent.futures.Future[Any]] | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="stepline-sqlite-writer", daemon=True)
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
        self._queue.put((op, fut))
        return fut

    async def run(self, op: WriteOp[T]) -> T:
        return await asyncio.wrap_future(self.submit(op))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        try:
            conn = self._connect()
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
                self._apply(conn, batch)
        finally:
            conn.close()

    def _apply(
        self, conn: sqlite3.Connection, batch: list[tuple[WriteOp[Any], concurrent.futures.Future[Any]]]
    ) -> None:
        results: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for _, fut in batch:
                fut.set_exception(exc)
            return
        savepoints = len(batch) > 1  # a lone op needs none: its error rolls back the whole transaction
        for op, fut in batch:
            try:
                if savepoints:
                    conn.execute("SAVEPOINT op")
                value = op(conn)
                if savepoints:
                    conn.execute("RELEASE op")
                results.append((fut, value, None))
            except BaseException as exc:  # the op's own error goes to its caller only
                if savepoints:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                else:
                    conn.execute("ROLLBACK")
                    fut.set_exception(exc)
                    return
                results.append((fut, None, exc))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.exception("group commit failed; %d writes rejected", len(batch))
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for fut, _, _ in results:
                fut.set_exception(exc)
            return
        self.commits += 1
        self.ops += len(batch)
        for fut, value, error in results:
            if error is None:
                fut.set_result(value)
            else:
                fut.set_exception(error)
