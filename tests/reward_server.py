"""A real HTTP server on 127.0.0.1 that plays the reward services: OpenAI-style chat completions
(the judge), LLaMA-Factory's /v1/score/evaluation and vLLM's /classify and /pooling (the reward
model). A test scripts each reply from the request's text and its attempt number: a score, a
delay, an HTTP error (with headers such as Retry-After), a malformed body. It counts requests and
the most in flight at once, and keeps every request body."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Reply:
    """What the server does with one request: wait `delay` seconds, then answer `status` with
    `body` (a judge's reply text, a list of scores, or raw bytes for a malformed reply)."""

    body: str | list[float] | bytes = ""
    status: int = 200
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


Script = Callable[[str, str, int], Reply]  # (judge or rm, request text, attempt number from 0) -> Reply
TAG = re.compile(r"\[(?:(judge|rm)-)?(score|fail|garbage|delay)\s*([-0-9.]*)\]")


def scripted(kind: str, text: str, attempt: int) -> Reply:
    """The default script, driven by tags in the text, for both services or, prefixed judge- or
    rm-, for one: [score x] answers x (0.5 without one); [fail k] answers HTTP 500 to the first k
    attempts; [garbage] answers a malformed body; [delay s] waits s seconds before answering."""
    tags = {name: value for who, name, value in TAG.findall(text) if who in ("", kind)}
    delay = float(tags.get("delay") or 0)
    if "fail" in tags and attempt < int(tags["fail"]):
        return Reply("internal error", status=500, delay=delay)
    if "garbage" in tags:
        return Reply(b"{not json", delay=delay)
    return Reply([float(tags.get("score") or 0.5)], delay=delay)


def rate_limited(seconds: float, script: Script = scripted) -> Script:
    """A service that answers HTTP 429 with Retry-After: `seconds` (rounded up) to every request
    that arrives within `seconds` of its first one, then `script`'s replies."""
    opened: list[float] = []

    def reply(kind: str, text: str, attempt: int) -> Reply:
        now = time.monotonic()
        opened[:] = opened or [now]
        if now - opened[0] < seconds:
            return Reply("rate limited", status=429, headers=(("Retry-After", str(math.ceil(seconds))),))
        return script(kind, text, attempt)

    return reply


class RewardServer:
    def __init__(self, script: Script = scripted):
        self.script, self.lock = script, threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.bodies: list[dict] = []  # every request's JSON body, in arrival order
        self.statuses: Counter[int] = Counter()  # replies sent, by HTTP status
        self.requests, self.in_flight, self.max_in_flight = 0, 0, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the http.server name)
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    server.bodies.append(request)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(request)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, request: dict) -> None:
                texts = _texts(self.path, request)
                key = self.path + "\0" + "\0".join(texts)
                with server.lock:
                    attempt = server.attempts[key]
                    server.attempts[key] += 1
                kind = "judge" if self.path.endswith("/chat/completions") else "rm"
                replies = [server.script(kind, t, attempt) for t in texts]
                time.sleep(max(r.delay for r in replies))
                worst = next((r for r in replies if r.status != 200 or isinstance(r.body, bytes)), None)
                if worst is not None:
                    body = worst.body if isinstance(worst.body, bytes) else worst.body.encode()
                    self._send(worst.status, body, worst.headers)
                else:
                    self._send(200, json.dumps(_reply(self.path, request, [r.body for r in replies])).encode())

            def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
                with server.lock:
                    server.statuses[status] += 1
                try:
                    self.send_response(status)
                    for name, value in headers:
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RewardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default listen backlog of 5 refuses connections that a judge opens at once


def _texts(path: str, request: dict) -> list[str]:
    if path.endswith("/chat/completions"):
        return [request["messages"][-1]["content"]]
    return list(request["messages"] if path.endswith("/score/evaluation") else request["input"])


def _reply(path: str, request: dict, bodies: list) -> dict:
    if path.endswith("/chat/completions"):
        body = bodies[0]
        text = body if isinstance(body, str) else f"Follows the stages. <Score>{body[0]}</Score>"
        return {
            "id": "c", "object": "chat.completion", "created": 0, "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
    scores = [b[0] for b in bodies]
    if path.endswith("/score/evaluation"):
        return {"id": "s", "object": "score.evaluation", "model": request["model"], "scores": scores}
    if path.endswith("/classify"):
        probs = [1 / (1 + math.exp(-s)) for s in scores]
        return {"data": [{"index": i, "label": "good", "probs": [1 - p, p], "num_classes": 2} for i, p in enumerate(probs)]}
    return {"data": [{"index": i, "object": "pooling", "data": [s]} for i, s in enumerate(scores)]}
