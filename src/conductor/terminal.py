"""The process's side of a terminal run: output that outlives its reader, key presses, signals.

- `output_may_vanish` (with `DroppingOutput`): `cli.main` routes `sys.stdout` and
  `sys.stderr` through it, so a reader that goes away (`conductor run x | head`, a closed
  terminal window, a full disk under a redirected log) never stops a run nor prints a
  traceback; the exit code stays the run's.
- `read_keys`: single key presses from the terminal, read in a thread that waits in
  `select()` (no polling).
- `Stops`: what SIGINT, SIGTERM and SIGHUP do to a run (`conductor run` and `demo`).

None of it knows about pipelines beyond `ConductorEngine.stop()` and `cancel()`; what a run
prints is `views`, how a run is driven is `terminal_run`.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO, cast

import anyio
from anyio.abc import TaskStatus
from rich.console import Console

from .exits import EXIT_OK, exit_code_for
from .multi_agent_conductor import ConductorEngine
from .snapshots import Snapshot
from .workers import TERM_GRACE

__all__ = ["DroppingOutput", "Stops", "output_may_vanish", "read_keys"]


# -- output that outlives its reader ---------------------------------------------------------


class DroppingOutput(io.TextIOBase):
 """A text stream over `sys.stdout` or `sys.stderr` that drops output once nobody reads it.

 The first write or flush that fails with an `OSError` (EPIPE: the reader of a pipe went
 away; EIO: the terminal was closed; ENOSPC: a redirected log filled the disk) replaces the
 stream's file descriptor with /dev/null, so whatever the wrapped stream still buffers and
 the interpreter's own flush at exit go there quietly; from then on every write is dropped
 and returns as if written. A run therefore never stops, or prints a traceback, because its
 output cannot be written. `EAGAIN` (a non-blocking descriptor that is full) loses that one
 piece only. Writes are as thread-safe as the wrapped stream's (rich's refresh thread and the
 key reader write through it too); `isatty()` keeps the answer it had at the start.
 """

 def __init__(self, inner: TextIO) -> None:
  super().__init__()
  self._inner = inner
  self._dropped = False
  try:
   self._tty = inner.isatty()
  except (OSError, ValueError):
   self._tty = False

 @property
 def dropped(self) -> bool:
  """True once output was found unwritable and is being dropped."""
  return self._dropped

 @property
 def encoding(self) -> str:  # type: ignore[override]  # a property in io, an attribute in typeshed
  return getattr(self._inner, "encoding", None) or "utf-8"

 def write(self, text: str) -> int:
  if not self._dropped:
   try:
    self._inner.write(text)
   except OSError as exc:
    self._lost(exc)
  return len(text)

 def flush(self) -> None:
  if not self._dropped:
   try:
    self._inner.flush()
   except OSError as exc:
    self._lost(exc)

 def isatty(self) -> bool:
  return self._tty

 def writable(self) -> bool:
  return True

 def fileno(self) -> int:
  return self._inner.fileno()

 def _lost(self, exc: OSError) -> None:
  if isinstance(exc, BlockingIOError | InterruptedError):
   return
  self._dropped = True
  # io.UnsupportedOperation (no descriptor, e.g. a test's capture) is an OSError and a
  # ValueError; a stream closed meanwhile raises ValueError.
  with contextlib.suppress(OSError, ValueError):
   fd = self._inner.fileno()
   devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
   try:
    os.dup2(devnull, fd)
   finally:
    os.close(devnull)
   self._inner.flush()  # what it still buffers: to /dev/null now


@contextmanager
def output_may_vanish() -> Iterator[None]:
 """Route `sys.stdout` and `sys.stderr` through `DroppingOutput` for the block, so the rich
 console, `print` and the interpreter's own messages all drop output nobody reads."""
 saved = sys.stdout, sys.stderr
 if sys.stdout is not None:
  sys.stdout = cast(TextIO, DroppingOutput(sys.stdout))
 if sys.stderr is not None:
  sys.stderr = cast(TextIO, DroppingOutput(sys.stderr))
 try:
  yield
 finally:
  for stream in (sys.stdout, sys.stderr):
   if stream is not None:
    stream.flush()  # through the wrapper: quiet whatever happened to the reader
  sys.stdout, sys.stderr = saved


# -- key presses -----------------------------------------------------------------------------


@contextmanager
def read_keys(on_key: Callable[[str], None]) -> Iterator[None]:
 """Call `on_key(ch)` for each key pressed on the terminal (stdin), until the block ends.

 The terminal is in cbreak mode meanwhile. `on_key` runs on the reader thread: it must be
 thread-safe and not block (`ConductorEngine.pause`/`resume` are both). The thread waits in
 select() on stdin and on a pipe that wakes it at the end: no polling. A terminal that goes
 away (EIO, end of file) ends the reading, not the run; restoring the terminal's mode on a
 dead one is skipped the same way.
 """
 fd = sys.stdin.fileno()
 try:
  old = termios.tcgetattr(fd)
  tty.setcbreak(fd)
 except (termios.error, OSError):  # gone already: no keys, the run goes on
  yield
  return
 stop_r, stop_w = os.pipe()

 def reader() -> None:
  try:
   while True:
    readable, _, _ = select.select([fd, stop_r], [], [])
    if stop_r in readable:
     return
    data = os.read(fd, 32).decode(errors="ignore")
    if not data:
     return
    for ch in data:
     on_key(ch)
  except OSError:  # EIO: the terminal was closed (SIGHUP is on its way)
   return

 thread = threading.Thread(target=reader, name="conductor-keys", daemon=True)
 thread.start()
 try:
  yield
 finally:
  os.write(stop_w, b"x")
  thread.join(timeout=2)
  with contextlib.suppress(termios.error, OSError):
   termios.tcsetattr(fd, termios.TCSADRAIN, old)
  os.close(stop_r)
  os.close(stop_w)


# -- signals ---------------------------------------------------------------------------------


_CANCELLING = (signal.SIGTERM, signal.SIGHUP)


class Stops:
 """What signals do to a run (`conductor run`, `demo`). Main thread only (signal handlers are).

 - Ctrl+C (SIGINT): the first stops admitting workers and lets the running ones finish
   (`ConductorEngine.stop`), a second cancels them.
 - SIGTERM and SIGHUP (a closed terminal window) cancel at once (`ConductorEngine.cancel`):
   no new workers; the running ones are cancelled (a shell ticket's whole process group gets
   SIGTERM, then SIGKILL after `workers.TERM_GRACE` seconds) and recorded `interrupted`
   (back to todo, their attempt counted: the next run runs them again); the state is
   committed and the process exits 128 + the signal (`exit_code`). Nothing is left running.
 - Signals after the first change nothing.

 Inside the loop `watch` receives them. Outside it, from `recorded()` on (while the state is
 claimed and restored, and after the run), SIGTERM and SIGHUP are only recorded in `first`,
 and `watch` cancels the run at its start if one came: the run then admits nothing. Every
 message is printed through the console, whose output may be gone already.
 """

 def __init__(self) -> None:
  self.first: signal.Signals | None = None  # the first SIGTERM or SIGHUP, for the exit code

 def _record(self, signum: int, _frame: FrameType | None) -> None:
  if self.first is None:
   self.first = signal.Signals(signum)

 def _install(self) -> None:
  for sig in _CANCELLING:
   signal.signal(sig, self._record)

 @contextmanager
 def recorded(self) -> Iterator[None]:
  """Record SIGTERM and SIGHUP instead of dying, for the block (then restore)."""
  if threading.current_thread() is not threading.main_thread():
   yield
   return
  saved = {sig: signal.getsignal(sig) for sig in _CANCELLING}
  self._install()
  try:
   yield
  finally:
   for sig, handler in saved.items():
    # Once one came, the process is on its way out with 128 + it: a second one (a closing
    # terminal sends SIGHUP to the whole group, then again) must not kill it on the way.
    if self.first is not None:
     signal.signal(sig, signal.SIG_IGN)
    elif handler is not None:
     signal.signal(sig, handler)

 async def watch(
  self,
  conductor: ConductorEngine,
  console: Console,
  *,
  task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
 ) -> None:
  """Act on signals until cancelled; started (`task_group.start`) once they are received."""
  try:
   with anyio.open_signal_receiver(signal.SIGINT, *_CANCELLING) as signals:
    task_status.started()
    if self.first is not None:  # came while the state was being opened
     self._cancel(conductor, console, self.first)
    interrupts = 0
    async for sig in signals:
     if sig in _CANCELLING:
      first = self.first is None
      self.first = self.first or sig
      if first:
       self._cancel(conductor, console, sig)
     elif self.first is None:
      interrupts += 1
      if interrupts == 1:
       console.print(
        "[yellow]stopping: no new workers; waiting for the running ones (Ctrl+C again cancels them)"
       )
       conductor.stop()
      else:
       console.print("[red]cancelling running workers")
       conductor.cancel()
  finally:
   # asyncio leaves SIG_DFL behind: a signal from here to the exit would kill us mid-commit.
   if threading.current_thread() is threading.main_thread():
    self._install()

 @staticmethod
 def _cancel(conductor: ConductorEngine, console: Console, sig: signal.Signals) -> None:
  console.print(
   f"[red]{sig.name}: cancelling the running workers (a command gets SIGTERM, then SIGKILL "
   f"after {TERM_GRACE:g} s); they run again next time"
  )
  conductor.cancel()

 def exit_code(self, final: Snapshot) -> int:
  """The run's exit code (`exits.exit_code_for`), but 128 + the first SIGTERM/SIGHUP if one
  stopped it before the end."""
  code = exit_code_for(final)
  if self.first is not None and code != EXIT_OK:
   return 128 + self.first
  return code
