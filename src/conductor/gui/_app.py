"""`run_dashboard`: open the window, wire the runner, the dashboard and the test hook."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from imgui_bundle import hello_imgui

from .._text import printable
from ..exits import EXIT_OK, UsageError, exit_code_for
from ..pipeline import Pipeline
from ..session import check_pipeline
from ._dashboard import Dashboard, clear_color
from ._hook import HookError, TestHook
from ._runs import PipelineRunner

# Small enough that software rendering (Mesa llvmpipe under Xvfb, as in CI) stays well
# inside a 16 ms frame; a real GPU does not care. The window is resizable.
DEFAULT_SIZE = (960, 640)
FPS_MAX = 60  # where vsync does not pace frames (Xvfb), do not spin faster than a monitor


def parse_size(text: str | None) -> tuple[int, int]:
 """`"960x640"` -> (960, 640); None -> the default. Raises UsageError for anything else."""
 if text is None:
  return DEFAULT_SIZE
 match = re.fullmatch(r"\s*(\d{2,5})\s*[xX]\s*(\d{2,5})\s*", text)
 if not match:
  raise UsageError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 960x640")
 width, height = int(match[1]), int(match[2])
 if width < 400 or height < 300:
  raise UsageError(f"--size {text}: the dashboard needs at least 400x300 pixels")
 return width, height


def _check_display() -> None:
 # GLFW would fail with an assertion deep in C++; say what is wrong in one line instead.
 if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")) and not (
  os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
 ):
  raise UsageError(
   "no display to open the dashboard on (DISPLAY is not set): run it in a desktop "
   "session, or headless under xvfb-run; `conductor run` works without one"
  )


# Ctrl+C, `kill`, a closed terminal or session (SIGHUP does not exist on Windows).
CLOSING_SIGNALS = tuple(
 getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class SignalClose:
 """SIGINT, SIGTERM and SIGHUP close the dashboard the way its window's close button does:
 the run is cancelled (its interrupted tickets recorded), the state committed and released,
 and `run_dashboard` returns 128 + the signal (130, 143, 129).

 GLFW owns the main thread and sleeps in C while the window idles; Python runs a signal
 handler only when that thread next runs Python (a frame callback). So the C-level
 handler's wake-up byte (`signal.set_wakeup_fd`) goes to a socket that a small thread
 waits on; it wakes the GUI (`hello_imgui.request_refresh`, callable from any thread), and
 the next frame runs the handler, which ends the window. A signal before the window opens
 or after it closed is only recorded: the window then does not open, or closes as planned.

 Main thread only (signal handlers can only be set there). A context manager: it restores
 the previous handlers and wake-up fd on exit.
 """

 def __init__(self) -> None:
  self.signum: int | None = None  # the first closing signal received
  self._window_open = False  # between post_init and the end of hello_imgui.run
  self._previous: dict[int, Any] = {}
  self._old_fd = -1
  self._reader, self._writer = socket.socketpair()
  self._thread = threading.Thread(target=self._wake_gui, name="conductor-signals", daemon=True)

 def __enter__(self) -> SignalClose:
  self._writer.setblocking(False)  # set_wakeup_fd wants it so: a handler never blocks
  self._thread.start()
  self._old_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
  for sig in CLOSING_SIGNALS:
   self._previous[sig] = signal.signal(sig, self._handle)
  return self

 def __exit__(self, *exc: object) -> None:
  for sig, old in self._previous.items():
   signal.signal(sig, old)
  signal.set_wakeup_fd(self._old_fd)
  self._writer.close()  # the thread reads end-of-file and ends
  self._thread.join(1.0)
  self._reader.close()

 def window_opened(self) -> None:
  """The window is up (post_init): a signal from now on closes it."""
  self._window_open = True
  if self.signum is not None:  # came while the window was opening
   hello_imgui.get_runner_params().app_shall_exit = True

 def window_closed(self) -> None:
  self._window_open = False

 def _handle(self, signum: int, frame: FrameType | None) -> None:
  if self.signum is None:
   self.signum = signum
  if self._window_open:
   hello_imgui.get_runner_params().app_shall_exit = True

 def _wake_gui(self) -> None:
  with contextlib.suppress(OSError):
   while self._reader.recv(64):
    hello_imgui.request_refresh()


def run_dashboard(pipeline: Pipeline, args: argparse.Namespace) -> int:
 """Show the dashboard for `pipeline` until its window closes; return the exit code.

 `args` may carry: `max_workers` (None: the pipeline's), `backend` ("asyncio" / "trio"),
 `state` (the state file; default as `conductor run`), `fresh` (forget the state's
 progress), `size` ("WxH"), `start` (start the run at once), `exit_when_done` (close when
 the run ends), `test_hook` (a file to write the test hook's port and token to; off without
 it), `test_hook_shots` (the only folder the hook writes screenshots into; default: the
 port file's). SIGINT, SIGTERM and SIGHUP close the window as its close button does.
 Exit codes as `conductor run`: 0 all completed, 1 failed or blocked, 130 stopped before
 the end (also when the window closes before a run finished), 2 for a user error, 128 +
 the signal when a signal closed it (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
 """
 size = parse_size(getattr(args, "size", None))
 hook_file = getattr(args, "test_hook", None)
 if hook_file is not None and not Path(hook_file).absolute().parent.is_dir():
  raise UsageError(f"--test-hook {hook_file}: its folder does not exist")
 shots = getattr(args, "test_hook_shots", None)
 if shots is not None and not Path(shots).is_dir():
  raise UsageError(f"--test-hook-shots {shots}: no such folder")
 _check_display()
 check_pipeline(pipeline)  # a pipeline that cannot run is refused before its state is touched

 runner = PipelineRunner(
  pipeline,
  max_workers=getattr(args, "max_workers", None),
  backend=getattr(args, "backend", "asyncio"),
  state=getattr(args, "state", None),
  fresh=bool(getattr(args, "fresh", False)),
  dask=getattr(args, "dask", None),
  on_change=hello_imgui.request_refresh,  # documented as callable from any thread
 )
 with SignalClose() as signals:
  runner.open()  # claims and restores the state on the engine thread, before the window
  code = None
  try:
   if signals.signum is None:  # else a signal came while the state was opening
    code = _show(
     pipeline, args, runner, size=size, hook_file=hook_file, shots=shots, signals=signals
    )
  finally:
   runner.close()  # a run still going is cancelled; the state is committed and released
 if signals.signum is not None:
  return 128 + signals.signum
 assert code is not None
 return code


def _show(
 pipeline: Pipeline,
 args: argparse.Namespace,
 runner: PipelineRunner,
 *,
 size: tuple[int, int],
 hook_file: str | None,
 shots: str | None,
 signals: SignalClose,
) -> int:
 test_hook: TestHook | None = None
 dashboard = Dashboard(
  runner,
  exit_when_done=bool(getattr(args, "exit_when_done", False)),
  reporting=hook_file is not None,
 )

 params = hello_imgui.RunnerParams()
 params.app_window_params.window_title = f"conductor · {pipeline.name}"
 params.app_window_params.window_geometry.size = size
 params.imgui_window_params.default_imgui_window_type = (
  hello_imgui.DefaultImGuiWindowType.no_default_window
 )
 # Window state is not written anywhere (no imgui.ini in the user's working folder).
 params.ini_disable = True
 params.fps_idling.fps_max = FPS_MAX
 # No multisampling: Dear ImGui anti-aliases its own shapes and text, and 4x MSAA (the
 # default here) triples the cost of a frame with software OpenGL (llvmpipe: ~22 -> ~8 ms
 # of CPU per frame at 960x640).
 gl_options = hello_imgui.OpenGlOptions()
 gl_options.anti_aliasing_samples = 0
 params.renderer_backend_options.open_gl_options = gl_options
 params.callbacks.show_gui = dashboard.draw
 params.callbacks.after_swap = runner.refresh  # see PipelineRunner.refresh
 start = bool(getattr(args, "start", False))

 def post_init() -> None:
  # The theme is applied by now; the dashboard window draws no background of its own.
  hello_imgui.get_runner_params().imgui_window_params.background_color = clear_color()
  signals.window_opened()
  if start:
   runner.start()

 params.callbacks.post_init = post_init
 if hook_file is not None:
  try:
   test_hook = TestHook(
    Path(hook_file).absolute(), dashboard, None if shots is None else Path(shots).absolute()
   )
  except HookError as exc:
   raise UsageError(str(exc)) from None
  params.use_imgui_test_engine = True
  params.callbacks.register_tests = test_hook.register_tests
  params.callbacks.pre_new_frame = test_hook.pre_new_frame
  after_swap = test_hook.after_swap

  def end_frame() -> None:
   after_swap()  # the frame's clock stops first
   runner.refresh()

  params.callbacks.after_swap = end_frame
  params.callbacks.show_gui = test_hook.clock.timed(dashboard.draw)

 try:
  hello_imgui.run(params)
 except RuntimeError as exc:
  if dashboard.frame == 0:  # the window never opened: a display or OpenGL problem
   raise UsageError(f"cannot open the dashboard window: {exc}") from None
  raise
 finally:
  signals.window_closed()
  if test_hook is not None:
   test_hook.close()
  runner.close()  # before reading the end: a run still going is cancelled and settles
 if test_hook is not None and test_hook.failure is not None:
  raise UsageError(test_hook.failure)

 final = runner.latest
 counts = final.counts
 # `cli.main` routes stdout through `terminal.DroppingOutput`: a closed stdout or a
 # terminal gone with SIGHUP drops this line, never raises.
 print(
  f"conductor: {printable(final.name)}: {counts.completed}/{counts.total} completed, "
  f"{counts.failed} failed, {counts.blocked} blocked ({final.status}); {runner.note}",
  flush=True,
 )
 if counts.total and counts.completed == counts.total:
  return EXIT_OK  # also when it was all done before this window opened
 return exit_code_for(final)
