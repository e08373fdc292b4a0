"""A scripted OpenAI-compatible chat server on loopback, for driving the real `openai`
SDK in tests: each request takes the next `Reply` of the script (or asks a callable),
which can answer, fail with a status, stall, drop the connection or reject
`response_format`. Every request body is kept; the server can stop and come back."""
from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    text: str = ""  # the answer; for an error status, the error message
    status: int = 200
    delay_s: float = 0.0  # stall before answering (a stop() cuts it short and drops)
    headers: dict = field(default_factory=dict)  # extra response headers (retry-after ...)
    usage: dict | None | str = "default"  # "default": chars/4 counts; None: no usage sent
    drop: bool = False  # close the connection without answering
    reject_response_format: bool = False  # 400 if the request carries a response_format
    truncated: bool = False  # finish_reason "length" (cut at max_tokens)
    model: str | None = None  # served model id to report; None: echo the requested one


Script = Sequence[Reply] | Callable[[dict], Reply]
EXHAUSTED_STATUS = 418  # a 4xx the SDK does not retry: the test's script ran out


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def prompt_tokens(body: dict) -> int:
    """The fake's prompt token count: chars/4 of each message's content, rounded up."""
    return sum(_tokens(m.get("content") or "") for m in body.get("messages", []))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], fake: FakeLLM) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self):
        conn, addr = super().get_request()
        with self.conn_lock:
            self.connections.add(conn)
        return conn, addr

    def shutdown_request(self, request) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_all(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None, headers: dict | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}},
                        headers)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fakellm"}
                    for m in self.server.fake.model_ids]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        fake = self.server.fake
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._error(400, "request body is not JSON")
            return
        fake._note(body, {name.lower(): value for name, value in self.headers.items()})
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route POST {self.path}")
            return
        kind = (body.get("response_format") or {}).get("type")
        if kind is not None and kind not in fake.response_formats:
            self._error(400, f"response_format type '{kind}' is not supported by this server",
                        "response_format")
            return
        reply = fake._next(body)
        if reply is None:
            self._error(EXHAUSTED_STATUS, "fakellm: the test's script is exhausted")
            return
        if reply.delay_s > 0 and fake._stopping.wait(reply.delay_s):
            self.close_connection = True
            return
        if reply.drop:
            self.close_connection = True
            return
        if reply.reject_response_format and kind is not None:
            self._error(400, f"response_format '{kind}' is not supported (json_schema unavailable)",
                        "response_format")
            return
        if reply.status != 200:
            self._error(reply.status, reply.text or f"fake error {reply.status}", headers=reply.headers)
            return
        self._send_json(200, self._completion(body, reply), reply.headers)

    @staticmethod
    def _completion(body: dict, reply: Reply) -> dict:
        payload = {
            "id": f"chatcmpl-fake{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body.get("model", "fake-model"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "length" if reply.truncated else "stop",
            }],
        }
        if reply.usage == "default":
            usage_in, usage_out = prompt_tokens(body), _tokens(reply.text)
            payload["usage"] = {"prompt_tokens": usage_in, "completion_tokens": usage_out,
                                "total_tokens": usage_in + usage_out}
        elif isinstance(reply.usage, dict):
            usage = dict(reply.usage)
            usage.setdefault("total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0))
            payload["usage"] = usage
        return payload


class FakeLLM:
    """Context manager: `with FakeLLM([Reply("hi")]) as fake: ... fake.base_url`."""

    def __init__(self, script: Script = (), port: int = 0,
                 response_formats: Collection[str] = ("json_schema", "json_object"),
                 model_ids: Sequence[str] = ("fake-model",)) -> None:
        self._script: list[Reply] | Callable[[dict], Reply] = script if callable(script) else list(script)
        self.response_formats = frozenset(response_formats)
        self.model_ids = tuple(model_ids)
        self.requests: list[dict] = []  # every request body received, in order
        self.request_headers: list[dict] = []  # their headers, names lower-cased
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- scripting -------------------------------------------------------------------

    def push(self, *replies: Reply) -> None:
        with self._lock:
            assert isinstance(self._script, list), "push() needs a list script"
            self._script.extend(replies)

    def _next(self, body: dict) -> Reply | None:
        if callable(self._script):
            return self._script(body)
        with self._lock:
            return self._script.pop(0) if self._script else None

    def _note(self, body: dict, headers: dict) -> None:
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self) -> FakeLLM:
        assert self._server is None, "already running"
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fakellm:{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go away: stop listening, cut open connections and stalled replies. start()
        brings the server back on the same port."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.drop_all()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
