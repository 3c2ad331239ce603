"""The dashboard, driven in a real window: `conductor gui` under an X server (Xvfb in CI).

Each test starts the real `conductor gui PIPELINE --test-hook PORT_FILE` process and talks
to its test hook: it reads the state as JSON and clicks buttons by their label through
Dear ImGui's test engine, which moves the mouse and presses like a person. Waiting for that
process is bounded everywhere: a condition on the state is re-read until a deadline.

Without a display these tests skip with a loud reason; with CONDUCTOR_REQUIRE_GUI=1 (CI)
they fail instead, so the dashboard is never silently untested.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT = 30.0  # seconds for the window to come up (software OpenGL is slow to start)
HTTP_TIMEOUT = 40.0  # above the hook's own 30 s, so the hook's answer arrives first

State = dict[str, Any]


def require_display() -> None:
 if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
  return
 reason = (
  "NO X DISPLAY: the dashboard tests did NOT run. Run them under an X server, e.g. "
  "`scripts/test` (uses xvfb-run when installed: apt-get install xvfb xauth)"
 )
 if os.environ.get("CONDUCTOR_REQUIRE_GUI") == "1":
  pytest.fail(reason + "; CONDUCTOR_REQUIRE_GUI=1 makes this a failure")
 pytest.skip(reason)


def sleep_pipeline(
 folder: Path, n: int, seconds: float, *, workers: int = 2, name: str = "sleepy"
) -> Path:
 lines = [f'[pipeline]\nname = "{name}"\nmax_workers = {workers}\n']
 lines += [f'[[tickets]]\nid = "t{i}"\nsleep = {seconds}\n' for i in range(n)]
 path = folder / f"{name}.toml"
 path.write_text("\n".join(lines), encoding="utf-8")
 return path


class Gui:
 """A running `conductor gui` process and its test hook."""

 def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, shots: Path) -> None:
  self.proc = proc
  self.port = port
  self.log = log
  self.shots = shots

 def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
  data = json.dumps(body or {}).encode() if method == "POST" else None
  request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
  try:
   with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
    return json.loads(response.read())
  except urllib.error.HTTPError as exc:
   with exc:
    return json.loads(exc.read())

 def state(self, *, rows: bool = False) -> State:
  result: State = self._call("GET", "/state?rows=1" if rows else "/state")
  return result

 def click(self, label: str) -> State:
  result: State = self._call("POST", "/click", {"label": label})
  return result

 def key(self, key: str) -> State:
  result: State = self._call("POST", "/key", {"key": key})
  return result

 def screenshot(self, name: str) -> Path:
  path = self.shots / f"{name}.png"
  result = self._call("POST", "/screenshot", {"path": str(path)})
  assert result["ok"], result
  assert path.stat().st_size > 1000
  return path

 def wait_for(self, what: str, condition: Callable[[State], bool], timeout: float = 10.0) -> State:
  """Re-read the state until `condition` holds; fail after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while True:
   state = self.state()
   if condition(state):
    return state
   if time.monotonic() > deadline:
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last state: {state}")
   time.sleep(0.02)  # a test waiting on another process: bounded, see the deadline

 def quit(self) -> int:
  """Close the window like a user would; return the process's exit code."""
  with contextlib.suppress(OSError):  # already gone
   self._call("POST", "/quit")
  try:
   return self.proc.wait(timeout=15)
  except subprocess.TimeoutExpired:
   self.proc.kill()
   return self.proc.wait(timeout=5)


GuiFactory = Callable[..., Gui]


@pytest.fixture
def live_gui(tmp_path: Path) -> Iterator[GuiFactory]:
 """Start `conductor gui PIPELINE --test-hook ...` (working folder: tmp_path); returns a Gui.

 Teardown asks the window to close and waits for the process to exit.
 """
 require_display()
 started: list[tuple[Gui, Any]] = []

 def start(pipeline: Path, *args: str) -> Gui:
  port_file = tmp_path / f"hook-port-{len(started)}"
  log = tmp_path / f"gui-{len(started)}.log"
  out = log.open("wb")
  command = [sys.executable, "-m", "conductor", "gui", str(pipeline), "--test-hook"]
  proc = subprocess.Popen(
   [*command, str(port_file), *args],
   cwd=tmp_path,
   env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg-state")},  # the demo's state
   stdout=out,
   stderr=subprocess.STDOUT,
  )
  deadline = time.monotonic() + STARTUP_TIMEOUT
  while not port_file.exists():
   if proc.poll() is not None or time.monotonic() > deadline:
    proc.kill()
    proc.wait()
    out.close()
    pytest.fail(f"the dashboard did not start (exit {proc.returncode}):\n{log.read_text()}")
   time.sleep(0.02)  # waiting for another process to come up: bounded by the deadline
  gui = Gui(proc, int(port_file.read_text()), log, tmp_path)
  started.append((gui, out))
  return gui

 yield start
 for gui, out in started:
  gui.quit()
  out.close()


def ended(badge: str) -> Callable[[State], bool]:
 """The window shows the run ended with `badge` (its thread has finished too)."""
 return lambda s: s["gui"].get("badge") == badge and not s["gui"]["run_active"]


def within_a_frame(action: dict[str, Any]) -> bool:
 """The live mma_status showed the control's effect in its frame or the next one."""
 return action["effect_frame"] is not None and action["effect_frame"] - action["frame"] <= 1


def banner_counts(lines: list[str]) -> int:
 """How many workers the banner says are finishing (0 for "all workers idle")."""
 drain = lines[2]
 if drain.startswith("all workers idle"):
  return 0
 match = re.match(r"(\d+) workers? finishing", drain)
 assert match, drain
 return int(match[1])


@pytest.mark.gui
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_pause_holds_workers_drains_running_ones_and_resume_finishes_each_ticket_once(
 live_gui: GuiFactory, tmp_path: Path, backend: str
) -> None:
 gui = live_gui(sleep_pipeline(tmp_path, 8, 0.6, workers=2), "--backend", backend)
 state = gui.state()
 assert state["mma_status"] == "idle"
 assert state["gui"]["buttons"] == {"Start": True, "Pause": False, "Cancel": False}

 assert gui.click("Start")["acted"]
 state = gui.wait_for("two workers running", lambda s: len(s["snapshot"]["running"]) == 2)
 assert state["mma_status"] == "executing"
 assert state["gui"]["badge"] == "EXECUTING"
 assert state["gui"]["buttons"]["Pause"] is True
 gui.screenshot("running")

 clicked = gui.click("Pause")
 assert clicked["ok"] and clicked["acted"], clicked
 # Paused within one frame of the click (the GUI posts pause() to the engine's loop).
 assert within_a_frame(clicked["action"]), clicked["action"]
 paused = gui.wait_for("a snapshot taken after the pause", lambda s: s["snapshot"]["paused"])
 paused_at = time.monotonic()
 spawned = paused["spawned"]
 assert paused["mma_status"] == "paused"
 assert paused["gui"]["badge"] == "PAUSED"
 assert "Resume" in paused["gui"]["buttons"] and "Pause" not in paused["gui"]["buttons"]
 banner = paused["gui"]["banner"]
 assert banner[0] == "PAUSED" and "paused from the dashboard" in banner[1]
 assert paused["snapshot"]["running_at_pause"], "the click landed while workers ran"
 gui.screenshot("paused")

 # In-flight workers finish; the banner counts them down to "all workers idle".
 seen: list[int] = []

 def drained(s: State) -> bool:
  if s["gui"]["banner"]:
   seen.append(banner_counts(s["gui"]["banner"]))
  return not s["snapshot"]["finishing"] and s["gui"]["banner"] is not None and seen[-1] == 0

 idle = gui.wait_for("the running workers to finish", drained, timeout=5)
 assert seen == sorted(seen, reverse=True) and seen[-1] == 0, seen
 assert idle["snapshot"]["counts"]["in_progress"] == 0
 assert {w["state"] for w in idle["gui"]["workers"]} == {"done"}
 assert [w["ticket"] for w in idle["gui"]["workers"]] == idle["snapshot"]["running_at_pause"]
 gui.screenshot("paused-idle")

 # No worker starts while paused: a second at least, with free slots and ready tickets.
 while time.monotonic() - paused_at < 1.0:
  state = gui.state()
  assert state["spawned"] == spawned, "a worker started while paused"
  assert state["mma_status"] == "paused"
  time.sleep(0.05)  # sampling the other process for the whole second
 assert state["snapshot"]["ready"], "tickets were ready to start"

 resumed = gui.click("Resume")
 assert resumed["acted"] and within_a_frame(resumed["action"]), resumed
 done = gui.wait_for("the run to end", ended("DONE"), timeout=15)
 assert done["spawned"] == 8
 assert done["gui"]["buttons"] == {"Start": False, "Pause": False, "Cancel": False}
 rows = gui.state(rows=True)["snapshot"]["rows"]
 assert [(r["id"], r["status"], r["attempts"]) for r in rows] == [
  (f"t{i}", "completed", 1) for i in range(8)
 ]
 assert gui.quit() == 0  # every ticket completed
 assert "sleepy: 8/8 completed" in gui.log.read_text()
 # Window state was not written into the working folder.
 assert not list(tmp_path.glob("*.ini"))


@pytest.mark.gui
def test_pause_is_disabled_when_idle_and_after_done_and_space_toggles_it(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 gui = live_gui(sleep_pipeline(tmp_path, 4, 0.4, workers=1))
 state = gui.state()
 assert state["gui"]["buttons"]["Pause"] is False
 clicked = gui.click("Pause")  # a disabled button: the click lands and does nothing
 assert not clicked["acted"], clicked
 assert gui.state()["mma_status"] == "idle"
 assert not gui.key("Space")["acted"]  # nothing executes: Space does nothing either

 gui.click("Start")
 gui.wait_for("the run to execute", lambda s: s["gui"]["badge"] == "EXECUTING")
 pressed = gui.key("Space")
 assert pressed["action"]["label"] == "Pause" and within_a_frame(pressed["action"])
 state = gui.state()
 assert state["paused"] and "Space" in (state["gui"]["banner"] or ["", ""])[1]
 pressed = gui.key("Space")
 assert pressed["action"]["label"] == "Resume"
 assert within_a_frame(pressed["action"])

 state = gui.wait_for("the run to end", ended("DONE"), timeout=15)
 assert state["gui"]["buttons"]["Pause"] is False
 spawned = state["spawned"]
 assert not gui.click("Pause")["acted"]
 assert not gui.key("Space")["acted"]
 state = gui.state()
 assert state["mma_status"] == "done" and state["spawned"] == spawned == 4


@pytest.mark.gui
def test_cancel_then_start_carries_on_and_retry_and_queue_drive_the_details_pane(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 # `flaky` fails on its first attempt only (a marker file in the pipeline's folder); with
 # auto_queue off every ready ticket waits for Queue.
 (tmp_path / "flow.toml").write_text(
  "[pipeline]\n"
  'name = "flow"\n'
  "max_workers = 1\n"
  "auto_queue = false\n"
  "[[tickets]]\n"
  'id = "flaky"\n'
  "run = \"test -f tried || { touch tried; echo 'first try'; exit 3; }\"\n"
  "[[tickets]]\n"
  'id = "after"\n'
  "sleep = 0.1\n"
  'depends_on = ["flaky"]\n',
  encoding="utf-8",
 )
 gui = live_gui(tmp_path / "flow.toml", "--start")
 waiting = gui.wait_for(
  "flaky to await approval", lambda s: s["snapshot"]["awaiting_approval"] == ["flaky"]
 )
 assert waiting["mma_status"] == "executing" and waiting["spawned"] == 0

 assert gui.click("flaky")["ok"]  # select the row: the details pane offers Queue
 assert gui.state()["gui"]["buttons"].get("Queue") is True
 assert gui.click("Queue")["acted"]
 failed = gui.wait_for("flaky to fail", ended("ERROR"))
 assert failed["snapshot"]["counts"]["failed"] == 1
 assert failed["snapshot"]["counts"]["blocked"] == 1
 assert failed["gui"]["buttons"]["Retry"] is True
 assert failed["gui"]["buttons"]["Start"] is False  # nothing can run before a retry
 gui.screenshot("failed")
 rows = {r["id"]: r for r in gui.state(rows=True)["snapshot"]["rows"]}
 assert rows["flaky"]["exit_code"] == 3 and "first try" in rows["flaky"]["output"]

 assert gui.click("Retry")["acted"]  # a new run: flaky passes, then `after` awaits approval
 gui.wait_for("after to await approval", lambda s: s["snapshot"]["awaiting_approval"] == ["after"])
 assert gui.click("Cancel")["acted"]
 stopped = gui.wait_for("the run to stop", lambda s: not s["gui"]["run_active"])
 assert stopped["mma_status"] == "idle"
 assert stopped["gui"]["buttons"]["Start"] is True

 assert gui.click("Start")["acted"]
 gui.wait_for("after to await approval", lambda s: s["snapshot"]["awaiting_approval"])
 gui.click("after")
 gui.click("Queue")
 done = gui.wait_for("the run to end", ended("DONE"))
 assert done["gui"]["runs"] == 3
 rows = {r["id"]: r for r in gui.state(rows=True)["snapshot"]["rows"]}
 assert (rows["flaky"]["attempts"], rows["after"]["attempts"]) == (2, 1)


@pytest.mark.gui
def test_closing_the_window_and_opening_it_again_resumes_where_it_stopped(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 pipeline = sleep_pipeline(tmp_path, 6, 0.5, workers=2)
 gui = live_gui(pipeline, "--start")
 gui.wait_for("two tickets completed", lambda s: s["snapshot"]["counts"]["completed"] >= 2)
 gui.click("Pause")
 gui.wait_for("the workers to finish", lambda s: s["paused"] and not s["snapshot"]["running"])
 before = gui.state(rows=True)["snapshot"]
 assert gui.quit() == 130  # stopped before the end
 assert "state: sleepy.state.db" in gui.log.read_text()

 again = live_gui(pipeline)
 state = again.state(rows=True)
 assert "resumed" in state["gui"]["note"]
 # Completed tickets stay completed; the pause flag survived the restart.
 assert state["snapshot"]["counts"] == before["counts"]
 assert state["paused"] and state["gui"]["buttons"]["Start"] is True
 assert again.click("Start")["acted"]
 paused = again.wait_for("the run to show paused", lambda s: s["gui"]["badge"] == "PAUSED")
 assert paused["gui"]["banner"] and paused["spawned"] == 0  # a paused state starts paused
 assert again.click("Resume")["acted"]
 again.wait_for("the run to end", ended("DONE"))
 rows = again.state(rows=True)["snapshot"]["rows"]
 assert [(r["status"], r["attempts"]) for r in rows] == [("completed", 1)] * 6  # once each
 assert again.quit() == 0


@pytest.mark.gui
def test_pause_and_resume_from_another_terminal_show_in_the_window(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 pipeline = sleep_pipeline(tmp_path, 6, 0.5, workers=2)
 gui = live_gui(pipeline, "--start")
 gui.wait_for("the run to execute", lambda s: s["gui"]["badge"] == "EXECUTING")

 def control(*args: str) -> None:
  command = [sys.executable, "-m", "conductor", *args, str(pipeline)]
  result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result

 control("pause", "--reason", "rate limit")
 paused = gui.wait_for(
  "the window to show the pause and its reason",
  lambda s: s["gui"]["badge"] == "PAUSED" and s["snapshot"]["paused"],
 )
 assert "rate limit" in paused["gui"]["banner"][1]
 control("resume")
 gui.wait_for("the run to end", ended("DONE"), timeout=15)


@pytest.mark.gui
def test_a_state_in_use_or_not_a_state_is_refused_in_one_line(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 pipeline = sleep_pipeline(tmp_path, 2, 0.1)
 live_gui(pipeline)  # owns sleepy.state.db while its window is open
 (tmp_path / "junk.db").write_text("not a conductor state", encoding="utf-8")
 for extra, message in (([], "is in use by conductor pid"), (["--state", "junk.db"], "junk.db")):
  result = subprocess.run(
   [sys.executable, "-m", "conductor", "gui", str(pipeline), *extra],
   cwd=tmp_path,
   capture_output=True,
   text=True,
   timeout=60,
   check=False,
  )
  assert result.returncode == 2, result
  assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.gui
def test_hook_listens_on_loopback_only(live_gui: GuiFactory, tmp_path: Path) -> None:
 gui = live_gui(sleep_pipeline(tmp_path, 1, 0.1))
 tcp = Path("/proc/net/tcp")
 if not tcp.exists():
  pytest.skip("no /proc/net/tcp to read listening sockets from")
 listening = [
  line.split()[1] for line in tcp.read_text().splitlines()[1:] if line.split()[3] == "0A"
 ]
 ours = [local for local in listening if int(local.split(":")[1], 16) == gui.port]
 assert ours == ["0100007F:" + f"{gui.port:04X}"]  # 127.0.0.1, nothing else


@pytest.mark.parametrize(
 ("args", "message"),
 [
  ([], "no display to open the dashboard on"),
  (["--size", "huge"], "--size 'huge': expected WIDTHxHEIGHT"),
  (["--size", "200x100"], "needs at least 400x300"),
  (["--test-hook", "no-such-folder/port"], "its folder does not exist"),
 ],
)
def test_user_errors_exit_2_with_one_line_and_no_window(
 tmp_path: Path, args: list[str], message: str
) -> None:
 if sys.platform != "linux":
  pytest.skip("the no-display case is about X11 / Wayland")
 env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
 pipeline = sleep_pipeline(tmp_path, 1, 0.1)
 result = subprocess.run(
  [sys.executable, "-m", "conductor", "gui", str(pipeline), *args],
  env=env,
  cwd=tmp_path,
  capture_output=True,
  text=True,
  timeout=60,
  check=False,
 )
 assert result.returncode == 2, result
 assert result.stderr.startswith("conductor: ") and result.stderr.count("\n") == 1, result.stderr
 assert message in result.stderr


def test_filter_matches_id_description_and_command_and_narrows_by_status(tmp_path: Path) -> None:
 # The filter is plain Python over the snapshot: no window needed.
 from conductor.gui._dashboard import STATUS_FILTERS, Dashboard
 from conductor.gui._runs import PipelineRunner
 from conductor.pipeline import pipeline_from_dict

 pipeline = pipeline_from_dict(
  {
   "pipeline": {"max_workers": 1, "auto_queue": False},
   "tickets": [
    {"id": "build", "run": "make all", "description": "Compile"},
    {"id": "lint", "sleep": 0.1, "description": "Static checks"},
    {"id": "docs", "sleep": 0.1, "depends_on": ["build"], "description": "Build the docs"},
   ],
  },
  path=None,
 )
 runner = PipelineRunner(
  pipeline,
  max_workers=1,
  backend="asyncio",
  state=str(tmp_path / "filter.state.db"),
  fresh=False,
  on_change=lambda: None,
 )
 runner.open()
 try:
  dashboard = Dashboard(runner)
  snap = runner.latest
 finally:
  runner.close()

 def shown(text: str, status: str = "") -> list[str] | None:
  dashboard.filter_text = text
  dashboard.status_filter = [value for _, value in STATUS_FILTERS].index(status)
  view = dashboard._filtered(snap, now=0.0)
  return None if view is None else [snap.rows[i].id for i in view]

 assert shown("") is None  # no filter: every row, without building a list
 assert shown("BUILD") == ["build", "docs"]  # the id, and a description, any case
 assert shown("make") == ["build"]  # the command
 assert shown("static") == ["lint"]
 assert shown("", "todo") == ["build", "lint", "docs"]
 assert shown("", "completed") == []
 assert shown("", "awaiting") == ["build", "lint"]  # ready, waiting for Queue
 assert shown("li", "awaiting") == ["lint"]
