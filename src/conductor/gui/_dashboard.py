"""The MMA dashboard: one Dear ImGui window, drawn each frame from an immutable snapshot.

Nothing here waits: a frame reads the runner's latest `Snapshot` (replaced whole by the
engine thread) and the live `mma_status`, and buttons post commands to the engine's loop.
The badge, the buttons and the banner use the live status: a click on Pause shows "paused"
in the frame after it at the latest (the loop acts on it at once; the frame it was made in
already does when the loop got there before the badge was drawn).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imgui_bundle import hello_imgui, imgui

from ..dag_engine import Status
from ..multi_agent_conductor import MmaStatus, RunningWorker, Snapshot, TicketRow
from ._runs import PipelineRunner

WINDOW = "Dashboard"  # the one window; test-hook references start with //Dashboard

Color = tuple[float, float, float, float]

BLACK: Color = (0.05, 0.05, 0.05, 1.0)
WHITE: Color = (1.0, 1.0, 1.0, 1.0)
AMBER: Color = (0.98, 0.75, 0.18, 1.0)
ROW_LINE: Color = (0.24, 0.24, 0.27, 1.0)

# Badge background and text colour per status: amber for paused, as on the banner.
BADGE: dict[MmaStatus, tuple[Color, Color]] = {
 MmaStatus.IDLE: ((0.35, 0.36, 0.4, 1.0), WHITE),
 MmaStatus.PLANNING: ((0.2, 0.62, 0.8, 1.0), BLACK),
 MmaStatus.EXECUTING: ((0.2, 0.7, 0.3, 1.0), BLACK),
 MmaStatus.PAUSED: (AMBER, BLACK),
 MmaStatus.DONE: ((0.25, 0.45, 0.9, 1.0), WHITE),
 MmaStatus.ERROR: ((0.85, 0.22, 0.22, 1.0), WHITE),
}

# Ticket status colours, readable on the dark theme.
TICKET_COLOR: dict[str, Color] = {
 Status.TODO: (0.68, 0.68, 0.72, 1.0),
 Status.IN_PROGRESS: (0.4, 0.72, 1.0, 1.0),
 Status.COMPLETED: (0.42, 0.86, 0.47, 1.0),
 Status.FAILED: (1.0, 0.42, 0.42, 1.0),
 Status.BLOCKED: (0.96, 0.6, 0.26, 1.0),
 "awaiting": (0.5, 0.88, 0.95, 1.0),
 "finishing": AMBER,
}

# The status filter's choices: (label, what a row must be; "" matches all).
STATUS_FILTERS: tuple[tuple[str, str], ...] = (
 ("all statuses", ""),
 ("todo", Status.TODO),
 ("in progress", Status.IN_PROGRESS),
 ("completed", Status.COMPLETED),
 ("failed", Status.FAILED),
 ("blocked", Status.BLOCKED),
 ("awaiting approval", "awaiting"),
)

BADGE_PAD = (10.0, 3.0)  # pixels around the status badge's text
FILTER_REFRESH = 0.25  # seconds between re-filtering 10,000 rows while they change
LIST_PREVIEW = 6  # ticket ids named inline before "(+N more)"


@dataclass(frozen=True, slots=True)
class Controls:
 """Which controls are enabled this frame (Pause and Resume share one place)."""

 start: bool
 pause: bool
 resume_shown: bool  # the Pause button reads "Resume" while paused
 cancel: bool

 def as_dict(self) -> dict[str, bool]:
  slot = {"Resume": True} if self.resume_shown else {"Pause": self.pause}
  return {"Start": self.start, **slot, "Cancel": self.cancel}


# What a control's effect looks like in the live `mma_status` (None: nothing to wait for).
EXPECTED_STATUS: dict[str, MmaStatus | None] = {
 "Pause": MmaStatus.PAUSED,
 "Resume": MmaStatus.EXECUTING,
}


@dataclass(slots=True)
class Action:
 """The latest control the user triggered, and when it took effect: the test hook's click
 latency. Written by the GUI thread only (the hook's test functions run on it too)."""

 label: str
 frame: int  # the frame the click or key press landed in
 at: float  # time.perf_counter() then
 status_after: str  # mma_status right after the command was sent, in the same frame
 effect_frame: int | None = None  # the first frame whose mma_status shows the effect
 effect_at: float | None = None  # time.perf_counter() when that was seen

 def check(self, status: MmaStatus, frame: int) -> None:
  expected = EXPECTED_STATUS.get(self.label)
  if self.effect_frame is None and (expected is None or status is expected):
   self.effect_frame, self.effect_at = frame, time.perf_counter()


def clock(seconds: float) -> str:
 minutes, secs = divmod(int(seconds), 60)
 hours, minutes = divmod(minutes, 60)
 return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def seconds(value: float) -> str:
 return f"{value:.1f} s" if value < 60 else clock(value)


def preview(ids: Sequence[str], limit: int = LIST_PREVIEW) -> str:
 shown = ", ".join(ids[:limit])
 return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def label(text: str) -> str:
 # "##" in a label starts Dear ImGui's hidden id part; a ticket id must show whole.
 return text.replace("##", "# #")


def clear_color() -> Any:
 """The theme's window background, opaque: what the GL clear must paint (no_background)."""
 color = imgui.get_style().color_(imgui.Col_.window_bg)
 return imgui.ImVec4(color.x, color.y, color.z, 1.0)


class Dashboard:
 """Draws the dashboard for a `PipelineRunner`; `draw()` is the `show_gui` callback.

 All state here belongs to the GUI thread. When `reporting` is on (the test hook), each
 frame also publishes `drawn`: the snapshot it drew and a fresh dict of what it showed,
 replaced whole and never mutated after, so the hook's HTTP thread may serialise them.
 """

 def __init__(
  self, runner: PipelineRunner, *, exit_when_done: bool = False, reporting: bool = False
 ) -> None:
  self.runner = runner
  self.exit_when_done = exit_when_done
  self.reporting = reporting
  self.frame = 0
  # What the last frame showed: the snapshot it drew and a report of the rest (published
  # together, replaced whole, so a reader on another thread sees one consistent frame).
  self.drawn: tuple[Snapshot, dict[str, Any]] = (runner.latest, {})
  self.last_action: Action | None = None
  self.selected: str | None = None
  self.filter_text = ""
  self.status_filter = 0
  self._index = {tid: i for i, tid in enumerate(runner.ticket_ids)}  # order is fixed
  self._haystack: list[str] | None = None  # per row, lower case: what the filter searches
  self._view: list[int] | None = None  # filtered row indices; None shows every row
  self._view_key: tuple[str, int] = ("", 0)
  self._view_rows: tuple[TicketRow, ...] = ()
  self._view_at = 0.0
  self._retrying: dict[str, int] = {}  # ticket -> attempts when Retry was pressed
  self._awaiting: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())
  self._output_seen: tuple[str | None, int] = (None, 0)
  self._banner: list[str] = []
  self._workers: list[dict[str, Any]] = []

 # -- the frame ------------------------------------------------------------------------

 def draw(self) -> None:
  self.frame += 1
  now = time.monotonic()
  runner = self.runner
  snap = runner.snapshot(now)
  self._banner = []
  self._workers = []
  if self._retrying:
   self._settle_retries(snap)

  vp = imgui.get_main_viewport()
  imgui.set_next_window_pos(vp.work_pos)
  imgui.set_next_window_size(vp.work_size)
  flags = (
   imgui.WindowFlags_.no_decoration
   | imgui.WindowFlags_.no_move
   | imgui.WindowFlags_.no_saved_settings
   | imgui.WindowFlags_.no_bring_to_front_on_focus
   # The window covers the viewport: its background would be one more full-screen blended
   # quad, which with software OpenGL (llvmpipe) is about half a frame's cost. The GL
   # clear colour is set to the same colour instead (`clear_color`).
   | imgui.WindowFlags_.no_background
  )
  imgui.begin(WINDOW, None, flags)
  self._keyboard(self._controls())
  self._header(snap, self._controls())  # after the keyboard: Space may have paused
  status = runner.conductor.mma_status  # again: a button above may have just changed it
  action = self.last_action
  if action is not None and action.effect_frame is None:
   action.check(status, self.frame)  # the badge above and the banner below show `status`
  if status is MmaStatus.PAUSED:
   self._paused_banner(snap)
  self._problems(snap)

  avail = imgui.get_content_region_avail()
  side_width = max(300.0, avail.x * 0.38)
  if imgui.begin_child(
   "tickets-pane", (avail.x - side_width - imgui.get_style().item_spacing.x, 0)
  ):
   self._ticket_table(snap, now)
  imgui.end_child()
  imgui.same_line()
  if imgui.begin_child("side-pane", (0, 0)):
   self._state_display(snap, now, status)
   self._details(snap, now)
  imgui.end_child()
  imgui.end()

  self._keep_fresh(snap, status)
  if self.reporting:
   self._publish_report(snap, status, self._controls())

 def _settle_retries(self, snap: Snapshot) -> None:
  # A retry was applied once its ticket is no longer failed, or failed again (one more
  # attempt); with no run left, a retry posted just as the run ended was dropped. Either
  # way Retry is offered again.
  if not self.runner.active:
   self._retrying = {}
   return
  rows, index = snap.rows, self._index
  self._retrying = {
   tid: attempts
   for tid, attempts in self._retrying.items()
   if rows[index[tid]].status is Status.FAILED and rows[index[tid]].attempts == attempts
  }

 def _keep_fresh(self, snap: Snapshot, status: MmaStatus) -> None:
  runner = self.runner
  if runner.active and not (status is MmaStatus.PAUSED and snap.paused and not snap.finishing):
   # Work is moving (or draining): draw the next frame at full speed. Paused with every
   # worker idle, the app may idle; the engine's listener wakes it on any transition.
   hello_imgui.request_refresh()
  if (
   self.exit_when_done
   and runner.runs
   and not runner.active
   and status in (MmaStatus.DONE, MmaStatus.ERROR)
  ):
   hello_imgui.get_runner_params().app_shall_exit = True

 # -- controls -------------------------------------------------------------------------

 def _controls(self) -> Controls:
  runner = self.runner
  active = runner.active
  status = runner.conductor.mma_status
  return Controls(
   start=runner.can_start(),
   pause=active and status in (MmaStatus.EXECUTING, MmaStatus.PLANNING),
   resume_shown=active and runner.conductor.paused,
   cancel=active,
  )

 def _act(self, name: str, command: Callable[[], object]) -> None:
  at = time.perf_counter()
  command()  # posted to the engine's loop, which acts on it at once, on its own thread
  status = self.runner.conductor.mma_status
  self.last_action = action = Action(name, self.frame, at, str(status))
  action.check(status, self.frame)

 def _toggle_pause(self, controls: Controls, how: str) -> None:
  if controls.resume_shown:
   self._act("Resume", self.runner.resume)
  elif controls.pause:
   self._act("Pause", lambda: self.runner.pause(f"paused from the dashboard ({how})"))

 def _keyboard(self, controls: Controls) -> None:
  # Space toggles pause, as in a media player, unless the user is typing in the filter.
  if not imgui.get_io().want_text_input and imgui.is_key_pressed(imgui.Key.space, False):
   self._toggle_pause(controls, "Space")

 def _button(self, text: str, enabled: bool, width: float = 0.0) -> bool:
  imgui.begin_disabled(not enabled)
  pressed = bool(imgui.button(text, (width, 0)))
  imgui.end_disabled()
  return pressed and enabled

 # -- header: badge, buttons, progress ---------------------------------------------------

 def _badge_slot(self) -> tuple[Any, tuple[float, float]]:
  """Reserve the badge's place (wide enough for any status, so nothing moves when it
  changes); `_badge` fills it once the buttons have run, so a click shows this frame."""
  imgui.push_font(None, imgui.get_style().font_size_base * 1.35)
  widest = max(imgui.calc_text_size(s.value.upper()).x for s in MmaStatus)
  height = imgui.get_text_line_height()
  imgui.pop_font()
  pos = imgui.get_cursor_screen_pos()
  size = (widest + 2 * BADGE_PAD[0], height + 2 * BADGE_PAD[1])
  imgui.dummy(size)
  return pos, size

 def _badge(self, slot: tuple[Any, tuple[float, float]], status: MmaStatus) -> None:
  pos, size = slot
  bg, fg = BADGE[status]
  text = status.value.upper()
  draw = imgui.get_window_draw_list()
  draw.add_rect_filled(pos, (pos.x + size[0], pos.y + size[1]), imgui.get_color_u32(bg), 4.0)
  font_size = imgui.get_style().font_size_base * 1.35
  imgui.push_font(None, font_size)
  width = imgui.calc_text_size(text).x
  draw.add_text(
   (pos.x + (size[0] - width) / 2, pos.y + BADGE_PAD[1]), imgui.get_color_u32(fg), text
  )
  imgui.pop_font()

 def _header(self, snap: Snapshot, controls: Controls) -> None:
  runner = self.runner
  slot = self._badge_slot()
  imgui.same_line(0, 14)
  imgui.align_text_to_frame_padding()
  imgui.text(snap.name)
  imgui.same_line(0, 18)

  if self._button("Start", controls.start):
   self._act("Start", runner.start)
  imgui.same_line()
  style = imgui.get_style()
  # Pause and Resume share one place and one width, so nothing moves when they swap.
  width = imgui.calc_text_size("Resume").x + 2 * style.frame_padding.x
  if controls.resume_shown:
   if self._button("Resume", True, width):
    self._act("Resume", runner.resume)
  elif self._button("Pause", controls.pause, width):
   self._act("Pause", lambda: runner.pause("paused from the dashboard"))
  imgui.same_line()
  if self._button("Cancel", controls.cancel):
   self._act("Cancel", runner.cancel)
  if imgui.is_item_hovered(imgui.HoveredFlags_.allow_when_disabled):
   imgui.set_tooltip("Stop now: running workers are cancelled and their tickets run again later")
  imgui.same_line(0, 18)
  imgui.text_disabled("Space: pause / resume")
  self._badge(slot, runner.conductor.mma_status)

  counts = snap.counts
  # Paused, the workers still running are finishing: name them so.
  doing = "finishing" if snap.paused else "running"
  parts = [f"{counts.completed} / {counts.total} completed", f"{len(snap.running)} {doing}"]
  if counts.failed:
   parts.append(f"{counts.failed} failed")
  if counts.blocked:
   parts.append(f"{counts.blocked} blocked")
  parts.append(f"{counts.todo} todo")
  parts.append(f"{clock(snap.elapsed)} elapsed")
  imgui.text("   ·   ".join(parts))
  imgui.same_line(0, 24)
  imgui.text_disabled(runner.note)  # where the state is kept, and what it restored
  imgui.push_style_color(imgui.Col_.plot_histogram, TICKET_COLOR[Status.COMPLETED])
  imgui.progress_bar(counts.completed / max(counts.total, 1), (-1, 6), "")
  imgui.pop_style_color()

 # -- the paused banner ---------------------------------------------------------------------

 def _finishing(self, snap: Snapshot) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(running at the pause, still finishing). Right after a click the snapshot may still
  predate the pause: then everything running is what was running when it began."""
  if snap.paused:
   return snap.running_at_pause, snap.finishing
  running = tuple(w.ticket for w in snap.running)
  return running, running

 def _paused_banner(self, snap: Snapshot) -> None:
  _, finishing = self._finishing(snap)
  wall = time.time()
  paused_at = snap.paused_at if snap.paused and snap.paused_at is not None else wall
  since = time.strftime("%H:%M:%S", time.localtime(paused_at))
  reason = snap.pause_reason if snap.paused else None
  title = f"since {since} ({seconds(max(0.0, wall - paused_at))} ago)"
  if reason:
   title += f"  —  {reason}"
  if finishing:
   n = len(finishing)
   drain = f"{n} worker{'s' if n != 1 else ''} finishing: {preview(finishing)}"
   drain += "  —  no new worker starts"
  else:
   drain = "all workers idle  —  nothing runs until Resume"
  if snap.ready:
   upcoming = f"Resume starts: {preview(snap.ready)}"
  elif snap.pending:
   upcoming = "Resume starts: nothing is ready yet"
  else:
   upcoming = "Resume: nothing left to start"
  upcoming += f"   ·   {len(snap.pending)} ticket{'s' if len(snap.pending) != 1 else ''} pending"
  self._banner = ["PAUSED", title, drain, upcoming]

  imgui.push_style_color(imgui.Col_.child_bg, AMBER)
  imgui.push_style_color(imgui.Col_.text, BLACK)
  child = imgui.ChildFlags_.auto_resize_y | imgui.ChildFlags_.always_use_window_padding
  if imgui.begin_child("paused-banner", (-1, 0), child):
   imgui.push_font(None, imgui.get_style().font_size_base * 1.6)
   imgui.text("PAUSED")
   imgui.pop_font()
   imgui.same_line(0, 16)
   imgui.align_text_to_frame_padding()
   imgui.text(title)
   imgui.text(drain)
   imgui.text(upcoming)
  imgui.end_child()
  imgui.pop_style_color(2)

 def _problems(self, snap: Snapshot) -> None:
  runner = self.runner
  if not runner.active and snap.paused and snap.counts.todo:
   # A pause kept in the state (from an earlier run, or another terminal): say what Start
   # will do rather than show a pipeline that looks ready to go.
   why = f" ({snap.pause_reason})" if snap.pause_reason else ""
   imgui.text_colored(AMBER, f"Paused{why}: Start opens the run paused; then press Resume")
  problem = runner.crash or snap.error
  if problem:
   imgui.text_colored(TICKET_COLOR[Status.FAILED], f"The run failed: {problem}")
  elif snap.counts.failed and not self.runner.active:
   n = snap.counts.failed
   imgui.text_colored(
    TICKET_COLOR[Status.FAILED],
    f"{n} ticket{'s' if n != 1 else ''} failed: select one and press Retry",
   )

 # -- the ticket table -------------------------------------------------------------------

 def _filtered(self, snap: Snapshot, now: float) -> list[int] | None:
  text = self.filter_text.strip().lower()
  key = (text, self.status_filter)
  if not text and not self.status_filter:
   self._view, self._view_key = None, key
   return None
  stale = snap.rows is not self._view_rows and now - self._view_at >= FILTER_REFRESH
  if key != self._view_key or stale or self._view is None:
   rows = snap.rows
   if self._haystack is None:  # ids, descriptions and work never change: build once
    self._haystack = [f"{r.id}\n{r.description}\n{r.work}".lower() for r in rows]
   hay = self._haystack
   want = STATUS_FILTERS[self.status_filter][1]
   if want == "awaiting":
    waiting = {self._index[t] for t in snap.awaiting_approval}
    self._view = [i for i in sorted(waiting) if text in hay[i]]
   else:
    self._view = [
     i for i, r in enumerate(rows) if (not want or r.status == want) and text in hay[i]
    ]
   self._view_key, self._view_rows, self._view_at = key, rows, now
  return self._view

 def _awaiting_set(self, awaiting: tuple[str, ...]) -> frozenset[str]:
  # Rebuilt only when the snapshot's tuple changes: with auto_queue off it can hold
  # thousands of ids, and the table asks once per visible row.
  if awaiting is not self._awaiting[0]:
   self._awaiting = (awaiting, frozenset(awaiting))
  return self._awaiting[1]

 def _ticket_table(self, snap: Snapshot, now: float) -> None:
  imgui.set_next_item_width(max(120.0, imgui.get_content_region_avail().x * 0.45))
  _, self.filter_text = imgui.input_text_with_hint(
   "##filter", "filter: id, description, command", self.filter_text
  )
  imgui.same_line()
  imgui.set_next_item_width(150)
  _, self.status_filter = imgui.combo(
   "##status-filter", self.status_filter, [name for name, _ in STATUS_FILTERS]
  )
  view = self._filtered(snap, now)
  rows = snap.rows
  shown = len(rows) if view is None else len(view)
  imgui.same_line()
  imgui.text_disabled(f"{shown:,} of {len(rows):,}")

  # Row lines rather than row stripes: with software OpenGL each stripe is a blended
  # rectangle, about 15% of a frame's rendering at this size.
  flags = (
   imgui.TableFlags_.scroll_y
   | imgui.TableFlags_.borders_inner_h
   | imgui.TableFlags_.borders_outer
   | imgui.TableFlags_.borders_v
   | imgui.TableFlags_.resizable
   | imgui.TableFlags_.sizing_stretch_prop
  )
  # The theme's row lines are nearly invisible on its dark background: lift them a little.
  imgui.push_style_color(imgui.Col_.table_border_light, ROW_LINE)
  if not imgui.begin_table("tickets", 5, flags):
   imgui.pop_style_color()
   return
  fixed = imgui.TableColumnFlags_.width_fixed
  em = imgui.get_font_size()
  imgui.table_setup_column("ticket", imgui.TableColumnFlags_.width_stretch, 1.0)
  imgui.table_setup_column("status", fixed, em * 7.5)
  imgui.table_setup_column("tries", fixed, em * 2.5)
  imgui.table_setup_column("time", fixed, em * 4.0)
  imgui.table_setup_column("description", imgui.TableColumnFlags_.width_stretch, 1.6)
  imgui.table_setup_scroll_freeze(0, 1)
  imgui.table_headers_row()

  paused = snap.paused
  finishing = set(snap.finishing) if paused else set()
  awaiting = self._awaiting_set(snap.awaiting_approval)
  span = imgui.SelectableFlags_.span_all_columns
  # The clipper submits only the rows in sight: a frame costs the same at 30 or 10,000.
  clipper = imgui.ListClipper()
  clipper.begin(shown)
  while clipper.step():
   for k in range(clipper.display_start, clipper.display_end):
    i = k if view is None else view[k]
    row = rows[i]
    imgui.table_next_row()
    imgui.table_next_column()
    imgui.push_id(i)
    clicked, _ = imgui.selectable(label(row.id), row.id == self.selected, span)
    imgui.pop_id()
    if clicked:
     self.selected = row.id
    imgui.table_next_column()
    if row.id in finishing:
     imgui.text_colored(TICKET_COLOR["finishing"], "finishing")
    elif row.id in awaiting:
     imgui.text_colored(TICKET_COLOR["awaiting"], "awaiting approval")
    else:
     imgui.text_colored(TICKET_COLOR[row.status], row.status.replace("_", " "))
    imgui.table_next_column()
    imgui.text(str(row.attempts))
    imgui.table_next_column()
    if row.started_at is not None and row.status is not Status.TODO:
     end = row.finished_at if row.finished_at is not None else now
     imgui.text(seconds(max(0.0, end - row.started_at)))
    imgui.table_next_column()
    imgui.text(row.description or row.work)
  imgui.end_table()
  imgui.pop_style_color()

 # -- the state display: workers, what resumes, pending --------------------------------------

 def _state_display(self, snap: Snapshot, now: float, status: MmaStatus) -> None:
  running: dict[str, RunningWorker] = {w.ticket: w for w in snap.running}
  rows = snap.rows
  table_flags = imgui.TableFlags_.row_bg | imgui.TableFlags_.borders_inner_h
  if status is MmaStatus.PAUSED:
   at_pause, finishing = self._finishing(snap)
   imgui.separator_text(f"Running when paused ({len(at_pause)})")
   if not at_pause:
    imgui.text_disabled("no worker was running")
   elif imgui.begin_table("at-pause", 3, table_flags):
    for tid in at_pause:
     worker = running.get(tid)
     row = rows[self._index[tid]]
     if tid in finishing and worker is not None:
      elapsed, state, color = now - worker.started_at, "finishing", TICKET_COLOR["finishing"]
     else:
      end = row.finished_at if row.finished_at is not None else now
      elapsed = end - row.started_at if row.started_at is not None else 0.0
      state = {Status.COMPLETED: "done", Status.TODO: "will run again"}.get(row.status, row.status)
      color = TICKET_COLOR[row.status]
     self._workers.append({"ticket": tid, "elapsed": round(elapsed, 3), "state": state})
     imgui.table_next_row()
     imgui.table_next_column()
     imgui.text(tid)
     imgui.table_next_column()
     imgui.text(seconds(max(0.0, elapsed)))
     imgui.table_next_column()
     imgui.text_colored(color, state)
    imgui.end_table()
   imgui.separator_text(f"Starts first on resume ({len(snap.ready)})")
  else:
   imgui.separator_text(f"Running ({len(snap.running)} of {snap.max_workers} workers)")
   if not snap.running:
    imgui.text_disabled("no worker is running")
   elif imgui.begin_table("running", 3, table_flags):
    for worker in snap.running:
     elapsed = now - worker.started_at
     self._workers.append(
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
  self._pending_list(snap.pending)

 def _pending_list(self, pending: Sequence[str]) -> None:
  header = f"Pending: {len(pending):,} ticket{'s' if len(pending) != 1 else ''}###pending"
  if not imgui.collapsing_header(header, imgui.TreeNodeFlags_.default_open):
   return
  lines = min(len(pending), 6)
  height = lines * imgui.get_text_line_height_with_spacing() + 8
  if imgui.begin_child("pending-list", (0, height)):
   clipper = imgui.ListClipper()
   clipper.begin(len(pending))
   while clipper.step():
    for k in range(clipper.display_start, clipper.display_end):
     imgui.text_disabled(pending[k])
  imgui.end_child()

 # -- details of the selected ticket ---------------------------------------------------------

 def _details(self, snap: Snapshot, now: float) -> None:
  imgui.separator_text("Ticket details")
  i = self._index.get(self.selected) if self.selected is not None else None
  if i is None:
   imgui.text_disabled("select a ticket in the table")
   return
  row = snap.rows[i]
  waiting = row.id in self._awaiting_set(snap.awaiting_approval)
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
   if self._button("Retry", row.id not in self._retrying):
    self._retrying[row.id] = row.attempts
    self._act("Retry", lambda: self.runner.retry(row.id))
  if waiting:
   imgui.same_line()
   if self._button("Queue", True):
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

 # -- what the test hook reads ---------------------------------------------------------------

 def _publish_report(self, snap: Snapshot, status: MmaStatus, controls: Controls) -> None:
  buttons = controls.as_dict()
  if self.selected is not None:
   row = snap.rows[self._index[self.selected]]
   if row.status is Status.FAILED:
    buttons["Retry"] = row.id not in self._retrying
   if row.id in self._awaiting_set(snap.awaiting_approval):
    buttons["Queue"] = True
  view = self._view
  self.drawn = (
   snap,
   {
    "frame": self.frame,
    "badge": status.value.upper(),
    "buttons": buttons,
    "banner": self._banner or None,
    "workers": self._workers,
    "selected": self.selected,
    "shown_rows": len(snap.rows) if view is None else len(view),
    "runs": self.runner.runs,
    "note": self.runner.note,
    "run_active": self.runner.active,
    "crash": self.runner.crash,
   },
  )
