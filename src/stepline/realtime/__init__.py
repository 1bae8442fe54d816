"""Realtime: publish messages on channels and topics, subscribe to them (docs/realtime.md).

In functions: ``ctx.publish(channel, topic, data)`` and ``ctx.step.publish(id, channel, topic, data)``; outside:
``client.publish``, ``client.subscribe`` and ``client.realtime_token`` (a token a browser subscribes with, using the
script served at ``/v1/realtime/stepline-realtime.js``).
"""

from stepline.realtime.browser import browser_script
from stepline.realtime.hub import RealtimeHub, Subscription, SubscriptionClosed
from stepline.realtime.messages import MAX_MESSAGE_BYTES, Message, PublishError
from stepline.realtime.tokens import TokenError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Message",
    "PublishError",
    "RealtimeHub",
    "Subscription",
    "SubscriptionClosed",
    "TokenError",
    "browser_script",
]
