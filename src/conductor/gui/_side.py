"""The dashboard's right-hand pane, `SidePane`: the tokens spent (and the budget), who
works, what starts next, what is pending, and the selected ticket (its details, its whole
latest output, and the Retry and Queue buttons).

The tokens show once a budget is set or a model call spent any ("tokens: 12,340 of 200,000",
`views.tokens_words`). With a budget, a field sets a new one; while the budget is spent (the
pipeline paused itself, and Resume alone is refused) its button raises it and resumes in one
click (`ConductorEngine.resume(token_budget=M)`, on this thread: it never waits).

The details pane shows the selected ticket's whole latest output, read-only and scrolled.
The text is fetched and cut into lines on the engine's loop (`PipelineRunner.fetch_output`),
once per selection, change of the ticket and pane width; a frame draws only the lines in
sight, so a 4 MB output costs a frame what a short one does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from imgui_bundle import imgui

from .. import MmaStatus, RunningWorker, Snapshot, Status, TicketRow
from ..multi_agent_conductor import budget_spent, suggested_budget
from ..views import tokens_words
from ._runs import PipelineRunner, wrap_lines
from ._widgets import (
 TICKET_COLOR,
 Awaiting,
 Report,
 WholeRows,
 button,
 finishing,
 item_rect,
 preview,
 seconds,
)

PENDING_LINES = 6  # the pending list's height, in lines
RAISE_AND_RESUME = "Raise budget and resume"
SET_BUDGET = "Set budget"
REPORTED_OUTPUT = 64 * 1024  # characters of the output the test hook's report carries
# A sample for the average glyph width: display lines are cut at the pane's width in
# characters, estimated from it (the font is proportional; a line a little too long scrolls).
GLYPHS = "the quick brown fox jumps over a lazy dog THE QUICK BROWN FOX 0123456789 {}[]():;,."


def parse_budget(text: str, used: int) -> int | str:
 """The budget typed in the field, or the one line that says what is wrong with it.
 Digits, with `,` `_` or spaces between groups; it must be above the tokens used."""
 digits = re.sub(r"[\s,_]", "", text)
 if not digits.isascii() or not digits.isdigit():
  return f"a budget is a whole number of tokens, e.g. {suggested_budget(used, None):,}"
 budget = int(digits)
 if budget <= used:
  return (
   f"a budget of {budget:,} is not above the {used:,} tokens used: "
   f"enter more, e.g. {suggested_budget(used, budget):,}"
  )
 return budget


class SidePane:
 """The right-hand side: the workers (running, or running when paused), what starts next,
 the pending list (whole lines, like the table), and the selected ticket's details with
 Retry and Queue."""

 def __init__(
  self,
  runner: PipelineRunner,
  index: dict[str, int],
  awaiting: Awaiting,
  act: Callable[[str, Callable[[], object]], None],
 ) -> None:
  self.runner = runner
  self._index = index
  self._awaiting = awaiting
  self._act = act  # Dashboard._act: runs a control's command and records the Action
  self._retrying: dict[str, int] = {}  # ticket -> attempts when Retry was pressed
  self._pending_scroll = WholeRows()
  self.budget_text = ""  # what the budget field holds
  self.budget_message: str | None = None  # why the last budget entered was refused
  # The output shown: which text (to scroll to its start or end once, when it changes), the
  # tail's display lines (when the whole output is not kept), the glyph width per font size.
  self._output_seen: object = None
  self._tail: tuple[tuple[str, int], Sequence[str]] = (("", 0), ())
  self._glyph: tuple[float, float] = (0.0, 0.0)

 def settle_retries(self, snap: Snapshot) -> None:
  # A retry was applied once its ticket is no longer failed, or failed again (one more
  # attempt); with no run left, a retry posted just as the run ended was dropped. Either
  # way Retry is offered again.
  if not self._retrying:
   return
  if not self.runner.active:
   self._retrying = {}
   return
  rows, index = snap.rows, self._index
  self._retrying = {
   tid: attempts
   for tid, attempts in self._retrying.items()
   if rows[index[tid]].status is Status.FAILED and rows[index[tid]].attempts == attempts
  }

 def buttons(self, snap: Snapshot, selected: str | None) -> dict[str, bool]:
  """The details pane's buttons for `selected`, as the test hook reports them."""
  if selected is None:
   return {}
  row = snap.rows[self._index[selected]]
  buttons = {}
  if row.status is Status.FAILED:
   buttons["Retry"] = row.id not in self._retrying
  if row.id in self._awaiting(snap):
   buttons["Queue"] = True
  return buttons

 def draw(
  self, snap: Snapshot, now: float, status: MmaStatus, selected: str | None, report: Report
 ) -> None:
  self._tokens(report)
  self._workers(snap, now, status, report)
  if snap.ready:
   imgui.push_text_wrap_pos(0.0)
   imgui.text(preview(snap.ready))
   imgui.pop_text_wrap_pos()
  else:
   imgui.text_disabled("nothing is ready to start")
  if snap.awaiting_approval:
   imgui.text_colored(
    TICKET_COLOR["awaiting"],
    f"{len(snap.awaiting_approval)} awaiting approval: select one and press Queue",
   )
  self._pending(snap.pending, report)
  self._details(snap, now, selected, report)

 def _tokens(self, report: Report) -> None:
  # Live figures, as Resume and the engine judge them (a snapshot may be a turn behind).
  used, budget = self.runner.tokens()
  words = tokens_words(used, budget)
  report.tokens = words
  if words is None:
   return  # no budget and nothing spent: a pipeline without agents shows nothing
  imgui.separator_text("Tokens")
  imgui.text(words)
  if budget is not None:
   imgui.same_line()
   share = used / budget
   color = TICKET_COLOR[Status.FAILED] if share >= 1 else TICKET_COLOR[Status.COMPLETED]
   imgui.push_style_color(imgui.Col_.plot_histogram, color)
   imgui.progress_bar(min(share, 1.0), (-1, 0), f"{share:.0%}")
   imgui.pop_style_color()
   spent = budget_spent(used, budget)
   imgui.set_next_item_width(imgui.get_font_size() * 9)
   _, self.budget_text = imgui.input_text_with_hint(
    "##budget", f"e.g. {suggested_budget(used, budget)}", self.budget_text
   )
   imgui.same_line()
   if spent:
    why = "Set this budget and resume: the pipeline paused itself when the budget was spent"
    if button(RAISE_AND_RESUME, True, report, why=why):
     self._act(RAISE_AND_RESUME, lambda: self._set_budget(used, resume=True))
   elif button(SET_BUDGET, True, report, why="Set this token budget (it does not resume)"):
    self._act(SET_BUDGET, lambda: self._set_budget(used, resume=False))
   if self.budget_message:
    imgui.push_text_wrap_pos(0.0)
    imgui.text_colored(TICKET_COLOR[Status.FAILED], self.budget_message)
    imgui.pop_text_wrap_pos()
  report.budget_message = self.budget_message

 def _set_budget(self, used: int, *, resume: bool) -> None:
  budget = parse_budget(self.budget_text, used)
  if isinstance(budget, str):
   self.budget_message = budget
   return
  if resume:
   self.budget_message = self.runner.resume(token_budget=budget)
  else:
   self.runner.set_token_budget(budget)
   self.budget_message = None
  if self.budget_message is None:
   self.budget_text = ""

 def _workers(self, snap: Snapshot, now: float, status: MmaStatus, report: Report) -> None:
  running: dict[str, RunningWorker] = {w.ticket: w for w in snap.running}
  rows = snap.rows
  table_flags = imgui.TableFlags_.row_bg | imgui.TableFlags_.borders_inner_h
  if status is MmaStatus.PAUSED:
   at_pause, still = finishing(snap)
   imgui.separator_text(f"Running when paused ({len(at_pause)})")
   if not at_pause:
    imgui.text_disabled("no worker was running")
   elif imgui.begin_table("at-pause", 3, table_flags):
    for tid in at_pause:
     worker = running.get(tid)
     row = rows[self._index[tid]]
     if tid in still and worker is not None:
      elapsed, state, color = now - worker.started_at, "finishing", TICKET_COLOR["finishing"]
     else:
      end = row.finished_at if row.finished_at is not None else now
      elapsed = end - row.started_at if row.started_at is not None else 0.0
      state = {Status.COMPLETED: "done", Status.TODO: "will run again"}.get(row.status, row.status)
      color = TICKET_COLOR[row.status]
     report.workers.append({"ticket": tid, "elapsed": round(elapsed, 3), "state": state})
     imgui.table_next_row()
     imgui.table_next_column()
     imgui.text(tid)
     imgui.table_next_column()
     imgui.text(seconds(max(0.0, elapsed)))
     imgui.table_next_column()
     imgui.text_colored(color, state)
    imgui.end_table()
   imgui.separator_text(f"Starts first on resume ({len(snap.ready)})")
   return
  imgui.separator_text(f"Running ({len(snap.running)} of {snap.max_workers} workers)")
  if not snap.running:
   imgui.text_disabled("no worker is running")
  elif imgui.begin_table("running", 3, table_flags):
   for worker in snap.running:
    elapsed = now - worker.started_at
    report.workers.append(
     {"ticket": worker.ticket, "elapsed": round(elapsed, 3), "state": "running"}
    )
    imgui.table_next_row()
    imgui.table_next_column()
    imgui.text(worker.ticket)
    imgui.table_next_column()
    imgui.text(seconds(max(0.0, elapsed)))
    imgui.table_next_column()
    imgui.text_disabled(f"attempt {worker.attempt}")
   imgui.end_table()
  imgui.separator_text(f"Up next ({len(snap.ready)})")

 def _pending(self, pending: Sequence[str], report: Report) -> None:
  header = f"Pending: {len(pending):,} ticket{'s' if len(pending) != 1 else ''}###pending"
  if not imgui.collapsing_header(header, imgui.TreeNodeFlags_.default_open):
   return
  lines = min(len(pending), PENDING_LINES)
  if not lines:
   return
  # Whole lines: n lines and the n-1 gaps between them. Without padding (a child with no
  # border has none) the list shows lines [k, k + n) when scrolled by k lines.
  step = imgui.get_text_line_height_with_spacing()
  gap = imgui.get_style().item_spacing.y
  if imgui.begin_child("pending-list", (0, lines * step - gap)):
   clipper = imgui.ListClipper()
   clipper.begin(len(pending))
   while clipper.step():
    for k in range(clipper.display_start, clipper.display_end):
     imgui.text_disabled(pending[k])
   self._pending_scroll.snap(step)
   if report.reporting:
    scroll = {"scroll": imgui.get_scroll_y(), "scroll_max": imgui.get_scroll_max_y()}
    report.layout["pending"] = {"line": step, "gap": gap, **scroll}
  imgui.end_child()
  if report.reporting and "pending" in report.layout:
   report.layout["pending"]["rect"] = item_rect()

 def _details(self, snap: Snapshot, now: float, selected: str | None, report: Report) -> None:
  imgui.separator_text("Ticket details")
  i = self._index.get(selected) if selected is not None else None
  if i is None:
   imgui.text_disabled("select a ticket in the table")
   return
  row = snap.rows[i]
  waiting = row.id in self._awaiting(snap)
  imgui.text(row.id)
  imgui.same_line()
  state = "awaiting approval" if waiting else row.status.replace("_", " ")
  imgui.text_colored(TICKET_COLOR["awaiting" if waiting else row.status], state)
  imgui.same_line()
  imgui.text_disabled(f"attempt{'s' if row.attempts != 1 else ''}: {row.attempts}")

  if row.status is Status.FAILED:
   imgui.same_line()
   # One retry per failure: a second click before the loop applied the first would
   # retry a ticket that is no longer failed.
   if button("Retry", row.id not in self._retrying, report):
    self._retrying[row.id] = row.attempts
    self._act("Retry", lambda: self.runner.retry(row.id))
  if waiting:
   imgui.same_line()
   if button("Queue", True, report):
    self._act("Queue", lambda: self.runner.queue(row.id))

  imgui.push_text_wrap_pos(0.0)
  if row.description:
   imgui.text(row.description)
  imgui.text_disabled("work:")
  imgui.same_line()
  imgui.text(row.work or "-")
  if row.depends_on:
   imgui.text_disabled("depends on:")
   imgui.same_line()
   imgui.text(", ".join(row.depends_on))
  if row.started_at is not None:
   end = row.finished_at if row.finished_at is not None else now
   imgui.text_disabled("time:")
   imgui.same_line()
   imgui.text(seconds(max(0.0, end - row.started_at)))
  if row.exit_code is not None:
   imgui.text_disabled("exit code:")
   imgui.same_line()
   imgui.text(str(row.exit_code))
  if row.tokens is not None:
   imgui.text_disabled("tokens:")
   imgui.same_line()
   imgui.text(f"{row.tokens:,}")
  if row.error:
   imgui.text_colored(TICKET_COLOR[Status.FAILED], row.error)
  imgui.pop_text_wrap_pos()
  self._output(row, report)

 def _output(self, row: TicketRow, report: Report) -> None:
  """The ticket's whole latest output (its tail while the whole one is on its way, or
  when nothing keeps it), read-only, scrolled; a frame draws the lines in sight only."""
  style = imgui.get_style()
  width = imgui.get_content_region_avail().x - style.scrollbar_size - 2 * style.window_padding.x
  chars = max(16, int(width / self._glyph_width()))
  # What changes when the ticket's latest output may have: a new attempt, its end.
  key = (row.attempts, row.status, row.finished_at)
  got = self.runner.output
  if got is not None and got.asked[0] != row.id:
   got = None  # another ticket's
  self.runner.fetch_output(row.id, key, chars)
  if got is not None and got.text is not None:
   text, lines, whole = got.text, got.lines, True
  else:
   text, lines, whole = row.output, self._tail_lines(row.output, chars), False

  if text:
   imgui.align_text_to_frame_padding()  # in line with the Copy button
  imgui.text_disabled("output:" if whole else "output (tail):")
  if text:
   imgui.same_line()
   imgui.text_disabled(f"{len(text):,} characters")
   imgui.same_line()
   if button("Copy", True, report, why="Copy the whole output shown to the clipboard"):
    imgui.set_clipboard_text(text)
  if report.reporting:
   report.output = {
    "ticket": row.id,
    "whole": whole,
    "chars": len(text),
    "lines": len(lines),
    "text": text if len(text) <= REPORTED_OUTPUT else None,
   }
  flags = imgui.WindowFlags_.horizontal_scrollbar
  if imgui.begin_child("output", (0, 0), imgui.ChildFlags_.borders, flags):
   clipper = imgui.ListClipper()
   clipper.begin(len(lines))
   while clipper.step():
    for k in range(clipper.display_start, clipper.display_end):
     imgui.text_unformatted(lines[k])
   seen = (row.id, key, whole)
   if seen != self._output_seen:
    # Another text: from its start, or for a failed ticket from its end (where the
    # error is).
    self._output_seen = seen
    if row.status is Status.FAILED:
     imgui.set_scroll_here_y(1.0)  # the clipper left the cursor after the last line
    else:
     imgui.set_scroll_y(0.0)
  imgui.end_child()

 def _glyph_width(self) -> float:
  size = imgui.get_font_size()
  if self._glyph[0] != size:
   self._glyph = (size, imgui.calc_text_size(GLYPHS).x / len(GLYPHS))
  return self._glyph[1]

 def _tail_lines(self, tail: str, chars: int) -> Sequence[str]:
  # The row's tail (a few KB) is wrapped here, once per change of it or of the width.
  if self._tail[0] != (tail, chars):
   self._tail = ((tail, chars), wrap_lines(tail, chars))
  return self._tail[1]
