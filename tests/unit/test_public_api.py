"""The public API is what `stepline.__all__` lists; changing it is a deliberate act."""

import stepline

EXPECTED = {
    "Batch",
    "Concurrency",
    "Debounce",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
    "AsyncStep",
    "Backoff",
    "BaseContext",
    "CancelOn",
    "Clock",
    "Context",
    "CronTrigger",
    "DurationError",
    "Event",
    "EventTrigger",
    "EventValidationError",
    "ExpressionError",
    "FakeClock",
    "FunctionDef",
    "Group",
    "Message",
    "PublishError",
    "Subscription",
    "SubscriptionClosed",
    "UnknownRunError",
    "NonRetriableError",
    "RetryAfterError",
    "RunRecord",
    "SerializationError",
    "StepError",
    "StepIdConflictError",
    "StepRecord",
    "Stepline",
    "SteplineError",
    "SyncContext",
    "SyncStep",
    "SystemClock",
    "Timeouts",
    "UnknownFunctionError",
    "Worker",
    "serve",
    "serve_fastapi",
    "serve_flask",
}


def test_public_api_is_pinned() -> None:
    assert set(stepline.__all__) == EXPECTED
    for name in stepline.__all__:
        assert getattr(stepline, name) is not None
