"""Realtime messages: what a publisher sends on a channel and topic, and the envelope subscribers receive.

The envelope is Inngest's (``pkg/execution/realtime/streamingtypes``): ``{"kind", "data", "created_at", "channel",
"topic", "run_id"?, "metadata"?}``; stream chunks are ``{"kind": "chunk", "stream_id", "data", ...}`` and, unlike
Inngest's, carry ``channel`` and ``topic`` too (the npm SDK drops chunks without them). Stepline adds ``id``, the
message's position, which a late subscriber passes back as a cursor to replay what it missed. Extra fields are
ignored by the SDKs' parsers.

A message's wire JSON is built once: stored as the row's payload (without its id), sent to every subscriber
with its id spliced in.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from stepline.core.errors import SteplineError
from stepline.storage.records import NewRealtimeMessage, RealtimeRow

__all__ = [
    "MAX_CHANNEL_LENGTH",
    "MAX_MESSAGE_BYTES",
    "MAX_TOPIC_LENGTH",
    "STREAM_TOPIC",
    "Delivery",
    "Message",
    "PublishError",
    "check_channel",
    "check_topic",
    "new_message",
]

MAX_MESSAGE_BYTES = 512 * 1024  # Inngest's MaxStreamingMessageSizeBytes: the largest message (its JSON data)
MAX_CHANNEL_LENGTH = 512
MAX_TOPIC_LENGTH = 256
STREAM_TOPIC = "$stream"  # the topic raw bytes (publish/tee) go to, as Inngest's TopicNameStream
RAW = "raw"  # kind of a raw-bytes message: sent to subscribers as it is, without an envelope


class PublishError(SteplineError):
    """A message cannot be published: a bad channel or topic, a message over the size limit, or a run that ended.
    ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_channel(channel: object) -> str:
    if not isinstance(channel, str) or not channel:
        raise PublishError("a realtime channel must be a non-empty string")
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise PublishError(f"a realtime channel is at most {MAX_CHANNEL_LENGTH} characters, got {len(channel)}")
    return channel


def check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not topic:
        raise PublishError("a realtime topic must be a non-empty string")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise PublishError(f"a realtime topic is at most {MAX_TOPIC_LENGTH} characters, got {len(topic)}")
    return topic


def rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def new_message(channel: str, topic: str, data: Any, now: int, *, kind: str = "data", run_id: str | None = None,
                stream_id: str | None = None, metadata: Any = None, raw: bytes | None = None,
                data_json: str | None = None) -> NewRealtimeMessage:  # fmt: skip
    """A message ready to store. ``data`` must be JSON-serialisable (``data_json``: already serialised, as the
    server has it from a request body); ``raw`` bytes are sent as they are (tee). Raises PublishError for a bad
    channel or topic and for data over ``MAX_MESSAGE_BYTES``."""
    check_channel(channel)
    check_topic(topic)
    if raw is not None:
        if len(raw) > MAX_MESSAGE_BYTES:
            raise PublishError(f"a realtime message is at most {MAX_MESSAGE_BYTES} bytes, got {len(raw)}", 413)
        payload = _dumps({"kind": RAW, "channel": channel, "topic": topic, "data": base64.b64encode(raw).decode()})
        return NewRealtimeMessage(channel, topic, RAW, payload, now)
    if data_json is None:
        try:
            data_json = _dumps(data)
        except (TypeError, ValueError) as exc:
            raise PublishError(f"the data of a realtime message must be JSON-serialisable: {exc}") from None
    if len(data_json.encode()) > MAX_MESSAGE_BYTES:
        raise PublishError(f"a realtime message is at most {MAX_MESSAGE_BYTES} bytes of JSON data "
                           f"(MAX_MESSAGE_BYTES), got {len(data_json.encode())}", 413)  # fmt: skip
    head: dict[str, Any] = {"kind": kind, "channel": channel, "topic": topic, "created_at": rfc3339(now)}
    if run_id:
        head["run_id"] = run_id
    if stream_id is not None:
        head["stream_id"] = stream_id
    if metadata is not None:
        head["metadata"] = metadata
    payload = _dumps(head)[:-1] + ',"data":' + data_json + "}"
    return NewRealtimeMessage(channel, topic, kind, payload, now)


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a subscriber receives it (``client.subscribe``)."""

    id: int
    channel: str
    topic: str
    kind: str  # data | datastream-start | chunk | datastream-end | raw | closing
    data: Any
    run_id: str | None
    created_at: str | None
    stream_id: str | None = None


class Delivery:
    """One stored message on its way to subscribers: its wire forms, built once and shared by all of them."""

    __slots__ = ("_sse", "channel", "id", "kind", "raw", "text", "topic")

    def __init__(self, row: RealtimeRow) -> None:
        self.id = row.id
        self.channel = row.channel
        self.topic = row.topic
        self.kind = row.kind
        self._sse: bytes | None = None
        if row.kind == RAW:
            self.raw: bytes | None = base64.b64decode(json.loads(row.payload)["data"])
            self.text = self.raw.decode("utf-8", "replace")
        else:
            self.raw = None
            self.text = f'{{"id":{row.id},' + row.payload[1:]

    @property
    def size(self) -> int:
        return len(self.raw) if self.raw is not None else len(self.text)

    @property
    def sse(self) -> bytes:
        """The server-sent event: ``id: <id>`` and ``data: <json>`` (raw bytes as they are, as Inngest writes them)."""
        if self._sse is None:
            self._sse = self.raw if self.raw is not None else f"id: {self.id}\ndata: {self.text}\n\n".encode()
        return self._sse

    def message(self) -> Message:
        if self.raw is not None:
            return Message(self.id, self.channel, self.topic, RAW, self.raw, None, None)
        body = json.loads(self.text)
        return Message(self.id, self.channel, self.topic, str(body.get("kind")), body.get("data"), body.get("run_id"),
                       body.get("created_at"), body.get("stream_id"))  # fmt: skip


def closing_text(reason: str) -> str:
    """The last message of a subscription the server ends (shutdown, a slow subscriber): Inngest's ``closing``
    kind, with the reason as its data."""
    return _dumps({"kind": "closing", "data": {"reason": reason}})
