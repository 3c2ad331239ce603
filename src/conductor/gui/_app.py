"""`run_dashboard`: open the window, wire the runner, the dashboard and the test hook."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from imgui_bundle import hello_imgui

from ..cli import EXIT_OK, UsageError, exit_code_for
from ..dag_engine import ExecutionEngine, PipelineError
from ..pipeline import Pipeline
from ..store import StateError
from ._dashboard import Dashboard, clear_color
from ._hook import TestHook
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


@contextmanager
def _close_on_signals(close: Callable[[], None]) -> Iterator[None]:
 """Ctrl+C or SIGTERM close the window like its close button (then the run is cancelled).

 Python runs the handler on the main thread at its next frame callback, which idling
 keeps coming at least a few times a second.
 """

 def handler(signum: int, frame: FrameType | None) -> None:
  close()

 previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
 try:
  yield
 finally:
  for sig, old in previous.items():
   signal.signal(sig, old)


def run_dashboard(pipeline: Pipeline, args: argparse.Namespace) -> int:
 """Show the dashboard for `pipeline` until its window closes; return the exit code.

 `args` may carry: `max_workers` (None: the pipeline's), `backend` ("asyncio" / "trio"),
 `state` (the state file; default as `conductor run`), `fresh` (forget the state's
 progress), `size` ("WxH"), `start` (start the run at once), `exit_when_done` (close when
 the run ends), `test_hook` (a file to write the test hook's port to; off without it).
 Exit codes as `conductor run`: 0 all completed, 1 failed or blocked, 130 stopped before
 the end (also when the window closes before a run finished), 2 for a user error.
 """
 size = parse_size(getattr(args, "size", None))
 hook_file = getattr(args, "test_hook", None)
 if hook_file is not None and not Path(hook_file).absolute().parent.is_dir():
  raise UsageError(f"--test-hook {hook_file}: its folder does not exist")
 _check_display()
 where = str(pipeline.path) if pipeline.path else pipeline.name
 try:  # a pipeline that cannot run is refused before its state is touched
  ExecutionEngine(pipeline.tickets, auto_queue=pipeline.auto_queue)
 except PipelineError as exc:
  raise UsageError(f"{where}: {exc}") from None

 runner = PipelineRunner(
  pipeline,
  max_workers=getattr(args, "max_workers", None),
  backend=getattr(args, "backend", "asyncio"),
  state=getattr(args, "state", None),
  fresh=bool(getattr(args, "fresh", False)),
  on_change=hello_imgui.request_refresh,  # documented as callable from any thread
 )
 try:
  runner.open()  # claims and restores the state on the engine thread, before the window
 except StateError as exc:
  raise UsageError(str(exc)) from None
 try:
  return _show(pipeline, args, runner, size, hook_file)
 finally:
  runner.close()


def _show(
 pipeline: Pipeline,
 args: argparse.Namespace,
 runner: PipelineRunner,
 size: tuple[int, int],
 hook_file: str | None,
) -> int:
 hook: TestHook | None = None
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
 start = bool(getattr(args, "start", False))

 def post_init() -> None:
  # The theme is applied by now; the dashboard window draws no background of its own.
  hello_imgui.get_runner_params().imgui_window_params.background_color = clear_color()
  if start:
   runner.start()

 params.callbacks.post_init = post_init
 if hook_file is not None:
  hook = TestHook(Path(hook_file).absolute(), dashboard)
  params.use_imgui_test_engine = True
  params.callbacks.register_tests = hook.register_tests
  params.callbacks.pre_new_frame = hook.pre_new_frame
  params.callbacks.after_swap = hook.after_swap
  hook.start()

 def close_window() -> None:
  hello_imgui.get_runner_params().app_shall_exit = True

 try:
  with _close_on_signals(close_window):
   hello_imgui.run(params)
 except RuntimeError as exc:
  if dashboard.frame == 0:  # the window never opened: a display or OpenGL problem
   raise UsageError(f"cannot open the dashboard window: {exc}") from None
  raise
 finally:
  if hook is not None:
   hook.close()
  runner.close()  # before reading the end: a run still going is cancelled and settles

 final = runner.latest
 counts = final.counts
 print(
  f"conductor: {final.name}: {counts.completed}/{counts.total} completed, "
  f"{counts.failed} failed, {counts.blocked} blocked ({final.status}); {runner.note}",
  flush=True,
 )
 if counts.total and counts.completed == counts.total:
  return EXIT_OK  # also when it was all done before this window opened
 return exit_code_for(final)
