"""The dashboard's right-hand pane, `SidePane`: who works, what starts next, what is
pending, and the selected ticket (its details, and the Retry and Queue buttons)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from imgui_bundle import imgui

from .. import MmaStatus, RunningWorker, Snapshot, Status
from ._runs import PipelineRunner
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
  self._output_seen: tuple[str | None, int] = (None, 0)
  self._pending_scroll = WholeRows()

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
  if row.error:
   imgui.text_colored(TICKET_COLOR[Status.FAILED], row.error)
  imgui.pop_text_wrap_pos()

  imgui.text_disabled("output (tail):")
  if imgui.begin_child("output", (0, 0), imgui.ChildFlags_.borders):
   imgui.text_unformatted(row.output or "")
   seen = (row.id, len(row.output))
   if seen != self._output_seen:  # new output: follow its end
    self._output_seen = seen
    imgui.set_scroll_here_y(1.0)
  imgui.end_child()
