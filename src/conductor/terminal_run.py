"""A run in this terminal (`conductor run`, `conductor demo`): from a pipeline to an exit code.

`execute` opens the run's durable state (`session.open_session`: claimed, restored, its
leftovers stopped) and says what it found, drives the run on an event loop with the control
socket beside it (`DurableRun.drive`: other terminals pause, resume, approve and ask for
status), and ends with the final view, the failed tickets and a verdict line; it returns the
exit code (`exits`, and `terminal.Stops` for signals).

What it shows depends on where the output goes:
- a terminal (stdout and stdin both a tty): the live view (`views.render`), refreshed 10
  times a second, reading keys (`terminal.read_keys`: p pauses as a person, also over an
  automatic pause, and resumes a person's pause; r resumes any pause; a resume the spent
  token budget refuses says how to raise it); at the end that same region shows the final
  frame, without the key hint, once;
- anything else: one line per transition (`views.plain_line`), printed once the state has
  committed it, so a line saying "completed" is a promise the state keeps; and with
  `auto_queue` off, one line per ticket that starts waiting for approval
  (`views.ApprovalNotices`). The final frame follows the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import anyio
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from ._heap import keep_until_exit
from ._text import clock, plural, printable, shown_path
from .dag_engine import Status
from .exits import EXIT_FAILED, EXIT_OK, UsageError
from .multi_agent_conductor import ConductorEngine, TokenBudgetSpent, budget_spent
from .pipeline import Pipeline
from .session import DurableRun, on_cluster, open_session
from .snapshots import Snapshot
from .terminal import Stops, read_keys
from .views import (
 ApprovalNotices,
 budget_words,
 lit,
 pause_words,
 plain_line,
 render,
 shell_path,
)

__all__ = ["LIVE_WAIT", "execute"]

LIVE_WAIT = 0.05  # seconds the live view's refresh waits for a snapshot from the loop


def execute(pipeline: Pipeline, args: argparse.Namespace, console: Console) -> int:
 """Run `pipeline` in this terminal, durably; return the exit code.

 `args`: `state` (default beside the pipeline file), `fresh`, `max_workers`, `backend`.
 The state records every transition; a re-run resumes from it, a paused one starts paused.
 Other terminals control the run with `conductor pause|resume|status|approve --state ...`
 while it lives. Signals: see `terminal.Stops`. A state that cannot be used, or that fails
 during the run, raises `UsageError` (one line).
 """
 stops = Stops()
 with stops.recorded():
  durable = open_session(
   pipeline, state=getattr(args, "state", None), fresh=bool(getattr(args, "fresh", False))
  )
  try:
   for note in durable.notes():
    console.print(Text(note.text, "yellow" if note.warning else ""), soft_wrap=True)
   return _execute(pipeline, args, console, durable, stops)
  finally:
   durable.close()


def _execute(
 pipeline: Pipeline,
 args: argparse.Namespace,
 console: Console,
 durable: DurableRun,
 stops: Stops,
) -> int:
 restored, store = durable.restored, durable.store
 state = shell_path(durable.state)  # for the commands it shows; escaped, as every path
 if restored.done and not restored.fresh:
  console.print(
   f"conductor: all {plural(restored.total, 'ticket')} of {lit(pipeline.name)} are already "
   f"completed (state {lit(shown_path(durable.state))}); nothing to do: add --fresh to run "
   "it again",
   soft_wrap=True,
  )
  return EXIT_OK
 max_workers = args.max_workers or pipeline.max_workers
 address = getattr(args, "dask", None) or pipeline.dask  # the flag wins over the file
 executor = durable.executor(address) if address else None
 conductor = durable.conductor(max_workers, worker=executor)
 if executor is not None:
  executor.attach(conductor)  # a lost scheduler pauses the run until it is back
 engine = conductor.engine
 interactive = console.is_terminal and sys.stdin.isatty()
 notices = None
 if not interactive:
  # Printed once committed: a line saying "completed" is a promise the state keeps.
  store.watch(lambda t: _log_line(plain_line(pipeline.name, t)))
  if not engine.auto_queue:
   notices = ApprovalNotices(engine, durable.state, _log_line)
   store.watch(notices.on_transition)

 source = f" from {lit(shown_path(pipeline.path))}" if pipeline.path else ""
 console.print(
  f"conductor: running [bold]{lit(pipeline.name)}[/]{source}: "
  f"{plural(len(engine.tickets), 'ticket')}, max {plural(max_workers, 'worker')}, "
  f"{args.backend}",
  soft_wrap=True,
 )

 async def body() -> Snapshot:
  # The control socket listens now: say how to reach it, and whether we wait.
  ops = "pause|resume|status" + ("" if engine.auto_queue else "|approve")
  console.print(
   f"control it from another terminal: conductor {ops} --state {lit(state)}", soft_wrap=True
  )
  pause = restored.pause
  if pause.paused:
   since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pause.since or time.time()))
   if pause.by_person:
    reason = f" ({lit(pause.reason)})" if pause.reason else ""
    console.print(
     f"[yellow]PAUSED since {since}{reason}: nothing starts until it is resumed: "
     f"press p here, or run `conductor resume --state {lit(state)}`",
     soft_wrap=True,
    )
   else:
    words = pause_words(False, pause.reason, pause.auto_resume_at)
    console.print(
     f"[yellow]PAUSED since {since}: {escape(words)}; to resume now: "
     f"{'press r here, or ' if interactive else ''}run `conductor resume --state {lit(state)}`",
     soft_wrap=True,
    )
  used, budget = conductor.tokens_used, conductor.token_budget
  if budget is not None and budget_spent(used, budget):
   console.print(Text(budget_words(used, budget, f"--state {state}"), "yellow"), soft_wrap=True)
  if notices is not None:
   notices.at_start()
  if interactive:
   return await _run_live(conductor, console, durable.state, frame)
  return await conductor.run()

 async def main() -> Snapshot:
  async with contextlib.AsyncExitStack() as stack:
   if executor is not None:
    cleared = await stack.enter_async_context(on_cluster(executor))
    left = f"; stopped {plural(cleared, 'task')} a killed run left there" if cleared else ""
    console.print(f"on the Dask cluster at {lit(executor.address)}{left}", soft_wrap=True)
   async with anyio.create_task_group() as tg:
    # Signals are watched for the whole loop, control socket and hand-over included.
    await tg.start(stops.watch, conductor, console)
    final = await durable.drive(conductor, body)
    tg.cancel_scope.cancel()
  return final

 frame = _LiveFrame(conductor, durable.state)

 def on_key(ch: str) -> None:  # on the key reader's thread: pause() and resume() are safe
  frame.notice = None  # a key press answers the previous notice
  if ch in "pP ":
   # A person's pause wins over an automatic one: p turns it into a person's (no longer
   # ending by itself); p resumes only a person's pause.
   if conductor.paused and conductor.paused_by_person:
    _resume()
   else:
    conductor.pause("paused from the terminal")
  elif ch in "rR" and conductor.paused:
   _resume()

 def _resume() -> None:
  try:
   conductor.resume()
  except TokenBudgetSpent:  # the view says how to raise it instead of doing nothing
   used, budget = conductor.tokens_used, conductor.token_budget or 0
   frame.notice = "not resumed: " + budget_words(used, budget, f"--state {state}")

 with read_keys(on_key) if interactive else contextlib.nullcontext():
  # The pipeline, its DAG and the run's records live until the process exits: frozen, the
  # run's collections and the one at exit do not walk them (`_heap`); and the collector is
  # on from here, if the caller held it off while loading (`cli.cmd_run`).
  keep_until_exit()
  final = anyio.run(main, backend=args.backend)
 keep_until_exit()  # and what the run made, for the collection at exit
 if not interactive:  # a terminal's live view already ends on the final frame
  console.print(render(final, final.status, keys=False, state=durable.state))
 if store.failure:
  raise UsageError(f"{store.failure}; the run was stopped")
 # From the engine, settled now, not from the final snapshot's rows: a run of 100,000
 # tickets need not build 100,000 rows at its end to list the few that failed.
 for ticket in engine.tickets.values():
  if ticket.status is Status.FAILED or ticket.status is Status.BLOCKED:
   console.print(
    Text.assemble(
     (str(ticket.status), "red"), f" {printable(ticket.id)}: {printable(ticket.error or '')}"
    ),
    soft_wrap=True,
   )
 code = stops.exit_code(final)
 hint = ""
 if code == EXIT_OK:
  verdict = "[green]all tickets completed[/]"
 elif code == EXIT_FAILED:
  # A re-run gives every failed ticket its retries again (a new try): say so, or people
  # look for a `retry` command.
  verdict, hint = (
   "[red]some tickets failed or are blocked[/]",
   "; run it again to retry the failed ones",
  )
 else:
  why = f" ({stops.first.name})" if stops.first is not None else ""
  verdict = (
   f"[yellow]stopped before the end{why}; run it again to carry on "
   f"(state {lit(shown_path(durable.state))})[/]"
  )
 console.print(f"{verdict} in {clock(final.elapsed)} (exit {code}){hint}", soft_wrap=True)
 return code


class _LiveFrame:
 """What the live view shows: the run as it goes, with the key hint and the `notice` a key
 press left; once `end` is called, the final frame, without them. Rich draws it from its
 refresh thread, and a last time when the `Live` stops: so the final frame replaces the
 live one in place, and is drawn once."""

 def __init__(self, conductor: ConductorEngine, state: Path) -> None:
  self._conductor = conductor
  self._state = state
  self._final: RenderableType | None = None  # set once, on the loop; read by rich's thread
  # Set by the key reader's thread, read by rich's: one reference, replaced whole.
  self.notice: str | None = None

 def end(self, final: Snapshot) -> None:
  self._final = render(final, final.status, keys=False, state=self._state)

 def get(self) -> RenderableType:
  if self._final is not None:
   return self._final
  # Rich calls this under Live's lock, which the loop also takes when it prints: wait for
  # the loop's fresh snapshot only briefly (the previous one is at most a refresh old).
  conductor = self._conductor
  snap = conductor.snapshot(rows=False, timeout=LIVE_WAIT)
  notice = self.notice if snap.paused else None  # a refused resume: while still paused
  return render(snap, conductor.mma_status, state=self._state, notice=notice)


async def _run_live(
 conductor: ConductorEngine, console: Console, state: Path, frame: _LiveFrame
) -> Snapshot:
 with Live(get_renderable=frame.get, console=console, refresh_per_second=10, transient=False):
  try:
   final = await conductor.run()
  except BaseException:
   frame.end(conductor.published)  # keys are no longer read: no hint on the last frame
   raise
  frame.end(final)
 return final


def _log_line(line: str) -> None:
 # sys.stdout is a DroppingOutput under `cli.main`: a reader that goes away costs nothing.
 print(line, flush=True)
