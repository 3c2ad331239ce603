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
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chat_server import ChatServer, RateLimited, Reply

if TYPE_CHECKING:
 from conductor import Snapshot
 from conductor.gui._table import TicketTable

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
 """A running `conductor gui` process and its test hook (port and token from its port file)."""

 def __init__(self, proc: subprocess.Popen[bytes], port_file: Path, log: Path, shots: Path) -> None:
  info = json.loads(port_file.read_text(encoding="utf-8"))
  self.proc = proc
  self.port: int = info["port"]
  self.token: str = info["token"]
  self.port_file = port_file
  self.log = log
  self.shots = shots  # the hook's screenshot folder: the port file's

 def request(
  self,
  method: str,
  path: str,
  body: dict[str, Any] | None = None,
  *,
  headers: dict[str, str] | None = None,
 ) -> tuple[int, Any]:
  """(HTTP status, JSON answer). `headers` replaces the token's Authorization header."""
  data = json.dumps(body or {}).encode() if method == "POST" else None
  sent = {"Authorization": f"Bearer {self.token}"} if headers is None else headers
  request = urllib.request.Request(
   f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers=sent
  )
  try:
   with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
    return response.status, json.loads(response.read())
  except urllib.error.HTTPError as exc:
   with exc:
    return exc.code, json.loads(exc.read())

 def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
  return self.request(method, path, body)[1]

 def raw(self, request: bytes) -> int:
  """Send `request` as is on a connection of its own; return the answer's status code."""
  with socket.create_connection(("127.0.0.1", self.port), timeout=HTTP_TIMEOUT) as sock:
   sock.sendall(request)
   sock.shutdown(socket.SHUT_WR)
   answer = b""
   while chunk := sock.recv(65536):
    answer += chunk
  match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
  assert match, answer[:300]
  return int(match[1])

 def state(self, *, rows: bool = False) -> State:
  result: State = self._call("GET", "/state?rows=1" if rows else "/state")
  return result

 def click(self, label: str) -> State:
  result: State = self._call("POST", "/click", {"label": label})
  return result

 def key(self, key: str) -> State:
  result: State = self._call("POST", "/key", {"key": key})
  return result

 def type(self, label: str, text: str) -> State:
  """Type `text` into the input field `label` (what it held is replaced)."""
  result: State = self._call("POST", "/type", {"label": label, "text": text})
  assert result["ok"], result
  return result

 def mouse(self, **where: Any) -> State:
  """Move the mouse (`pos=[x, y]`, or `label=...`), optionally `wheel=-1`; the answer has
  the tooltip the frame after showed."""
  result: State = self._call("POST", "/mouse", where)
  assert result["ok"], result
  return result

 def screenshot(self, name: str) -> Path:
  result = self._call("POST", "/screenshot", {"name": f"{name}.png"})
  assert result["ok"], result
  path = self.shots / f"{name}.png"
  assert result["path"] == str(path)
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

 `port_file=` chooses the hook's port file (default: a new one in tmp_path); the hook
 writes screenshots into its folder. Teardown asks the window to close and waits for the
 process to exit.
 """
 require_display()
 started: list[tuple[Gui, Any]] = []

 def start(pipeline: Path, *args: str, port_file: Path | None = None) -> Gui:
  if port_file is None:
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
  # The hook renames its port file into place (replacing whatever was planted there).
  while port_file.is_symlink() or not port_file.exists():
   if proc.poll() is not None or time.monotonic() > deadline:
    proc.kill()
    proc.wait()
    out.close()
    pytest.fail(f"the dashboard did not start (exit {proc.returncode}):\n{log.read_text()}")
   time.sleep(0.02)  # waiting for another process to come up: bounded by the deadline
  gui = Gui(proc, port_file, log, port_file.parent)
  started.append((gui, out))
  return gui

 yield start
 for gui, out in started:
  gui.quit()
  out.close()


def ended(badge: str) -> Callable[[State], bool]:
 """The window shows the run ended with `badge` (its thread has finished too)."""
 return lambda s: s["gui"].get("badge") == badge and not s["gui"]["run_active"]


def in_its_frame(action: dict[str, Any]) -> bool:
 """Pause or Resume took effect on the GUI thread: the live mma_status read right after
 the click's command returned shows it, so the frame the click landed in draws it."""
 expected = {"Pause": "paused", "Resume": "executing", "Raise budget and resume": "executing"}[
  action["label"]
 ]
 return action["status_after"] == expected and action["effect_frame"] == action["frame"]


def banner_counts(lines: list[str]) -> int:
 """How many workers the banner says are finishing (0 for "all workers idle")."""
 drain = lines[2]
 if "·   all workers idle" in drain:
  return 0
 match = re.search(r"·   (\d+) workers? finishing", drain)
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
 # Paused in the click's own frame: the GUI thread closes the gate itself.
 assert in_its_frame(clicked["action"]), clicked["action"]
 paused = gui.wait_for("a snapshot taken after the pause", lambda s: s["snapshot"]["paused"])
 paused_at = time.monotonic()
 spawned = paused["spawned"]
 assert paused["mma_status"] == "paused"
 assert paused["gui"]["badge"] == "PAUSED"
 assert "Resume" in paused["gui"]["buttons"] and "Pause" not in paused["gui"]["buttons"]
 banner = paused["gui"]["banner"]
 assert banner[0] == "PAUSED"
 assert banner[1] == "paused by you: resume by hand  —  paused from the dashboard", banner
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
 assert resumed["acted"] and in_its_frame(resumed["action"]), resumed
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
def test_pause_is_disabled_when_idle_start_after_done_and_space_toggles_pause(
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
 assert pressed["action"]["label"] == "Pause" and in_its_frame(pressed["action"])
 state = gui.state()
 assert state["paused"] and "Space" in (state["gui"]["banner"] or ["", ""])[1]
 pressed = gui.key("Space")
 assert pressed["action"]["label"] == "Resume"
 assert in_its_frame(pressed["action"])

 state = gui.wait_for("the run to end", ended("DONE"), timeout=15)
 assert state["gui"]["buttons"] == {"Start": False, "Pause": False, "Cancel": False}
 spawned = state["spawned"]
 assert not gui.click("Pause")["acted"]
 assert not gui.key("Space")["acted"]
 # Start is drawn disabled too, and says why: nothing is left to run.
 assert not gui.click("Start")["acted"]
 hovered = gui.mouse(label="Start")
 assert hovered["tooltip"] == "Nothing to start: every ticket is completed", hovered
 state = gui.state()
 assert state["mma_status"] == "done" and state["spawned"] == spawned == 4
 assert state["gui"]["buttons"]["Start"] is False and state["gui"]["runs"] == 1
 assert state["gui"]["strip"][0] == "DONE"
 assert state["gui"]["strip"][1].startswith("all 4 tickets completed in ")


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
 assert "resuming" in state["gui"]["note"]
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
 if not hasattr(os, "mkfifo"):
  pytest.skip("needs a FIFO to hold the running tickets")
 # Two tickets hold the run until the test writes a line each into `gate`: the pause from
 # another terminal lands while they run, however long that terminal takes to start.
 os.mkfifo(tmp_path / "gate")
 lines = ['[pipeline]\nname = "held"\nmax_workers = 2\n']
 lines += [f'[[tickets]]\nid = "hold{i}"\nrun = "read line < gate"\n' for i in range(2)]
 lines += [f'[[tickets]]\nid = "s{i}"\nsleep = 0.1\n' for i in range(3)]
 pipeline = tmp_path / "held.toml"
 pipeline.write_text("\n".join(lines), encoding="utf-8")
 gui = live_gui(pipeline, "--start")
 gui.wait_for("the run to execute", lambda s: len(s["snapshot"]["running"]) == 2)

 def control(*args: str) -> None:
  command = [sys.executable, "-m", "conductor", *args, str(pipeline)]
  result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result

 control("pause", "--reason", "rate limit")
 paused = gui.wait_for(
  "the window to show the pause and its reason",
  lambda s: s["gui"]["badge"] == "PAUSED" and s["snapshot"]["paused"],
 )
 assert paused["gui"]["banner"][1] == "paused by you: resume by hand  —  rate limit"
 control("resume")
 # Read-write, so opening never waits for a reader; held open until the end, so the second
 # line waits in the pipe for the second ticket.
 gate = os.open(tmp_path / "gate", os.O_RDWR | os.O_NONBLOCK)
 try:
  os.write(gate, b"1\n2\n")
  gui.wait_for("the run to end", ended("DONE"), timeout=15)
 finally:
  os.close(gate)


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


def no_traceback(gui: Gui) -> None:
 """The process has exited and printed no traceback (its stderr is in its log)."""
 assert gui.proc.poll() is not None
 log = gui.log.read_text(errors="replace")
 assert "Traceback" not in log, log
 assert gui.token not in log


@pytest.mark.gui
def test_hook_port_file_is_owner_only_json_and_replaces_a_planted_symlink(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 victim = tmp_path / "victim.txt"
 victim.write_text("keep me\n", encoding="utf-8")
 port_file = tmp_path / "port"
 port_file.symlink_to(victim)  # planted: the hook must not write through it
 gui = live_gui(sleep_pipeline(tmp_path, 1, 0.1), port_file=port_file)
 assert victim.read_text(encoding="utf-8") == "keep me\n"
 info = port_file.lstat()
 assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
 assert info.st_uid == os.getuid()
 data = json.loads(port_file.read_text(encoding="utf-8"))
 assert set(data) == {"port", "token"} and len(data["token"]) >= 40
 assert gui.state()["mma_status"] == "idle"  # the token works
 assert not list(tmp_path.glob(".port*"))  # no temporary file left beside it
 gui.quit()
 assert not port_file.exists()  # removed at close
 no_traceback(gui)


@pytest.mark.gui
def test_hook_refuses_every_request_without_its_token_and_does_nothing(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 gui = live_gui(sleep_pipeline(tmp_path, 4, 30.0, workers=2), "--start")
 gui.wait_for("two workers running", lambda s: len(s["snapshot"]["running"]) == 2)
 token = gui.token
 wrong: list[dict[str, str]] = [
  {},
  {"Authorization": ""},
  {"Authorization": "Bearer"},
  {"Authorization": "Bearer " + "x" * len(token)},
  {"Authorization": f"Bearer {token}x"},
  {"Authorization": f"Bearer {token[:-1]}"},
  {"Authorization": f"bearer {token}"},
  {"Authorization": token},
  {"Authorization": f"Basic {token}"},
  {"Authorization": "Bearer \u00e9t\u00e9"},  # not ASCII: still just a wrong token
 ]
 for headers in wrong:
  for method, path, body in (
   ("POST", "/click", {"label": "Pause"}),
   ("POST", "/key", {"key": "Space"}),
   ("POST", "/type", {"label": "##filter", "text": "t1"}),
   ("POST", "/screenshot", {"name": "sneaky.png"}),
   ("POST", "/quit", None),
   ("POST", "/frames/reset", None),
   ("GET", "/state", None),
   ("GET", "/frames", None),
  ):
   status, answer = gui.request(method, path, body, headers=headers)
   assert status == 401, (headers, path, answer)
   assert answer == {
    "ok": False,
    "error": "give the token from the port file: Authorization: Bearer TOKEN",
   }
 # A token in the query string is no token either.
 assert gui.request("GET", f"/state?token={token}", headers={})[0] == 401

 # Nothing happened: no pause, no key, no screenshot, the window is still open.
 state = gui.state()
 assert state["mma_status"] == "executing" and not state["paused"], state
 assert state["gui"]["buttons"]["Pause"] is True and state["spawned"] == 2
 assert not (gui.shots / "sneaky.png").exists()
 assert gui.proc.poll() is None
 assert gui.click("Pause")["acted"]  # the same click with the token does act
 assert gui.state()["paused"]
 gui.quit()
 no_traceback(gui)


@pytest.mark.gui
def test_hook_writes_screenshots_only_by_plain_name_inside_its_folder(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 shots = tmp_path / "shots"
 shots.mkdir()
 victim = tmp_path / "victim.conf"
 victim.write_text("precious\n", encoding="utf-8")
 (shots / "link.png").symlink_to(victim)
 (shots / "folder.png").mkdir()
 gui = live_gui(sleep_pipeline(tmp_path, 1, 0.1), port_file=shots / "port")
 before_outside = sorted(p.name for p in tmp_path.iterdir())
 refused: list[object] = [
  "../escape.png",
  "../../escape.png",
  str(tmp_path / "absolute.png"),
  str(victim),
  "sub/x.png",
  "sub\\x.png",
  "x.txt",
  "x.png.txt",
  "x",
  ".png",
  ".hidden.png",
  "..png",
  "a..png",
  "nul\x00.png",
  "new\nline.png",
  "~/x.png",
  "x" * 300 + ".png",
  "",
  None,
  5,
  ["x.png"],
  "link.png",  # an existing symlink (to the victim)
  "folder.png",  # an existing folder
 ]
 for name in refused:
  status, answer = gui.request("POST", "/screenshot", {"name": name})
  assert status == 400 and not answer["ok"], (name, answer)
 # The old API (any absolute path) is gone.
 status, _ = gui.request("POST", "/screenshot", {"path": str(tmp_path / "old.png")})
 assert status == 400

 assert victim.read_text(encoding="utf-8") == "precious\n"
 assert (shots / "link.png").is_symlink() and (shots / "folder.png").is_dir()
 assert sorted(p.name for p in tmp_path.iterdir()) == before_outside
 assert sorted(p.name for p in shots.iterdir()) == ["folder.png", "link.png", "port"]

 # A plain name is written there, and again over the file it wrote.
 first = gui.screenshot("window")
 assert first.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
 assert gui.screenshot("window") == first
 assert sorted(p.name for p in shots.iterdir()) == ["folder.png", "link.png", "port", "window.png"]
 gui.quit()
 no_traceback(gui)


@pytest.mark.gui
def test_hook_screenshots_go_into_the_folder_chosen_at_start(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 # Needs `conductor gui --test-hook-shots DIR` (cli.py passes it on as args.test_hook_shots).
 chosen = tmp_path / "chosen"
 chosen.mkdir()
 gui = live_gui(sleep_pipeline(tmp_path, 1, 0.1), "--test-hook-shots", "chosen")
 status, answer = gui.request("POST", "/screenshot", {"name": "here.png"})
 assert status == 200 and answer["path"] == str(chosen / "here.png"), answer
 assert (chosen / "here.png").stat().st_size > 1000
 assert not (tmp_path / "here.png").exists()
 status, _ = gui.request("POST", "/screenshot", {"name": "../here.png"})
 assert status == 400
 gui.quit()
 no_traceback(gui)


def http_request(method: str, path: str, token: str, extra: str = "", body: bytes = b"") -> bytes:
 head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
 return (head + extra + "\r\n").encode() + body


@pytest.mark.gui
def test_hook_answers_malformed_requests_with_4xx_and_prints_no_traceback(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 gui = live_gui(sleep_pipeline(tmp_path, 2, 0.1))
 token = gui.token
 # A client that sends half a request and stalls holds no one up.
 stalled = socket.create_connection(("127.0.0.1", gui.port), timeout=HTTP_TIMEOUT)
 stalled.sendall(b"POST /click HTTP/1.1\r\nContent-Length: 50\r\n")

 def post(body: bytes, extra: str = "", path: str = "/click") -> bytes:
  return http_request("POST", path, token, f"Content-Length: {len(body)}\r\n" + extra, body)

 cases: list[tuple[bytes, int]] = [
  (http_request("GET", "/frames?since=abc", token), 400),
  (http_request("GET", "/frames?since=-1", token), 400),
  (http_request("GET", "/frames?since=1.5", token), 400),
  (http_request("GET", "/frames?since=" + "9" * 5000, token), 400),
  (http_request("GET", "/frames?since=1&since=2", token), 400),
  (http_request("GET", "/state?rows=maybe", token), 400),
  (http_request("GET", "/state?" + "&".join(f"k{i}=1" for i in range(50)), token), 400),
  (http_request("GET", "/nope", token), 404),
  (http_request("POST", "/nope", token), 404),
  (http_request("PUT", "/state", token), 405),
  (http_request("DELETE", "/quit", token), 405),
  (http_request("POST", "/click", token, "Content-Length: abc\r\n"), 400),
  (http_request("POST", "/click", token, "Content-Length: -5\r\n"), 400),
  (http_request("POST", "/click", token, "Content-Length: 1e3\r\n"), 400),
  (http_request("POST", "/click", token, "Content-Length: 2\r\nContent-Length: 2\r\n"), 400),
  (http_request("POST", "/click", token, "Content-Length: 1000000000\r\n"), 413),
  (http_request("POST", "/click", token, "Transfer-Encoding: chunked\r\n"), 411),
  (http_request("POST", "/click", token, "Content-Length: 100\r\n", b'{"la'), 400),
  (post(b"{"), 400),
  (post(b"[" * 30_000 + b"]" * 30_000), 400),  # RecursionError inside json
  (post(b'{"label": "\xff\xfe"}'), 400),  # not UTF-8
  (post(b"[1, 2]"), 400),
  (post(b"null"), 400),
  (post(b'{"label": 5}'), 400),
  (post(b'{"label": ""}'), 400),
  (post(b'{"key": "NoSuchKey"}', path="/key"), 400),
  (post(b'{"key": ["Space"]}', path="/key"), 400),
  (post(b"{}", path="/screenshot"), 400),
  (post(b'{"label": "##budget"}', path="/type"), 400),
  (post(b'{"text": "5"}', path="/type"), 400),
  (post(b'{"label": "##budget", "text": 5}', path="/type"), 400),
  (post(b"{}", path="/mouse"), 400),
  (post(b'{"pos": [1]}', path="/mouse"), 400),
  (post(b'{"pos": [1, "2"]}', path="/mouse"), 400),
  (post(b'{"pos": [1e309, 2]}', path="/mouse"), 400),  # infinity
  (post(b'{"pos": [true, 2]}', path="/mouse"), 400),
  (post(b'{"pos": [1, 2], "wheel": "down"}', path="/mouse"), 400),
  (b"HELLO\r\n\r\n", 400),
  (b"POST /click\r\n\r\n", 400),  # HTTP/0.9 had GET only
  (b"GET /state\r\n\r\n", 401),  # HTTP/0.9: no headers, so no token
  (b"GET /state HTTP/9.9\r\n\r\n", 400),
  (b"GET /state HTTP/1.1\r\n" + b"X-Long: " + b"y" * 70_000 + b"\r\n\r\n", 431),
  (b"GET /state HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
 ]
 for request, expected in cases:
  status = gui.raw(request)
  assert status == expected, (request[:120], status)
  assert 400 <= status < 500
 # Still serving, and nothing was clicked.
 state = gui.state()
 assert state["mma_status"] == "idle" and state["gui"]["runs"] == 0

 # A flood of idle connections: those past the limit are answered 503 at once, in order
 # (the stalled one above holds a slot too); closing them frees the slots.
 from conductor.gui._hook import MAX_CLIENTS

 idle = [
  socket.create_connection(("127.0.0.1", gui.port), timeout=HTTP_TIMEOUT)
  for _ in range(MAX_CLIENTS + 3)
 ]
 for sock in idle[MAX_CLIENTS - 1 :]:
  assert sock.recv(100).startswith(b"HTTP/1.0 503 "), "over the limit: answered at once"
 for sock in [*idle, stalled]:
  sock.close()
 deadline = time.monotonic() + 10
 while gui.raw(http_request("GET", "/state", token)) != 200:
  assert time.monotonic() < deadline, "the slots were never freed"
  time.sleep(0.02)  # their threads are ending in the other process: bounded, see the deadline
 assert gui.quit() == 130
 no_traceback(gui)


@pytest.mark.gui
def test_a_dashboard_reopened_on_a_paused_state_shows_when_the_pause_began(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 pipeline = sleep_pipeline(tmp_path, 3, 0.1)
 live_gui(pipeline).quit()  # makes the state, as any first window does
 state_file = tmp_path / "sleepy.state.db"
 paused = subprocess.run(
  [sys.executable, "-m", "conductor", "pause", "--state", str(state_file), "--reason", "lunch"],
  capture_output=True,
  text=True,
  timeout=60,
  check=False,
 )
 assert paused.returncode == 0, paused
 # A pause that began a known time ago: an hour before it was written.
 with contextlib.closing(sqlite3.connect(state_file)) as db, db:
  db.execute("UPDATE pause SET since = since - 3600")
  (since,) = db.execute("SELECT since FROM pause WHERE paused = 1").fetchone()

 gui = live_gui(pipeline)
 state = gui.state()
 assert state["paused"] and state["snapshot"]["paused_at"] == since
 assert gui.click("Start")["acted"]
 shown = gui.wait_for("the run to show paused", lambda s: s["gui"]["badge"] == "PAUSED")
 assert shown["snapshot"]["paused_at"] == since
 began = time.strftime("%H:%M:%S", time.localtime(since))
 banner = shown["gui"]["banner"]
 assert banner[1] == "paused by you: resume by hand  —  lunch", banner
 assert re.match(rf"since {began} \(1:00:\d\d ago\)   ·   all workers idle", banner[2]), banner
 gui.quit()
 no_traceback(gui)


def alive(pid: int) -> bool:
 """A process with this pid exists and is not a zombie waiting to be reaped."""
 try:
  fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
 except (FileNotFoundError, ProcessLookupError):
  return False
 return fields[0] != "Z"


@pytest.mark.gui
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_closes_the_dashboard_like_its_close_button(
 live_gui: GuiFactory, tmp_path: Path, backend: str
) -> None:
 if not Path("/proc/self/stat").exists():
  pytest.skip("needs /proc to look for the ticket's process")
 (tmp_path / "long.toml").write_text(
  '[pipeline]\nname = "long"\n[[tickets]]\nid = "long"\nrun = "echo $$ > long.pid; exec sleep 600"\n',
  encoding="utf-8",
 )
 gui = live_gui(tmp_path / "long.toml", "--start", "--backend", backend)
 gui.wait_for("the ticket to run", lambda s: bool(s["snapshot"]["running"]))
 pid_file = tmp_path / "long.pid"
 deadline = time.monotonic() + 10
 while not pid_file.exists() or not pid_file.read_text().endswith("\n"):
  assert time.monotonic() < deadline, "the ticket never wrote its pid"
  time.sleep(0.02)  # waiting for the ticket's shell, bounded by the deadline
 pid = int(pid_file.read_text())
 assert alive(pid)

 gui.proc.send_signal(signal.SIGTERM)
 assert gui.proc.wait(timeout=30) == 128 + signal.SIGTERM
 assert not alive(pid), "the ticket's process was left running"
 no_traceback(gui)
 assert "long: 0/1 completed" in gui.log.read_text()
 # The state was committed and released: any SQLite client reads it now.
 with contextlib.closing(sqlite3.connect(tmp_path / "long.state.db")) as db:
  status, attempts = db.execute(
   "SELECT status, attempts FROM ticket_state WHERE id = 'long'"
  ).fetchone()
  events = [
   e for (e,) in db.execute("SELECT event FROM history WHERE ticket = 'long' ORDER BY seq")
  ]
 assert (status, attempts) == ("todo", 1)
 assert events == ["in_progress", "interrupted"], events


@pytest.mark.gui
@pytest.mark.parametrize(
 "sig", [pytest.param(s, id=s.name) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)]
)
def test_a_signal_closes_an_idle_dashboard(
 live_gui: GuiFactory, tmp_path: Path, sig: signal.Signals
) -> None:
 # Idle: nothing moves, the GUI thread sleeps in GLFW; the signal must still wake it.
 gui = live_gui(sleep_pipeline(tmp_path, 2, 0.1))
 assert gui.state()["mma_status"] == "idle"
 gui.proc.send_signal(sig)
 assert gui.proc.wait(timeout=15) == 128 + sig
 no_traceback(gui)
 assert released(tmp_path / "sleepy.toml")


def released(pipeline: Path) -> bool:
 """The state is free: `conductor status` answers from the file, not from a live run."""
 result = subprocess.run(
  [sys.executable, "-m", "conductor", "status", str(pipeline), "--json"],
  capture_output=True,
  text=True,
  timeout=60,
  check=False,
 )
 return result.returncode == 0 and json.loads(result.stdout).get("live") is False


@pytest.mark.parametrize(
 ("args", "message"),
 [
  ([], "no display to open the dashboard on"),
  (["--size", "huge"], "--size 'huge': expected WIDTHxHEIGHT"),
  (["--size", "200x100"], "needs at least 400x300"),
  (["--test-hook", "no-such-folder/port"], "its folder does not exist"),
  (["--test-hook", "port", "--test-hook-shots", "nowhere"], "--test-hook-shots nowhere: no such"),
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


def whole(length: float, step: float) -> bool:
 """`length` is a whole number of `step`s (to the pixel's float noise)."""
 return abs(length / step - round(length / step)) < 1e-6


@pytest.mark.gui
def test_lists_show_whole_rows_and_cut_words_with_an_ellipsis_and_stay_put_on_pause(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 words = "compile the generated protocol buffers then link every service binary against them"
 lines = ['[pipeline]\nname = "long"\nmax_workers = 2\n']
 lines += [
  f'[[tickets]]\nid = "t{i:02d}"\nsleep = 0.3\ndescription = "step {i} {words}"\n'
  for i in range(60)
 ]
 (tmp_path / "long.toml").write_text("\n".join(lines), encoding="utf-8")
 gui = live_gui(tmp_path / "long.toml")
 shown = gui.state()["gui"]
 # Before a run, the state line says what opening the state found.
 assert shown["note"] == "state: long.state.db (new)"

 # A description wider than its column is cut after a whole word and ends with "…"; the
 # mouse over it shows the whole text.
 cells = shown["cells"]
 assert len(cells) > 10 and all(c["text"] != c["full"] for c in cells), cells
 for cell in cells:
  kept = cell["text"].removesuffix("…")
  assert cell["text"].endswith("…") and cell["full"].startswith(kept), cell
  assert cell["full"][len(kept)] == " ", cell  # the next word is left out whole
 x0, y0, x1, y1 = cells[3]["rect"]
 assert gui.mouse(pos=[(x0 + x1) / 2, (y0 + y1) / 2])["tooltip"] == cells[3]["full"]

 # The table shows its header and whole rows, at the top and at any scroll; so does the
 # pending list (six lines and the five gaps between them).
 table = shown["layout"]["table"]
 header, row = table["rows"]
 x0, top, x1, bottom = table["rect"]
 assert bottom - top - header >= 10 * row and whole(bottom - top - header, row), table
 assert whole(table["scroll_max"], row), table
 pending = shown["layout"]["pending"]
 px0, ptop, px1, pbottom = pending["rect"]
 assert (pbottom - ptop + pending["gap"]) / pending["line"] == 6, pending
 assert whole(pending["scroll_max"], pending["line"]), pending
 gui.mouse(pos=[(x0 + x1) / 2, (top + bottom) / 2], wheel=-1)
 gui.mouse(pos=[(px0 + px1) / 2, (ptop + pbottom) / 2], wheel=-1)
 layout = gui.state()["gui"]["layout"]
 assert layout["table"]["scroll"] > 0 and whole(layout["table"]["scroll"], row), layout
 scrolled = layout["pending"]["scroll"]
 assert scrolled > 0 and whole(scrolled, pending["line"]), layout

 assert gui.click("Start")["acted"]
 running = gui.wait_for("two workers running", lambda s: len(s["snapshot"]["running"]) == 2)
 # Once a run has begun, "(new)" no longer describes the state: only its path is left.
 assert running["gui"]["note"] == "state: long.state.db"
 assert re.fullmatch(r"\d\d:\d\d run time", running["gui"]["clock"]), running["gui"]
 assert running["gui"]["strip"][0] == "RUNNING"

 # Pausing shows the banner in the strip kept for it: nothing below moves.
 clicked = gui.click("Pause")
 assert clicked["acted"] and in_its_frame(clicked["action"]), clicked
 paused = gui.state()
 assert paused["gui"]["banner"] and paused["gui"]["strip"] == paused["gui"]["banner"]
 assert paused["gui"]["layout"]["strip"] == running["gui"]["layout"]["strip"]
 assert paused["gui"]["layout"]["table"]["rect"] == running["gui"]["layout"]["table"]["rect"]
 assert paused["gui"]["layout"]["pending"]["rect"] == running["gui"]["layout"]["pending"]["rect"]
 # Run time stops at the pause, also while the workers running then finish; the header
 # says how long the pause has lasted.
 assert re.fullmatch(r"\d\d:\d\d run time · paused \d\d:\d\d", paused["gui"]["clock"])
 first = gui.wait_for("a snapshot taken after the pause", lambda s: s["snapshot"]["paused"])
 drained = gui.wait_for("the workers to finish", lambda s: not s["snapshot"]["finishing"])
 assert drained["snapshot"]["elapsed"] == first["snapshot"]["elapsed"]
 assert drained["snapshot"]["counts"]["in_progress"] == 0

 assert gui.click("Resume")["acted"]
 gui.wait_for("the run to end", ended("DONE"), timeout=30)
 assert gui.quit() == 0
 closing = gui.log.read_text().splitlines()[-1]
 assert closing.endswith("; state: long.state.db"), closing


@pytest.mark.gui
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_pause_closes_the_gate_on_the_gui_thread_while_the_engine_loop_is_blocked(
 live_gui: GuiFactory, tmp_path: Path, backend: str
) -> None:
 if not hasattr(os, "mkfifo"):
  pytest.skip("needs a FIFO to hold the engine's loop")
 os.mkfifo(tmp_path / "release")
 # `hold` blocks the engine's whole event loop (a read that waits for the test), as user
 # code that never awaits does. A pause must not need that loop.
 (tmp_path / "hold.py").write_text(
  "import os\n"
  "\n"
  "async def hold(ticket):\n"
  "    fd = os.open('release', os.O_RDWR)\n"
  "    open('holding', 'w').close()\n"
  "    try:\n"
  "        return os.read(fd, 1).decode()\n"
  "    finally:\n"
  "        os.close(fd)\n",
  encoding="utf-8",
 )
 lines = [
  '[pipeline]\nname = "held"\nmax_workers = 1\n[[tickets]]\nid = "hold"\ncall = "hold:hold"\n'
 ]
 lines += [f'[[tickets]]\nid = "s{i}"\nsleep = 0.1\n' for i in range(3)]
 (tmp_path / "held.toml").write_text("\n".join(lines), encoding="utf-8")
 gui = live_gui(tmp_path / "held.toml", "--start", "--backend", backend)
 holding = tmp_path / "holding"
 gui.wait_for(
  "the holding ticket to block the loop",
  lambda s: holding.exists() or s["snapshot"]["counts"]["failed"] > 0,
  timeout=30,
 )
 assert holding.exists(), gui.state(rows=True)["snapshot"]["rows"]

 clicked = gui.click("Pause")
 assert clicked["acted"] and in_its_frame(clicked["action"]), clicked
 assert clicked["applied_ms"] >= 0  # click -> gate closed, measured on the GUI thread
 state = gui.state()
 assert state["paused"] and state["mma_status"] == "paused" and state["gui"]["badge"] == "PAUSED"
 # The loop has not run since: the snapshot the window drew still predates the pause.
 assert not state["snapshot"]["paused"] and state["spawned"] == 1

 release = os.open(tmp_path / "release", os.O_WRONLY | os.O_NONBLOCK)
 os.write(release, b"x")
 os.close(release)
 idle = gui.wait_for(
  "the loop to catch up and the held ticket to finish",
  lambda s: s["snapshot"]["paused"] and s["snapshot"]["counts"]["completed"] == 1,
 )
 # A slot is free and three tickets are ready, yet nothing started: the gate was closed.
 assert idle["spawned"] == 1 and idle["snapshot"]["running_at_pause"] == ["hold"]
 assert idle["snapshot"]["ready"] == ["s0", "s1", "s2"]
 resumed = gui.click("Resume")
 assert resumed["acted"] and in_its_frame(resumed["action"]), resumed
 done = gui.wait_for("the run to end", ended("DONE"), timeout=15)
 assert done["spawned"] == 4
 assert gui.quit() == 0


def test_output_lines_are_cut_at_spaces_and_read_from_the_text_when_drawn() -> None:
 from conductor.gui._runs import wrap_lines

 text = "short\r\nword word word word\n\tx\tend\n" + "y" * 25 + "\n\nlast line   cut  here"
 lines = wrap_lines(text, 10)
 assert list(lines) == [
  "short",  # the line end, \r\n too, is not shown
  "word word",  # cut after the last space that fits; the space is not shown
  "word word",
  "    x",  # tabs are spaces
  "end",
  "yyyyyyyyyy",  # no space to cut at: cut inside the word
  "yyyyyyyyyy",
  "yyyyy",
  "",
  "last line",
  "cut  here",
 ]
 assert (len(lines), lines[-1], lines[1:3]) == (11, "cut  here", ["word word"] * 2)
 with pytest.raises(IndexError):
  lines[11]
 # A line's string is cut when it is read; a chunk of lines that all fit is only counted
 # until then, and then only the chunks read keep their lines' offsets.
 big = ("word " * 20 + "\n") * 10_000
 many = wrap_lines(big, 200)
 assert len(many) == 10_000 and not many._found
 assert many[5_000] == "word " * 20 and len(many._found) == 1
 assert list(wrap_lines("", 10)) == [] and list(wrap_lines("a\n", 10)) == ["a"]


def test_fit_text_cuts_after_a_whole_word_and_ends_with_an_ellipsis() -> None:
 from conductor.gui._widgets import fit_text

 def fit(text: str, width: int) -> str:
  return fit_text(text, width, len)  # one unit per character

 assert fit("fits exactly", 12) == "fits exactly"
 assert fit("the quick brown fox", 12) == "the quick…"  # not "the quick b…"
 assert fit("the quick brown fox", 11) == "the quick…"  # the cut falls on the space
 assert fit("one, two three", 7) == "one…"  # no dangling comma before the ellipsis
 assert fit("unbreakable-identifier-here", 10) == "unbreakab…"  # one word: cut inside it
 # A word boundary that far back would leave the cell nearly empty: cut inside the word.
 assert fit("to unbreakable-identifier", 10) == "to unbrea…"
 assert fit("anything", 1) == "…"
 assert fit("", 0) == ""


def filter_table(tmp_path: Path) -> tuple[TicketTable, Snapshot]:
 """A ticket table and the snapshot it filters; the filter is plain Python over the
 snapshot: no window needed."""
 from conductor.gui._dashboard import Dashboard
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
  return Dashboard(runner).table, runner.latest
 finally:
  runner.close()


def test_filter_matches_id_description_and_command_and_narrows_by_status(tmp_path: Path) -> None:
 from conductor.gui._table import STATUS_FILTERS

 table, snap = filter_table(tmp_path)

 def shown(text: str, status: str = "") -> list[str] | None:
  table.filter_text = text
  table.status_filter = [value for _, value in STATUS_FILTERS].index(status)
  view = table.filtered(snap, now=0.0)
  return None if view is None else [snap.rows[i].id for i in view]

 assert shown("") is None  # no filter: every row, without building a list
 assert shown("BUILD") == ["build", "docs"]  # the id, and a description, any case
 assert shown("make") == ["build"]  # the command
 assert shown("static") == ["lint"]
 assert shown("", "todo") == ["build", "lint", "docs"]
 assert shown("", "completed") == []
 assert shown("", "awaiting") == ["build", "lint"]  # ready, waiting for Queue
 assert shown("li", "awaiting") == ["lint"]


def test_a_status_filter_follows_the_rows_at_most_every_refresh(tmp_path: Path) -> None:
 import dataclasses

 from conductor import Status
 from conductor.gui._table import FILTER_REFRESH, STATUS_FILTERS

 table, snap = filter_table(tmp_path)
 built = dataclasses.replace(
  snap,
  rows=tuple(r._replace(status=Status.COMPLETED) if r.id == "build" else r for r in snap.rows),
 )

 def shown(snap: Snapshot, now: float) -> list[str]:
  view = table.filtered(snap, now)
  assert view is not None
  return [snap.rows[i].id for i in view]

 table.status_filter = [value for _, value in STATUS_FILTERS].index("todo")
 assert shown(snap, 0.0) == ["build", "lint", "docs"]
 assert shown(built, FILTER_REFRESH / 2) == ["build", "lint", "docs"]  # not yet
 assert shown(built, FILTER_REFRESH) == ["lint", "docs"]
 # What a text matches never changes: a text alone is not filtered again.
 table.status_filter, table.filter_text = 0, "build"
 view = table.filtered(built, 10.0)
 assert table.filtered(snap, 20.0) is view


def test_filter_runs_a_share_per_frame_and_shows_the_last_view_until_it_ends(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 # Steps of one row, two rows' worth a frame: three rows take frames, as 100,000 rows do.
 from conductor.gui import _table

 monkeypatch.setattr(_table, "FILTER_STEP", 1)
 monkeypatch.setattr(_table, "HAYSTACK_COST", 2)
 table, snap = filter_table(tmp_path)
 ids = [row.id for row in snap.rows]

 def frames(text: str) -> list[list[str] | None]:
  # What each frame shows, frame by frame, until the filtering has ended.
  table.filter_text = text
  shown = []
  while True:
   view = table.filtered(snap, now=0.0, budget=2)
   shown.append(None if view is None else [ids[i] for i in view])
   if table._job is None:
    return shown

 # The haystack (a row a frame), then the search (2 rows a frame), then the result.
 assert frames("build") == [None] * 4 + [["build", "docs"]]
 # Typing on searches the last hits only (2 rows), and the last view stays meanwhile.
 assert frames("build t") == [["build", "docs"], ["docs"]]
 # A new text searches every row again.
 assert frames("lint") == [["docs"], ["lint"]]
 # The default share filters a small table at once; so does no budget at all.
 table.filter_text = "static"
 assert table.filtered(snap, now=0.0, budget=_table.FILTER_BUDGET) == [ids.index("lint")]
 table.filter_text = "make"
 assert table.filtered(snap, now=0.0) == [ids.index("build")]


# -- agent tickets: a pipeline that pauses itself ----------------------------------------------


def agent_pipeline(
 folder: Path, base_url: str, tickets: list[str], *, budget: int | None = None
) -> Path:
 """A pipeline of agent tickets against `base_url`, one worker; `tickets` are TOML bodies."""
 lines = ['[pipeline]\nname = "agents"\nmax_workers = 1\n']
 if budget is not None:
  lines.append(f"token_budget = {budget}\n")
 lines.append(f'[pipeline.agent]\nbase_url = "{base_url}"\nmodel = "test-model"\n')
 lines += [f"[[tickets]]\n{body}\n" for body in tickets]
 path = folder / "agents.toml"
 path.write_text("\n".join(lines), encoding="utf-8")
 return path


def local_time(at: float) -> str:
 """A moment as the banner writes it: `12:03:10` today (with the date on another day)."""
 from conductor.views import wall_clock

 return wall_clock(at)


@pytest.mark.gui
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_rate_limit_shows_when_it_resumes_and_a_persons_pause_over_it_waits_for_resume(
 live_gui: GuiFactory, tmp_path: Path, backend: str
) -> None:
 with ChatServer() as server:
  # Long enough that the pause cannot end by itself during the test.
  server.queue(RateLimited(retry_after=600, headers={"x-ratelimit-limit-requests": "500"}))
  pipeline = agent_pipeline(
   tmp_path,
   server.base_url,
   [
    'id = "plan"\nprompt = "plan it"',
    'id = "build"\nprompt = "build {{ plan }}"\ndepends_on = ["plan"]',
   ],
  )
  gui = live_gui(pipeline, "--start", "--backend", backend)
  limited = gui.wait_for(
   "the rate limit to pause the run",
   lambda s: s["gui"]["badge"] == "PAUSED" and s["snapshot"]["auto_resume_at"] is not None,
  )
  snap = limited["snapshot"]
  assert snap["paused"] and not snap["paused_by_person"], snap
  banner = limited["gui"]["banner"]
  assert banner[0] == "PAUSED"
  assert banner[1].startswith("paused: rate limited by 127.0.0.1"), banner
  assert banner[1].endswith(f"; resumes by itself at {local_time(snap['auto_resume_at'])}")
  assert limited["gui"]["buttons"]["Resume"] is True
  gui.screenshot("dashboard-rate-limited")
  assert len(server.requests) == 1  # nothing reaches the provider while paused

  # A person's pause over it: no automatic resume any more; the reason stays.
  kept = gui.click("Keep paused")
  assert kept["acted"], kept
  mine = gui.wait_for("the pause to be the person's", lambda s: s["snapshot"]["paused_by_person"])
  assert mine["snapshot"]["paused"] and mine["snapshot"]["auto_resume_at"] is None
  banner = mine["gui"]["banner"]
  assert banner[1].startswith("paused by you: resume by hand  —  rate limited by 127.0.0.1")
  gui.screenshot("dashboard-paused-by-you")
  assert len(server.requests) == 1

  resumed = gui.click("Resume")
  assert resumed["acted"] and in_its_frame(resumed["action"]), resumed
  done = gui.wait_for("the run to end", ended("DONE"), timeout=15)
  assert len(server.requests) == 3  # plan (429), plan again, build
  # build's prompt carried plan's whole reply; its own reply is in the details pane.
  assert server.requests[2].last_user_message == "build reply to: plan it"
  assert done["snapshot"]["tokens_used"] > 0
  gui.click("build")
  shown = gui.wait_for(
   "build's output in the details pane",
   lambda s: (s["gui"]["output"] or {}).get("whole") is True,
  )["gui"]
  assert shown["output"]["text"] == "reply to: build reply to: plan it", shown["output"]
  assert shown["tokens"] == f"tokens: {done['snapshot']['tokens_used']:,}"
  gui.screenshot("dashboard-agent-output")
  rows = {r["id"]: r for r in gui.state(rows=True)["snapshot"]["rows"]}
  assert rows["build"]["tokens"] and rows["plan"]["tokens"]
  assert gui.quit() == 0
  no_traceback(gui)


@pytest.mark.gui
def test_a_spent_token_budget_disables_resume_and_the_field_raises_it_and_resumes(
 live_gui: GuiFactory, tmp_path: Path
) -> None:
 with ChatServer(default=Reply(usage=(100, 50))) as server:  # 150 tokens a request
  pipeline = agent_pipeline(
   tmp_path,
   server.base_url,
   [f'id = "t{i}"\nprompt = "step {i}"' for i in range(3)],
   budget=200,
  )
  gui = live_gui(pipeline, "--start")
  spent = gui.wait_for(
   "the budget to pause the run",
   lambda s: s["gui"]["badge"] == "PAUSED" and s["snapshot"]["paused"] and s["gui"]["banner"],
  )
  assert not spent["snapshot"]["paused_by_person"]
  assert spent["snapshot"]["auto_resume_at"] is None
  reason = "token budget reached: 300 of 200 tokens"
  assert spent["gui"]["banner"][1] == f"paused: {reason}; resume by hand", spent["gui"]
  assert spent["gui"]["tokens"] == "tokens: 300 of 200"
  gui.screenshot("dashboard-budget-spent")  # before the mouse goes over a button
  # Resume alone is refused, and says why.
  assert spent["gui"]["buttons"]["Resume"] is False
  assert not gui.click("Resume")["acted"]
  assert not gui.key("Space")["acted"]
  assert gui.mouse(label="Resume")["tooltip"].startswith(f"{reason}; raise it under Tokens")

  gui.type("##budget", "lots")
  assert gui.click("Raise budget and resume")["acted"]
  refused = gui.state()
  assert refused["gui"]["budget_message"].startswith("a budget is a whole number of tokens")
  gui.type("##budget", "250")
  gui.click("Raise budget and resume")
  refused = gui.state()
  assert refused["gui"]["budget_message"].startswith(
   "a budget of 250 is not above the 300 tokens used"
  )
  assert refused["paused"] and len(server.requests) == 2

  gui.type("##budget", "1,000")
  raised = gui.click("Raise budget and resume")
  assert raised["acted"] and in_its_frame(raised["action"]), raised
  done = gui.wait_for("the run to end", ended("DONE"), timeout=15)
  assert done["gui"]["budget_message"] is None
  assert (done["snapshot"]["tokens_used"], done["snapshot"]["token_budget"]) == (450, 1000)
  assert done["gui"]["tokens"] == "tokens: 450 of 1,000"
  assert len(server.requests) == 3
  # With the budget not spent, the field sets a new one.
  gui.type("##budget", "2000")
  assert gui.click("Set budget")["acted"]
  gui.wait_for("the new budget", lambda s: s["gui"]["tokens"] == "tokens: 450 of 2,000")
  assert gui.quit() == 0
  no_traceback(gui)
 # The budgets set in the window are kept in the state.
 status = subprocess.run(
  [sys.executable, "-m", "conductor", "status", str(pipeline), "--json"],
  capture_output=True,
  text=True,
  timeout=60,
  check=False,
 )
 assert status.returncode == 0, status
 report = json.loads(status.stdout)
 assert (report["tokens_used"], report["token_budget"]) == (450, 2000), report


@pytest.mark.gui
def test_the_details_pane_shows_a_large_output_whole(live_gui: GuiFactory, tmp_path: Path) -> None:
 (tmp_path / "big.toml").write_text(
  '[pipeline]\nname = "big"\n[[tickets]]\nid = "big"\nrun = "seq 1 30000"\n', encoding="utf-8"
 )
 gui = live_gui(tmp_path / "big.toml", "--start")
 gui.wait_for("the run to end", ended("DONE"))
 gui.click("big")
 shown = gui.wait_for(
  "the whole output", lambda s: (s["gui"]["output"] or {}).get("whole") is True
 )["gui"]["output"]
 whole = "".join(f"{i}\n" for i in range(1, 30001))
 assert shown["chars"] in (len(whole), len(whole) - 1), shown  # a final newline may go
 assert shown["lines"] == 30000 and shown["text"] is None  # too long to report whole
 gui.screenshot("large-output")
 assert gui.quit() == 0


def test_wrap_lines_cuts_after_a_word_or_inside_a_long_one() -> None:
 from conductor.gui._runs import wrap_lines

 def wrapped(text: str) -> tuple[str, ...]:
  return tuple(wrap_lines(text, 10))

 assert wrapped("the quick brown fox\n\nend") == ("the quick", "brown fox", "", "end")
 assert wrapped("abcdefghijklmnopqrstuvwxyz") == ("abcdefghij", "klmnopqrst", "uvwxyz")
 assert wrapped("a\tb") == ("a   b",)
 assert wrapped("") == ()


def test_a_budget_typed_in_the_field_is_a_number_above_the_tokens_used() -> None:
 from conductor.gui._side import parse_budget

 assert parse_budget(" 300,000 ", 1000) == 300000
 assert parse_budget("1_000", 999) == 1000
 assert str(parse_budget("", 10)).startswith("a budget is a whole number of tokens")
 assert str(parse_budget("-5", 10)).startswith("a budget is a whole number of tokens")
 assert str(parse_budget("10", 10)).startswith("a budget of 10 is not above the 10 tokens used")


def test_a_frame_draws_the_published_snapshot_and_asks_for_the_next_after_it_is_shown() -> None:
 # The loop builds a snapshot (O(tickets), holding the GIL) between frames, not during one.
 from conductor import ConductorEngine, ExecutionEngine, Ticket
 from conductor.gui._runs import PipelineRunner
 from conductor.pipeline import pipeline_from_dict

 pipeline = pipeline_from_dict({"tickets": [{"id": "a", "sleep": 0.1}]}, path=None)
 runner = PipelineRunner(
  pipeline, max_workers=1, backend="asyncio", state=None, fresh=False, on_change=lambda: None
 )
 published = ConductorEngine(ExecutionEngine([Ticket("a")])).snapshot()
 asked: list[float] = []

 class Running:
  def __init__(self) -> None:
   self.published = published

  def request_snapshot(self, min_interval: float) -> None:
   asked.append(min_interval)

 runner._running = Running()  # type: ignore[assignment]  # a run, as the GUI thread sees it
 assert runner.snapshot() is published
 assert asked == []  # drawing asks for nothing
 runner.refresh()  # after the swap
 assert asked == [runner._pull_every]


def test_the_banner_says_who_paused_and_what_ends_the_pause_in_the_terminals_words() -> None:
 from conductor import ConductorEngine, ExecutionEngine, Ticket
 from conductor.gui._banner import Banner, Who

 at = time.time() + 90
 snap = ConductorEngine(
  ExecutionEngine([Ticket("a"), Ticket("b", ("a",))]),
  paused=True,
  pause_reason="rate limited by api.example.com (HTTP 429)",
  paused_by_person=False,
  auto_resume_at=at,
 ).snapshot()
 lines = Banner.paused_lines(snap, Who(False, snap.pause_reason, at))
 assert lines[0] == "PAUSED"
 assert lines[1] == (
  f"paused: rate limited by api.example.com (HTTP 429); resumes by itself at {local_time(at)}"
 )
 assert lines[2].endswith("·   all workers idle  —  nothing starts while paused"), lines
 assert lines[3].endswith("   ·   2 tickets pending"), lines
 lines = Banner.paused_lines(snap, Who(False, "token budget reached: 9 of 5 tokens", None))
 assert lines[1] == "paused: token budget reached: 9 of 5 tokens; resume by hand"
 lines = Banner.paused_lines(snap, Who(True, "lunch\nbreak", None))
 assert lines[1] == "paused by you: resume by hand  —  lunch\\nbreak"  # one line, escaped
