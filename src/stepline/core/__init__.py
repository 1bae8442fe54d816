"""Core primitives: durations, ids, backoff and clocks."""
