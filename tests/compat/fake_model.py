"""A fake OpenAI-compatible model server for the compat tests of ``step.ai.infer`` and ``step.fetch``: a real HTTP
server on a loopback port (stdlib, a thread), which the Stepline server calls on the apps' behalf.

``POST /v1/chat/completions`` answers a chat completion whose content echoes the last message (``echo: <text>``);
``/fail/<n>/v1/chat/completions`` answers 503 to the first ``n`` requests of that path, then as above; any other
path (``step.fetch``) answers ``200 fetched <method> <path>: <body>`` as text with an ``X-Model: fake`` header.
Every request is recorded (method, path, headers, body)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ModelRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeModel:
    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []
        self._seen: Counter[str] = Counter()
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                model.requests.append(ModelRequest(self.command, self.path, headers, body))
                model._seen[self.path] += 1
                status, content_type, payload = model.answer(self.command, self.path, body, model._seen[self.path])
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("x-model", "fake")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-model", daemon=True)
        self._thread.start()

    def answer(self, method: str, path: str, body: bytes, nth: int) -> tuple[int, str, bytes]:
        if path.endswith("/chat/completions"):
            parts = path.split("/")
            if len(parts) > 2 and parts[1] == "fail" and nth <= int(parts[2]):
                return 503, "application/json", json.dumps({"error": {"message": "overloaded"}}).encode()
            request = json.loads(body)
            text = request["messages"][-1]["content"]
            completion = {"id": f"chatcmpl-{nth}", "object": "chat.completion", "model": request.get("model"),
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": f"echo: {text}"}}]}  # fmt: skip
            return 200, "application/json", json.dumps(completion).encode()
        return 200, "text/plain", f"fetched {method} {path}: {body.decode()}".encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
