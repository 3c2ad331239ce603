"""The `conductor` command line: run, demo, validate (and the dashboard, `gui`).

Exit codes: 0 every ticket completed; 1 some failed or are blocked; 2 bad input (a one-line
message, never a traceback); 130 stopped by the user before the end.
"""

from __future__ import annotations

import argparse
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

import anyio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .dag_engine import ExecutionEngine, PipelineError
from .multi_agent_conductor import ConductorEngine, MmaStatus, Snapshot, Transition
from .pipeline import Pipeline, PipelineFileError, load_pipeline

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


def execute(pipeline: Pipeline, args: argparse.Namespace, console: Console) -> int:
 """Run a pipeline in this terminal; return the exit code."""
 engine = _engine_for(pipeline)
 max_workers = args.max_workers or pipeline.max_workers
 conductor = ConductorEngine(engine, max_workers=max_workers, name=pipeline.name)
 interactive = console.is_terminal and sys.stdin.isatty()
 if not interactive:
  conductor.add_listener(lambda t: print(plain_line(pipeline.name, t), flush=True))

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

 async def main() -> Snapshot:
  return await _run_conductor(conductor, console, interactive)

 if interactive:
  with _keys(on_key):
   final = anyio.run(main, backend=args.backend)
 else:
  final = anyio.run(main, backend=args.backend)
 console.print(render(final, final.status, keys=False))
 for row in final.rows:
  if row.status in ("failed", "blocked"):
   console.print(f"[red]{row.status}[/] {row.id}: {row.error}")
 code = exit_code_for(final)
 verdict = {
  EXIT_OK: "[green]all tickets completed",
  EXIT_FAILED: "[red]some tickets failed or are blocked",
  EXIT_STOPPED: "[yellow]stopped before the end; run it again to carry on",
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

 p = sub.add_parser("run", help="run a pipeline file (TOML)")
 p.add_argument("file", help="the pipeline file")
 runner_options(p)
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
 p.set_defaults(func=cmd_demo, start=True)

 p = sub.add_parser("validate", help="check a pipeline file without running it")
 p.add_argument("file")
 p.set_defaults(func=cmd_validate)

 p = sub.add_parser("gui", help="open the dashboard on a pipeline file (default: the demo)")
 p.add_argument("file", nargs="?")
 runner_options(p)
 p.add_argument("--start", action="store_true", help="start the run at once, without Start")
 gui_options(p)
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


__all__ = ["build_parser", "execute", "exit_code_for", "main", "plain_line", "render"]
