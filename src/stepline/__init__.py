"""Stepline: durable, event-driven functions for Python on SQLite or PostgreSQL."""

from stepline.client import Stepline
from stepline.core.backoff import Backoff
from stepline.core.clock import Clock, FakeClock, SystemClock
from stepline.core.context import AsyncStep, BaseContext, Context, Group, SyncContext, SyncStep
from stepline.core.durations import DurationError
from stepline.core.errors import (
    EventValidationError,
    NonRetriableError,
    RetryAfterError,
    SerializationError,
    StepError,
    StepIdConflictError,
    SteplineError,
    UnknownFunctionError,
    UnknownRunError,
)
from stepline.core.events import Event
from stepline.core.expressions import ExpressionError
from stepline.core.flow import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from stepline.core.function import CancelOn, FunctionDef, Timeouts
from stepline.core.triggers import CronTrigger, EventTrigger
from stepline.core.worker import Worker
from stepline.realtime import Message, PublishError, Subscription, SubscriptionClosed
from stepline.serving import serve, serve_fastapi, serve_flask
from stepline.storage.records import RunRecord, StepRecord

__all__ = [
    "AsyncStep",
    "Backoff",
    "BaseContext",
    "Batch",
    "CancelOn",
    "Clock",
    "Concurrency",
    "Context",
    "CronTrigger",
    "Debounce",
    "DurationError",
    "Event",
    "EventTrigger",
    "EventValidationError",
    "ExpressionError",
    "FakeClock",
    "FunctionDef",
    "Group",
    "Message",
    "NonRetriableError",
    "Priority",
    "PublishError",
    "RateLimit",
    "RetryAfterError",
    "RunRecord",
    "SerializationError",
    "Singleton",
    "StepError",
    "StepIdConflictError",
    "StepRecord",
    "Stepline",
    "SteplineError",
    "Subscription",
    "SubscriptionClosed",
    "SyncContext",
    "SyncStep",
    "SystemClock",
    "Throttle",
    "Timeouts",
    "UnknownFunctionError",
    "UnknownRunError",
    "Worker",
    "serve",
    "serve_fastapi",
    "serve_flask",
]

__version__ = "0.1.0"
