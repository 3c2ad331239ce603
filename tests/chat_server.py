"""A real chat-completions server on loopback, for tests and benchmarks of agent tickets.

It speaks enough of the OpenAI protocol (`POST /v1/chat/completions`, JSON in, JSON out with
`choices[0].message.content` and `usage`) for the official SDK, over real HTTP/1.1 sockets,
from a stdlib `ThreadingHTTPServer` in a daemon thread. So it works the same from sync tests,
async tests on either backend, and while the runner is a subprocess (the test holds the
server; the pipeline file names `server.base_url`). Tests import it as `from chat_server
import ...` (like `procs`); benchmarks, run from the repository, as `tests.chat_server`.

    with ChatServer() as server:                 # or ChatServer(default=Reply(delay=0.05))
        server.base_url                          # "http://127.0.0.1:PORT/v1"
        server.queue(RateLimited(retry_after=2), Hang())
        ...                                      # run something against it
        server.wait_for_requests(2, timeout=5)   # -> the recorded requests, or TimeoutError

Behaviours (frozen values): each request consumes the next queued one, in order; once the
queue is empty, `default` answers (by default `Reply()`).

- `Reply(text=None, usage=None, delay=0.0, with_usage=True)`: a normal reply. `text` None:
  "reply to: <the last user message>". `usage` None: prompt_tokens = words of all the
  messages' contents, completion_tokens = words of the reply. `delay`: seconds before
  answering (waited on the socket, so a client that goes away meanwhile is seen).
- `RateLimited(retry_after=None, retry_after_ms=None, message=..., code=..., headers={})`:
  HTTP 429 in OpenAI's error shape; `retry_after` a number of seconds or a string sent as is (an HTTP
  date); `headers` extra ones such as `x-ratelimit-limit-requests`.
- `ServerError(status=503, message=...)`: any error status (4xx too) with an OpenAI error body.
- `Malformed(body=...)`: HTTP 200 with the given body (default: JSON without `choices`).
- `Hang(then=None)`: holds the request open until the client goes away (counted in
  `abandoned`) or `release()` is called; then answers with `then` (default: `default`).

Observations (thread-safe; every wait is on one condition variable, bounded by `timeout`,
raising `TimeoutError` when it expires; nothing sleeps):

- `requests`: the recorded requests (`Request`: body, headers, arrival `time.monotonic()`,
  the client's address), in arrival order; `wait_for_requests(n, timeout)`.
- `answers`: how each request ended (`Answer`: its index, the status written or None, and
  when), in the order they ended; `wait_for_answers(n, timeout)` (a client may read its
  answer before the server has recorded it); `replied` counts the written ones.
- `abandoned`: requests whose client disconnected before the answer was written (a cancelled
  ticket closes its request); `wait_for_abandoned(n, timeout)`.
- `in_flight`: requests arrived and not yet answered or abandoned; `wait_for_in_flight(n,
  timeout)` waits for exactly n.
- `wait_until(predicate, timeout)`: any other condition on the server, checked under its lock.
- `release()`: every request with a `Hang` that has arrived (see `requests`) answers; a
  later `Hang` still holds.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

# -- behaviours -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
 """A normal chat completion (see the module docstring)."""

 text: str | None = None
 usage: tuple[int, int] | None = None  # (prompt_tokens, completion_tokens)
 delay: float = 0.0
 with_usage: bool = True


@dataclass(frozen=True)
class RateLimited:
 """HTTP 429, with `Retry-After` / `retry-after-ms` when given, and any extra headers."""

 retry_after: float | str | None = None
 retry_after_ms: float | None = None
 message: str = "Rate limit reached for requests"
 code: str = "rate_limit_exceeded"  # OpenAI's; "insufficient_quota" for a spent quota
 headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerError:
 """An error status (5xx, or a 4xx) with an OpenAI-shaped error body."""

 status: int = 503
 message: str = "The server is overloaded"


@dataclass(frozen=True)
class Malformed:
 """HTTP 200 whose body is not a usable completion."""

 body: str = '{"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "m"}'


@dataclass(frozen=True)
class Hang:
 """Hold the request open until the client goes away or `ChatServer.release()`."""

 then: Reply | RateLimited | ServerError | Malformed | None = None


Behaviour = Reply | RateLimited | ServerError | Malformed | Hang


@dataclass(frozen=True)
class Request:
 """One request as it arrived."""

 body: Any  # the decoded JSON
 headers: Mapping[str, str]  # names in lower case
 arrived: float  # time.monotonic()
 peer: tuple[str, int] = ("", 0)  # the client's address: which connection it came on

 @property
 def last_user_message(self) -> str:
  for message in reversed(self.body.get("messages", [])):
   if message.get("role") == "user":
    return str(message.get("content", ""))
  return ""


@dataclass(frozen=True)
class Answer:
 """How a request ended: `status` written at `at` (time.monotonic()), or abandoned (None)."""

 request: int  # its index in `ChatServer.requests`
 status: int | None
 at: float


# -- the server -------------------------------------------------------------------------------


class ChatServer:
 """The loopback server; see the module docstring. A context manager (starts and stops)."""

 def __init__(self, default: Behaviour | None = None) -> None:
  self.default: Behaviour = default or Reply()
  # Guards everything below; `_changed` is notified on every change.
  self._lock = threading.Lock()
  self._changed = threading.Condition(self._lock)
  self._script: deque[Behaviour] = deque()
  self._requests: list[Request] = []
  self._answers: list[Answer] = []
  self._abandoned = 0
  self._replied = 0
  self._in_flight = 0
  self._release_pipes: set[int] = set()  # write ends, one per request held by Hang
  self._closing = False
  self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
  self._httpd.chat = self
  self._thread = threading.Thread(
   target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
  )

 # lifecycle

 def __enter__(self) -> ChatServer:
  self.start()
  return self

 def __exit__(
  self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
 ) -> None:
  self.close()

 def start(self) -> None:
  self._thread.start()

 def close(self) -> None:
  """Stop serving; held requests are let go (their clients see the connection close)."""
  with self._lock:
   self._closing = True
  self.release()
  self._httpd.shutdown()
  self._httpd.server_close()
  self._thread.join(5)

 @property
 def port(self) -> int:
  return int(self._httpd.server_address[1])

 @property
 def base_url(self) -> str:
  return f"http://127.0.0.1:{self.port}/v1"

 # scripting

 def queue(self, *behaviours: Behaviour) -> None:
  """Append behaviours: the next requests consume them in order."""
  with self._lock:
   self._script.extend(behaviours)

 def release(self) -> None:
  """Let every request with a `Hang` that has arrived answer (with its `then`, else
  `default`), held already or about to be."""
  # Written under the lock: a handler closes its pipe only after `_end` took it out of the
  # set (under the lock), so the descriptor cannot have been closed and reused meanwhile.
  with self._lock:
   for fd in self._release_pipes:
    os.write(fd, b"x")

 # observations

 @property
 def requests(self) -> list[Request]:
  with self._lock:
   return list(self._requests)

 @property
 def answers(self) -> list[Answer]:
  """How requests ended, in the order they did."""
  with self._lock:
   return list(self._answers)

 @property
 def abandoned(self) -> int:
  with self._lock:
   return self._abandoned

 @property
 def replied(self) -> int:
  with self._lock:
   return self._replied

 @property
 def in_flight(self) -> int:
  with self._lock:
   return self._in_flight

 def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
  """Wait until `predicate()` (called under the server's lock) is true; `TimeoutError` after
  `timeout` seconds."""
  with self._changed:
   if not self._changed.wait_for(predicate, timeout):
    raise TimeoutError(f"chat server: condition not met within {timeout} s")

 def wait_for_requests(self, n: int, timeout: float) -> list[Request]:
  """Wait until at least `n` requests arrived; return them all."""
  self.wait_until(lambda: len(self._requests) >= n, timeout)
  return self.requests

 def wait_for_answers(self, n: int, timeout: float) -> list[Answer]:
  """Wait until at least `n` requests ended (answered or abandoned); return the answers.
  A client may see its answer before the server has recorded it: wait for this first."""
  self.wait_until(lambda: len(self._answers) >= n, timeout)
  return self.answers

 def wait_for_abandoned(self, n: int, timeout: float) -> None:
  self.wait_until(lambda: self._abandoned >= n, timeout)

 def wait_for_in_flight(self, n: int, timeout: float) -> None:
  """Wait until exactly `n` requests are in flight."""
  self.wait_until(lambda: self._in_flight == n, timeout)

 # called by the handler threads

 def _arrive(self, request: Request, wake: int) -> tuple[int, Behaviour]:
  """Record `request`; its behaviour. `wake`: the write end of the pipe its handler holds
  on, registered for `release()` from now on if the behaviour is a `Hang` (so a release
  right after the arrival counts, before the handler got to hold)."""
  with self._changed:
   self._requests.append(request)
   self._in_flight += 1
   self._changed.notify_all()
   behaviour = self._script.popleft() if self._script else self.default
   if isinstance(behaviour, Hang):
    self._release_pipes.add(wake)
    if self._closing:
     os.write(wake, b"x")
   return len(self._requests) - 1, behaviour

 def _end(self, index: int, status: int | None, wake: int) -> None:
  at = time.monotonic()
  with self._changed:
   self._release_pipes.discard(wake)  # before its handler closes it (see `release`)
   self._answers.append(Answer(index, status, at))
   self._in_flight -= 1
   if status is None:
    self._abandoned += 1
   else:
    self._replied += 1
   self._changed.notify_all()

 def _hold(self, sock: socket.socket, seconds: float | None, wake: int) -> bool:
  """Wait `seconds` (None: until `wake`, the read end of the request's pipe, is written
  by `release()` or `close()`); False when the client went away, or the server closes."""
  deadline = None if seconds is None else time.monotonic() + seconds
  watch: list[Any] = [sock, wake]
  while True:
   left = None if deadline is None else max(0.0, deadline - time.monotonic())
   ready, _, _ = select.select(watch, [], [], left)
   if wake in ready:
    os.read(wake, 64)  # consumed: a delay after the release is waited in full
    return not self._closing
   if sock in ready:
    try:
     data = sock.recv(1, socket.MSG_PEEK)
    except OSError:
     return False
    if not data:
     return False  # EOF: the client closed its end
    watch = [wake]  # bytes of a next request: the client is still there
   if not ready:
    return True  # the delay is over


class _HTTPServer(ThreadingHTTPServer):
 daemon_threads = True
 request_queue_size = 256
 chat: ChatServer


class _Handler(BaseHTTPRequestHandler):
 protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
 server: _HTTPServer

 def setup(self) -> None:
  super().setup()
  # Headers and body go out in two writes: without this, Nagle's algorithm holds the body
  # until the client's delayed ACK of the headers (40 ms on Linux) on every reply.
  self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

 def log_message(self, format: str, *args: Any) -> None:  # quiet
  pass

 def do_POST(self) -> None:
  chat = self.server.chat
  length = int(self.headers.get("Content-Length", 0))
  raw = self.rfile.read(length)
  if not self.path.rstrip("/").endswith("/chat/completions"):
   self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request"}})
   return
  body = json.loads(raw or b"{}")
  request = Request(
   body=body,
   headers={k.lower(): v for k, v in self.headers.items()},
   arrived=time.monotonic(),
   peer=(str(self.client_address[0]), int(self.client_address[1])),
  )
  wake, wake_write = os.pipe()
  index, behaviour = chat._arrive(request, wake_write)
  sent: int | None = None
  try:
   if isinstance(behaviour, Hang):
    if not chat._hold(self.connection, None, wake):
     return
    behaviour = behaviour.then or chat.default
    if isinstance(behaviour, Hang):  # a Hang as default: answer normally once released
     behaviour = Reply()
   delay = behaviour.delay if isinstance(behaviour, Reply) else 0.0
   if delay > 0 and not chat._hold(self.connection, delay, wake):
    return
   sent = self._answer(behaviour, request)
  finally:
   chat._end(index, sent, wake_write)
   os.close(wake)
   os.close(wake_write)
   if sent is None:
    self.close_connection = True

 def _answer(self, behaviour: Behaviour, request: Request) -> int | None:
  """Write the answer; its status, or None when the client went away meanwhile."""
  if isinstance(behaviour, Reply):
   return self._send(200, _completion(behaviour, request))
  if isinstance(behaviour, RateLimited):
   headers = dict(behaviour.headers)
   if behaviour.retry_after is not None:
    value = behaviour.retry_after
    headers["Retry-After"] = value if isinstance(value, str) else f"{value:g}"
   if behaviour.retry_after_ms is not None:
    headers["retry-after-ms"] = f"{behaviour.retry_after_ms:g}"
   error = {"message": behaviour.message, "type": "requests", "code": behaviour.code}
   return self._send(429, {"error": error}, headers)
  if isinstance(behaviour, ServerError):
   failure = {"message": behaviour.message, "type": "server_error"}
   return self._send(behaviour.status, {"error": failure})
  if isinstance(behaviour, Malformed):
   return self._send(200, behaviour.body)
  raise AssertionError(behaviour)

 def _send(
  self, status: int, payload: object, headers: Mapping[str, str] | None = None
 ) -> int | None:
  data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
  try:
   self.send_response(status)
   self.send_header("Content-Type", "application/json")
   self.send_header("Content-Length", str(len(data)))
   for name, value in (headers or {}).items():
    self.send_header(name, value)
   self.end_headers()
   self.wfile.write(data)
   self.wfile.flush()
  except OSError:  # the client went away while we wrote
   return None
  return status


def _completion(reply: Reply, request: Request) -> dict[str, Any]:
 text = reply.text if reply.text is not None else "reply to: " + request.last_user_message
 result: dict[str, Any] = {
  "id": f"chatcmpl-{id(request):x}",
  "object": "chat.completion",
  "created": int(time.time()),
  "model": request.body.get("model", ""),
  "choices": [
   {
    "index": 0,
    "message": {"role": "assistant", "content": text},
    "finish_reason": "stop",
   }
  ],
 }
 if reply.with_usage:
  if reply.usage is not None:
   prompt, completion = reply.usage
  else:
   prompt = sum(len(str(m.get("content", "")).split()) for m in request.body.get("messages", []))
   completion = len(text.split())
  result["usage"] = {
   "prompt_tokens": prompt,
   "completion_tokens": completion,
   "total_tokens": prompt + completion,
  }
 return result


__all__ = [
 "Answer",
 "Behaviour",
 "ChatServer",
 "Hang",
 "Malformed",
 "RateLimited",
 "Reply",
 "Request",
 "ServerError",
]
