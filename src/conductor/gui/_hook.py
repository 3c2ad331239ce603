"""The test hook: a small JSON API on 127.0.0.1 that drives the dashboard as a user would.

Off unless `--test-hook PORT_FILE` is given; it never listens on anything but loopback, on
a port the OS picks, written to PORT_FILE once the window has drawn its first frame.

 GET  /state          live mma_status and spawned; what the last frame showed: the snapshot
                      it drew, its badge, banner lines, buttons (enabled or not), workers
 GET  /state?rows=1   the same with every ticket row and the pending list
 GET  /frames         recent frame timings: frame number, start, work (ms)
 POST /click          {"label": "Pause"} or {"ref": "//Dashboard/**/Pause"}
 POST /key            {"key": "Space"}
 POST /screenshot     {"path": "/absolute/file.png"}
 POST /quit

Clicks, keys and screenshots go through Dear ImGui's own input path: the ImGui Test Engine
that ships in imgui-bundle moves the mouse and presses the button, as a person would. The
HTTP thread never touches Dear ImGui: it queues a request, wakes the GUI and waits on the
request's `threading.Event`; the GUI thread runs one request at a time (`pre_new_frame`).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from imgui_bundle import hello_imgui, imgui

from ..multi_agent_conductor import Snapshot
from ._dashboard import WINDOW, Dashboard

te = imgui.test_engine

LOOPBACK = "127.0.0.1"  # the hook is for tests on this machine only, never a network API
REQUEST_TIMEOUT = 30.0  # seconds an HTTP request waits for the GUI thread
LIST_LIMIT = 50  # ids listed in /state without ?rows=1 (a 10,000-ticket list is heavy)


@dataclass(slots=True)
class _Request:
 kind: str  # "click" | "key" | "screenshot" | "quit"
 arg: str
 done: threading.Event = field(default_factory=threading.Event)
 result: dict[str, Any] = field(default_factory=dict)
 frame0: int = 0  # the frame it was picked up in


class FrameClock:
 """How long each frame took, from `pre_new_frame` to `after_swap` (GUI thread).

 Work time excludes the idle wait between frames, so it is the frame's real cost: our
 Python, Dear ImGui, and the renderer (with software OpenGL, rasterising happens at swap).
 """

 def __init__(self, keep: int = 20_000) -> None:
  self._frame = 0
  self._start = 0.0
  self._lock = threading.Lock()  # guards `_samples`: the GUI appends, the HTTP thread copies
  self._samples: deque[tuple[int, float, float]] = deque(maxlen=keep)

 def begin(self, frame: int) -> None:
  """Frame number `frame` starts (the dashboard's own count)."""
  self._frame = frame
  self._start = time.perf_counter()

 def end(self) -> None:
  start = self._start
  sample = (self._frame, start, time.perf_counter() - start)
  with self._lock:
   self._samples.append(sample)

 def samples(self, since_frame: int = 0) -> list[tuple[int, float, float]]:
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
   }
   for r in snap.rows
  ]
 return out


class TestHook:
 """Serves the API above for one dashboard; see the module docstring.

 Threads: `pre_new_frame`, `after_swap` and `register_tests` are hello_imgui callbacks on
 the GUI thread; the HTTP server runs on its own daemon thread and reads only objects that
 are replaced whole (the runner's conductor, the dashboard's `drawn` frame).
 """

 __test__ = False  # not a pytest test class, despite its name

 def __init__(self, port_file: Path, dashboard: Dashboard) -> None:
  self.port_file = port_file
  self.dashboard = dashboard
  self.clock = FrameClock()
  self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
  self._current: _Request | None = None
  self._tests: dict[str, Any] = {}  # request kind -> registered test engine Test
  self._published = False
  self._closed = False
  self._server = _Server((LOOPBACK, 0), _Handler)
  self._server.hook = self
  self._thread = threading.Thread(
   target=self._server.serve_forever, name="conductor-test-hook", daemon=True
  )

 @property
 def port(self) -> int:
  return int(self._server.server_address[1])

 def start(self) -> None:
  self._thread.start()

 def close(self) -> None:
  """Stop serving, answer every waiting request, and remove the port file."""
  self._closed = True
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
  self.port_file.unlink(missing_ok=True)

 # -- HTTP thread ----------------------------------------------------------------------

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
   "samples": [[n, round(start, 6), round(work * 1000, 3)] for n, start, work in samples],
  }

 # -- GUI thread -----------------------------------------------------------------------

 def register_tests(self) -> None:
  engine = hello_imgui.get_imgui_test_engine()
  io = te.get_io(engine)
  io.config_run_speed = te.TestRunSpeed.fast
  io.config_watchdog_kill_test = REQUEST_TIMEOUT - 5
  for kind, func in (("click", self._click), ("key", self._key), ("screenshot", self._shot)):
   test = te.register_test(engine, "hook", kind)
   test.test_func = func
   self._tests[kind] = test

 def pre_new_frame(self) -> None:
  self.clock.begin(self.dashboard.frame + 1)  # draw() counts it
  if not self._published and self._tests:
   self._publish_port()
  self._pump()

 def after_swap(self) -> None:
  self.clock.end()

 def _publish_port(self) -> None:
  # Atomically, after the first frame: a reader never sees half a number, and a test that
  # found the file talks to a window that is up.
  tmp = self.port_file.with_name(self.port_file.name + ".tmp")
  tmp.write_text(f"{self.port}\n", encoding="utf-8")
  os.replace(tmp, self.port_file)
  self._published = True

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
   spent = [work for n, _, work in self.clock.samples(request.frame0 + 1) if n <= action.frame]
   request.result["action_frames"] = action.frame - request.frame0
   request.result["max_frame_ms"] = round(max(spent, default=0.0) * 1000, 3)
   applied = self.dashboard.runner.applied
   if applied is not None and applied[0] == action.label.lower() and applied[1] >= action.at:
    # Click landed -> the engine's loop carried the command out (its mma_status changed).
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

 def _shot(self, ctx: Any) -> None:
  request = self._current
  assert request is not None
  ctx.yield_()  # let the latest change reach the screen
  ctx.capture_reset()
  ctx.capture_set_filename(request.arg)
  ok = bool(ctx.capture_screenshot(te.CaptureFlags_.hide_mouse_cursor))
  request.result.update(ok=ok, path=request.arg)


class _Server(ThreadingHTTPServer):
 daemon_threads = True
 hook: TestHook


def key_name(name: str) -> str | None:
 """The `imgui.Key` member for a key name such as "Space" or "space", or None."""
 member = name.strip().lower()
 return member if isinstance(getattr(imgui.Key, member, None), imgui.Key) else None


class _Handler(BaseHTTPRequestHandler):
 server: _Server

 def log_message(self, format: str, *args: Any) -> None:
  pass  # the test's output stays readable; failures are in the JSON answers

 def _reply(self, code: int, payload: dict[str, Any]) -> None:
  body = json.dumps(payload).encode()
  self.send_response(code)
  self.send_header("Content-Type", "application/json")
  self.send_header("Content-Length", str(len(body)))
  self.end_headers()
  self.wfile.write(body)

 def do_GET(self) -> None:
  hook = self.server.hook
  url = urlsplit(self.path)
  query = parse_qs(url.query)
  if url.path == "/state":
   self._reply(200, hook.state(rows=query.get("rows", ["0"])[0] == "1"))
  elif url.path == "/frames":
   self._reply(200, hook.frames(int(query.get("since", ["0"])[0])))
  else:
   self._reply(404, {"ok": False, "error": f"no such endpoint: GET {url.path}"})

 def do_POST(self) -> None:
  hook = self.server.hook
  path = urlsplit(self.path).path
  length = int(self.headers.get("Content-Length") or 0)
  try:
   body = json.loads(self.rfile.read(length) or b"{}")
   if not isinstance(body, dict):
    raise ValueError("expected a JSON object")
  except ValueError as exc:
   self._reply(400, {"ok": False, "error": f"bad JSON body: {exc}"})
   return
  if path == "/click":
   target = body.get("ref") or body.get("label")
   if not isinstance(target, str) or not target:
    self._reply(400, {"ok": False, "error": 'give {"label": "Pause"} or {"ref": "//..."}'})
    return
   self._reply(*hook.submit("click", target))
  elif path == "/key":
   key = key_name(str(body.get("key", "")))
   if key is None:
    self._reply(400, {"ok": False, "error": f"unknown key {body.get('key')!r}"})
    return
   self._reply(*hook.submit("key", key))
  elif path == "/screenshot":
   shot = body.get("path")
   if not isinstance(shot, str) or not os.path.isabs(shot):
    self._reply(400, {"ok": False, "error": 'give {"path": "/absolute/file.png"}'})
    return
   self._reply(*hook.submit("screenshot", shot))
  elif path == "/frames/reset":
   hook.clock.reset()
   self._reply(200, {"ok": True})
  elif path == "/quit":
   self._reply(*hook.submit("quit"))
  else:
   self._reply(404, {"ok": False, "error": f"no such endpoint: POST {path}"})
