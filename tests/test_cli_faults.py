"""The `conductor` command under faults: signals, a closed terminal, a closed pipe, hostile text,
approvals from another terminal. Real processes, real signals, real pseudo-terminals.

Every wait is on something that happens (a line on the child's stdout, a pid arriving on a
FIFO, a process exit) and is bounded by a timeout, so a bug fails the test instead of hanging
it. The long tickets run only on their first attempt (`CONDUCTOR_ATTEMPT`): a re-run finishes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import ENV, WAIT, Child, conductor, one_line_error, pid_fifo, reap_children

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

BACKENDS = ["asyncio", "trio"]

# A first attempt that reports its pid on the FIFO `pids` and sleeps; a later one just ends.
LONG = 'if [ "$CONDUCTOR_ATTEMPT" = 1 ]; then echo $$ > pids; exec sleep 600; fi'
# The same, but its shell and its child ignore SIGTERM: only the SIGKILL after the grace ends it.
STUBBORN = (
 'if [ "$CONDUCTOR_ATTEMPT" = 1 ]; then trap "" TERM; echo $$ > pids; '
 "sleep 600 & echo $! > pids; wait; fi"
)


def toml(*tickets: tuple[str, str], head: str = "") -> str:
 text = head
 for tid, command in tickets:
  text += f"\n[[tickets]]\nid = {json.dumps(tid)}\nrun = {json.dumps(command)}\n"
 return text


_PIDS: list[int] = []  # ticket processes seen: killed after each test whatever happened


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
 yield
 reap_children()
 while _PIDS:
  with contextlib.suppress(ProcessLookupError):
   os.kill(_PIDS.pop(), signal.SIGKILL)


def read_lines(fd: int, count: int) -> list[str]:
 """Wait for `count` lines on the FIFO (each written at once: a pipe write is atomic)."""
 data = b""
 while data.count(b"\n") < count:
  readable, _, _ = select.select([fd], [], [], WAIT)
  assert readable, f"only {data!r} reported within {WAIT} s"
  data += os.read(fd, 4096)
 return data.decode().split()


GATE = "echo $$ > pids; cat gate > /dev/null"  # a ticket that ends when `open_gate` is called


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[int]:
 """The FIFO `gate` that GATE tickets wait on, and the FIFO `pids` they report on."""
 os.mkfifo(tmp_path / "gate")
 with pid_fifo(tmp_path) as fifo:
  yield fifo


def open_gate(folder: Path) -> None:
 """Let the GATE ticket end, once it has reported its pid (its `cat` opens the other end
 of the FIFO right after; opening this end waits for that)."""
 with open(folder / "gate", "w"):
  pass


def read_pids(fd: int, count: int) -> list[int]:
 """Wait for `count` pids on the FIFO."""
 pids = [int(x) for x in read_lines(fd, count)]
 _PIDS.extend(pids)
 return pids


def alive(pid: int) -> bool:
 """Running (a zombie nobody reaps, as in some containers, counts as ended)."""
 try:
  stat = Path(f"/proc/{pid}/stat").read_text()
 except FileNotFoundError:
  return False
 return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_state(state: Path) -> dict[str, tuple[str, int]]:
 conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
 try:
  return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, status, attempts FROM ticket_state")}
 finally:
  conn.close()


def events(state: Path) -> list[tuple[str | None, str]]:
 conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
 try:
  return conn.execute("SELECT ticket, event FROM history ORDER BY seq").fetchall()
 finally:
  conn.close()


def assert_resumes_and_completes(
 folder: Path, backend: str, state: Path, tickets: list[str]
) -> None:
 """The interrupted tickets are todo with their attempt counted; a re-run completes them."""
 assert read_state(state) == dict.fromkeys(tickets, ("todo", 1))
 assert sorted(str(t) for t, e in events(state) if e == "interrupted") == sorted(tickets)
 again = conductor("run", "p.toml", "--backend", backend, cwd=folder)
 assert again.returncode == 0, again.stdout + again.stderr
 assert read_state(state) == dict.fromkeys(tickets, ("completed", 2))


# -- SIGTERM and SIGHUP ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("first", "second"), [("SIGHUP", "SIGTERM"), ("SIGTERM", "SIGHUP")])
def test_sigterm_and_sighup_cancel_the_shell_tickets_record_them_and_exit_128_plus_the_signal(
 tmp_path: Path, backend: str, first: str, second: str
) -> None:
 (tmp_path / "p.toml").write_text(toml(("quick", LONG), ("stubborn", STUBBORN)))
 with pid_fifo(tmp_path) as fifo:
  run = Child("run", "p.toml", "--backend", backend, cwd=tmp_path, split_stderr=True)
  pids = read_pids(fifo, 3)  # quick's shell; stubborn's shell and its sleep
  os.kill(run.proc.pid, signal.Signals[first])
  run.wait_for(f"{first}: cancelling the running workers")
  # More signals while the stubborn ticket has its grace period: they change nothing.
  os.kill(run.proc.pid, signal.Signals[second])
  os.kill(run.proc.pid, signal.SIGINT)
  code = run.finish()
 assert code == 128 + signal.Signals[first], run.output + run.stderr
 assert run.stderr == ""
 assert f"stopped before the end ({first})" in run.output
 assert not [pid for pid in pids if alive(pid)]
 assert_resumes_and_completes(tmp_path, backend, tmp_path / "p.state.db", ["quick", "stubborn"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_signal_while_the_state_is_being_opened_cancels_the_run_before_anything_starts(
 tmp_path: Path, backend: str
) -> None:
 # A killed run left its ticket running: the next run stops it (SIGTERM, which it reports
 # and survives, then SIGKILL after the grace) before anything starts. A SIGHUP in that
 # grace period is kept: the run then starts nothing and exits 129.
 survivor = (
  'if [ "$CONDUCTOR_ATTEMPT" = 1 ]; then trap "echo term > pids" TERM; '
  '(trap "" TERM; exec sleep 600) & echo $$ > pids; echo $! > pids; while :; do wait; done; fi'
 )
 (tmp_path / "p.toml").write_text(toml(("t", survivor)))
 with pid_fifo(tmp_path) as fifo:
  first = Child("run", "p.toml", "--backend", backend, cwd=tmp_path, split_stderr=True)
  old = read_pids(fifo, 2)
  os.kill(first.proc.pid, signal.SIGKILL)
  first.finish()
  second = Child("run", "p.toml", "--backend", backend, cwd=tmp_path, split_stderr=True)
  assert read_lines(fifo, 1)[0] == "term"  # the new run is stopping the leftovers
  os.kill(second.proc.pid, signal.SIGHUP)
  code = second.finish()
 assert code == 129, second.output + second.stderr
 assert second.stderr == ""
 assert not [pid for pid in old if alive(pid)]
 state = tmp_path / "p.state.db"
 assert read_state(state) == {"t": ("todo", 1)}  # the killed attempt; nothing started since
 assert [e for t, e in events(state) if t == "t"].count("in_progress") == 1


class Terminal:
 """A pseudo-terminal whose output a thread drains (as a terminal window shows it) until
 `close()` closes its master side, as closing the window does. `ROWS` x `COLUMNS`."""

 ROWS, COLUMNS = 50, 200

 def __init__(self) -> None:
  self.master, self.slave = os.openpty()
  fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.ROWS, self.COLUMNS, 0, 0))
  self.shown = b""
  self._changed = threading.Condition()
  self._stop_r, self._stop_w = os.pipe()
  self._thread = threading.Thread(target=self._drain, daemon=True)
  self._thread.start()

 def _drain(self) -> None:
  try:
   while True:
    readable, _, _ = select.select([self.master, self._stop_r], [], [])
    if self._stop_r in readable:
     return
    try:
     data = os.read(self.master, 65536)
    except OSError:  # EIO: the child side is all closed
     return
    with self._changed:
     self.shown += data
     self._changed.notify_all()
  finally:
   os.close(self.master)

 def wait_shown(self, text: bytes) -> None:
  with self._changed:
   assert self._changed.wait_for(lambda: text in self.shown, WAIT), self.shown[-2000:]

 def close(self) -> None:
  os.write(self._stop_w, b"x")
  self._thread.join(WAIT)
  assert not self._thread.is_alive()
  os.close(self._stop_r)
  os.close(self._stop_w)

 def spawn(self, *args: str, cwd: Path, stderr: int | None = None) -> subprocess.Popen[bytes]:
  """`conductor ARGS` with this terminal as its controlling terminal and its stdin, stdout
  and (unless `stderr`) stderr, as a shell in a terminal window starts it."""
  proc = subprocess.Popen(
   [sys.executable, "-m", "conductor", *args],
   cwd=cwd,
   stdin=self.slave,
   stdout=self.slave,
   stderr=self.slave if stderr is None else stderr,
   env={**ENV, "TERM": "xterm"},
   start_new_session=True,
   preexec_fn=_controlling_terminal,  # noqa: PLW1509 (only an ioctl: safe after fork)
  )
  os.close(self.slave)
  return proc

 def screen(self) -> list[str]:
  """The lines the window shows now (its scrollback included), as `Screen` draws them."""
  with self._changed:
   return Screen(self.shown.decode(errors="replace")).lines()


class Screen:
 """What a terminal draws from output: text, line feeds, and the cursor moves and line
 erasures with which rich redraws its live view in place. Colours and modes are ignored;
 the screen never scrolls its lines away (a scrollback without end)."""

 _CONTROL = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b.|[\r\n\b]")

 def __init__(self, output: str) -> None:
  self._rows: list[list[str]] = [[]]
  self._row = self._col = 0
  at = 0
  for control in self._CONTROL.finditer(output):
   self._text(output[at : control.start()])
   self._control(control)
   at = control.end()
  self._text(output[at:])

 def _text(self, text: str) -> None:
  line = self._rows[self._row]
  for ch in text:
   if ch.isprintable():
    line.extend(" " * (self._col + 1 - len(line)))
    line[self._col] = ch
    self._col += 1

 def _control(self, control: re.Match[str]) -> None:
  code, params = control[0], control[1] or ""
  count = int(params) if params.isdigit() else 1
  if code == "\r":
   self._col = 0
  elif code == "\n":
   self._row += 1
   if self._row == len(self._rows):
    self._rows.append([])
  elif code == "\b":
   self._col = max(self._col - 1, 0)
  elif control[2] == "A":
   self._row = max(self._row - count, 0)
  elif control[2] == "B":
   self._row += count
   self._rows.extend([] for _ in range(self._row + 1 - len(self._rows)))
  elif control[2] == "C":
   self._col += count
  elif control[2] == "D":
   self._col = max(self._col - count, 0)
  elif control[2] == "G":
   self._col = count - 1
  elif control[2] == "K":
   line = self._rows[self._row]
   if params in ("", "0"):
    del line[self._col :]
   elif params == "1":
    line[: self._col + 1] = " " * min(self._col + 1, len(line))
   else:
    line.clear()
  # Anything else (colours, showing the cursor, titles) draws no text.

 def lines(self) -> list[str]:
  lines = ["".join(row).rstrip() for row in self._rows]
  while lines and not lines[-1]:
   lines.pop()
  return lines


def _controlling_terminal() -> None:  # in the child: the pty becomes its terminal, as in a shell
 fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stderr", ["terminal", "pipe"])
def test_a_closed_terminal_window_cancels_the_run_quietly_and_leaves_nothing_running(
 tmp_path: Path, backend: str, stderr: str
) -> None:
 # The run's stdin, stdout (and stderr) are a real pseudo-terminal: it shows the live view
 # and reads keys. Closing the window hangs the terminal up: SIGHUP, and from then on every
 # write, every read and restoring the terminal's mode fail with EIO.
 (tmp_path / "p.toml").write_text(toml(("a", LONG), ("b", LONG)))
 term = Terminal()
 with pid_fifo(tmp_path) as fifo:
  err = None if stderr == "terminal" else subprocess.PIPE
  proc = term.spawn("run", "p.toml", "--backend", backend, cwd=tmp_path, stderr=err)
  try:
   pids = read_pids(fifo, 2)
   term.wait_shown(b"p pause/resume")  # the live view, reading keys
   term.close()  # the kernel hangs up the terminal and sends SIGHUP...
   os.kill(proc.pid, signal.SIGHUP)  # ...and so does a terminal emulator
   code = proc.wait(WAIT)
   errors = proc.stderr.read().decode() if proc.stderr is not None else ""
  finally:
   if proc.poll() is None:
    proc.kill()
    proc.wait(WAIT)
   if proc.stderr is not None:
    proc.stderr.close()
 assert code == 129, (term.shown[-2000:], errors)
 assert "Traceback" not in errors and errors == "", errors
 assert not [pid for pid in pids if alive(pid)]
 assert_resumes_and_completes(tmp_path, backend, tmp_path / "p.state.db", ["a", "b"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_end_of_a_terminal_run_shows_the_final_frame_once_and_no_key_hint(
 tmp_path: Path, gate: int, backend: str
) -> None:
 # The live view, redrawn in place ten times a second, says which keys work while they are
 # read. At the end its region shows the final frame instead, once: no stale key hint
 # above it, no second DONE line and progress bar below it.
 text = toml(("gate", GATE), ("after", "true"), head='[pipeline]\nname = "p"\n')
 (tmp_path / "p.toml").write_text(
  text.replace('id = "after"', 'id = "after"\ndepends_on = ["gate"]')
 )
 term = Terminal()
 proc = term.spawn("run", "p.toml", "--backend", backend, cwd=tmp_path)
 try:
  read_pids(gate, 1)
  term.wait_shown(b"p pause/resume")  # the live view, reading keys
  open_gate(tmp_path)
  code = proc.wait(WAIT)
  term.wait_shown(b"(exit 0)")
 finally:
  if proc.poll() is None:
   proc.kill()
   proc.wait(WAIT)
  term.close()
 assert code == 0
 screen = term.screen()
 assert [line for line in screen if " DONE " in line] == [
  next(line for line in screen if line.startswith(" DONE   p   2/2 completed"))
 ], screen
 assert not [line for line in screen if "p pause/resume" in line], screen
 assert screen[-1].startswith("all tickets completed in "), screen
 done = next(i for i, line in enumerate(screen) if " DONE " in line)
 assert screen[done + 1].strip("━ ") == "", screen  # its progress bar, complete
 assert screen[done + 2 :] == screen[-1:], screen  # then the verdict, and nothing else


# -- a reader that goes away ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reader", ["gone at once", "gone after a line"])
def test_a_closed_stdout_pipe_never_stops_the_run_nor_prints_a_traceback(
 tmp_path: Path, gate: int, backend: str, reader: str
) -> None:
 # `conductor run p.toml | head -1`: the reader goes away, at once or after the first line;
 # the run writes many more lines (a gate ticket holds it until the pipe is closed) and
 # finishes: every ticket completed, exit code 0, nothing on stderr.
 tickets = [("gate", GATE)]
 tickets += [(f"t{i}", f"echo {i}") for i in range(20)]
 text = toml(*tickets).replace('run = "echo 0"', 'depends_on = ["gate"]\nrun = "echo 0"')
 for i in range(1, 20):
  text = text.replace(f'run = "echo {i}"', f'depends_on = ["t{i - 1}"]\nrun = "echo {i}"')
 (tmp_path / "p.toml").write_text(text)
 proc = subprocess.Popen(
  [sys.executable, "-m", "conductor", "run", "p.toml", "--backend", backend],
  cwd=tmp_path,
  stdout=subprocess.PIPE,
  stderr=subprocess.PIPE,
  env=ENV,
 )
 try:
  assert proc.stdout is not None and proc.stderr is not None
  if reader == "gone after a line":
   assert proc.stdout.readline().startswith(b"state: ")
  proc.stdout.close()
  read_pids(gate, 1)
  open_gate(tmp_path)  # let the pipeline go on: every line now meets EPIPE
  code = proc.wait(WAIT)
  errors = proc.stderr.read().decode()
 finally:
  if proc.poll() is None:
   proc.kill()
   proc.wait(WAIT)
  if proc.stderr is not None:
   proc.stderr.close()
 assert code == 0
 assert errors == ""
 assert set(read_state(tmp_path / "p.state.db").values()) == {("completed", 1)}
 assert len(read_state(tmp_path / "p.state.db")) == 21


def test_a_closed_stdout_keeps_a_failed_runs_exit_code(tmp_path: Path) -> None:
 (tmp_path / "p.toml").write_text(toml(("bad", "exit 3"), ("good", "true")))
 proc = subprocess.Popen(
  [sys.executable, "-m", "conductor", "run", "p.toml"],
  cwd=tmp_path,
  stdout=subprocess.PIPE,
  stderr=subprocess.PIPE,
  env=ENV,
 )
 assert proc.stdout is not None and proc.stderr is not None
 proc.stdout.close()  # closed before the first line
 try:
  code = proc.wait(WAIT)
  errors = proc.stderr.read().decode()
 finally:
  proc.stderr.close()
 assert code == 1 and errors == ""
 assert read_state(tmp_path / "p.state.db") == {"bad": ("failed", 1), "good": ("completed", 1)}


# -- approvals --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_queue_off_says_once_what_awaits_approval_and_approve_from_another_terminal_finishes(
 tmp_path: Path, backend: str
) -> None:
 head = '[pipeline]\nname = "p"\nauto_queue = false\n'
 text = toml(("a", "true"), ("b", "true"), ("c", "true"), head=head)
 (tmp_path / "p.toml").write_text(text.replace('id = "b"', 'id = "b"\ndepends_on = ["a"]'))
 state = "p.state.db"
 run = Child("run", "p.toml", "--backend", backend, cwd=tmp_path, split_stderr=True)
 first = run.wait_for("awaiting approval")
 assert first.startswith("awaiting approval: a, c (approve with `conductor approve --state")
 status = conductor("status", "--state", state, cwd=tmp_path)
 assert status.returncode == 0, status.stderr
 assert "awaiting approval (2): a, c" in status.stdout

 approved = conductor("approve", "--state", state, "a", cwd=tmp_path)
 assert approved.returncode == 0, approved.stderr
 assert approved.stdout.startswith("approved a in p (running, pid")
 assert run.wait_for("awaiting approval", 2).startswith("awaiting approval: b (approve with")

 unknown = conductor("approve", "--state", state, "b", "ghost", cwd=tmp_path)
 one_line_error(unknown, "ghost")
 assert "awaiting approval (2): c, b" in conductor("status", "p.toml", cwd=tmp_path).stdout

 both = conductor("approve", "p.toml", "b", "c", "a", cwd=tmp_path)  # the file form
 assert both.returncode == 0, both.stderr
 assert "approved b, c in p" in both.stdout
 assert "not waiting for approval: a (completed)" in both.stdout
 assert run.finish() == 0, run.output + run.stderr
 assert run.stderr == ""
 assert sum("awaiting approval" in line for line in run.lines) == 2  # once per ticket
 assert set(read_state(tmp_path / state).values()) == {("completed", 1)}

 gone = conductor("approve", "--state", state, "a", cwd=tmp_path)
 one_line_error(gone, state)
 one_line_error(conductor("approve", "b", cwd=tmp_path), "--state")


# -- untrusted text ---------------------------------------------------------------------------

EVIL = "lunch\n12:00:00 p: pipeline resumed\x1b[2J[red]x[/]"


def assert_escaped(text: str) -> None:
 assert "\x1b" not in text
 assert "\n12:00:00 p: pipeline resumed" not in text  # no forged line
 assert "lunch\\n12:00:00 p: pipeline resumed\\x1b[2J[red]x[/]" in text


def test_reasons_and_errors_are_printed_escaped_and_never_as_markup(
 tmp_path: Path, gate: int
) -> None:
 bad = r"printf 'boom [red]x[/] \033[2J\n' >&2; exit 3"
 (tmp_path / "p.toml").write_text(
  toml(("gate", GATE), ("bad", bad), head='[pipeline]\nname = "p"\n')
 )
 run = Child("run", "p.toml", cwd=tmp_path, split_stderr=True)
 read_pids(gate, 1)
 failed = run.wait_for("bad failed")
 assert "\x1b" not in failed and "boom [red]x[/] \\x1b[2J" in failed
 paused = conductor("pause", "p.toml", "--reason", EVIL, cwd=tmp_path)
 assert paused.returncode == 0, paused.stderr
 assert_escaped(run.wait_for("pipeline paused"))
 status = conductor("status", "p.toml", cwd=tmp_path)
 assert status.returncode == 0, status.stderr
 assert_escaped(status.stdout)
 assert "boom [red]x[/] \\x1b[2J" in status.stdout
 assert conductor("resume", "p.toml", cwd=tmp_path).returncode == 0
 open_gate(tmp_path)
 assert run.finish() == 1
 assert "\x1b" not in run.output and run.stderr == ""
 assert "failed bad: exit code 3: boom [red]x[/] \\x1b[2J" in run.output
 history = conductor("status", "p.toml", "--history", cwd=tmp_path)
 assert history.returncode == 0, history.stderr
 assert_escaped(history.stdout)
 assert "\x1b" not in history.stdout and "boom [red]x[/] \\x1b[2J" in history.stdout


# -- a state that fails while closing ---------------------------------------------------------


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (fault injection)")
def test_an_io_error_while_closing_the_state_is_one_line_and_keeps_what_was_committed(
 tmp_path: Path,
) -> None:
 # The last write of a run to its state's WAL (bringing the tickets table up to date at
 # close) fails with EIO, injected by strace: the store raises its one-line StateError from
 # close, after the run; `conductor` prints that line and exits 2.
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 wal = tmp_path / "p.state.db-wal"

 def traced(*inject: str) -> subprocess.CompletedProcess[str]:
  command = [sys.executable, "-m", "conductor", "run", "p.toml", "--fresh"]
  strace = ["strace", "-f", "-qq", "-o", "trace.txt", "-P", str(wal), "-e", "trace=pwrite64"]
  return subprocess.run(
   [*strace, *inject, *command],
   cwd=tmp_path,
   capture_output=True,
   text=True,
   timeout=WAIT,
   check=False,
   env=ENV,
  )

 clean = traced()
 assert clean.returncode == 0, clean.stderr
 writes = (tmp_path / "trace.txt").read_text().count("pwrite64(")
 assert writes > 0
 failed = traced("-e", f"inject=pwrite64:error=EIO:when={writes}")
 one_line_error(failed, "p.state.db")
 assert read_state(tmp_path / "p.state.db") == {"a": ("completed", 1)}
