"""The test hook: a small JSON API on 127.0.0.1 that drives the dashboard as a user would.

Off unless `--test-hook PORT_FILE` is given; it never listens on anything but loopback, on
a port the OS picks. Once the window has drawn its first frame, PORT_FILE is written as
`{"port": N, "token": "..."}`: owner-only (0600), through a new temporary file beside it
(never through a symlink), renamed into place, so a reader never sees half of it.

Every request carries `Authorization: Bearer TOKEN`. The token is random
(`secrets.token_urlsafe(32)`), made at start, and written nowhere but PORT_FILE: another
local user can reach a loopback port, but not read the file. A request without it, or with
another one, is answered 401 and does nothing.

 GET  /state          live mma_status and spawned; what the last frame showed: the snapshot
                      it drew, its badge, banner lines, buttons (as drawn: enabled or not),
                      workers, clock, tooltip, and where things are ("layout": the banner
                      strip, the ticket table and its row metrics, the pending list; "cells":
                      the visible description cells, their text and rectangle)
 GET  /state?rows=1   the same with every ticket row and the pending list
 GET  /frames?since=N recent frame timings: frame number, start, work, the GUI thread's CPU
                      time in it and the dashboard's draw (Python) CPU time (ms)
 POST /frames/reset
 POST /click          {"label": "Pause"} or {"ref": "//Dashboard/**/Pause"}
 POST /key            {"key": "Space"}
 POST /type           {"label": "##budget", "text": "300000"} (or "ref"): types the text into
                      that input field (what it held is replaced), as a person would
 POST /mouse          {"pos": [x, y]} (screen pixels) or {"label": "Start"} / {"ref": ...}:
                      move the mouse there; with "wheel": -1 also turn the wheel (+1 up,
                      -1 down); answers the tooltip the frame after shows
 POST /screenshot     {"name": "paused.png"}: a PNG written into the screenshot folder
                      (`--test-hook-shots DIR`, default PORT_FILE's folder) and nowhere else
 POST /quit

A screenshot's name is a plain file name ending in `.png`: no folder, no `..`, not hidden,
not an existing symlink (400 otherwise). The test engine captures into a private folder
(0700) and the file is then renamed into place from a new file beside it, so a symlink
planted after the check is replaced, never written through.

Anything malformed (a bad Content-Length, a body over MAX_BODY, bad JSON, a bad query
value, an unknown endpoint or method) is answered 4xx. A client that stalls is dropped
after SOCKET_TIMEOUT. Neither reaches the GUI or prints a traceback.

Clicks, keys and screenshots go through Dear ImGui's own input path: the ImGui Test Engine
that ships in imgui-bundle moves the mouse and presses the button, as a person would. The
HTTP thread never touches Dear ImGui: it queues a request, wakes the GUI and waits on the
request's `threading.Event`; the GUI thread runs one request at a time (`pre_new_frame`).
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import math
import os
import queue
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from imgui_bundle import hello_imgui, imgui

from .. import Snapshot
from ._dashboard import WINDOW, Dashboard

te = imgui.test_engine

LOOPBACK = "127.0.0.1"  # the hook is for tests on this machine only, never a network API
REQUEST_TIMEOUT = 30.0  # seconds an HTTP request waits for the GUI thread
SOCKET_TIMEOUT = 10.0  # seconds a client may take to send its request
MAX_BODY = 64 * 1024  # bytes; every valid body is a few dozen
MAX_CLIENTS = 32  # connections served at once (a test uses one or two)
BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
LIST_LIMIT = 50  # ids listed in /state without ?rows=1 (a 10,000-ticket list is heavy)
# A screenshot's name: one plain file name, nothing that a path could be made of.
SHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.png")


class HookError(Exception):
 """The hook cannot start or publish itself (its files); `str()` is one line."""


class BadRequest(Exception):
 """A request the hook refuses: `status` (4xx) and a one-line reason."""

 def __init__(self, status: int, reason: str) -> None:
  super().__init__(reason)
  self.status = status


@dataclass(slots=True)
class _Request:
 kind: str  # "click" | "key" | "type" | "mouse" | "screenshot" | "quit"
 arg: str
 done: threading.Event = field(default_factory=threading.Event)
 result: dict[str, Any] = field(default_factory=dict)
 frame0: int = 0  # the frame it was picked up in


Sample = tuple[int, float, float, float, float]  # frame, start, work, cpu, draw (seconds)


class FrameClock:
 """How long each frame took, from `pre_new_frame` to `after_swap` (GUI thread).

 Work time excludes the idle wait between frames, so it is the frame's real cost: our
 Python, Dear ImGui, and the renderer (with software OpenGL, rasterising happens at swap).
 Beside it, CPU times, which another busy process does not inflate as it does the wall
 clock: the GUI thread's in the frame (not the renderer's own threads), and the dashboard's
 `draw` alone (our Python and the Dear ImGui calls it makes).
 """

 def __init__(self, keep: int = 20_000) -> None:
  self._frame = 0
  self._start = 0.0
  self._cpu = 0.0
  self._draw = 0.0  # CPU seconds of this frame's draw
  self._lock = threading.Lock()  # guards `_samples`: the GUI appends, the HTTP thread copies
  self._samples: deque[Sample] = deque(maxlen=keep)

 def begin(self, frame: int) -> None:
  """Frame number `frame` starts (the dashboard's own count)."""
  self._frame = frame
  self._start = time.perf_counter()
  self._cpu = time.thread_time()
  self._draw = 0.0

 def timed(self, draw: Callable[[], None]) -> Callable[[], None]:
  """`draw`, its CPU time counted into the frame's sample."""

  def timed_draw() -> None:
   cpu = time.thread_time()
   draw()
   self._draw += time.thread_time() - cpu

  return timed_draw

 def end(self) -> None:
  start = self._start
  cpu = time.thread_time() - self._cpu
  sample = (self._frame, start, time.perf_counter() - start, cpu, self._draw)
  with self._lock:
   self._samples.append(sample)

 def samples(self, since_frame: int = 0) -> list[Sample]:
  with self._lock:
   copy = list(self._samples)
  return [s for s in copy if s[0] >= since_frame]

 def reset(self) -> None:
  with self._lock:
   self._samples.clear()


def snapshot_json(snap: Snapshot, *, rows: bool) -> dict[str, Any]:
 """A snapshot as JSON-ready data. Long id lists are cut to LIST_LIMIT unless `rows`."""
 now = time.monotonic()
 limit = None if rows else LIST_LIMIT
 out: dict[str, Any] = {
  "version": snap.version,
  "name": snap.name,
  "status": str(snap.status),
  "counts": {
   "todo": snap.counts.todo,
   "in_progress": snap.counts.in_progress,
   "completed": snap.counts.completed,
   "failed": snap.counts.failed,
   "blocked": snap.counts.blocked,
   "total": snap.counts.total,
  },
  "running": [
   {"ticket": w.ticket, "attempt": w.attempt, "elapsed": round(now - w.started_at, 3)}
   for w in snap.running
  ],
  "paused": snap.paused,
  "pause_reason": snap.pause_reason,
  "paused_at": snap.paused_at,
  "paused_by_person": snap.paused_by_person,
  "auto_resume_at": snap.auto_resume_at,
  "tokens_used": snap.tokens_used,
  "token_budget": snap.token_budget,
  "running_at_pause": list(snap.running_at_pause),
  "finishing": list(snap.finishing),
  "ready": list(snap.ready[:limit]),
  "ready_count": len(snap.ready),
  "pending_count": len(snap.pending),
  "awaiting_approval": list(snap.awaiting_approval[:limit]),
  "elapsed": round(snap.elapsed, 3),
  "spawned": snap.spawned,
  "max_workers": snap.max_workers,
  "error": snap.error,
 }
 if rows:
  out["pending"] = list(snap.pending)
  out["rows"] = [
   {
    "id": r.id,
    "status": str(r.status),
    "attempts": r.attempts,
    "error": r.error,
    "exit_code": r.exit_code,
    "output": r.output,
    "tokens": r.tokens,
   }
   for r in snap.rows
  ]
 return out


class TestHook:
 """Serves the API above for one dashboard; see the module docstring.

 Threads: `pre_new_frame`, `after_swap` and `register_tests` are hello_imgui callbacks on
 the GUI thread; the HTTP server runs on its own daemon thread (one more per connection)
 and reads only objects that are replaced whole (the runner's conductor, the dashboard's
 `drawn` frame). The token and the folders are fixed at construction.
 """

 __test__ = False  # not a pytest test class, despite its name

 def __init__(self, port_file: Path, dashboard: Dashboard, shots: Path | None = None) -> None:
  """Raises HookError (one line) when the screenshot folder is unusable."""
  self.port_file = port_file
  self.dashboard = dashboard
  self.clock = FrameClock()
  self.token = secrets.token_urlsafe(32)
  self._authorization = f"Bearer {self.token}".encode("ascii")
  self.failure: str | None = None  # why the port file could not be written (GUI thread)
  folder = port_file.parent if shots is None else shots
  try:
   self.shots = Path(os.path.realpath(folder))
   # Held open: names are resolved in this folder, whatever its path comes to point at.
   self._shots_fd = os.open(self.shots, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
  except OSError as exc:
   raise HookError(f"--test-hook-shots {folder}: {exc.strerror or exc}") from None
  self._capture = Path(tempfile.mkdtemp(prefix="conductor-hook-"))  # 0700, ours alone
  self._captures = itertools.count(1)
  self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
  self._current: _Request | None = None
  self._tests: dict[str, Any] = {}  # request kind -> registered test engine Test
  self._published: tuple[int, int] | None = None  # the port file's (st_dev, st_ino)
  self._closed = False
  self._server = _Server((LOOPBACK, 0), _Handler)
  self._server.hook = self
  self._thread = threading.Thread(
   target=self._server.serve_forever, name="conductor-test-hook", daemon=True
  )

 @property
 def port(self) -> int:
  return int(self._server.server_address[1])

 def close(self) -> None:
  """Stop serving, answer every waiting request, remove the port file (if it is still the
  one this hook wrote) and the private capture folder. Idempotent."""
  if self._closed:
   return
  self._closed = True
  if self._thread.is_alive():  # else shutdown() would wait for a loop that never ran
   self._server.shutdown()
  self._server.server_close()
  pending = [self._current] if self._current is not None else []
  while True:
   try:
    pending.append(self._requests.get_nowait())
   except queue.Empty:
    break
  for request in pending:
   request.result.update(ok=False, status="error", error="the dashboard closed")
   request.done.set()
  if self._published is not None:
   try:
    st = os.lstat(self.port_file)
    if (st.st_dev, st.st_ino) == self._published:
     self.port_file.unlink()
   except OSError:
    pass  # gone already, or replaced by someone else: theirs now
  shutil.rmtree(self._capture, ignore_errors=True)
  # `_shots_fd` stays open until the process ends: a handler thread may still be placing a
  # file, and a closed descriptor's number could by then name another folder.

 # -- HTTP thread ----------------------------------------------------------------------

 def authorized(self, header: str | None) -> bool:
  """The request's Authorization header carries this hook's token. Constant time."""
  # http.server decodes header bytes as latin-1: encoding back gives the bytes sent.
  given = (header or "").encode("latin-1", "replace")
  return hmac.compare_digest(given, self._authorization)

 def submit(self, kind: str, arg: str = "") -> tuple[int, dict[str, Any]]:
  """Queue a request for the GUI thread and wait (bounded) for its answer."""
  if self._closed:
   return 503, {"ok": False, "error": "the dashboard closed"}
  request = _Request(kind, arg)
  self._requests.put(request)
  hello_imgui.request_refresh()  # wake an idling GUI now; thread-safe
  if not request.done.wait(REQUEST_TIMEOUT):
   return 504, {"ok": False, "error": f"the GUI did not answer within {REQUEST_TIMEOUT:g} s"}
  return 200, request.result

 def screenshot(self, name: object) -> tuple[int, dict[str, Any]]:
  """Capture the window into `name` inside the screenshot folder. Raises BadRequest."""
  self._check_shot_name(name)
  assert isinstance(name, str)
  capture = self._capture / f"{next(self._captures)}.png"
  code, result = self.submit("screenshot", str(capture))
  if code != 200 or not result.get("ok"):
   capture.unlink(missing_ok=True)
   return code, result
  try:
   self._place_shot(capture, name)
  except OSError as exc:
   return 500, {"ok": False, "error": f"cannot write {name}: {exc.strerror or exc}"}
  finally:
   capture.unlink(missing_ok=True)
  result = {**result, "path": str(self.shots / name), "name": name}
  return 200, result

 def _check_shot_name(self, name: object) -> None:
  if not isinstance(name, str) or not SHOT_NAME.fullmatch(name) or ".." in name:
   raise BadRequest(
    400,
    'give {"name": "NAME.png"}: a plain file name (letters, digits, "._-"; no folder, '
    'no "..") written into the screenshot folder',
   )
  try:
   st = os.lstat(name, dir_fd=self._shots_fd)
  except FileNotFoundError:
   return
  if stat.S_ISLNK(st.st_mode):
   raise BadRequest(400, f"{name} is a symlink in the screenshot folder: refused")
  if not stat.S_ISREG(st.st_mode):
   raise BadRequest(400, f"{name} exists in the screenshot folder and is not a file")

 def _place_shot(self, capture: Path, name: str) -> None:
  # A new file (O_EXCL, never through a symlink) renamed over the name: whatever is at the
  # name by then (a symlink planted after the check included) is replaced, not written to.
  data = capture.read_bytes()
  fd = self._shots_fd
  tmp = f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
  out = os.open(tmp, flags, 0o644, dir_fd=fd)
  try:
   with os.fdopen(out, "wb") as file:
    file.write(data)
   os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
  except BaseException:
   with contextlib.suppress(OSError):
    os.unlink(tmp, dir_fd=fd)
   raise

 def state(self, *, rows: bool) -> dict[str, Any]:
  conductor = self.dashboard.runner.conductor
  snap, report = self.dashboard.drawn  # one frame's view, read in one attribute read
  return {
   "mma_status": str(conductor.mma_status),  # live, not from a snapshot
   "paused": conductor.paused,
   "spawned": conductor.spawned,  # live too
   "gui": report,
   "snapshot": snapshot_json(snap, rows=rows),  # what that frame drew
  }

 def frames(self, since_frame: int) -> dict[str, Any]:
  samples = self.clock.samples(since_frame)
  return {
   "frame": self.dashboard.frame,
   "samples": [
    [n, round(start, 6), *(round(seconds * 1000, 3) for seconds in times)]
    for n, start, *times in samples
   ],
  }

 # -- GUI thread -----------------------------------------------------------------------

 def register_tests(self) -> None:
  engine = hello_imgui.get_imgui_test_engine()
  io = te.get_io(engine)
  io.config_run_speed = te.TestRunSpeed.fast
  io.config_watchdog_kill_test = REQUEST_TIMEOUT - 5
  tests = (
   ("click", self._click),
   ("key", self._key),
   ("type", self._type),
   ("mouse", self._mouse),
   ("screenshot", self._shot),
  )
  for kind, func in tests:
   test = te.register_test(engine, "hook", kind)
   test.test_func = func
   self._tests[kind] = test

 def pre_new_frame(self) -> None:
  self.clock.begin(self.dashboard.frame + 1)  # draw() counts it
  if self._published is None and self.failure is None and self._tests:
   self._publish_port()
  self._pump()

 def after_swap(self) -> None:
  self.clock.end()

 def _publish_port(self) -> None:
  # After the first frame: a test that found the file talks to a window that is up.
  # The test engine's crash handler, installed as the window opened, takes SIGPIPE too: a
  # client that hangs up before its answer would abort the whole process. Python's own
  # choice (ignore it, get EPIPE) comes back before the server answers anyone.
  if hasattr(signal, "SIGPIPE"):  # POSIX
   signal.signal(signal.SIGPIPE, signal.SIG_IGN)
  self._thread.start()
  payload = json.dumps({"port": self.port, "token": self.token}).encode()
  try:
   self._published = write_private(self.port_file, payload)
  except OSError as exc:
   # Nobody could talk to this hook: close the window; run_dashboard says why.
   self.failure = f"--test-hook {self.port_file}: cannot write it: {exc.strerror or exc}"
   hello_imgui.get_runner_params().app_shall_exit = True

 def _pump(self) -> None:
  engine = hello_imgui.get_imgui_test_engine()
  current = self._current
  if current is not None:
   test = self._tests[current.kind]
   status = test.output.status
   if status not in (te.TestStatus.success, te.TestStatus.error):
    return
   if not te.is_test_queue_empty(engine):
    return
   ok = status == te.TestStatus.success
   result = current.result
   result["status"] = "success" if ok else "error"
   result["ok"] = ok and result.get("ok", True)
   if not ok:
    result["log"] = test.output.log.get_text()[-2000:]
   result["frames"] = self.dashboard.frame - current.frame0
   self._current = None
   current.done.set()
  try:
   request = self._requests.get_nowait()
  except queue.Empty:
   return
  request.frame0 = self.dashboard.frame  # the test runs from the next frame on
  if request.kind == "quit":
   hello_imgui.get_runner_params().app_shall_exit = True
   request.result["ok"] = True
   request.done.set()
   return
  self._current = request
  te.queue_test(engine, self._tests[request.kind])
  hello_imgui.request_refresh()  # the test needs frames to run in

 # -- test functions: on the test engine's coroutine, interleaved with the GUI thread -----

 def _click(self, ctx: Any) -> None:
  request = self._current
  assert request is not None
  ref = request.arg if request.arg.startswith("//") else f"//{WINDOW}/**/{request.arg}"
  before = self.dashboard.last_action
  ctx.item_click(ref)
  action = self.dashboard.last_action
  # Park the mouse in the window's empty top-right corner: no hover highlight left on a
  # button in later screenshots. (The dashboard fills the viewport: there is no void.)
  viewport = imgui.get_main_viewport()
  ctx.mouse_teleport_to_pos((viewport.pos.x + viewport.size.x - 3, viewport.pos.y + 3))
  ctx.yield_()  # one more frame, so /state shows what the click changed
  request.result.update(ref=ref, acted=False, action=None)
  if action is not None and action is not before:
   request.result.update(acted=True, action=asdict(action))
   # Frames the click took, and the slowest of them: a click must not stall a frame.
   spent = [s[2] for s in self.clock.samples(request.frame0 + 1) if s[0] <= action.frame]
   request.result["action_frames"] = action.frame - request.frame0
   request.result["max_frame_ms"] = round(max(spent, default=0.0) * 1000, 3)
   applied = self.dashboard.runner.applied
   if applied is not None and applied[0] == action.label.lower() and applied[1] >= action.at:
    # Click landed -> the gate closed (or opened): ConductorEngine.pause() returned.
    request.result["applied_ms"] = round((applied[1] - action.at) * 1000, 3)

 def _key(self, ctx: Any) -> None:
  request = self._current
  assert request is not None
  before = self.dashboard.last_action
  ctx.key_press(getattr(imgui.Key, request.arg))
  ctx.yield_()
  action = self.dashboard.last_action
  request.result.update(acted=False, action=None)
  if action is not None and action is not before:
   request.result.update(acted=True, action=asdict(action))

 def _type(self, ctx: Any) -> None:
  request = self._current
  assert request is not None
  given = json.loads(request.arg)
  target = given["ref"]
  ref = target if target.startswith("//") else f"//{WINDOW}/**/{target}"
  ctx.item_input_value(ref, given["text"])
  ctx.yield_()  # a frame that draws the field with its new text
  request.result.update(ok=True, ref=ref)

 def _mouse(self, ctx: Any) -> None:
  request = self._current
  assert request is not None
  given = json.loads(request.arg)
  if "pos" in given:
   ctx.mouse_move_to_pos(imgui.ImVec2(*given["pos"]))
  else:
   target = given["ref"]
   ctx.mouse_move(target if target.startswith("//") else f"//{WINDOW}/**/{target}")
  if given.get("wheel"):
   ctx.mouse_wheel_y(given["wheel"])
  ctx.yield_(2)  # a frame that sees the mouse there, and one that applies a scroll it set
  request.result.update(ok=True, tooltip=self.dashboard.drawn[1].get("tooltip"))

 def _shot(self, ctx: Any) -> None:
  request = self._current
  assert request is not None
  ctx.yield_()  # let the latest change reach the screen
  ctx.capture_reset()
  ctx.capture_set_filename(request.arg)  # in the private capture folder; see screenshot()
  ok = bool(ctx.capture_screenshot(te.CaptureFlags_.hide_mouse_cursor))
  request.result.update(ok=ok)


def write_private(path: Path, payload: bytes) -> tuple[int, int]:
 """Write `payload` to `path` atomically and owner-only; return the file's (dev, inode).

 The bytes go to a new file beside it (O_EXCL | O_NOFOLLOW, mode 0600), which is renamed
 over `path`: a rename replaces a symlink planted at `path`, it never writes through one.
 Raises OSError.
 """
 tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
 flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
 fd = os.open(tmp, flags, 0o600)
 try:
  with os.fdopen(fd, "wb") as file:
   os.fchmod(file.fileno(), 0o600)  # whatever the umask
   file.write(payload)
   file.flush()
   st = os.fstat(file.fileno())
  os.replace(tmp, path)
 except BaseException:
  tmp.unlink(missing_ok=True)
  raise
 return st.st_dev, st.st_ino


class _Server(ThreadingHTTPServer):
 """A thread per connection, at most MAX_CLIENTS at once: more are answered 503 at once,
 so a flood of idle connections costs neither threads nor a stall of the others."""

 daemon_threads = True
 request_queue_size = 2 * MAX_CLIENTS  # the listen backlog (5 by default: SYNs dropped)
 hook: TestHook

 def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
  super().__init__(address, handler)
  self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

 def process_request(self, request: Any, client_address: Any) -> None:
  if not self._slots.acquire(blocking=False):
   with contextlib.suppress(OSError):
    request.sendall(BUSY)  # a fresh socket's empty buffer takes it without blocking
   self.shutdown_request(request)
   return
  try:
   super().process_request(request, client_address)  # starts the connection's thread
  except BaseException:
   self._slots.release()
   raise

 def process_request_thread(self, request: Any, client_address: Any) -> None:
  try:
   super().process_request_thread(request, client_address)
  finally:
   self._slots.release()

 def handle_error(self, request: Any, client_address: Any) -> None:
  # A client that hung up or stalled is its own business: nothing to report. Anything
  # else is a bug in the hook and prints its traceback.
  if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
   return
  super().handle_error(request, client_address)


def key_name(name: str) -> str | None:
 """The `imgui.Key` member for a key name such as "Space" or "space", or None."""
 member = name.strip().lower()
 return member if isinstance(getattr(imgui.Key, member, None), imgui.Key) else None


class _Handler(BaseHTTPRequestHandler):
 server: _Server
 timeout = SOCKET_TIMEOUT  # a client that stalls mid-request is dropped
 # Answer garbage with a status line too (http.server takes it for HTTP/0.9, which has none).
 default_request_version = "HTTP/1.0"

 def log_message(self, format: str, *args: Any) -> None:
  pass  # the test's output stays readable; failures are in the JSON answers

 def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
  # Only http.server calls this, on a request it cannot parse; the fault is the client's:
  # a method it has no do_ for (501 there) or an HTTP version it does not speak (505).
  if code == HTTPStatus.NOT_IMPLEMENTED:
   code = HTTPStatus.METHOD_NOT_ALLOWED
  elif code >= 500:
   code = HTTPStatus.BAD_REQUEST
  super().send_error(code, message, explain)

 def _reply(
  self, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None
 ) -> None:
  body = json.dumps(payload).encode()
  self.send_response(code)
  self.send_header("Content-Type", "application/json")
  self.send_header("Content-Length", str(len(body)))
  for name, value in (headers or {}).items():
   self.send_header(name, value)
  if code >= 400:
   self.close_connection = True  # an unread body must not be taken for the next request
   self.send_header("Connection", "close")
  self.end_headers()
  self.wfile.write(body)

 def _authorized(self) -> bool:
  if self.server.hook.authorized(self.headers.get("Authorization")):
   return True
  self._reply(
   401,
   {"ok": False, "error": "give the token from the port file: Authorization: Bearer TOKEN"},
   {"WWW-Authenticate": 'Bearer realm="conductor test hook"'},
  )
  return False

 def do_GET(self) -> None:
  if not self._authorized():
   return
  try:
   self._get()
  except BadRequest as exc:
   self._reply(exc.status, {"ok": False, "error": str(exc)})

 def do_POST(self) -> None:
  if not self._authorized():
   return
  try:
   self._post()
  except BadRequest as exc:
   self._reply(exc.status, {"ok": False, "error": str(exc)})

 def _get(self) -> None:
  hook = self.server.hook
  url = urlsplit(self.path)
  try:
   query = parse_qs(url.query, keep_blank_values=True, max_num_fields=10)
  except ValueError:  # more fields than that
   raise BadRequest(400, "too many query fields") from None
  if url.path == "/state":
   rows = _query(query, "rows", "0")
   if rows not in ("0", "1"):
    raise BadRequest(400, f"rows={rows!r}: give rows=1 or rows=0")
   self._reply(200, hook.state(rows=rows == "1"))
  elif url.path == "/frames":
   since = _query(query, "since", "0")
   if not re.fullmatch(r"[0-9]{1,12}", since):
    raise BadRequest(400, f"since={since[:40]!r}: give a frame number (a whole number >= 0)")
   self._reply(200, hook.frames(int(since)))
  else:
   raise BadRequest(404, f"no such endpoint: GET {url.path[:200]}")

 def _post(self) -> None:
  hook = self.server.hook
  path = urlsplit(self.path).path
  if path not in ("/click", "/key", "/type", "/mouse", "/screenshot", "/frames/reset", "/quit"):
   raise BadRequest(404, f"no such endpoint: POST {path[:200]}")
  body = self._body()
  if path == "/click":
   target = body.get("ref") or body.get("label")
   if not isinstance(target, str) or not target:
    raise BadRequest(400, 'give {"label": "Pause"} or {"ref": "//..."}')
   self._reply(*hook.submit("click", target))
  elif path == "/key":
   given = body.get("key")
   key = key_name(given) if isinstance(given, str) else None
   if key is None:
    raise BadRequest(400, f"unknown key {str(given)[:40]!r}")
   self._reply(*hook.submit("key", key))
  elif path == "/type":
   target, text = body.get("ref") or body.get("label"), body.get("text")
   if not isinstance(target, str) or not target or not isinstance(text, str):
    raise BadRequest(400, 'give {"label": "##budget", "text": "300000"} (or "ref": "//...")')
   self._reply(*hook.submit("type", json.dumps({"ref": target, "text": text})))
  elif path == "/mouse":
   self._reply(*hook.submit("mouse", json.dumps(_mouse_args(body))))
  elif path == "/screenshot":
   self._reply(*hook.screenshot(body.get("name")))
  elif path == "/frames/reset":
   hook.clock.reset()
   self._reply(200, {"ok": True})
  else:
   self._reply(*hook.submit("quit"))

 def _body(self) -> dict[str, Any]:
  """The request's JSON object body ({} when there is none). Raises BadRequest."""
  if self.headers.get("Transfer-Encoding") is not None:
   raise BadRequest(411, "send the body with a Content-Length, not chunked")
  lengths = self.headers.get_all("Content-Length") or []
  if len(lengths) > 1:
   raise BadRequest(400, "more than one Content-Length")
  given = lengths[0].strip() if lengths else "0"
  if not re.fullmatch(r"[0-9]{1,12}", given):
   raise BadRequest(400, f"Content-Length {given[:40]!r}: give a whole number of bytes")
  length = int(given)
  if length > MAX_BODY:
   raise BadRequest(413, f"a body of {length} bytes: at most {MAX_BODY}")
  try:
   data = self.rfile.read(length)
  except TimeoutError:
   raise BadRequest(408, f"the body did not arrive within {SOCKET_TIMEOUT:g} s") from None
  if len(data) != length:
   raise BadRequest(400, f"the body ended after {len(data)} of {length} bytes")
  try:
   body = json.loads(data or b"{}")
  except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
   raise BadRequest(400, f"bad JSON body: {str(exc)[:200]}") from None
  if not isinstance(body, dict):
   raise BadRequest(400, "bad JSON body: expected an object")
  return body


def _mouse_args(body: dict[str, Any]) -> dict[str, Any]:
 """A /mouse body checked: a finite [x, y] or an item, and an optional wheel turn.
 Raises BadRequest."""
 pos, wheel = body.get("pos"), body.get("wheel", 0)
 target = body.get("ref") or body.get("label")

 def number(value: object, limit: float) -> bool:
  if not isinstance(value, (int, float)) or isinstance(value, bool):
   return False
  return math.isfinite(value) and abs(value) <= limit

 if not number(wheel, 100):
  raise BadRequest(400, f"wheel {str(wheel)[:40]!r}: give a number of notches (+1 up, -1 down)")
 if pos is None and isinstance(target, str) and target:
  return {"ref": target, "wheel": float(wheel)}
 if not (isinstance(pos, list) and len(pos) == 2 and all(number(v, 1e5) for v in pos)):
  raise BadRequest(
   400, 'give {"pos": [x, y]} in screen pixels or {"label": "Start"}; optionally "wheel": -1'
  )
 return {"pos": [float(v) for v in pos], "wheel": float(wheel)}


def _query(query: dict[str, list[str]], name: str, default: str) -> str:
 values = query.get(name, [default])
 if len(values) != 1:
  raise BadRequest(400, f"{name} given {len(values)} times")
 return values[0]
