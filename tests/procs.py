"""Running the real `conductor` command in tests: one place for the subprocess helpers.

`conductor()` runs a command to its end; `Child` is a run the test talks to while it lives,
and `reap_children()` (called by an autouse fixture of each test module using `Child`) kills
whichever a test left behind, so a failed test leaves no process running.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

COMMAND_TIMEOUT = 120.0  # seconds one command may take before the test fails (not hangs)
WAIT = 30.0  # seconds any single wait on a live `Child` may take before the test fails
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}  # lines as printed, unwrapped


@contextlib.contextmanager
def pid_fifo(folder: Path) -> Iterator[int]:
 """A FIFO `pids` in `folder` that long tickets write their pid to, opened read-write, so
 that no writer ever blocks and no reader sees EOF; yields its descriptor."""
 path = folder / "pids"
 os.mkfifo(path)
 fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
 try:
  yield fd
 finally:
  os.close(fd)


def conductor(
 *args: str,
 cwd: Path | None = None,
 prefix: tuple[str, ...] = (),
 timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
 """Run `conductor ARGS` (with this interpreter) to its end; `prefix` goes before it (an
 strace, say). Output is captured, wide enough that rich does not wrap a line."""
 return subprocess.run(
  [*prefix, sys.executable, "-m", "conductor", *args],
  cwd=cwd,
  capture_output=True,
  text=True,
  timeout=timeout,
  check=False,
  env={**os.environ, "COLUMNS": "200"},
 )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
 """Assert the promise for a user's mistake: exit 2, one line on stderr, no traceback; and
 that the line says each of `needles`. Returns the line."""
 assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr)
 lines = result.stderr.strip().splitlines()
 assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
 for needle in needles:
  assert needle in lines[0], lines[0]
 return lines[0]


class Child:
 """A live `conductor ARGS` subprocess whose output lines arrive on a queue, read by a thread.

 Its stderr goes into the same lines, unless `split_stderr`: then it is read apart, whole, and
 is `stderr` once `finish()` returned. Every wait is bounded by `timeout` seconds and fails
 the test (AssertionError or TimeoutExpired) instead of hanging it. Not thread-safe: one test
 thread drives it. Each Child is registered for `reap_children()`.
 """

 def __init__(
  self, *args: str, cwd: Path, split_stderr: bool = False, timeout: float = WAIT
 ) -> None:
  self.timeout = timeout
  self.proc = subprocess.Popen(
   [sys.executable, "-m", "conductor", *args],
   cwd=cwd,
   stdout=subprocess.PIPE,
   stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
   text=True,
   env=ENV,
  )
  self.lines: list[str] = []  # every line read so far, in order
  self._queue: queue.Queue[str | None] = queue.Queue()  # None: the output has ended
  self._reader = threading.Thread(target=self._read, daemon=True)
  self._reader.start()
  self._stderr = ""
  self._err_reader: threading.Thread | None = None
  if split_stderr:
   self._err_reader = threading.Thread(target=self._read_err, daemon=True)
   self._err_reader.start()
  _CHILDREN.append(self)

 def _read(self) -> None:
  stdout = self.proc.stdout
  assert stdout is not None
  with stdout:
   for line in stdout:
    self._queue.put(line.rstrip("\n"))
  self._queue.put(None)

 def _read_err(self) -> None:
  stderr = self.proc.stderr
  assert stderr is not None
  with stderr:
   self._stderr = stderr.read()

 def wait_for(self, pattern: str, count: int = 1) -> str:
  """Wait for the `count`-th line matching the regex `pattern`, counting the lines already
  read too, and return the last matching line read (that one)."""
  regex = re.compile(pattern)
  seen = sum(1 for line in self.lines if regex.search(line))
  # One deadline for the whole wait: a storm of non-matching lines must not extend it.
  deadline = time.monotonic() + self.timeout
  while seen < count:
   try:
    line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
   except queue.Empty:
    raise AssertionError(
     f"no line like {pattern!r} within {self.timeout} s: {self.lines[-10:]}"
    ) from None
   if line is None:
    raise AssertionError(f"exited before a line like {pattern!r}: {self.lines[-10:]}")
   self.lines.append(line)
   if regex.search(line):
    seen += 1
  return next(line for line in reversed(self.lines) if regex.search(line))

 def finish(self) -> int:
  """Wait for it to exit by itself and read the rest of its output; its exit code."""
  code = self.proc.wait(timeout=self.timeout)
  while (line := self._queue.get(timeout=self.timeout)) is not None:
   self.lines.append(line)
  if self._err_reader is not None:
   self._err_reader.join(self.timeout)
  return code

 @property
 def output(self) -> str:
  """The lines read so far, as one text."""
  return "\n".join(self.lines)

 @property
 def stderr(self) -> str:
  """With `split_stderr`: all it wrote there (whole once `finish()` returned)."""
  if self._err_reader is None:
   raise AttributeError("stderr is merged into `lines`: pass split_stderr=True to read it apart")
  return self._stderr

 def kill_hard(self) -> None:
  """kill -9 the runner at this moment, and the ticket processes it had started (as the
  machine dying would): freeze it first so that it cannot start another one meanwhile."""
  pid = self.proc.pid
  os.kill(pid, signal.SIGSTOP)
  for child in _children(pid):
   with contextlib.suppress(ProcessLookupError):
    os.killpg(child, signal.SIGKILL)  # each shell ticket leads its own process group
  os.kill(pid, signal.SIGKILL)
  self.proc.wait(timeout=self.timeout)

 def reap(self) -> None:
  """Kill it (as `kill_hard`) if it still runs, and wait for it and its readers."""
  if self.proc.poll() is None:
   self.kill_hard()
  self._reader.join(self.timeout)
  if self._err_reader is not None:
   self._err_reader.join(self.timeout)


_CHILDREN: list[Child] = []  # every Child not reaped yet


def reap_children() -> None:
 """Reap every Child started so far (call it after each test that may start one)."""
 while _CHILDREN:
  _CHILDREN.pop().reap()


def _children(pid: int) -> list[int]:
 """The pids whose parent is `pid` (from Linux /proc)."""
 found = []
 for entry in Path("/proc").iterdir():
  if entry.name.isdigit():
   try:
    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
   except OSError:
    continue
   if int(fields[1]) == pid:
    found.append(int(entry.name))
 return found
