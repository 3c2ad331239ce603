"""The `conductor` command: its arguments, one function per command, and `main`.

Commands: `run` and `demo` (a run in this terminal: `terminal_run`), `validate`, `pause`,
`resume` (also `--budget M`: raise the token budget), `approve`, `status` and `output` (a
ticket's whole output) (control of a run from any terminal, through its state's control
socket: `control.request`), `gui` (the dashboard: `conductor.gui`).

`main` routes output through `terminal.output_may_vanish` (a reader that goes away never
stops a run) and turns the errors a user can cause (`UsageError`, `StateError`) into one
line on stderr and exit 2, never a traceback; the exit codes are `exits`'. What the commands
print is `views`.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ._heap import gc_paused, keep_until_exit
from ._text import listed, plural, printable, shell_path, shown_path
from .control import BudgetRefusedError, request, status_json
from .exits import EXIT_OK, EXIT_STOPPED, EXIT_USAGE, UsageError
from .pipeline import Pipeline, PipelineFileError, load_pipeline
from .session import check_pipeline
from .store import StateError, default_state_path, demo_state_path
from .terminal import output_may_vanish
from .terminal_run import execute
from .views import STATUS_ROWS, budget_words, history_lines, lit, render_status

__all__ = ["build_parser", "main"]


def _load(path: str) -> Pipeline:
 try:
  return load_pipeline(path)
 except PipelineFileError as exc:
  raise UsageError(str(exc)) from None


# -- commands --------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, console: Console) -> int:
 # No cyclic collection while the pipeline is loaded and its run built (`_heap`); the run
 # turns the collector back on once what was built is frozen (`keep_until_exit`).
 with gc_paused():
  return execute(_load(args.file), args, console)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
 from .demo import demo_pipeline

 if getattr(args, "gui", False):
  from .gui import run_dashboard

  return run_dashboard(demo_pipeline(), args)
 return execute(demo_pipeline(), args, console)


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
 # What is built here lives until the process exits: no cyclic collection walks it, while it
 # is built nor at the exit (`_heap`). Frozen before the collector is back on: on first, its
 # next allocation would start a collection of all that was built (0.1 s at 100,000 tickets).
 with gc_paused():
  pipeline = _load(args.file)
  engine = check_pipeline(pipeline)
  keep_until_exit()
 edges = sum(len(t.depends_on) for t in engine.tickets.values())
 console.print(
  f"{lit(shown_path(args.file))}: ok — pipeline {lit(repr(pipeline.name))}, "
  f"{plural(len(engine.tickets), 'ticket')}, {plural(edges, 'dependency', 'dependencies')}, "
  f"max_workers {pipeline.max_workers}"
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


def _named(args: argparse.Namespace) -> str:
 """How a command people copy names the pipeline the user named: `--state PATH`, or the
 file (each quoted for the shell)."""
 if args.state or not args.file:
  return f"--state {shell_path(args.state or 'STATE')}"
 return shell_path(args.file)


def _ask_run(state: Path, op: str, **options: Any) -> dict[str, Any]:
 """`control.request`, its errors made one-line usage errors (a refused resume too:
 `BudgetRefusedError` reaches the caller, who says how to raise the budget)."""
 try:
  return request(state, op, **options)
 except BudgetRefusedError:
  raise
 except StateError as exc:
  raise UsageError(str(exc)) from None


def _control(args: argparse.Namespace, op: str, **options: Any) -> dict[str, Any]:
 history = bool(getattr(args, "history", False))
 # Plain `status` shows counts and the notable tickets: a live run answers just that
 # (O(tickets shown), not O(tickets): `report.live_summary`).
 summary = op == "status" and not (
  getattr(args, "json", False) or getattr(args, "all", False) or history
 )
 return _ask_run(_state_for(args, op), op, history=history, summary=summary, **options)


def _where(answer: dict[str, Any]) -> str:
 # For a markup string: escaped.
 report = answer["report"]
 name = lit(report["pipeline"])
 if answer["live"]:
  return f"{name} (running, pid {report['pid']})"
 return f"{name} (not running)"


def cmd_pause(args: argparse.Namespace, console: Console) -> int:
 answer = _control(args, "pause", reason=args.reason)
 report = answer["report"]
 if answer["live"]:
  finishing = report["finishing"]
  still = (
   f"{len(finishing)} still finishing: {escape(listed(finishing, len(finishing)))}"
   if finishing
   else "none running"
  )
  console.print(f"paused {_where(answer)}: no worker starts any more; {still}", soft_wrap=True)
 else:
  console.print(f"paused {_where(answer)}: `conductor run` will start it paused", soft_wrap=True)
 return EXIT_OK


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
 """`conductor resume [--budget M] (FILE | --state PATH)`: resume a pause, any pause; with
 `--budget`, first raise the token budget to M. A spent budget refuses a plain resume, and a
 budget not above the tokens used is refused: one line saying how to raise it, exit 2,
 nothing changed."""
 try:
  answer = _control(args, "resume", token_budget=args.budget)
 except BudgetRefusedError as exc:
  raise UsageError(budget_words(exc.used, exc.budget, _named(args), asked=exc.asked)) from None
 budget = ""
 if args.budget is not None:
  used = answer["report"].get("tokens_used") or 0
  budget = f" with a token budget of {args.budget:,} ({used:,} used)"
 if answer["live"]:
  console.print(f"resumed {_where(answer)}{budget}", soft_wrap=True)
 else:
  console.print(
   f"resumed {_where(answer)}{budget}: the next `conductor run` starts it at once",
   soft_wrap=True,
  )
 return EXIT_OK


def cmd_output(args: argparse.Namespace, console: Console) -> int:
 """`conductor output TICKET (FILE | --state PATH)`: print the ticket's latest whole
 output to stdout, unchanged. From a live run, or from the state when none is live. An
 unknown ticket, or one with no output yet: one line saying what to do, exit 2."""
 answer = _ask_run(_state_for(args, "output"), "output", ticket=args.ticket)
 report = answer["report"]
 tid, status, output = report["ticket"], report["status"], report["output"]
 where = f"pipeline {printable(repr(report['pipeline']))}"
 if status is None:
  raise UsageError(
   f"output: no ticket {printable(repr(tid))} in {where}; "
   f"`conductor status {_named(args)}` lists them"
  )
 if output is None:
  raise UsageError(
   f"output: ticket {printable(repr(tid))} of {where} {_why_none(status, answer['live'], args)}"
  )
 _write_whole(output)
 return EXIT_OK


def _why_none(status: str, live: bool, args: argparse.Namespace) -> str:
 # The rest of the line for a ticket without an output: where it is, and what to do.
 if status == "in_progress" and live:
  return "is running: its output is kept when the attempt ends; ask again then"
 if status == "blocked":
  return f"has no output: it is blocked (`conductor status {_named(args)}` says by what)"
 if status in ("todo", "in_progress"):
  command = f"conductor run {_named(args)}"
  if args.state or not args.file:
   command = f"conductor run PIPELINE {_named(args)}"
  run = "wait for the run to get to it" if live else f"run it: `{command}`"
  return f"has no output yet ({status}): {run}, then ask again"
 return f"has no output: its latest attempt ({status}) printed nothing"


def _write_whole(text: str) -> None:
 # As it is: no markup, no wrapping, no newline added (`conductor output x > file` gives
 # the output byte for byte). A character the terminal's encoding lacks is replaced rather
 # than stopping the whole output.
 out = sys.stdout
 try:
  out.write(text)
 except UnicodeEncodeError:
  encoding = getattr(out, "encoding", None) or "utf-8"
  out.write(text.encode(encoding, "replace").decode(encoding))
 out.flush()


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
   f"approved {escape(listed(approved, len(approved)))} in {_where(answer)}: "
   f"{'it starts' if len(approved) == 1 else 'they start'} as soon as a worker is free",
   soft_wrap=True,
  )
 if not_waiting:
  which = ", ".join(f"{printable(t['id'])} ({printable(t['status'])})" for t in not_waiting)
  console.print(Text(f"not waiting for approval: {which}"), soft_wrap=True)
 return EXIT_OK


def cmd_status(args: argparse.Namespace, console: Console) -> int:
 if args.json:  # the report as the run sent it: not parsed and encoded again here
  try:
   data = status_json(_state_for(args, "status"), history=args.history)
  except StateError as exc:
   raise UsageError(str(exc)) from None
  _write_whole(data.decode())  # ASCII: JSON's escapes
  return EXIT_OK
 answer = _control(args, "status")
 # Wrapped even off a terminal: the paused panel's lines would be cut at its border.
 console.print(render_status(answer, every_ticket=args.all, named=_named(args)), soft_wrap=False)
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
  p.add_argument(
   "--dask",
   metavar="ADDRESS",
   help="run the tickets on a Dask cluster: tcp://HOST:PORT of its scheduler, or local:N to "
   "start N worker processes here (default: the pipeline's [pipeline] dask)",
  )

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

 p = sub.add_parser("demo", help="run the built-in demo pipeline (about 16 s)")
 runner_options(p)
 p.add_argument("--gui", action="store_true", help="in the desktop dashboard (starts at once)")
 gui_options(p)
 state_options(p, shown_path(demo_state_path()))
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
 p.add_argument(
  "--budget",
  metavar="TOKENS",
  type=_positive,
  help="first raise the token budget to TOKENS (a spent budget keeps it paused otherwise)",
 )
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

 p = sub.add_parser(
  "output",
  help="print a ticket's latest whole output, from a running pipeline or its state",
 )
 p.add_argument("ticket", help="the ticket id")
 control_options(p)
 p.set_defaults(func=cmd_output)

 p = sub.add_parser("validate", help="check a pipeline file without running it")
 p.add_argument("file")
 p.set_defaults(func=cmd_validate)

 p = sub.add_parser("gui", help="open the dashboard on a pipeline file (default: the demo)")
 p.add_argument("file", nargs="?")
 runner_options(p)
 p.add_argument("--start", action="store_true", help="start the run at once, without Start")
 gui_options(p)
 state_options(
  p, f"FILE's name with .state.db, beside it; the demo's: {shown_path(demo_state_path())}"
 )
 p.set_defaults(func=cmd_gui)
 return parser


def main(argv: Sequence[str] | None = None) -> int:
 """The `conductor` command. Returns the exit code; a user's mistake or an unusable state
 (`UsageError`, `StateError`) is one line on stderr and exit 2, never a traceback."""
 with output_may_vanish():
  parser = build_parser()
  args = parser.parse_args(argv)
  # A crash in native code (a call ticket's, a module it imports) then says where it
  # happened (the Python stack of every thread, on stderr), not only "Segmentation fault".
  with contextlib.suppress(AttributeError, OSError, RuntimeError, ValueError):  # no stderr
   faulthandler.enable()
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
