"""The realtime hub of one process: publishing, and the subscriptions open in this process.

Publishing stores the messages (``Store.publish_realtime``, one group-commit write for a list) and hands them to
this process's subscribers at once. Other processes learn of them from the store:

- **PostgreSQL**: the storing transaction sends one ``NOTIFY`` per message (the message itself, or its id when it
  is too large for a notification: the hub then reads its row); every process with a subscriber listens.
- **SQLite**: the transaction that stores messages wakes every process through the local wake channel
  (``stepline.storage.wake``); the store passes that on as an empty notification, and the hub reads the messages
  after its cursor. Without a channel, while this process has subscribers, the hub reads ``PRAGMA data_version``
  every ``poll_interval`` (no table read) and, when another connection committed, the messages after its cursor.

Each subscription has a bounded queue (``max_messages`` and ``max_bytes``): a subscriber that falls that far behind
is disconnected with the reason, and its queue is dropped at once. A subscription that ends (its client went away)
is removed from every index at once. A late subscriber may ask for a replay: the newest messages of its topics
kept in the store (``retention_ms``, at most ``replay_limit``), all of them or those after a cursor.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from stepline.core.clock import Clock
from stepline.core.ids import new_ulid
from stepline.core.loops import call_in_loop
from stepline.realtime import tokens
from stepline.realtime.messages import Delivery, Message, PublishError
from stepline.storage.base import Store
from stepline.storage.records import NewRealtimeMessage, RealtimeRow

log = logging.getLogger("stepline.realtime")

Key = tuple[str, str]  # (channel, topic)


class SubscriptionClosed(Exception):
    """The subscription was ended by the server: ``reason`` says why (a slow subscriber, shutdown)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    """One subscriber's topics and its bounded queue of deliveries. Used on the hub's event loop."""

    def __init__(self, hub: RealtimeHub, keys: Iterable[Key], max_messages: int, max_bytes: int) -> None:
        self.hub = hub
        self.keys: set[Key] = set(keys)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.reason: str | None = None  # why the hub ended it; None while open or when the subscriber left
        self.closed = False
        self._queue: collections.deque[Delivery] = collections.deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self.ended = asyncio.Event()  # set once the subscription is over
        self._held: list[Delivery] | None = None  # live deliveries held back while the replay is read
        self._replayed: set[int] = set()

    def offer(self, d: Delivery) -> None:
        if self.closed or d.id in self._replayed:
            return
        if self._held is not None:
            self._held.append(d)
            return
        if len(self._queue) >= self.max_messages or self._bytes + d.size > self.max_bytes:
            self.hub.slow_subscribers += 1
            self.end(f"slow subscriber: {len(self._queue)} messages ({self._bytes} bytes) were waiting to be sent "
                     f"(at most {self.max_messages} messages or {self.max_bytes} bytes are kept per subscriber); "
                     "subscribe again, with since=<the last id received> to get what was missed")  # fmt: skip
            return
        self._queue.append(d)
        self._bytes += d.size
        self._wake.set()

    def end(self, reason: str | None) -> None:
        """Stop the subscription: drop its queue, leave every topic; ``reason`` is told to the subscriber."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self._queue.clear()
        self._bytes = 0
        self._held = None
        self._replayed.clear()
        self.hub._remove(self)
        self._wake.set()
        self.ended.set()

    def add(self, keys: Iterable[Key]) -> None:
        """Also receive these topics (a WebSocket ``sub`` message)."""
        self.hub._add(self, set(keys) - self.keys)

    def remove(self, keys: Iterable[Key]) -> None:
        """Stop receiving these topics (a WebSocket ``unsub`` message)."""
        self.hub._drop(self, set(keys) & self.keys)

    async def get(self, timeout: float | None = None) -> Delivery | None:
        """The next delivery; None after ``timeout`` seconds without one. Raises SubscriptionClosed once ended."""
        while not self._queue:
            if self.closed:
                raise SubscriptionClosed(self.reason or "closed")
            self._wake.clear()
            if timeout is None:
                await self._wake.wait()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    if not self._queue and not self.closed:
                        return None
        d = self._queue.popleft()
        self._bytes -= d.size
        return d

    @property
    def queued(self) -> int:
        return len(self._queue)

    # --- as an async iterator of messages (``client.subscribe``) ---
    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        try:
            while True:
                try:
                    d = await self.get()
                except SubscriptionClosed:
                    if self.reason is None:
                        return
                    raise
                if d is not None:
                    yield d.message()
        finally:
            self.end(None)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.end(None)

    def close(self) -> None:
        self.end(None)


class RealtimeHub:
    def __init__(self, store: Store, clock: Clock, *, retention_ms: int = 5 * 60_000, replay_limit: int = 1000,
                 max_messages: int = 1000, max_bytes: int = 4 * 1024 * 1024, poll_interval: float = 0.005,
                 prune_every_ms: int = 60_000) -> None:  # fmt: skip
        self.store = store
        self.clock = clock
        self.origin = new_ulid()
        self.retention_ms = retention_ms
        self.replay_limit = replay_limit
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.poll_interval = poll_interval
        self.prune_every_ms = prune_every_ms
        self.slow_subscribers = 0  # subscriptions ended because they fell behind
        self.published = 0
        self._index: dict[Key, set[Subscription]] = {}
        self._subs: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._pushed: asyncio.Queue[str] | None = None
        self._cursor = 0  # the highest id seen from other processes (SQLite tail; PostgreSQL after a reconnect)
        self._last_prune = 0
        self._prune_task: asyncio.Task[None] | None = None
        self._secret: str | None = None
        self._closed = False

    # --- tokens ---
    async def secret(self) -> str:
        if self._secret is None:
            self._secret = await self.store.realtime_secret(tokens.SECRET_NAME, self.clock.now_ms())
        return self._secret

    async def token(self, channel: str, topics: Iterable[str], expires_in: float = tokens.DEFAULT_EXPIRY_S) -> str:
        """A subscription token for ``topics`` of ``channel`` (what a browser passes to subscribe)."""
        claim = tokens.topics_of(channel, list(topics))
        if not claim:
            raise PublishError("a realtime token needs at least one topic")
        return tokens.mint(await self.secret(), self.clock.now_ms() // 1000, topics=claim, expires_in=expires_in)

    async def verify(self, token: str) -> tokens.Grant:
        return tokens.verify(await self.secret(), token, self.clock.now_ms() // 1000)

    # --- publishing ---
    async def publish(self, messages: list[NewRealtimeMessage]) -> list[int]:
        """Store ``messages`` and deliver them to this process's subscribers; returns their ids."""
        if not messages:
            return []
        rows = await self.store.publish_realtime(self.origin, messages)
        self.published += len(rows)
        self._deliver_local(rows)
        self._maybe_prune()
        return [r.id for r in rows]

    def _deliver_local(self, rows: list[RealtimeRow]) -> None:
        if self._subs:
            call_in_loop(self._loop, self._fan_out, rows)

    def _fan_out(self, rows: list[RealtimeRow]) -> None:
        for row in rows:
            subs = self._index.get((row.channel, row.topic))
            if subs:
                d = Delivery(row)
                for sub in list(subs):
                    sub.offer(d)

    def _maybe_prune(self) -> None:
        now = self.clock.now_ms()
        if now - self._last_prune < self.prune_every_ms or self._prune_task is not None:
            return
        self._last_prune = now
        self._prune_task = asyncio.ensure_future(self._prune(now - self.retention_ms))

    async def _prune(self, before: int) -> None:
        try:
            await self.store.prune_realtime(before)
        except Exception as exc:
            log.warning("pruning realtime messages failed: %s", exc)
        finally:
            self._prune_task = None

    # --- subscribing ---
    async def subscribe(self, keys: Iterable[Key], *, since: int | None = None, max_messages: int | None = None,
                        max_bytes: int | None = None) -> Subscription:  # fmt: skip
        """A subscription to these (channel, topic) pairs. ``since``: also replay the kept messages after this
        cursor (0: every kept message), then go on live without gaps or repeats."""
        if self._closed:
            raise SubscriptionClosed("the server is shutting down")
        sub = Subscription(self, keys, max_messages or self.max_messages, max_bytes or self.max_bytes)
        self._start()
        if since is not None:
            sub._held = []
        self._add(sub, sub.keys)
        self._subs.add(sub)
        if since is not None:
            try:
                rows = await self.store.realtime_replay(
                    sorted(sub.keys), since, self.clock.now_ms() - self.retention_ms, self.replay_limit
                )
            except BaseException:
                sub.end(None)
                raise
            held, sub._held = sub._held or [], None
            for row in rows:
                d = Delivery(row)
                sub.offer(d)
                sub._replayed.add(d.id)
            for d in held:
                sub.offer(d)
        return sub

    def _add(self, sub: Subscription, keys: set[Key]) -> None:
        if sub.closed:
            return
        for key in keys:
            self._index.setdefault(key, set()).add(sub)
        sub.keys |= keys

    def _drop(self, sub: Subscription, keys: set[Key]) -> None:
        for key in keys:
            subs = self._index.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._index[key]
        sub.keys -= keys

    def _remove(self, sub: Subscription) -> None:
        self._drop(sub, set(sub.keys))
        self._subs.discard(sub)

    @property
    def subscriptions(self) -> int:
        return len(self._subs)

    @property
    def topics(self) -> int:
        return len(self._index)

    # --- messages of other processes ---
    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        if self._receiver is None or self._receiver.done():
            self._receiver = loop.create_task(self._receive(), name="stepline-realtime-receiver")

    async def _receive(self) -> None:
        self._cursor = await self.store.realtime_last_id()
        self._pushed = asyncio.Queue()
        if self.store.subscribe_realtime(self._on_notify):
            try:
                await self._receive_pushed(self._pushed)
            finally:
                self.store.unsubscribe_realtime(self._on_notify)
        else:
            await self._tail()

    def _on_notify(self, payload: str) -> None:
        """From the store's listening thread."""
        if self._pushed is not None:
            call_in_loop(self._loop, self._pushed.put_nowait, payload)

    async def _receive_pushed(self, queue: asyncio.Queue[str]) -> None:
        while not self._closed:
            payload = await queue.get()
            try:
                await self._on_pushed(payload)
            except Exception as exc:
                log.warning("a realtime notification could not be delivered: %s", exc)

    async def _on_pushed(self, payload: str) -> None:
        if not payload:  # reconnected: read what may have been missed
            await self._read_after()
            return
        note = json.loads(payload)
        msg_id = int(note["id"])
        self._cursor = max(self._cursor, msg_id)
        if note.get("o") == self.origin or not self._subs:
            return
        if "m" in note:
            channel, topic, kind, body, created_at = note["m"]
            row: RealtimeRow | None = RealtimeRow(msg_id, note["o"], channel, topic, kind, body, created_at)
        else:
            row = await self.store.realtime_message(msg_id)
        if row is not None:
            self._fan_out([row])

    async def _read_after(self) -> None:
        while True:
            rows = await self.store.realtime_messages_after(self._cursor, 500)
            if not rows:
                return
            self._cursor = rows[-1].id
            self._fan_out([r for r in rows if r.origin != self.origin])
            if len(rows) < 500:
                return

    async def _tail(self) -> None:
        """SQLite: read the messages other processes stored, when the database changed (see the module doc)."""
        version = self.store.data_version()
        idle_since: float | None = None
        while not self._closed:
            await asyncio.sleep(self.poll_interval)
            if not self._subs:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 5.0:
                    return  # the next subscriber starts it again
                continue
            idle_since = None
            current = self.store.data_version()
            if current == version:
                continue
            version = current
            try:
                await self._read_after()
            except Exception as exc:
                log.warning("reading realtime messages failed: %s", exc)

    # --- shutdown ---
    def close(self, reason: str = "the server is shutting down: subscribe again") -> None:
        """End every subscription with ``reason`` and refuse new ones."""
        self._closed = True
        for sub in list(self._subs):
            sub.end(reason)
        if self._receiver is not None:
            self._receiver.cancel()

    def reopen(self) -> None:
        self._closed = False

    def stats(self) -> dict[str, Any]:
        return {"subscriptions": len(self._subs), "topics": len(self._index), "published": self.published,
                "slow_subscribers": self.slow_subscribers}  # fmt: skip
