"""What the `conductor` command shows: each view one function of a snapshot or a report.

- `render`: the live view of a run in a terminal (and its final frame);
- `plain_line`: one log line per transition, for a run off a terminal;
- `ApprovalNotices`: the "awaiting approval: ..." lines of a run off a terminal;
- `render_status` and `history_lines`: `conductor status` and its `--history`;
- `pause_words`, `tokens_words` and `budget_words`: who paused and what ends the pause, the
  tokens spent, how to raise a spent budget: the same words in every view (the dashboard's
  banner uses them too).

Untrusted text (ticket ids, pipeline names, pause reasons, errors, history details, paths)
is printed through `conductor._text.printable`, and never as rich markup (`Text(...)`, or
`lit()` inside markup strings): a newline cannot forge a log line, an escape sequence cannot
repaint the terminal, `[red]` stays text. Paths go through `_text.shown_path`, counts
through `session.plural`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._text import clock, listed, plural, printable, shell_path, shown_path
from .dag_engine import ExecutionEngine
from .multi_agent_conductor import budget_reached, budget_spent, suggested_budget
from .snapshots import SUMMARY_IDS, SUMMARY_ROWS, MmaStatus, Snapshot, is_notable
from .transitions import Change, Transition

__all__ = [
 "KEY_HINT",
 "STATUS_ROWS",
 "STATUS_STYLE",
 "ApprovalNotices",
 "approve_command",
 "budget_words",
 "history_lines",
 "key_hint",
 "lit",
 "pause_words",
 "plain_line",
 "render",
 "render_status",
 "shell_path",
 "tokens_words",
 "wall_clock",
]


def lit(value: object) -> str:
 """Untrusted text for a rich markup string: escaped (see `printable`), and `[` kept literal."""
 return escape(printable(str(value)))


def approve_command(state: Path | str, ids: Sequence[str] = ()) -> str:
 """The command that approves `ids` (or, with none or many, `TICKET...`) of the run on `state`."""
 which = " ".join(shlex.quote(printable(i)) for i in ids) if 0 < len(ids) <= 8 else "TICKET..."
 return f"conductor approve --state {shell_path(state)} {which}"


STATUS_STYLE = {
 MmaStatus.IDLE: "white on grey23",
 MmaStatus.PLANNING: "black on cyan",
 MmaStatus.EXECUTING: "black on green",
 MmaStatus.PAUSED: "black on yellow",
 MmaStatus.DONE: "white on blue",
 MmaStatus.ERROR: "white on red",
}

KEY_HINT = "p pause/resume · Ctrl+C stop after running workers (twice: cancel)"
"""The live view's last line while the run reads keys (see `terminal.read_keys`) and it is
not paused automatically (then `key_hint` says what p and r do)."""

_AUTO_KEY_HINT = (
 "p keep it paused (only you resume it) · r resume now · "
 "Ctrl+C stop after running workers (twice: cancel)"
)


def key_hint(snap: Snapshot) -> str:
 """The live view's key hint for `snap`: p pauses as a person (also over an automatic pause,
 which then no longer ends by itself) and resumes a person's pause; r resumes any pause."""
 if snap.paused and not snap.paused_by_person:
  return _AUTO_KEY_HINT
 return KEY_HINT


# -- the same words everywhere ---------------------------------------------------------------


def wall_clock(at: float) -> str:
 """A moment (time.time()) in local time: `12:03:10` today, else `2026-11-30 12:03:10`."""
 moment = time.localtime(at)
 if time.localtime()[:3] == moment[:3]:
  return time.strftime("%H:%M:%S", moment)
 return time.strftime("%Y-%m-%d %H:%M:%S", moment)


def pause_words(by_person: bool, reason: str | None, auto_resume_at: float | None) -> str:
 """Who paused and what ends the pause, for people: "paused by you: resume by hand", or
 "paused: <reason>; resumes by itself at 12:03:10" (an automatic pause with a time), or
 "paused: <reason>; resume by hand" (an automatic one without, e.g. a spent token budget).
 The terminal's live view, `conductor status` and the dashboard's banner all say it this
 way. `reason` is escaped (`printable`); a person's reason is not part of it (views show it
 beside, as "PAUSED since ... — reason")."""
 if by_person:
  return "paused by you: resume by hand"
 why = printable(reason) if reason else "by the pipeline"
 if auto_resume_at is None:
  if "; resumes " in why:  # the reason says itself what ends it (a lost Dask scheduler)
   return f"paused: {why}"
  return f"paused: {why}; resume by hand"
 return f"paused: {why}; resumes by itself at {wall_clock(auto_resume_at)}"


def tokens_words(used: int, budget: int | None) -> str | None:
 """ "tokens: 12,340 of 200,000" (or "tokens: 12,340" without a budget); None when there is
 no budget and nothing was spent: a pipeline without agents shows nothing."""
 if budget is None and not used:
  return None
 return f"tokens: {used:,}" + ("" if budget is None else f" of {budget:,}")


def budget_words(used: int, budget: int, raise_with: str, *, asked: int | None = None) -> str:
 """One line for a resume the budget refuses: "token budget reached: 200,340 of 200,000
 tokens; raise it: conductor resume --budget 300000 p.toml". `raise_with` is how the
 command names the pipeline (the file, or `--state PATH`), already escaped and quoted;
 `asked`: a budget that was asked for and is not above the tokens used."""
 command = (
  f"conductor resume --budget {suggested_budget(used, max(budget, asked or 0))} {raise_with}"
 )
 if asked is not None:
  return f"a token budget of {asked:,} is not above the {used:,} tokens used; raise it: {command}"
 return f"{budget_reached(used, budget)}; raise it: {command}"


def _every(ids: Sequence[str]) -> str:
 """`session.listed` without a limit: for lists at most `max_workers` long, and for the one
 line that names the tickets."""
 return listed(ids, len(ids))


# -- a run in a terminal ---------------------------------------------------------------------


def _bar(completed: int, total: int) -> RenderableType:
 grid = Table.grid()  # a grid row ends the line, which a bare ProgressBar does not
 grid.add_row(ProgressBar(total=max(total, 1), completed=completed, width=60))
 return grid


def render(
 snap: Snapshot,
 status: MmaStatus,
 *,
 keys: bool = True,
 state: Path | str | None = None,
 notice: str | None = None,
) -> RenderableType:
 """The live view of a run: a function of a snapshot, so it is easy to test.

 `keys`: end with the key hint (while keys are read; the final frame has none). `state`,
 the run's state path, goes into the commands shown (approve; raise a spent budget).
 `notice`: one line to show above the hint (what a key press could not do, and why).
 """
 counts = snap.counts
 tokens = tokens_words(snap.tokens_used, snap.token_budget)
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
  (
   f"   {tokens}" if tokens else "",
   "red" if budget_spent(snap.tokens_used, snap.token_budget) else "",
  ),
 )
 parts: list[RenderableType] = [head, _bar(counts.completed, counts.total)]
 if status is MmaStatus.PAUSED:
  parts.append(_paused_panel(snap, state))
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
  parts.append(Text(f"awaiting approval: {listed(waiting)} · approve with `{how}`", "cyan"))
 if notice:
  parts.append(Text(printable(notice), "yellow"))
 if keys:
  parts.append(Text(key_hint(snap), "dim"))
 return Group(*parts)


def _paused_panel(snap: Snapshot, state: Path | str | None) -> RenderableType:
 since = time.strftime("%H:%M:%S", time.localtime(snap.paused_at)) if snap.paused_at else "?"
 finishing = (
  f"{plural(len(snap.finishing), 'worker')} finishing: {_every(snap.finishing)}"
  if snap.finishing
  else "all workers idle"
 )
 if snap.running_at_pause:
  done = [t for t in snap.running_at_pause if t not in snap.finishing]
  finishing += f" · running at pause: {len(snap.running_at_pause)}"
  if done:
   finishing += f" (done: {_every(done)})"
 # A person's reason beside the time; an automatic pause's is part of `pause_words`.
 reason = (
  f" — {printable(snap.pause_reason)}" if snap.pause_reason and snap.paused_by_person else ""
 )
 who = pause_words(snap.paused_by_person, snap.pause_reason, snap.auto_resume_at)
 if budget_spent(snap.tokens_used, snap.token_budget) and snap.token_budget is not None:
  where = f"--state {shell_path(state)}" if state is not None else "--state STATE"
  who += "\n" + budget_words(snap.tokens_used, snap.token_budget, where)
 body = Text.assemble(
  (f"PAUSED since {since}{reason}\n", "bold"),
  f"{who}\n",
  finishing,
  f"\nwill start on resume: {listed(snap.ready, 6) or 'nothing ready yet'} · "
  f"{len(snap.pending)} pending",
 )
 return Panel(body, style="black on yellow", border_style="yellow")


# -- a run off a terminal --------------------------------------------------------------------


def plain_line(name: str, t: Transition) -> str:
 """One log line for a transition, for runs off a terminal; its untrusted parts escaped.
 An automatic pause says what ends it (`pause_words`)."""
 stamp = time.strftime("%H:%M:%S", time.localtime(t.at))
 if t.change is Change.PAUSED and not t.by_person:
  return f"{stamp} {printable(name)}: pipeline {pause_words(False, t.detail, t.auto_resume_at)}"
 what = printable(t.ticket) if t.ticket is not None else "pipeline"
 line = f"{stamp} {printable(name)}: {what} {t.change}"
 if t.ticket is not None and t.attempt:
  line += f" (attempt {t.attempt})"
 if t.detail:
  line += f": {printable(t.detail)}"
 return line


class ApprovalNotices:
 """Off a terminal: say "awaiting approval: ..." once per ticket, when it starts waiting.

 With `auto_queue` off a ticket waits for approval from the moment it is ready: at the
 start (`at_start`), or when a dependency completes (`on_transition`, a store watcher, so
 the line comes after a committed "completed" line). `ExecutionEngine.awaiting_approval()`
 lists the waiting tickets in the order they became ready, and a ticket is told as soon as
 it is seen there; so the untold ones are always its tail, and a completion walks it back
 only as far as the first ticket already told. Python work O(tickets told), nothing for
 transitions other than "completed" (the engine's list copy is O(waiting), in C).
 """

 def __init__(self, engine: ExecutionEngine, state: Path | str, say: Callable[[str], None]) -> None:
  self._engine = engine
  self._state = state
  self._say = say
  self._told: set[str] = set()

 def at_start(self) -> None:
  self._tell_new()

 def on_transition(self, t: Transition) -> None:
  if t.change is Change.COMPLETED:
   self._tell_new()

 def _tell_new(self) -> None:
  new: list[str] = []
  for tid in reversed(self._engine.awaiting_approval()):
   if tid in self._told:
    break
   new.append(tid)
  if new:
   new.reverse()
   self._told.update(new)
   self._say(
    f"awaiting approval: {_every(new)} (approve with `{approve_command(self._state, new)}`)"
   )


# -- conductor status ------------------------------------------------------------------------


def _stamp(at: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
 return time.strftime(fmt, time.localtime(at)) if at else "-"


STATUS_ROWS = SUMMARY_ROWS
"""Above this many tickets, `conductor status` lists only the notable ones (see render_status)."""


def render_status(
 answer: dict[str, Any], *, every_ticket: bool = False, named: str | None = None
) -> RenderableType:
 """`conductor status` for people: a function of the control answer, so it is easy to test.

 The ticket table lists every ticket of a small pipeline. Of a larger one, unless
 `every_ticket`, it lists the notable ones (running, failed, blocked, retried, with an
 error), at most `STATUS_ROWS` of them, and says what it left out; the counts above it
 cover everything. A live run's summary (`report.live_summary`, asked with
 `control.request(summary=True)`) holds only what this shows; its `summary` key has the full
 lengths of the lists it cut short. `named`: how the commands it shows name the pipeline
 (the file as the user gave it, quoted; default `--state PATH`).
 """
 report = answer["report"]
 full = report.get("summary") or {}
 counts = report["counts"]
 status = MmaStatus(report["mma_status"])
 state = str(report["state"])
 parts: list[RenderableType] = [
  Text.assemble(
   (f" {status.value.upper()} ", STATUS_STYLE[status]),
   "  ",
   (printable(str(report["pipeline"])), "bold"),
   f"   {'running, pid ' + str(report['pid']) if report['live'] else 'not running'}",
   f"   state {shown_path(state)}",
  ),
  Text(
   f"{counts['completed']}/{counts['total']} completed · {counts['in_progress']} in progress · "
   f"{counts['todo']} todo · {counts['failed']} failed · {counts['blocked']} blocked"
  ),
 ]
 tokens_used = report.get("tokens_used") or 0
 budget = report.get("token_budget")
 tokens = tokens_words(tokens_used, budget)
 if tokens:
  parts.append(Text(tokens, "red" if budget_spent(tokens_used, budget) else ""))
 if report["paused"]:
  by_person = report.get("paused_by", "person") != "pipeline"
  reason = f": {printable(report['pause_reason'])}" if report["pause_reason"] and by_person else ""
  lines = [
   f"PAUSED since {_stamp(report['paused_since'])}{reason}",
   pause_words(by_person, report["pause_reason"], report.get("auto_resume_at")),
  ]
  if budget is not None and budget_spent(tokens_used, budget):
   lines.append(budget_words(tokens_used, budget, named or f"--state {shell_path(state)}"))
  at_pause = report["running_at_pause"]
  if at_pause:
   lines.append(f"running at pause: {_every(at_pause)}")
  if report["live"]:
   finishing = report["finishing"]
   lines.append(f"still finishing: {_every(finishing) if finishing else 'none'}")
  parts.append(Panel(Text("\n".join(lines)), style="black on yellow", border_style="yellow"))
 if report["running"]:
  parts.append(Text(f"running: {_every(report['running'])}"))
 interrupted = report["interrupted"]
 if interrupted:
  parts.append(Text(f"interrupted (will run again): {_every(interrupted)}", "yellow"))
 waiting = report.get("awaiting_approval") or []
 if waiting:
  how = approve_command(state, waiting)
  parts.append(
   Text(
    f"awaiting approval ({full.get('awaiting_approval', len(waiting))}): "
    f"{_first(waiting, full.get('awaiting_approval'))} · approve with `{how}`",
    "cyan",
   )
  )
 pending = report["pending"]
 if pending:
  n_pending = full.get("pending", len(pending))
  parts.append(Text(f"pending ({n_pending}): {_first(pending, n_pending)}"))
 table = Table(box=None, padding=(0, 2), header_style="bold")
 rows = report["tickets"]
 # A tokens column only where tokens were spent: none for a pipeline without agents.
 with_tokens = any(row.get("tokens") for row in rows)
 columns = ("ticket", "status", "attempts", "exit", *(("tokens",) if with_tokens else ()))
 for column in (*columns, "last error"):
  table.add_column(column, justify="right" if column == "tokens" else "left")
 note = None
 total = counts["total"]
 if "summary" in report and len(rows) < total:  # the run sent the notable ones only
  notable_count = full["notable"]
  rows = rows[:STATUS_ROWS]
 elif not every_ticket and len(rows) > STATUS_ROWS:
  notable = [r for r in rows if _notable(r)]
  notable_count = len(notable)
  rows = notable[:STATUS_ROWS]
 else:
  notable_count = -1
 if notable_count >= 0:
  left = total - len(rows)
  more = f"{notable_count - len(rows)} more notable, " if notable_count > len(rows) else ""
  note = Text(
   f"{left} of {plural(total, 'ticket')} not listed ({more}the rest "
   "completed or not started); --all lists every ticket",
   "dim",
  )
 for row in rows:
  code = row["exit_code"]
  table.add_row(
   Text(printable(str(row["id"]))),
   Text(printable(str(row["status"]))),
   str(row["attempts"]),
   "" if code is None else str(code),
   *((f"{row['tokens']:,}" if row.get("tokens") else "",) if with_tokens else ()),
   Text(printable(row["error"] or "")),
  )
 if rows:
  parts.append(table)
 if note is not None:
  parts.append(note)
 return Group(*parts)


def _notable(row: dict[str, Any]) -> bool:
 return is_notable(row["status"], row["attempts"], row["error"])


def _first(ids: Sequence[str], total: int | None, limit: int = SUMMARY_IDS) -> str:
 """`listed(ids, limit)`, where `ids` may be the first of `total` (a summary's lists)."""
 text = listed(ids, limit)
 shown = min(len(ids), limit)
 if total is not None and total > len(ids) and total > shown:
  text = listed(ids[:shown], shown) + f" (+{total - shown})"
 return text


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
