"""The `conductor` command line: run, demo, validate, pause, resume, approve, status (and `gui`).

Exit codes: 0 every ticket completed; 1 some failed or are blocked; 2 bad input or a state
that cannot be used (a one-line message, never a traceback); 130 stopped by Ctrl+C before the
end; 143 and 129 stopped by SIGTERM and SIGHUP before the end (128 + the signal).

Signals (`conductor run` and `demo`; see `_Stops`). Ctrl+C (SIGINT): the first stops
admitting workers and lets the running ones finish, a second cancels them. SIGTERM and SIGHUP
(a closed terminal window) cancel at once: no new workers; the running ones are cancelled
(a shell ticket's whole process group gets SIGTERM, then SIGKILL after `workers.TERM_GRACE`
seconds), recorded `interrupted` (back to todo, their attempt counted: the next run runs them
again), the state is committed, and the process exits 128 + the signal. Nothing is left
running. Signals after the first change nothing. One arriving while the state is still being
opened is kept: the run then cancels itself before admitting anything.

Output (`_DroppingOutput`, installed by `main` over `sys.stdout` and `sys.stderr`, so the rich
console, `print` and the interpreter's own messages all go through it). A reader that goes
away never stops a run: when a write or flush fails (EPIPE: `conductor run x | head`; EIO: the
terminal was closed; ENOSPC: a redirected log on a full disk) the descriptor is replaced with
/dev/null and the rest of that stream's output is dropped, quietly, including the
interpreter's flush at exit. The run goes on to its end and the exit code is the run's.

Untrusted text (ticket ids, pipeline names, pause reasons, errors, history details, paths) is
printed through `conductor._text.printable`, and never as rich markup (`Text(...)`, or
`_lit()` inside markup strings): a newline cannot forge a log line, an escape sequence cannot
repaint the terminal, `[red]` stays text.

Approval (`auto_queue = false`): a ready ticket waits until `conductor approve --state S ID...`
(a live run only). The live view lists what awaits approval with that command; off a terminal
a line "awaiting approval: ..." is printed once per ticket, when it starts waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import select
import shlex
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, cast

import anyio
from anyio.abc import TaskStatus
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._text import printable
from .control import request
from .dag_engine import ExecutionEngine, Status
from .exits import EXIT_FAILED, EXIT_OK, EXIT_STOPPED, EXIT_USAGE, UsageError, exit_code_for
from .multi_agent_conductor import ConductorEngine, MmaStatus, Snapshot, Transition
from .pipeline import Pipeline, PipelineFileError, load_pipeline
from .session import DurableRun, check_pipeline, clock, open_session, shown_path
from .store import StateError, default_state_path, demo_state_path
from .workers import TERM_GRACE


def _lit(value: object) -> str:
 """Untrusted text for a rich markup string: escaped (see `printable`), and `[` kept literal."""
 return escape(printable(str(value)))


def _ids(ids: Sequence[str], limit: int | None = None) -> str:
 """Ticket ids for a line of text (not markup): `a, b, c (+4)`."""
 shown = ids if limit is None else ids[:limit]
 more = f" (+{len(ids) - len(shown)})" if len(ids) > len(shown) else ""
 return ", ".join(printable(i) for i in shown) + more


# -- output that outlives its reader ---------------------------------------------------------


class _DroppingOutput(io.TextIOBase):
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
def _output_may_vanish() -> Iterator[None]:
 """Route `sys.stdout` and `sys.stderr` through `_DroppingOutput` for the block."""
 saved = sys.stdout, sys.stderr
 if sys.stdout is not None:
  sys.stdout = cast(TextIO, _DroppingOutput(sys.stdout))
 if sys.stderr is not None:
  sys.stderr = cast(TextIO, _DroppingOutput(sys.stderr))
 try:
  yield
 finally:
  for stream in (sys.stdout, sys.stderr):
   if stream is not None:
    stream.flush()  # through the wrapper: quiet whatever happened to the reader
  sys.stdout, sys.stderr = saved


# -- building a run ------------------------------------------------------------------------


def _load(path: str) -> Pipeline:
 try:
  return load_pipeline(path)
 except PipelineFileError as exc:
  raise UsageError(str(exc)) from None


# -- the terminal view -----------------------------------------------------------------------


STATUS_STYLE = {
 MmaStatus.IDLE: "white on grey23",
 MmaStatus.PLANNING: "black on cyan",
 MmaStatus.EXECUTING: "black on green",
 MmaStatus.PAUSED: "black on yellow",
 MmaStatus.DONE: "white on blue",
 MmaStatus.ERROR: "white on red",
}


def _bar(completed: int, total: int) -> RenderableType:
 grid = Table.grid()  # a grid row ends the line, which a bare ProgressBar does not
 grid.add_row(ProgressBar(total=max(total, 1), completed=completed, width=60))
 return grid


def approve_command(state: str, ids: Sequence[str] = ()) -> str:
 """The command that approves `ids` (or, with none or many, `TICKET...`) of the run on `state`."""
 which = " ".join(shlex.quote(printable(i)) for i in ids) if 0 < len(ids) <= 8 else "TICKET..."
 return f"conductor approve --state {shlex.quote(printable(state))} {which}"


def render(
 snap: Snapshot, status: MmaStatus, *, keys: bool = True, state: str | None = None
) -> RenderableType:
 """The live view of a run: one function of a snapshot, so it is easy to test.

 `state`, the run's state path as the user would type it, goes into the approve command shown
 beside the tickets awaiting approval.
 """
 counts = snap.counts
 head = Text.assemble(
  (
   " STOPPING " if snap.stopping and snap.running else f" {status.value.upper()} ",
   STATUS_STYLE[status],
  ),
  "  ",
  (printable(snap.name), "bold"),
  f"   {counts.completed}/{counts.total} completed",
  f" · {len(snap.running)} running",
  (f" · {counts.failed} failed", "red" if counts.failed else ""),
  (f" · {counts.blocked} blocked", "red" if counts.blocked else ""),
  f"   {clock(snap.elapsed)}",
 )
 parts: list[RenderableType] = [
  head,
  _bar(counts.completed, counts.total),
 ]
 if status is MmaStatus.PAUSED:
  since = time.strftime("%H:%M:%S", time.localtime(snap.paused_at)) if snap.paused_at else "?"
  finishing = (
   f"{len(snap.finishing)} worker(s) finishing: {_ids(snap.finishing)}"
   if snap.finishing
   else "all workers idle"
  )
  if snap.running_at_pause:
   done = [t for t in snap.running_at_pause if t not in snap.finishing]
   finishing += f" · running at pause: {len(snap.running_at_pause)}"
   if done:
    finishing += f" (done: {_ids(done)})"
  reason = f" — {printable(snap.pause_reason)}" if snap.pause_reason else ""
  nxt = _ids(snap.ready, 6)
  body = Text.assemble(
   (f"PAUSED since {since}{reason}\n", "bold"),
   finishing,
   f"\nwill start on resume: {nxt or 'nothing ready yet'} · {len(snap.pending)} pending",
  )
  parts.append(Panel(body, style="black on yellow", border_style="yellow"))
 if snap.running:
  table = Table.grid(padding=(0, 2))
  now = time.monotonic()
  for worker in snap.running:
   table.add_row(
    "▶",
    Text(printable(worker.ticket)),
    f"attempt {worker.attempt}",
    f"{now - worker.started_at:5.1f}s",
   )
  parts.append(table)
 waiting = snap.awaiting_approval
 if waiting:
  how = approve_command(state if state is not None else "STATE", waiting)
  parts.append(Text(f"awaiting approval: {_ids(waiting, 8)} · approve with `{how}`", "cyan"))
 if keys:
  parts.append(Text("p pause/resume · Ctrl+C stop after running workers (twice: cancel)", "dim"))
 return Group(*parts)


def _log_line(line: str) -> None:
 # sys.stdout is a _DroppingOutput under `main`: a reader that goes away costs nothing.
 print(line, flush=True)


def plain_line(name: str, t: Transition) -> str:
 """One log line for a transition, for runs off a terminal; its untrusted parts escaped."""
 stamp = time.strftime("%H:%M:%S", time.localtime(t.at))
 what = printable(t.ticket) if t.ticket is not None else "pipeline"
 line = f"{stamp} {printable(name)}: {what} {printable(t.status)}"
 if t.ticket is not None and t.attempt:
  line += f" (attempt {t.attempt})"
 if t.detail:
  line += f": {printable(t.detail)}"
 return line


class _ApprovalNotices:
 """Off a terminal: print "awaiting approval: ..." once per ticket, when it starts waiting.

 With `auto_queue` off a ticket waits for approval from the moment it is ready: at the start
 (`at_start`), or when its last dependency completes (`on_transition`, a store watcher, so
 the line follows the committed "completed" line). Only the completed ticket's dependents
 are examined, and the engine's waiting list only when one of them has just become ready:
 nothing for the other transitions.
 """

 def __init__(self, engine: ExecutionEngine, state: str) -> None:
  self._engine = engine
  self._state = state
  self._told: set[str] = set()
  self._dependents: dict[str, list[str]] = {}
  for ticket in engine.tickets.values():
   for dep in dict.fromkeys(ticket.depends_on):
    self._dependents.setdefault(dep, []).append(ticket.id)

 def at_start(self) -> None:
  self._tell(self._engine.awaiting_approval())

 def on_transition(self, t: Transition) -> None:
  if t.ticket is None or t.status != Status.COMPLETED:
   return
  tickets = self._engine.tickets
  ready = [
   d
   for d in self._dependents.get(t.ticket, ())
   if d not in self._told
   and tickets[d].status is Status.TODO
   and all(tickets[x].status is Status.COMPLETED for x in tickets[d].depends_on)
  ]
  if ready:
   waiting = set(self._engine.awaiting_approval())
   self._tell([d for d in ready if d in waiting])

 def _tell(self, ids: Sequence[str]) -> None:
  new = [i for i in ids if i not in self._told]
  if new:
   self._told.update(new)
   _log_line(f"awaiting approval: {_ids(new)} (approve with `{approve_command(self._state, new)}`)")


@contextmanager
def _keys(on_key: Callable[[str], None]) -> Iterator[None]:
 """Read single key presses from a terminal in a thread, until the block ends.

 The thread waits in select() on stdin and on a pipe that wakes it at the end: no polling.
 A terminal that goes away (EIO, end of file) ends the reading, not the run; restoring the
 terminal's mode on a dead one is skipped the same way.
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


_CANCELLING = (signal.SIGTERM, signal.SIGHUP)


class _Stops:
 """What signals do to a run (`conductor run`, `demo`); see the module docstring.

 SIGINT: the first stops admitting workers (running ones finish), the second cancels them.
 SIGTERM, SIGHUP: cancel at once (`ConductorEngine.cancel`); `first` remembers the first of
 them for the exit code (`exit_code`). Inside the loop `watch` receives them; outside it,
 from `recorded()` on (the state being claimed and restored, and after the run), they are
 only recorded, and `watch` cancels the run at its start if one came. Later signals change
 nothing; every message is printed through the console, whose output may be gone already.
 Main thread only (signal handlers are).
 """

 def __init__(self) -> None:
  self.first: signal.Signals | None = None

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
  """The run's exit code: 128 + the first SIGTERM/SIGHUP if one stopped it early."""
  code = exit_code_for(final)
  if self.first is not None and code != EXIT_OK:
   return 128 + self.first
  return code


LIVE_WAIT = 0.05  # seconds the live view's refresh waits for a snapshot from the loop


async def _run_conductor(
 conductor: ConductorEngine, console: Console, interactive: bool, state: str
) -> Snapshot:
 if not interactive:
  return await conductor.run()
 with Live(
  # Rich calls this under Live's lock, which the loop also takes when it prints: wait for
  # the loop's fresh snapshot only briefly (the previous one is at most a refresh old).
  get_renderable=lambda: render(
   conductor.snapshot(rows=False, timeout=LIVE_WAIT), conductor.mma_status, state=state
  ),
  console=console,
  refresh_per_second=10,
  transient=False,
 ):
  return await conductor.run()


def _open_durable(pipeline: Pipeline, args: argparse.Namespace, console: Console) -> DurableRun:
 durable = open_session(
  pipeline, state=getattr(args, "state", None), fresh=bool(getattr(args, "fresh", False))
 )
 for note in durable.notes():
  console.print(Text(note.text, "yellow" if note.warning else ""), soft_wrap=True)
 return durable


def execute(pipeline: Pipeline, args: argparse.Namespace, console: Console) -> int:
 """Run a pipeline in this terminal, durably; return the exit code.

 Its state (`--state`, default beside the pipeline file) records every transition; a
 re-run resumes from it, a paused one starts paused. Other terminals control the run with
 `conductor pause|resume|status|approve --state ...` while it lives. SIGTERM and SIGHUP
 cancel it cleanly (see `_Stops`).
 """
 stops = _Stops()
 with stops.recorded():
  durable = _open_durable(pipeline, args, console)
  try:
   return _execute(pipeline, args, console, durable, stops)
  finally:
   durable.close()


def _execute(
 pipeline: Pipeline,
 args: argparse.Namespace,
 console: Console,
 durable: DurableRun,
 stops: _Stops,
) -> int:
 state, store, pause = shown_path(durable.state), durable.store, durable.restored.pause
 shown = escape(state)
 if durable.restored.done and not durable.restored.fresh:
  console.print(
   f"conductor: all {durable.restored.total} tickets of {_lit(pipeline.name)} are already "
   f"completed (state {shown}); nothing to do: add --fresh to run it again",
   soft_wrap=True,
  )
  return EXIT_OK
 max_workers = args.max_workers or pipeline.max_workers
 conductor = durable.conductor(max_workers)
 engine = conductor.engine
 interactive = console.is_terminal and sys.stdin.isatty()
 notices = None if interactive or engine.auto_queue else _ApprovalNotices(engine, state)
 if not interactive:
  # Printed once committed: a line saying "completed" is a promise the state keeps.
  store.watch(lambda t: _log_line(plain_line(pipeline.name, t)))
  if notices is not None:
   store.watch(notices.on_transition)

 def on_key(ch: str) -> None:
  if ch in "pP ":
   if conductor.paused:
    conductor.resume()
   else:
    conductor.pause("paused from the terminal")

 source = f" from {_lit(pipeline.path)}" if pipeline.path else ""
 console.print(
  f"conductor: running [bold]{_lit(pipeline.name)}[/]{source}: {len(engine.tickets)} tickets, "
  f"max {max_workers} workers, {args.backend}",
  soft_wrap=True,
 )

 async def body() -> Snapshot:
  # The control socket listens now: say how to reach it, and whether we wait.
  ops = "pause|resume|status" + ("" if engine.auto_queue else "|approve")
  console.print(
   f"control it from another terminal: conductor {ops} --state {shown}", soft_wrap=True
  )
  if pause.paused:
   since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pause.since or time.time()))
   reason = f" ({_lit(pause.reason)})" if pause.reason else ""
   console.print(
    f"[yellow]PAUSED since {since}{reason}: nothing starts until it is resumed: "
    f"press p here, or run `conductor resume --state {shown}`",
    soft_wrap=True,
   )
  if notices is not None:
   notices.at_start()
  return await _run_conductor(conductor, console, interactive, state)

 async def main() -> Snapshot:
  async with anyio.create_task_group() as tg:
   # Signals are watched for the whole loop, control socket and hand-over included.
   await tg.start(stops.watch, conductor, console)
   final = await durable.drive(conductor, body)
   tg.cancel_scope.cancel()
  return final

 with _keys(on_key) if interactive else contextlib.nullcontext():
  final = anyio.run(main, backend=args.backend)
 console.print(render(final, final.status, keys=False, state=state))
 if store.failure:
  raise UsageError(f"{store.failure}; the run was stopped")
 for row in final.rows:
  if row.status in ("failed", "blocked"):
   console.print(
    Text.assemble((row.status, "red"), f" {printable(row.id)}: {printable(row.error or '')}"),
    soft_wrap=True,
   )
 code = stops.exit_code(final)
 if code == EXIT_OK:
  verdict = "[green]all tickets completed"
 elif code == EXIT_FAILED:
  verdict = "[red]some tickets failed or are blocked"
 else:
  why = f" ({stops.first.name})" if stops.first is not None else ""
  verdict = f"[yellow]stopped before the end{why}; run it again to carry on (state {shown})"
 console.print(f"{verdict}[/] in {clock(final.elapsed)} (exit {code})", soft_wrap=True)
 return code


# -- commands --------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, console: Console) -> int:
 return execute(_load(args.file), args, console)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
 from .demo import demo_pipeline

 if getattr(args, "gui", False):
  from .gui import run_dashboard

  return run_dashboard(demo_pipeline(), args)
 return execute(demo_pipeline(), args, console)


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
 pipeline = _load(args.file)
 engine = check_pipeline(pipeline)
 edges = sum(len(t.depends_on) for t in engine.tickets.values())
 console.print(
  f"{_lit(args.file)}: ok — pipeline {_lit(repr(pipeline.name))}, {len(engine.tickets)} tickets, "
  f"{edges} dependencies, max_workers {pipeline.max_workers}"
 )
 return EXIT_OK


def cmd_gui(args: argparse.Namespace, console: Console) -> int:
 from .demo import demo_pipeline
 from .gui import run_dashboard

 pipeline = _load(args.file) if args.file else demo_pipeline()
 return run_dashboard(pipeline, args)


# -- control from another terminal -----------------------------------------------------------


def _state_for(args: argparse.Namespace, op: str) -> Path:
 if args.state:
  return Path(args.state)
 if args.file:
  return default_state_path(Path(args.file))
 raise UsageError(
  f"{op}: which pipeline? give --state PATH (as `conductor run` printed it) or the pipeline file"
 )


def _ask_run(
 state: Path,
 op: str,
 *,
 reason: str | None = None,
 history: bool = False,
 tickets: Sequence[str] = (),
) -> dict[str, Any]:
 try:
  return request(state, op, reason=reason, history=history, tickets=tickets)
 except StateError as exc:
  raise UsageError(str(exc)) from None


def _control(args: argparse.Namespace, op: str, reason: str | None = None) -> dict[str, Any]:
 history = bool(getattr(args, "history", False))
 return _ask_run(_state_for(args, op), op, reason=reason, history=history)


def _where(answer: dict[str, Any]) -> str:
 # For a markup string: escaped.
 report = answer["report"]
 name = _lit(report["pipeline"])
 if answer["live"]:
  return f"{name} (running, pid {report['pid']})"
 return f"{name} (not running)"


def cmd_pause(args: argparse.Namespace, console: Console) -> int:
 answer = _control(args, "pause", args.reason)
 report = answer["report"]
 if answer["live"]:
  finishing = report["finishing"]
  still = (
   f"{len(finishing)} still finishing: {escape(_ids(finishing))}" if finishing else "none running"
  )
  console.print(f"paused {_where(answer)}: no worker starts any more; {still}", soft_wrap=True)
 else:
  console.print(f"paused {_where(answer)}: `conductor run` will start it paused", soft_wrap=True)
 return EXIT_OK


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
 answer = _control(args, "resume")
 if answer["live"]:
  console.print(f"resumed {_where(answer)}", soft_wrap=True)
 else:
  console.print(
   f"resumed {_where(answer)}: the next `conductor run` starts it at once", soft_wrap=True
  )
 return EXIT_OK


def cmd_approve(args: argparse.Namespace, console: Console) -> int:
 """`conductor approve (--state PATH | FILE) TICKET...`: let tickets awaiting approval start.

 A live run only. Unknown ids, or no live run, are refused with one line (exit 2) and
 nothing is approved; tickets that do not wait for approval are listed with their status.
 """
 targets = list(args.targets)
 if args.state:
  state = Path(args.state)
 else:
  if len(targets) < 2 or not Path(targets[0]).is_file():
   raise UsageError(
    "approve: which pipeline? give --state PATH (as `conductor run` printed it) or the "
    "pipeline file, then the ticket ids: `conductor approve --state PATH TICKET...`"
   )
  state = default_state_path(Path(targets.pop(0)))
 answer = _ask_run(state, "approve", tickets=targets)
 report = answer["report"]
 approved, not_waiting = report["approved"], report["not_waiting"]
 if approved:
  console.print(
   f"approved {escape(_ids(approved))} in {_where(answer)}: "
   f"{'it starts' if len(approved) == 1 else 'they start'} as soon as a worker is free",
   soft_wrap=True,
  )
 if not_waiting:
  listed = ", ".join(f"{printable(t['id'])} ({printable(t['status'])})" for t in not_waiting)
  console.print(Text(f"not waiting for approval: {listed}"), soft_wrap=True)
 return EXIT_OK


def _stamp(at: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
 return time.strftime(fmt, time.localtime(at)) if at else "-"


STATUS_ROWS = 30
"""Above this many tickets, `conductor status` lists only the notable ones (see render_status)."""


def render_status(answer: dict[str, Any], *, every_ticket: bool = False) -> RenderableType:
 """`conductor status` for people: one function of the answer, so it is easy to test.

 The ticket table lists every ticket of a small pipeline. Of a larger one, unless
 `every_ticket`, it lists the notable ones (running, failed, blocked, retried, with an
 error), at most `STATUS_ROWS` of them, and says what it left out; the counts above it
 cover everything.
 """
 report = answer["report"]
 counts = report["counts"]
 status = MmaStatus(report["mma_status"])
 parts: list[RenderableType] = [
  Text.assemble(
   (f" {status.value.upper()} ", STATUS_STYLE[status]),
   "  ",
   (printable(str(report["pipeline"])), "bold"),
   f"   {'running, pid ' + str(report['pid']) if report['live'] else 'not running'}",
   f"   state {printable(str(report['state']))}",
  ),
  Text(
   f"{counts['completed']}/{counts['total']} completed · {counts['in_progress']} in progress · "
   f"{counts['todo']} todo · {counts['failed']} failed · {counts['blocked']} blocked"
  ),
 ]
 if report["paused"]:
  reason = f": {printable(report['pause_reason'])}" if report["pause_reason"] else ""
  lines = [f"PAUSED since {_stamp(report['paused_since'])}{reason}"]
  if report["running_at_pause"]:
   lines.append(f"running at pause: {_ids(report['running_at_pause'])}")
  if report["live"]:
   finishing = report["finishing"]
   lines.append(f"still finishing: {_ids(finishing) if finishing else 'none'}")
  parts.append(Panel(Text("\n".join(lines)), style="black on yellow", border_style="yellow"))
 if report["running"]:
  parts.append(Text(f"running: {_ids(report['running'])}"))
 if report["interrupted"]:
  parts.append(Text(f"interrupted (will run again): {_ids(report['interrupted'])}", "yellow"))
 waiting = report.get("awaiting_approval") or []
 if waiting:
  how = approve_command(str(report["state"]), waiting)
  parts.append(
   Text(f"awaiting approval ({len(waiting)}): {_ids(waiting, 12)} · approve with `{how}`", "cyan")
  )
 pending = report["pending"]
 if pending:
  parts.append(Text(f"pending ({len(pending)}): {_ids(pending, 12)}"))
 table = Table(box=None, padding=(0, 2), header_style="bold")
 for column in ("ticket", "status", "attempts", "exit", "last error"):
  table.add_column(column)
 rows = report["tickets"]
 if not every_ticket and len(rows) > STATUS_ROWS:
  notable = [r for r in rows if _notable(r)]
  rows = notable[:STATUS_ROWS]
  left = len(report["tickets"]) - len(rows)
  more = f"{len(notable) - len(rows)} more notable, " if len(notable) > len(rows) else ""
  note = Text(
   f"{left} of {len(report['tickets'])} tickets not listed ({more}the rest completed or "
   "not started); --all lists every ticket",
   "dim",
  )
 else:
  note = None
 for row in rows:
  code = row["exit_code"]
  table.add_row(
   Text(printable(str(row["id"]))),
   Text(printable(str(row["status"]))),
   str(row["attempts"]),
   "" if code is None else str(code),
   Text(printable(row["error"] or "")),
  )
 if rows:
  parts.append(table)
 if note is not None:
  parts.append(note)
 return Group(*parts)


def _notable(row: dict[str, Any]) -> bool:
 status = row["status"]
 if status in (Status.COMPLETED, Status.TODO):  # done once, or never run: the counts say it
  return row["attempts"] > 1 or bool(row["error"])
 return True


def history_lines(history: Sequence[dict[str, Any]]) -> list[str]:
 """The transition log, one line per transition, oldest first; untrusted parts escaped."""
 lines = []
 for h in history:
  when = _stamp(h["at"], "%Y-%m-%d %H:%M:%S") + f".{int(h['at'] * 1000) % 1000:03d}"
  what = printable(h["ticket"]) if h["ticket"] is not None else "pipeline"
  line = f"{h['seq']:>6} {when} {what} {printable(str(h['status']))}"
  if h["attempt"]:
   line += f" (attempt {h['attempt']})"
  if h["detail"]:
   line += f": {printable(h['detail'])}"
  lines.append(line + f" [pid {h['pid']}]")
 return lines


def cmd_status(args: argparse.Namespace, console: Console) -> int:
 answer = _control(args, "status")
 if args.json:
  print(json.dumps({"live": answer["live"], **answer["report"]}, indent=1))
  return EXIT_OK
 console.print(render_status(answer, every_ticket=args.all))
 if args.history:
  console.print(Text("history:", "bold"))
  for line in history_lines(answer["report"].get("history", [])):
   console.print(Text(line), soft_wrap=True)
 return EXIT_OK


def _positive(text: str) -> int:
 try:
  value = int(text)
 except ValueError:
  raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
 if value < 1:
  raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
 return value


def build_parser() -> argparse.ArgumentParser:
 parser = argparse.ArgumentParser(
  prog="conductor",
  description="Run a DAG of tickets with workers, pausable and resumable at any moment.",
 )
 sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

 def runner_options(p: argparse.ArgumentParser) -> None:
  p.add_argument("--max-workers", type=_positive, help="workers at once (default: the pipeline's)")
  p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop")

 def state_options(p: argparse.ArgumentParser, default: str) -> None:
  p.add_argument("--state", metavar="PATH", help=f"the state file (default: {default})")
  p.add_argument(
   "--fresh", action="store_true", help="start over: forget the state's progress and pause flag"
  )

 p = sub.add_parser("run", help="run a pipeline file (TOML); a re-run resumes where it stopped")
 p.add_argument("file", help="the pipeline file")
 runner_options(p)
 state_options(p, "FILE's name with .state.db, beside it")
 p.set_defaults(func=cmd_run)

 def gui_options(p: argparse.ArgumentParser) -> None:
  p.add_argument("--size", metavar="WxH", help="dashboard window size (default 960x640)")
  p.add_argument(
   "--exit-when-done", action="store_true", help="close the dashboard when the run ends"
  )
  p.add_argument(
   "--test-hook",
   metavar="PORT_FILE",
   help="for tests: serve a JSON API on 127.0.0.1 and write its port to PORT_FILE",
  )
  p.add_argument(
   "--test-hook-shots",
   metavar="DIR",
   help="for tests: the only folder the hook writes screenshots into (default: PORT_FILE's)",
  )

 p = sub.add_parser("demo", help="run the built-in demo pipeline (about 20 s)")
 runner_options(p)
 p.add_argument("--gui", action="store_true", help="in the desktop dashboard (starts at once)")
 gui_options(p)
 state_options(p, str(demo_state_path()))
 p.set_defaults(func=cmd_demo, start=True)

 def control_options(p: argparse.ArgumentParser) -> None:
  p.add_argument("file", nargs="?", help="the pipeline file (its default state), or use --state")
  p.add_argument("--state", metavar="PATH", help="the state file, as `conductor run` printed it")

 p = sub.add_parser("pause", help="pause a pipeline, running or not (from any terminal)")
 control_options(p)
 p.add_argument("--reason", metavar="TEXT", help="why, shown by status and on restart")
 p.set_defaults(func=cmd_pause)

 p = sub.add_parser("resume", help="resume a paused pipeline, running or not")
 control_options(p)
 p.set_defaults(func=cmd_resume)

 p = sub.add_parser(
  "approve",
  help="let tickets that await approval (auto_queue = false) start, in a running pipeline",
  usage="conductor approve [-h] (--state PATH | FILE) TICKET [TICKET ...]",
 )
 p.add_argument(
  "targets",
  nargs="+",
  metavar="[FILE] TICKET",
  help="the ticket ids; without --state, the pipeline file first (its default state)",
 )
 p.add_argument("--state", metavar="PATH", help="the state file, as `conductor run` printed it")
 p.set_defaults(func=cmd_approve)

 p = sub.add_parser("status", help="show a pipeline's state, running or not")
 control_options(p)
 p.add_argument("--json", action="store_true", help="machine-readable output")
 p.add_argument("--history", action="store_true", help="also print the transition log")
 p.add_argument(
  "--all",
  action="store_true",
  help=f"list every ticket (above {STATUS_ROWS} tickets only the notable ones are listed)",
 )
 p.set_defaults(func=cmd_status)

 p = sub.add_parser("validate", help="check a pipeline file without running it")
 p.add_argument("file")
 p.set_defaults(func=cmd_validate)

 p = sub.add_parser("gui", help="open the dashboard on a pipeline file (default: the demo)")
 p.add_argument("file", nargs="?")
 runner_options(p)
 p.add_argument("--start", action="store_true", help="start the run at once, without Start")
 gui_options(p)
 state_options(p, f"FILE's name with .state.db, beside it; the demo's: {demo_state_path()}")
 p.set_defaults(func=cmd_gui)
 return parser


def main(argv: Sequence[str] | None = None) -> int:
 """The `conductor` command. Returns the exit code; a user's mistake or an unusable state
 (`UsageError`, `StateError`) is one line on stderr and exit 2, never a traceback."""
 with _output_may_vanish():
  parser = build_parser()
  args = parser.parse_args(argv)
  console = Console(highlight=False, emoji=False)
  if not console.is_terminal:
   console.soft_wrap = True  # log lines stay whole instead of wrapping at 80 columns
  try:
   code: int = args.func(args, console)
  except (UsageError, StateError) as exc:
   print(f"conductor: {printable(str(exc))}", file=sys.stderr, flush=True)
   return EXIT_USAGE
  except KeyboardInterrupt:
   return EXIT_STOPPED
  return code


__all__ = [
 "approve_command",
 "build_parser",
 "execute",
 "exit_code_for",
 "history_lines",
 "main",
 "plain_line",
 "render",
 "render_status",
]
