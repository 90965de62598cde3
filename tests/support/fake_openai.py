"""A real HTTP server that speaks the subset of the OpenAI API used by the LLM rephrasing stage.

Tests point the *real* ``openai`` client at it (``OpenAI(base_url=srv.base_url, api_key="sk-test")``)
instead of patching the client, and script what the "model" answers.

Standard library only: ``http.server.ThreadingHTTPServer`` in a background thread.

Endpoints (all under ``/v1``)::

    POST   /v1/chat/completions
    POST   /v1/files                  (multipart/form-data: file, purpose)
    GET    /v1/files                  (list; ?limit=&after=)
    GET    /v1/files/{id}
    GET    /v1/files/{id}/content     (raw bytes)
    DELETE /v1/files/{id}
    POST   /v1/batches
    GET    /v1/batches                (list; ?limit=&after=)
    GET    /v1/batches/{id}
    POST   /v1/batches/{id}/cancel

Scripting::

    with running() as srv:
        srv.enqueue(Reply(status=500), Reply(content='{"x": 1}'))   # one-shot, FIFO
        srv.script(lambda body: Reply(content="..."))              # default handler afterwards
        client = OpenAI(base_url=srv.base_url, api_key="sk-test")
        ...
        assert srv.count("/chat/completions") == 2

Batches: a batch is ``validating`` when created, reports ``in_progress`` for ``batch_polls_until_done``
retrieves (GET /v1/batches/{id}), and on the next retrieve every JSONL line of its input file goes through
the same queue/handler as live chat completions (counted in ``batch_lines_processed``, not in
``count()``), the output/error files are written and the batch is ``completed``.

With ``state_dir`` set, files and batches (and the id counters) live on disk, so a new server started on
the same directory continues where a stopped one left off.

Everything is deterministic: ids come from counters (``file-000001``, ``batch_000001``,
``chatcmpl-000001``) and all timestamps derive from ``CREATED`` (1700000000).
"""
from __future__ import annotations

import contextlib
import copy
import email.parser
import email.policy
import json
import os
import socket
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

CREATED = 1700000000  # every "created"/"created_at" timestamp is derived from this fixed value

__all__ = ["FakeOpenAI", "Reply", "running", "fake_openai_server", "CREATED", "default_error_body"]


@dataclass
class Reply:
    """A scripted answer to one chat completion request (live or batch line)."""

    status: int = 200
    content: str | None = None        # assistant message content, wrapped into a ChatCompletion (200 only)
    json_body: dict | None = None     # raw JSON body sent as-is instead (errors, or a hand-made completion)
    headers: dict = field(default_factory=dict)  # extra response headers, e.g. {"Retry-After": "1"}
    delay: float = 0.0                # seconds to sleep before answering (live requests only)
    refusal: str | None = None        # message.refusal (structured-output refusal)
    close_connection: bool = False    # drop the socket without answering (live); a 500 error line (batch)
    finish_reason: str = "stop"       # choices[0].finish_reason, e.g. "length" to simulate truncation


_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request", "invalid_request_error", None),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model", "invalid_request_error", None),
    404: ("The model does not exist", "invalid_request_error", "model_not_found"),
    408: ("Request timed out", "timeout", None),
    409: ("Conflict", "invalid_request_error", None),
    422: ("Unprocessable entity", "invalid_request_error", None),
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request", "server_error", None),
    502: ("Bad gateway", "server_error", None),
    503: ("The engine is currently overloaded, please try again later", "server_error", None),
}


def default_error_body(status: int, message: str | None = None) -> dict:
    """The OpenAI-style error body the server sends for ``status`` when a Reply has no json_body."""
    fallback = (f"HTTP {status}", "server_error" if status >= 500 else "invalid_request_error", None)
    msg, typ, code = _ERRORS.get(status, fallback)
    return {"error": {"message": message or msg, "type": typ, "param": None, "code": code}}


def _last_user_content(body: dict) -> Any:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return m.get("content")
    return None


def echo_handler(body: dict) -> Reply:
    """Default handler: content is the JSON string ``{"echo": <last user message content>}``."""
    return Reply(content=json.dumps({"echo": _last_user_content(body)}))


def _words(x: Any) -> int:
    if x is None:
        return 0
    if isinstance(x, str):
        return len(x.split())
    if isinstance(x, list):
        return sum(_words(p.get("text") if isinstance(p, dict) else p) for p in x)
    return len(str(x).split())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 drops SYNs of concurrent clients (1 s retransmit stalls)
    fake: "FakeOpenAI"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body in one segment: no 40 ms delayed-ACK stalls
    wbufsize = 1 << 16              # buffered writes, flushed once per response
    server: _Server
    server_version = "FakeOpenAI/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._track(self.connection, False)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b";")[0] or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _dispatch(self) -> None:
        fake = self.server.fake
        if fake._stopping.is_set():
            self.close_connection = True
            return
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        try:
            fake._handle(self, raw)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as e:  # a bug in the fake or in a scripted handler: answer 500, remember it
            fake.handler_errors.append(traceback.format_exc())
            try:
                self._send_json(500, default_error_body(500, f"FakeOpenAI internal error: {e!r}"))
            except OSError:
                self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict | None = None) -> None:
        fake = self.server.fake
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-request-id", fake._next_id("req", "req_{:06d}"))
        self.send_header("openai-processing-ms", "1")
        for k, v in (headers or {}).items():
            self.send_header(str(k), str(v))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _send_json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)


class FakeOpenAI:
    """Scriptable fake OpenAI HTTP server; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, state_dir: str | os.PathLike | None = None,
                 batch_polls_until_done: int = 2) -> None:
        self.host = host
        self.port = port
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.batch_polls_until_done = batch_polls_until_done
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._handler: Callable[[dict], Reply] = echo_handler
        self._queue: list[Reply] = []
        self.requests: list[dict] = []
        self.batch_requests: list[dict] = []   # bodies of batch lines that went through the handler
        self.batch_lines_processed = 0
        self.handler_errors: list[str] = []     # tracebacks of exceptions raised while answering
        self._counters: dict[str, int] = {}
        self._files: dict[str, dict] = {}       # id -> FileObject dict
        self._file_bytes: dict[str, bytes] = {}
        self._batches: dict[str, dict] = {}     # id -> {"obj": Batch dict, "polls": int}
        if self.state_dir is not None:
            self._load_state()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeOpenAI":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _Server((self.host, self.port), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"FakeOpenAI:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open (keep-alive or in-flight) connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ------------------------------------------------------------------ scripting
    def script(self, handler: Callable[[dict], Reply]) -> None:
        """Default handler for chat completions (live and batch lines): parsed request body -> Reply."""
        with self._lock:
            self._handler = handler

    def enqueue(self, *replies: Reply) -> None:
        """One-shot replies, consumed FIFO before the handler is used."""
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        """Clear the queue, the request log and counters; the handler goes back to the echo handler."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.batch_requests.clear()
            self.batch_lines_processed = 0
            self.handler_errors.clear()
            self._handler = echo_handler

    # ------------------------------------------------------------------ observation
    def count(self, path_suffix: str = "/chat/completions") -> int:
        """HTTP requests whose path ends with ``path_suffix`` (batch lines are not counted here)."""
        with self._lock:
            return sum(1 for r in self.requests if r["path"].endswith(path_suffix))

    @property
    def pending(self) -> int:
        """Enqueued replies not consumed yet."""
        with self._lock:
            return len(self._queue)

    # ------------------------------------------------------------------ internals
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _next_id(self, kind: str, fmt: str) -> str:
        with self._lock:
            n = self._counters.get(kind, 0) + 1
            self._counters[kind] = n
            if kind in ("file", "batch"):
                self._save_counters()
            return fmt.format(n)

    def _next_reply(self, body: dict) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
            handler = self._handler
        reply = handler(body)
        if not isinstance(reply, Reply):
            raise TypeError(f"scripted handler returned {type(reply).__name__}, expected Reply")
        return reply

    def _completion(self, body: dict, reply: Reply) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": reply.refusal,
                                   "annotations": []}
        prompt_tokens = sum(_words(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))
        completion_tokens = _words(reply.content) + _words(reply.refusal)
        return {
            "id": self._next_id("chatcmpl", "chatcmpl-{:06d}"),
            "object": "chat.completion",
            "created": CREATED,
            "model": body.get("model") or "gpt-fake",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "system_fingerprint": "fp_fake",
        }

    def _reply_body(self, body: dict, reply: Reply) -> dict:
        if reply.json_body is not None:
            return reply.json_body
        if reply.status == 200:
            return self._completion(body, reply)
        return default_error_body(reply.status)

    def _handle(self, h: _Handler, raw: bytes) -> None:
        url = urlsplit(h.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        headers = {k.lower(): v for k, v in h.headers.items()}
        ctype = headers.get("content-type", "")
        body: Any
        if ctype.startswith("multipart/form-data"):
            body = raw
        elif raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        else:
            body = None
        with self._lock:
            self.requests.append({"method": h.command, "path": path, "headers": headers, "body": body,
                                  "query": query})
        method = h.command
        parts = path.split("/")[1:]  # "/v1/files/x/content" -> ["v1", "files", "x", "content"]
        if not parts or parts[0] != "v1":
            return h._send_json(404, default_error_body(404, f"Unknown path {path}"))
        parts = parts[1:]

        if parts == ["chat", "completions"] and method == "POST":
            return self._chat(h, body)
        if parts[:1] == ["files"]:
            return self._files_route(h, method, parts[1:], raw, ctype, query)
        if parts[:1] == ["batches"]:
            return self._batches_route(h, method, parts[1:], body, query)
        return h._send_json(404, default_error_body(404, f"Invalid URL ({method} {path})"))

    # ---- chat
    def _chat(self, h: _Handler, body: Any) -> None:
        if not isinstance(body, dict):
            return h._send_json(400, default_error_body(400, "We could not parse the JSON body of your request."))
        reply = self._next_reply(body)
        if reply.delay > 0:
            self._stopping.wait(reply.delay)
        if reply.close_connection or self._stopping.is_set():
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h._send_json(reply.status, self._reply_body(body, reply), reply.headers)

    # ---- files
    def _files_route(self, h: _Handler, method: str, rest: list[str], raw: bytes, ctype: str,
                     query: dict) -> None:
        if not rest and method == "POST":
            try:
                fields = _parse_multipart(raw, ctype)
            except ValueError as e:
                return h._send_json(400, default_error_body(400, f"Invalid multipart body: {e}"))
            f = fields.get("file")
            if f is None or f[0] is None:
                return h._send_json(400, default_error_body(400, "Missing file"))
            purpose = (fields.get("purpose") or (None, b""))[1].decode()
            if not purpose:
                return h._send_json(400, default_error_body(400, "Missing purpose"))
            obj = self._add_file(f[1], f[0], purpose)
            return h._send_json(200, obj)
        if not rest and method == "GET":
            with self._lock:
                items = sorted(self._files.values(), key=lambda o: o["id"], reverse=True)
                if query.get("purpose"):
                    items = [o for o in items if o["purpose"] == query["purpose"]]
            return h._send_json(200, _page(items, query))
        fid = rest[0]
        with self._lock:
            obj = self._files.get(fid)
            data = self._file_bytes.get(fid)
        if obj is None:
            return h._send_json(404, {"error": {"message": f"No such File object: {fid}",
                                                "type": "invalid_request_error", "param": "id", "code": None}})
        if rest[1:] == [] and method == "GET":
            return h._send_json(200, obj)
        if rest[1:] == [] and method == "DELETE":
            with self._lock:
                self._files.pop(fid, None)
                self._file_bytes.pop(fid, None)
                if self.state_dir is not None:
                    for suffix in (".json", ".bin"):
                        with contextlib.suppress(FileNotFoundError):
                            (self.state_dir / "files" / f"{fid}{suffix}").unlink()
            return h._send_json(200, {"id": fid, "object": "file", "deleted": True})
        if rest[1:] == ["content"] and method == "GET":
            return h._send(200, data or b"", "application/octet-stream")
        return h._send_json(404, default_error_body(404, f"Invalid URL ({method} {h.path})"))

    def _add_file(self, data: bytes, filename: str, purpose: str) -> dict:
        with self._lock:
            fid = self._next_id("file", "file-{:06d}")
            obj = {"id": fid, "object": "file", "bytes": len(data), "created_at": CREATED, "filename": filename,
                   "purpose": purpose, "status": "processed", "status_details": None, "expires_at": None}
            self._files[fid] = obj
            self._file_bytes[fid] = data
            if self.state_dir is not None:
                d = self.state_dir / "files"
                _atomic_write(d / f"{fid}.bin", data)
                _atomic_write(d / f"{fid}.json", json.dumps(obj).encode())
            return obj

    # ---- batches
    def _batches_route(self, h: _Handler, method: str, rest: list[str], body: Any, query: dict) -> None:
        if not rest and method == "POST":
            if not isinstance(body, dict):
                return h._send_json(400, default_error_body(400, "We could not parse the JSON body of your request."))
            with self._lock:
                fid = body.get("input_file_id")
                if fid not in self._files:
                    return h._send_json(400, {"error": {"message": f"No such File object: {fid}",
                                                        "type": "invalid_request_error", "param": "input_file_id",
                                                        "code": None}})
                if body.get("endpoint") not in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings",
                                                "/v1/completions"):
                    return h._send_json(400, default_error_body(400, f"Invalid endpoint {body.get('endpoint')!r}"))
                bid = self._next_id("batch", "batch_{:06d}")
                obj = {
                    "id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                    "input_file_id": fid, "completion_window": body.get("completion_window", "24h"),
                    "status": "validating", "output_file_id": None, "error_file_id": None,
                    "created_at": CREATED, "in_progress_at": None, "expires_at": CREATED + 86400,
                    "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
                    "cancelling_at": None, "cancelled_at": None,
                    "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "metadata": body.get("metadata"),
                }
                self._batches[bid] = {"obj": obj, "polls": 0}
                self._save_batch(bid)
                return h._send_json(200, obj)
        if not rest and method == "GET":
            with self._lock:
                items = [copy.deepcopy(b["obj"]) for b in sorted(self._batches.values(), key=lambda b: b["obj"]["id"],
                                                                 reverse=True)]
            return h._send_json(200, _page(items, query))
        bid = rest[0]
        with self._lock:
            rec = self._batches.get(bid)
            if rec is None:
                return h._send_json(404, {"error": {"message": f"No such Batch object: {bid}",
                                                    "type": "invalid_request_error", "param": "id", "code": None}})
            if rest[1:] == [] and method == "GET":
                self._poll_batch(bid)
                return h._send_json(200, rec["obj"])
            if rest[1:] == ["cancel"] and method == "POST":
                obj = rec["obj"]
                if obj["status"] in ("validating", "in_progress"):
                    obj["status"] = "cancelling"
                    obj["cancelling_at"] = CREATED + 1
                    self._save_batch(bid)
                elif obj["status"] not in ("cancelling", "cancelled"):
                    return h._send_json(400, default_error_body(
                        400, f"Cannot cancel a batch with status '{obj['status']}'."))
                return h._send_json(200, obj)
        return h._send_json(404, default_error_body(404, f"Invalid URL ({method} {h.path})"))

    def _poll_batch(self, bid: str) -> None:
        """One retrieve: advance the batch's state machine."""
        rec = self._batches[bid]
        obj = rec["obj"]
        if obj["status"] == "cancelling":
            obj["status"] = "cancelled"
            obj["cancelled_at"] = CREATED + 2
        elif obj["status"] in ("validating", "in_progress"):
            rec["polls"] += 1
            if rec["polls"] <= self.batch_polls_until_done:
                if obj["status"] == "validating":
                    obj["status"] = "in_progress"
                    obj["in_progress_at"] = CREATED + 1
                    obj["request_counts"]["total"] = len(_jsonl_lines(self._file_bytes[obj["input_file_id"]]))
            else:
                self._process_batch(bid)
        else:
            return
        self._save_batch(bid)

    def _process_batch(self, bid: str) -> None:
        obj = self._batches[bid]["obj"]
        lines = _jsonl_lines(self._file_bytes.get(obj["input_file_id"], b""))
        out: list[str] = []
        err: list[str] = []
        for raw in lines:
            line_id = self._next_id("batch_req", "batch_req_{:06d}")
            custom_id = None
            try:
                item = json.loads(raw)
                custom_id = item.get("custom_id")
                if item.get("url") != obj["endpoint"] or item.get("method", "POST") != "POST":
                    raise ValueError(f"url {item.get('url')!r} does not match the batch endpoint {obj['endpoint']!r}")
                if not isinstance(item.get("body"), dict):
                    raise ValueError("line has no JSON object body")
            except (ValueError, AttributeError) as e:
                err.append(json.dumps({"id": line_id, "custom_id": custom_id, "response": None,
                                       "error": {"code": "invalid_request", "message": str(e)}}))
                continue
            body = item["body"]
            self.batch_requests.append(body)
            self.batch_lines_processed += 1
            try:
                reply = self._next_reply(body)
                if reply.close_connection:
                    reply = Reply(status=500)
                status, rbody = reply.status, self._reply_body(body, reply)
            except Exception as e:  # a failing handler is a failed line, not a dead server
                self.handler_errors.append(traceback.format_exc())
                status, rbody = 500, default_error_body(500, f"FakeOpenAI handler raised: {e!r}")
            line = {"id": line_id, "custom_id": custom_id,
                    "response": {"status_code": status, "request_id": self._next_id("req", "req_{:06d}"),
                                 "body": rbody},
                    "error": None}
            (out if status == 200 else err).append(json.dumps(line))
        obj["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        if out:
            obj["output_file_id"] = self._add_file(("\n".join(out) + "\n").encode(), f"{bid}_output.jsonl",
                                                   "batch_output")["id"]
        if err:
            obj["error_file_id"] = self._add_file(("\n".join(err) + "\n").encode(), f"{bid}_error.jsonl",
                                                  "batch_output")["id"]
        obj["in_progress_at"] = obj["in_progress_at"] or CREATED + 1
        obj["finalizing_at"] = CREATED + 2
        obj["completed_at"] = CREATED + 3
        obj["status"] = "completed"

    # ---- persistence
    def _save_counters(self) -> None:
        if self.state_dir is not None:
            _atomic_write(self.state_dir / "counters.json", json.dumps(self._counters).encode())

    def _save_batch(self, bid: str) -> None:
        if self.state_dir is not None:
            _atomic_write(self.state_dir / "batches" / f"{bid}.json", json.dumps(self._batches[bid]).encode())

    def _load_state(self) -> None:
        d = self.state_dir
        assert d is not None
        d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._counters = json.loads((d / "counters.json").read_bytes())
        for p in sorted((d / "files").glob("*.json")) if (d / "files").is_dir() else []:
            obj = json.loads(p.read_bytes())
            self._files[obj["id"]] = obj
            self._file_bytes[obj["id"]] = (d / "files" / f"{obj['id']}.bin").read_bytes()
        for p in sorted((d / "batches").glob("*.json")) if (d / "batches").is_dir() else []:
            rec = json.loads(p.read_bytes())
            self._batches[rec["obj"]["id"]] = rec


# ---------------------------------------------------------------------- helpers
def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{threading.get_ident()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jsonl_lines(data: bytes) -> list[str]:
    return [ln for ln in data.decode("utf-8").splitlines() if ln.strip()]


def _page(items: list[dict], query: dict) -> dict:
    """A cursor page (newest first) honouring ?after= and ?limit= like the real list endpoints."""
    if query.get("after"):
        ids = [o["id"] for o in items]
        items = items[ids.index(query["after"]) + 1:] if query["after"] in ids else []
    limit = int(query.get("limit") or 20)
    page, more = items[:limit], len(items) > limit
    return {"object": "list", "data": page, "has_more": more,
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}


def _parse_multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data -> {name: (filename or None, bytes)}; exact bytes, no cgi module."""
    hdr = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = hdr.get_param("boundary")
    if not boundary:
        raise ValueError("no boundary in Content-Type")
    delim = b"\r\n--" + str(boundary).encode("latin-1")
    chunks = (b"\r\n" + raw).split(delim)
    out: dict[str, tuple[str | None, bytes]] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("part without header/body separator")
        ph = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(head.lstrip(b" \t\r\n") + b"\r\n\r\n")
        name = ph.get_param("name", header="content-disposition")
        filename = ph.get_filename()
        if name is None:
            continue
        out[str(name)] = (filename, data)
    return out


@contextlib.contextmanager
def running(**kw: Any) -> Iterator[FakeOpenAI]:
    """``with running(batch_polls_until_done=0) as srv: ...`` — a started server, stopped on exit."""
    srv = FakeOpenAI(**kw)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def fake_openai_server(**kw: Any) -> Iterator[FakeOpenAI]:
    """Generator usable directly as a pytest fixture body::

        from support.fake_openai import fake_openai_server
        fake_openai = pytest.fixture(fake_openai_server)

    or wrapped: ``@pytest.fixture\ndef srv(tmp_path): yield from fake_openai_server(state_dir=tmp_path)``.
    """
    with running(**kw) as srv:
        yield srv
