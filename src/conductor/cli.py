"""The `conductor` command line: run, demo, validate, pause, resume, status (and `gui`).

Exit codes: 0 every ticket completed; 1 some failed or are blocked; 2 bad input (a one-line
message, never a traceback); 130 stopped by the user before the end.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .control import DurableRun, open_run, request
from .dag_engine import ExecutionEngine, PipelineError, Status
from .leftovers import Leftover
from .multi_agent_conductor import ConductorEngine, MmaStatus, Snapshot, Transition
from .pipeline import Pipeline, PipelineFileError, load_pipeline
from .store import StateError, default_state_path, demo_state_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130


class UsageError(Exception):
 """A mistake the user can fix: printed as one line, exit code 2."""


# -- building a run ------------------------------------------------------------------------


def _load(path: str) -> Pipeline:
 try:
  return load_pipeline(path)
 except PipelineFileError as exc:
  raise UsageError(str(exc)) from None


def _engine_for(pipeline: Pipeline, auto_queue: bool | None = None) -> ExecutionEngine:
 where = str(pipeline.path) if pipeline.path else pipeline.name
 try:
  return ExecutionEngine(
   pipeline.tickets, auto_queue=pipeline.auto_queue if auto_queue is None else auto_queue
  )
 except PipelineError as exc:
  raise UsageError(f"{where}: {exc}") from None


def exit_code_for(snap: Snapshot) -> int:
 if snap.status is MmaStatus.DONE:
  return EXIT_OK
 if snap.counts.failed or snap.counts.blocked or snap.error:
  return EXIT_FAILED
 return EXIT_STOPPED


# -- the terminal view -----------------------------------------------------------------------


def _clock(seconds: float) -> str:
 minutes, secs = divmod(int(seconds), 60)
 return f"{minutes:02d}:{secs:02d}"


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


def render(snap: Snapshot, status: MmaStatus, *, keys: bool = True) -> RenderableType:
 """The live view of a run: one function of a snapshot, so it is easy to test."""
 counts = snap.counts
 head = Text.assemble(
  (
   " STOPPING " if snap.stopping and snap.running else f" {status.value.upper()} ",
   STATUS_STYLE[status],
  ),
  "  ",
  (snap.name, "bold"),
  f"   {counts.completed}/{counts.total} completed",
  f" · {len(snap.running)} running",
  (f" · {counts.failed} failed", "red" if counts.failed else ""),
  (f" · {counts.blocked} blocked", "red" if counts.blocked else ""),
  f"   {_clock(snap.elapsed)}",
 )
 parts: list[RenderableType] = [
  head,
  _bar(counts.completed, counts.total),
 ]
 if status is MmaStatus.PAUSED:
  since = time.strftime("%H:%M:%S", time.localtime(snap.paused_at)) if snap.paused_at else "?"
  finishing = (
   f"{len(snap.finishing)} worker(s) finishing: {', '.join(snap.finishing)}"
   if snap.finishing
   else "all workers idle"
  )
  if snap.running_at_pause:
   done = [t for t in snap.running_at_pause if t not in snap.finishing]
   finishing += f" · running at pause: {len(snap.running_at_pause)}"
   if done:
    finishing += f" (done: {', '.join(done)})"
  reason = f" — {snap.pause_reason}" if snap.pause_reason else ""
  nxt = ", ".join(snap.ready[:6]) + (f" (+{len(snap.ready) - 6})" if len(snap.ready) > 6 else "")
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
    "▶", worker.ticket, f"attempt {worker.attempt}", f"{now - worker.started_at:5.1f}s"
   )
  parts.append(table)
 if snap.awaiting_approval:
  parts.append(Text(f"awaiting approval: {', '.join(snap.awaiting_approval[:8])}", "cyan"))
 if keys:
  parts.append(Text("p pause/resume · Ctrl+C stop after running workers (twice: cancel)", "dim"))
 return Group(*parts)


def _log_line(line: str) -> None:
 # A reader that goes away (`conductor run x | head`) must not stop the pipeline: keep
 # running, and send the rest of the log nowhere.
 try:
  print(line, flush=True)
 except BrokenPipeError:
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stdout.fileno())
  os.close(devnull)


def plain_line(name: str, t: Transition) -> str:
 """One log line for a transition, for runs off a terminal."""
 stamp = time.strftime("%H:%M:%S", time.localtime(t.at))
 what = t.ticket if t.ticket is not None else "pipeline"
 line = f"{stamp} {name}: {what} {t.status}"
 if t.ticket is not None and t.attempt:
  line += f" (attempt {t.attempt})"
 if t.detail:
  line += f": {t.detail}"
 return line


@contextmanager
def _keys(on_key: Callable[[str], None]) -> Iterator[None]:
 """Read single key presses from a terminal in a thread, until the block ends.

 The thread waits in select() on stdin and on a pipe that wakes it at the end: no polling.
 """
 fd = sys.stdin.fileno()
 old = termios.tcgetattr(fd)
 stop_r, stop_w = os.pipe()

 def reader() -> None:
  while True:
   readable, _, _ = select.select([fd, stop_r], [], [])
   if stop_r in readable:
    return
   data = os.read(fd, 32).decode(errors="ignore")
   if not data:
    return
   for ch in data:
    on_key(ch)

 tty.setcbreak(fd)
 thread = threading.Thread(target=reader, name="conductor-keys", daemon=True)
 thread.start()
 try:
  yield
 finally:
  os.write(stop_w, b"x")
  thread.join(timeout=2)
  termios.tcsetattr(fd, termios.TCSADRAIN, old)
  os.close(stop_r)
  os.close(stop_w)


async def _watch_signals(conductor: ConductorEngine, console: Console) -> None:
 with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
  stops = 0
  async for _ in signals:
   stops += 1
   if stops == 1:
    console.print(
     "[yellow]stopping: no new workers; waiting for the running ones (Ctrl+C again cancels them)"
    )
    conductor.stop()
   else:
    console.print("[red]cancelling running workers")
    conductor.cancel()


async def _run_conductor(
 conductor: ConductorEngine, console: Console, interactive: bool
) -> Snapshot:
 async with anyio.create_task_group() as tg:
  tg.start_soon(_watch_signals, conductor, console)
  if interactive:
   with Live(
    get_renderable=lambda: render(conductor.snapshot(), conductor.mma_status),
    console=console,
    refresh_per_second=10,
    transient=False,
   ):
    final = await conductor.run()
  else:
   final = await conductor.run()
  tg.cancel_scope.cancel()
 return final


def _shown(path: Path) -> str:
 # A state path as the user would type it: relative when under the current folder.
 try:
  return str(path.resolve().relative_to(Path.cwd()))
 except ValueError:
  return str(path)


def _state_path(pipeline: Pipeline, args: argparse.Namespace) -> Path:
 given = getattr(args, "state", None)
 if given:
  return Path(given)
 return default_state_path(pipeline.path) if pipeline.path else demo_state_path()


def _open_durable(pipeline: Pipeline, args: argparse.Namespace, console: Console) -> DurableRun:
 state = _state_path(pipeline, args)
 fresh = bool(getattr(args, "fresh", False))
 try:
  durable = open_run(state, pipeline, fresh=fresh)
  if durable.restored.done and not fresh and pipeline.path is None:
   # The built-in demo is for watching: a finished one starts over instead of doing nothing.
   console.print("conductor: the last demo run had completed; starting a fresh one")
   durable.restored = durable.store.restore(pipeline.name, pipeline.tickets, fresh=True)
 except StateError as exc:
  raise UsageError(str(exc)) from None
 shown, restored = _shown(state), durable.restored
 if restored.fresh:
  console.print(f"state: {shown} (new)", soft_wrap=True)
 else:
  notes = [f"{restored.completed}/{restored.total} completed"]
  if restored.interrupted:
   notes.append(
    f"{len(restored.interrupted)} interrupted, running again: {', '.join(restored.interrupted)}"
   )
  if restored.retried:
   notes.append(f"{len(restored.retried)} failed, retrying: {', '.join(restored.retried)}")
  console.print(f"state: {shown} (resuming: {'; '.join(notes)})", soft_wrap=True)
 if durable.stopped:
  console.print(
   f"stopped {_plural(len(durable.stopped), 'process', 'processes')} that the killed run "
   f"had left running ({_who(durable.stopped)}), so no attempt overlaps its re-run",
   soft_wrap=True,
  )
 if durable.unstoppable:
  console.print(
   f"[yellow]warning:[/] {_plural(len(durable.unstoppable), 'process', 'processes')} of the "
   f"killed run outlived SIGKILL ({_who(durable.unstoppable)}; pids "
   f"{', '.join(str(x.pid) for x in durable.unstoppable)}): stuck in the kernel?",
   soft_wrap=True,
  )
 return durable


def _plural(n: int, one: str, many: str) -> str:
 return f"{n} {one if n == 1 else many}"


def _who(leftovers: Sequence[Leftover]) -> str:
 tickets = dict.fromkeys(x.ticket for x in leftovers)
 return f"{'ticket' if len(tickets) == 1 else 'tickets'} {', '.join(tickets)}"


def execute(pipeline: Pipeline, args: argparse.Namespace, console: Console) -> int:
 """Run a pipeline in this terminal, durably; return the exit code.

 Its state (`--state`, default beside the pipeline file) records every transition; a
 re-run resumes from it, a paused one starts paused. Other terminals control the run with
 `conductor pause|resume|status --state ...` while it lives.
 """
 _engine_for(pipeline)  # a pipeline that cannot run is refused before any state is touched
 durable = _open_durable(pipeline, args, console)
 try:
  return _execute(pipeline, args, console, durable)
 finally:
  durable.close()


def _execute(
 pipeline: Pipeline, args: argparse.Namespace, console: Console, durable: DurableRun
) -> int:
 shown, store, pause = _shown(durable.state), durable.store, durable.restored.pause
 if durable.restored.done and not durable.restored.fresh:
  console.print(
   f"conductor: all {durable.restored.total} tickets of {pipeline.name} are already "
   f"completed (state {shown}); nothing to do: add --fresh to run it again",
   soft_wrap=True,
  )
  return EXIT_OK
 engine = _engine_for(pipeline)
 max_workers = args.max_workers or pipeline.max_workers
 conductor = ConductorEngine(
  engine,
  durable.worker,
  max_workers=max_workers,
  name=pipeline.name,
  paused=pause.paused,
  pause_reason=pause.reason,
  paused_at=pause.since,
 )
 store.attach(conductor)
 interactive = console.is_terminal and sys.stdin.isatty()
 if not interactive:
  # Printed once committed: a line saying "completed" is a promise the state keeps.
  store.watch(lambda t: _log_line(plain_line(pipeline.name, t)))

 def on_key(ch: str) -> None:
  if ch in "pP ":
   if conductor.paused:
    conductor.resume()
   else:
    conductor.pause("paused from the terminal")

 source = f" from {pipeline.path}" if pipeline.path else ""
 console.print(
  f"conductor: running [bold]{pipeline.name}[/]{source}: {len(engine.tickets)} tickets, "
  f"max {max_workers} workers, {args.backend}"
 )

 async def body() -> Snapshot:
  # The control socket listens now: say how to reach it, and whether we wait.
  console.print(
   f"control it from another terminal: conductor pause|resume|status --state {shown}",
   soft_wrap=True,
  )
  if pause.paused:
   since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pause.since or time.time()))
   reason = f" ({pause.reason})" if pause.reason else ""
   console.print(
    f"[yellow]PAUSED since {since}{reason}: nothing starts until it is resumed: "
    f"press p here, or run `conductor resume --state {shown}`",
    soft_wrap=True,
   )
  return await _run_conductor(conductor, console, interactive)

 async def main() -> Snapshot:
  return await durable.drive(conductor, body)

 if interactive:
  with _keys(on_key):
   final = anyio.run(main, backend=args.backend)
 else:
  final = anyio.run(main, backend=args.backend)
 console.print(render(final, final.status, keys=False))
 if store.failure:
  raise UsageError(f"{store.failure}; the run was stopped")
 for row in final.rows:
  if row.status in ("failed", "blocked"):
   console.print(f"[red]{row.status}[/] {row.id}: {row.error}")
 code = exit_code_for(final)
 verdict = {
  EXIT_OK: "[green]all tickets completed",
  EXIT_FAILED: "[red]some tickets failed or are blocked",
  EXIT_STOPPED: f"[yellow]stopped before the end; run it again to carry on (state {shown})",
 }[code]
 console.print(f"{verdict}[/] in {_clock(final.elapsed)} (exit {code})")
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
 engine = _engine_for(pipeline)
 edges = sum(len(t.depends_on) for t in engine.tickets.values())
 console.print(
  f"{args.file}: ok — pipeline {pipeline.name!r}, {len(engine.tickets)} tickets, "
  f"{edges} dependencies, max_workers {pipeline.max_workers}"
 )
 return EXIT_OK


def cmd_gui(args: argparse.Namespace, console: Console) -> int:
 from .demo import demo_pipeline
 from .gui import run_dashboard

 pipeline = _load(args.file) if args.file else demo_pipeline()
 return run_dashboard(pipeline, args)


# -- control from another terminal -----------------------------------------------------------


def _control(args: argparse.Namespace, op: str, reason: str | None = None) -> dict[str, Any]:
 if args.state:
  state = Path(args.state)
 elif args.file:
  state = default_state_path(Path(args.file))
 else:
  raise UsageError(
   f"{op}: which pipeline? give --state PATH (as `conductor run` printed it) or the pipeline file"
  )
 try:
  return request(state, op, reason=reason, history=bool(getattr(args, "history", False)))
 except StateError as exc:
  raise UsageError(str(exc)) from None


def _where(answer: dict[str, Any]) -> str:
 report = answer["report"]
 if answer["live"]:
  return f"{report['pipeline']} (running, pid {report['pid']})"
 return f"{report['pipeline']} (not running)"


def cmd_pause(args: argparse.Namespace, console: Console) -> int:
 answer = _control(args, "pause", args.reason)
 report = answer["report"]
 if answer["live"]:
  finishing = report["finishing"]
  still = (
   f"{len(finishing)} still finishing: {', '.join(finishing)}" if finishing else "none running"
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
   f"resumed {_where(answer)}: the next `conductor run` starts at once", soft_wrap=True
  )
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
   (str(report["pipeline"]), "bold"),
   f"   {'running, pid ' + str(report['pid']) if report['live'] else 'not running'}",
   f"   state {report['state']}",
  ),
  Text(
   f"{counts['completed']}/{counts['total']} completed · {counts['in_progress']} in progress · "
   f"{counts['todo']} todo · {counts['failed']} failed · {counts['blocked']} blocked"
  ),
 ]
 if report["paused"]:
  reason = f": {report['pause_reason']}" if report["pause_reason"] else ""
  lines = [f"PAUSED since {_stamp(report['paused_since'])}{reason}"]
  if report["running_at_pause"]:
   lines.append(f"running at pause: {', '.join(report['running_at_pause'])}")
  if report["live"]:
   finishing = report["finishing"]
   lines.append(
    f"still finishing: {', '.join(finishing)}" if finishing else "still finishing: none"
   )
  parts.append(Panel("\n".join(lines), style="black on yellow", border_style="yellow"))
 if report["running"]:
  parts.append(Text(f"running: {', '.join(report['running'])}"))
 if report["interrupted"]:
  parts.append(Text(f"interrupted (will run again): {', '.join(report['interrupted'])}", "yellow"))
 pending = report["pending"]
 if pending:
  more = f" (+{len(pending) - 12})" if len(pending) > 12 else ""
  parts.append(Text(f"pending ({len(pending)}): {', '.join(pending[:12])}{more}"))
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
   row["id"],
   row["status"],
   str(row["attempts"]),
   "" if code is None else str(code),
   row["error"] or "",
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
 """The transition log, one line per transition, oldest first."""
 lines = []
 for h in history:
  when = _stamp(h["at"], "%Y-%m-%d %H:%M:%S") + f".{int(h['at'] * 1000) % 1000:03d}"
  what = h["ticket"] if h["ticket"] is not None else "pipeline"
  line = f"{h['seq']:>6} {when} {what} {h['status']}"
  if h["attempt"]:
   line += f" (attempt {h['attempt']})"
  if h["detail"]:
   line += f": {h['detail']}"
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
 parser = build_parser()
 args = parser.parse_args(argv)
 console = Console(highlight=False)
 if not console.is_terminal:
  console.soft_wrap = True  # log lines stay whole instead of wrapping at 80 columns
 try:
  code: int = args.func(args, console)
 except UsageError as exc:
  print(f"conductor: {exc}", file=sys.stderr)
  return EXIT_USAGE
 except KeyboardInterrupt:
  return EXIT_STOPPED
 return code


__all__ = [
 "build_parser",
 "execute",
 "exit_code_for",
 "history_lines",
 "main",
 "plain_line",
 "render",
 "render_status",
]
