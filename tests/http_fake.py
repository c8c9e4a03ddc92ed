"""A small local HTTP server standing in for a third party in tests (an SMS gateway, a webhook
receiver, a quote service, a provident-fund gateway).

It listens on 127.0.0.1 on a random port in a daemon thread (``ThreadingHTTPServer``), answers
each request with the next reply of its script (then with its default reply), and keeps every
request it got — method, path, query, headers, body — so a test can check what was sent.
It is bounded: bodies above ``max_body`` bytes are refused (413) and at most ``max_requests``
requests are kept and answered (503 after that), so a runaway client cannot fill the memory.

    with HttpFake(default=Reply(200, {"ok": True})) as fake:
        fake.play(Reply(500), Reply(200, {"ok": True}))   # first a 500, then a success
        call_the_code_under_test(fake.url + "/hook")
        assert [r.path for r in fake.requests] == ["/hook", "/hook"]

A reply may also be a function of the request (``Callable[[Request], Reply]``), for a fake that
answers from what it was asked (a quote service echoing the symbols requested).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union
from urllib.parse import parse_qs, urlsplit

__all__ = ["HttpFake", "Reply", "Request"]


@dataclass(frozen=True)
class Reply:
    """An answer: status, body (dict/list → JSON, str → text, bytes as they are), extra
    headers, and a delay before answering (past the client's timeout, to fake a hang)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, str]:
        if self.body is None:
            return b"", "text/plain; charset=utf-8"
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode("utf-8"), "text/plain; charset=utf-8"
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8"), "application/json"


@dataclass(frozen=True)
class Request:
    """A request as the fake got it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float  # time.monotonic() when it arrived

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Step = Union[Reply, Callable[[Request], Reply]]


class HttpFake:
    def __init__(self, *, default: Step | None = None, max_requests: int = 1000, max_body: int = 1 << 20) -> None:
        self.default: Step = default if default is not None else Reply(200, {"ok": True})
        self.script: list[Step] = []
        self.requests: list[Request] = []
        self.max_requests = max_requests
        self.max_body = max_body
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > fake.max_body:
                    self._send(Reply(413, {"error": "too large"}), close=True)
                    return
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic(),
                )
                with fake.lock:
                    if len(fake.requests) >= fake.max_requests:
                        step: Step = Reply(503, {"error": "the fake has had enough requests"})
                    else:
                        fake.requests.append(request)
                        step = fake.script.pop(0) if fake.script else fake.default
                reply = step(request) if callable(step) else step
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting: what a timeout looks like from this side

            def _send(self, reply: Reply, close: bool = False) -> None:
                data, content_type = reply.encoded()
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815  (http.server's naming)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def play(self, *steps: Step) -> "HttpFake":
        """Answer the next requests with ``steps``, in order (then with the default again)."""
        with self.lock:
            self.script[:] = list(steps)
        return self

    def reset(self) -> None:
        """Forget the requests and the script."""
        with self.lock:
            self.requests.clear()
            self.script.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "HttpFake":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
