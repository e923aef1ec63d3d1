"""A real OpenAI-compatible HTTP server on 127.0.0.1 for testing the `openai` backend, with
injected faults (a labelled test double of a model server: its replies are scripted echoes).

Each request's fault plan is looked up by its text (the last user message, or the prompt): a list
of actions, one per attempt — "429" (with Retry-After), "500", "slow" (answers after `slow_s`),
"drop" (closes the connection without an answer), "badjson" (200 with a broken body), "400",
"ok" — then "ok" forever. The server records every request it received (path, text and the whole
JSON body) and the most requests it had in flight at once. A request that asks for structured
output (OpenAI's `response_format` or vLLM's `structured_outputs` field) is answered with
`structured_reply` when one is given, as a server decoding under that grammar would.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FaultyServer:
    def __init__(self, plan: dict[str, list[str]] | None = None, *, retry_after: str = "0.05",
                 slow_s: float = 1.0, delay_s: float = 0.0, structured_reply: str | None = None) -> None:
        self.plan = {k: list(v) for k, v in (plan or {}).items()}
        self.structured_reply = structured_reply
        self.retry_after, self.slow_s, self.delay_s = retry_after, slow_s, delay_s
        self.received: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def attempts(self, text: str) -> int:
        return sum(1 for r in self.received if r["text"] == text)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        chat = h.path.endswith("/chat/completions")
        text = body["messages"][-1]["content"] if chat else body["prompt"]
        with self._lock:
            self.received.append({"path": h.path, "text": text, "body": body, "t": time.monotonic(),
                                  "auth": h.headers.get("Authorization")})
            steps = self.plan.get(text)
            action = steps.pop(0) if steps else "ok"
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            self._act(h, action, chat, text, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _act(self, h: BaseHTTPRequestHandler, action: str, chat: bool, text: str, body: dict) -> None:
        if action == "drop":
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if action == "slow":
            time.sleep(self.slow_s)
        if action in ("429", "500", "400"):
            self._send(h, int(action), {"error": {"message": f"injected {action}"}},
                       {"Retry-After": self.retry_after} if action == "429" else {})
            return
        if action == "badjson":
            self._send_raw(h, 200, b'{"choices": [ {"oops"')
            return
        if body.get("echo") and body.get("logprobs") is not None:  # prompt log-probabilities
            words, offsets, at = text.split(" "), [], 0
            for w in words:
                offsets.append(at)
                at += len(w) + 1
            values = [None] + [-0.25 if w == "Yes" else -0.5 for w in words[1:]]
            self._send(h, 200, {"choices": [{"index": 0, "text": text + " x", "logprobs": {
                "tokens": words + [" x"], "token_logprobs": values + [-1.0],
                "text_offset": offsets + [len(text)]}}]})
            return
        n = body.get("n", 1)
        structured = "response_format" in body or "structured_outputs" in body
        reply = self.structured_reply if structured and self.structured_reply is not None \
            else f"echo: {text}"
        choice = (lambda i: {"index": i, "message": {"role": "assistant", "content": reply},
                             "finish_reason": "stop"}) if chat else \
            (lambda i: {"index": i, "text": reply, "finish_reason": "stop"})
        self._send(h, 200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                            "choices": [choice(i) for i in reversed(range(n))],  # any order
                            "usage": {"prompt_tokens": len(text.split()),
                                      "completion_tokens": len(reply.split())}})

    def _send(self, h: BaseHTTPRequestHandler, status: int, data: dict, headers: dict | None = None) -> None:
        self._send_raw(h, status, json.dumps(data).encode(), headers)

    @staticmethod
    def _send_raw(h: BaseHTTPRequestHandler, status: int, raw: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(raw)
