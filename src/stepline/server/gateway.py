"""``step.fetch`` (the ``Gateway`` op) and ``step.ai.infer`` (the ``AIGateway`` op): the server makes the HTTP request
the op describes and memoises the answer, as Inngest's executor does (``handleGeneratorGateway`` /
``handleGeneratorAIGateway``), so the app spends no compute while a slow model answers.

Every request goes through the one outbound-request policy (``server/outbound.py``: checked after DNS resolution and
on every redirect), under a deadline (``ServerConfig.gateway_timeout``) and a limit on the answer's size
(``gateway_max_bytes``; a streamed answer that passes it is cut off there). What the step stores:

- ``Gateway``: any HTTP answer is the step's result, ``{"url", "headers", "body", "status_code"}`` (header names in
  Go's canonical form; the body as text). No answer (refused, unreachable, too
  slow, too large) is an error ``{"name": "GatewayError", "message": "Error making gateway request: ..."}``.
- ``AIGateway``: a 2xx answer is the step's result: the model's JSON (an SSE stream, ``text/event-stream``, is kept
  as its text). A non-2xx answer, an answer that is not JSON, or no answer is an error
  ``{"name": "AIGatewayError", "message": "Error making AI request: ...", "data", "stack"}`` (the answer's body in
  ``data`` as JSON when it is, and as text in ``stack``, as Inngest writes it).

Errors are retried as the step's (the function's ``retries``, the server's backoff); the retry asks the app again
(a discovery call, which reports the op again) and the request is made again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stepline.server.outbound import OutboundClient, OutboundFailed, OutboundRefused, OutboundTooLarge

GATEWAY_OPS = {"Gateway": "fetch", "AIGateway": "ai"}  # op -> the stored step kind


@dataclass(frozen=True)
class GatewayRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True)
class GatewayResult:
    """What the step stores: its result (``output``), or an ``error`` (retried while the step has attempts)."""

    output: Any = None
    error: dict[str, Any] | None = None


class InvalidGatewayOp(ValueError):
    """The op cannot describe a request (no URL, a body that is not text or JSON, ...)."""


def _headers(raw: Any, what: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise InvalidGatewayOp(f"{what} must map header names to values, got {raw!r:.100}")
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items() if v is not None}


def _url(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise InvalidGatewayOp(f"the op has no url (got {raw!r:.100})")
    return raw


def fetch_request(opts: dict[str, Any]) -> GatewayRequest:
    """The request of a ``Gateway`` op (``opts {url, method, headers, body}``). The body is sent as the app gave it
    (a string as is, anything else as JSON); the method defaults to POST, as Inngest's."""
    method = opts.get("method") or "POST"
    if not isinstance(method, str) or not method.isalpha():
        raise InvalidGatewayOp(f"the op's method must be an HTTP method, got {method!r:.50}")
    body = opts.get("body")
    data = None if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return GatewayRequest(method.upper(), _url(opts.get("url")), _headers(opts.get("headers"), "headers"), data)


def ai_request(opts: dict[str, Any]) -> GatewayRequest:
    """The request of an ``AIGateway`` op (``opts {url, headers, auth_key, format, body}``): a JSON POST, with the key
    where the provider's format wants it (Gemini: ``?key=``; Bedrock: ``Authorization``; Anthropic: ``x-api-key``;
    otherwise ``Authorization: Bearer``), then the op's own headers."""
    url = _url(opts.get("url"))
    key = opts.get("auth_key") or ""
    if not isinstance(key, str):
        raise InvalidGatewayOp("the op's auth_key must be a string")
    fmt = opts.get("format") or "openai-chat"
    headers = {"Content-Type": "application/json"}
    if key:
        if fmt == "gemini":
            parts = urlsplit(url)
            url = urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query), ("key", key)])))
        elif fmt == "bedrock":
            headers["Authorization"] = key
        elif fmt == "anthropic":
            headers["x-api-key"] = key
        else:
            headers["Authorization"] = f"Bearer {key}"
    headers.update(_headers(opts.get("headers"), "headers"))
    return GatewayRequest("POST", url, headers, json.dumps(opts.get("body")).encode())


def canonical_header(name: str) -> str:
    """Go's canonical form of a header name (``content-type`` -> ``Content-Type``), as Inngest's memo has them."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _json_or_text(body: bytes) -> tuple[Any, bool]:
    text = body.decode("utf-8", "replace")
    try:
        return json.loads(text), True
    except ValueError:
        return text, False


async def perform(client: OutboundClient, kind: str, opts: dict[str, Any], timeout: float,
                  max_bytes: int) -> GatewayResult:  # fmt: skip
    """Make the request of a gateway op (``kind`` "fetch" or "ai") and say what the step stores."""
    name, prefix = ("GatewayError", "Error making gateway request") if kind == "fetch" else (
        "AIGatewayError", "Error making AI request")  # fmt: skip
    try:
        request = fetch_request(opts) if kind == "fetch" else ai_request(opts)
    except InvalidGatewayOp as exc:
        return GatewayResult(error={"name": name, "message": f"{prefix}: {exc}"})
    try:
        answer = await client.request(request.method, request.url, headers=request.headers, body=request.body,
                                      timeout=timeout, max_bytes=max_bytes)  # fmt: skip
    except OutboundRefused as exc:
        return GatewayResult(error={"name": name, "message": f"{prefix}: refused by the outbound policy: {exc}"})
    except OutboundTooLarge as exc:
        return GatewayResult(error={"name": name, "message": f"{prefix}: {exc} (cut off there)"})
    except TimeoutError:
        return GatewayResult(error={"name": name, "message": f"{prefix}: no answer within {timeout:g} s"})
    except OutboundFailed as exc:
        return GatewayResult(error={"name": name, "message": f"{prefix}: {exc}"})
    if kind == "fetch":
        headers = {canonical_header(key): value for key, value in answer.headers.items()}
        return GatewayResult(
            output={
                "url": request.url,
                "headers": headers,
                "body": answer.body.decode("utf-8", "replace"),
                "status_code": answer.status,
            }
        )
    value, is_json = _json_or_text(answer.body)
    stream = answer.headers.get("content-type", "").startswith("text/event-stream")
    if 200 <= answer.status < 300 and (is_json or stream):
        return GatewayResult(output=value)
    reason = f"unsuccessful status code: {answer.status}" if answer.status >= 300 else "the answer is not JSON"
    return GatewayResult(error={"name": name, "message": f"{prefix}: {reason}", "data": value,
                                "stack": answer.body.decode("utf-8", "replace")})  # fmt: skip
