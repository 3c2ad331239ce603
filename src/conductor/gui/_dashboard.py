"""The MMA dashboard: one Dear ImGui window, drawn each frame from an immutable snapshot.

Nothing here waits: a frame reads the runner's latest `Snapshot` (replaced whole by the
engine thread) and the live `mma_status`. Pause and Resume trip the gate on this thread
(`PipelineRunner.pause`: the gate is closed when the click's handler returns); the other
buttons post their command to the engine's loop. The badge, the buttons and the banner use
the live status, so the frame a click lands in already shows its effect.

The window's parts, top to bottom: `Dashboard` (the frame; the header with the badge, the
buttons, the counts, the clock and the state line), `Banner` (the strip that holds the
PAUSED banner), then `TicketTable` beside `SidePane` (workers, what starts next, pending,
the selected ticket's details). They share `Report` (what a frame showed, for the test
hook), `WholeRows` and `fit_text`.

What the window promises a person:

- Nothing moves under the mouse when the run pauses: the banner has its own strip below the
  header, the same height in every state (amber while paused; otherwise it says what runs,
  what the run came to, or what Start will do), and the badge and the Pause/Resume slot
  keep their width.
- Scrolled lists (the ticket table, the pending list) show whole rows: their height is a
  whole number of rows, and a scroll that stops between two rows moves on to the next one
  in the direction it was going.
- A cell's text that does not fit is cut at a word boundary where one is near, and ends
  with "…"; hovering it shows the whole text, as does the details pane.
- The clock is run time: the time the pipeline was not paused (`Snapshot.elapsed`, the
  same figure `conductor status` reports). It stops when a pause begins, even while the
  workers running at the pause finish; while paused the header shows beside it how long
  the pause has lasted ("paused 00:12"), and the banner when it began.
- Buttons that do nothing now are drawn disabled (Start once nothing is left to run, Pause
  while nothing executes); hovering one says why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgui_bundle import hello_imgui, imgui

from .. import MmaStatus, RunningWorker, Snapshot, Status, TicketRow
from .._text import clock, plural
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

# The banner strip's background when not paused: a dark tint of the badge's colour, so the
# amber of a pause stands out and nothing else shouts. Running, only an outline: frames come
# at full speed then, and a fill is one more blended rectangle in each (see Dashboard.draw).
STRIP_TINT: dict[str, Color | None] = {
 "running": None,
 "done": (0.13, 0.17, 0.27, 1.0),
 "failed": (0.3, 0.12, 0.12, 1.0),
 "other": (0.17, 0.17, 0.19, 1.0),
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
BANNER_SCALE = 1.6  # the banner's first word, relative to the font size
DISABLED_ALPHA = 0.35  # a disabled header button (Dear ImGui's 0.6 reads as enabled)
FILTER_REFRESH = 0.25  # seconds between re-filtering 10,000 rows while they change
LIST_PREVIEW = 6  # ticket ids named inline before "(+N more)"
PENDING_LINES = 6  # the pending list's height, in lines
ELLIPSIS = "…"
# Cut a text at a word boundary only when that keeps at least this share of what fits:
# one long word (a path, a hash) is cut mid-word instead of leaving the cell nearly empty.
WORD_CUT_KEEPS = 0.5


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
 status_after: str  # mma_status right after the control's command returned, same frame
 effect_frame: int | None = None  # the first frame whose mma_status shows the effect
 effect_at: float | None = None  # time.perf_counter() when that was seen

 def check(self, status: MmaStatus, frame: int) -> None:
  expected = EXPECTED_STATUS.get(self.label)
  if self.effect_frame is None and (expected is None or status is expected):
   self.effect_frame, self.effect_at = frame, time.perf_counter()


@dataclass(slots=True)
class Report:
 """What one frame showed, for the test hook; a new one each frame. The lists and the
 layout are filled only when `reporting` (they cost a little per visible row)."""

 reporting: bool
 tooltip: str | None = None  # the tooltip this frame showed
 clock: str = ""
 banner: list[str] = field(default_factory=list)  # the PAUSED banner's lines
 strip: list[str] = field(default_factory=list)  # the strip's lines, paused or not
 workers: list[dict[str, Any]] = field(default_factory=list)
 cells: list[dict[str, Any]] = field(default_factory=list)  # visible description cells
 layout: dict[str, Any] = field(default_factory=dict)  # rectangles and row metrics

 def tip(self, text: str) -> None:
  imgui.set_tooltip(text)
  self.tooltip = text


def seconds(value: float) -> str:
 return f"{value:.1f} s" if value < 60 else clock(value)


def preview(ids: Sequence[str], limit: int = LIST_PREVIEW) -> str:
 shown = ", ".join(ids[:limit])
 return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def label(text: str) -> str:
 # "##" in a label starts Dear ImGui's hidden id part; a ticket id must show whole.
 return text.replace("##", "# #")


def fit_text(text: str, width: float, measure: Callable[[str], float]) -> str:
 """`text` if `measure(text) <= width`; else the longest prefix that fits with "…" after it,
 cut back to the last word boundary in it unless that keeps less than WORD_CUT_KEEPS of
 it (a single long word is cut mid-word). Spaces and , ; : before the "…" are dropped.

 O(log len(text)) calls of `measure` (a binary search on the prefix length).
 """
 if measure(text) <= width:
  return text
 lo, hi = 0, len(text)  # the longest prefix that fits is lo characters long
 while lo < hi:
  mid = (lo + hi + 1) // 2
  if measure(_ellipsized(text[:mid])) <= width:
   lo = mid
  else:
   hi = mid - 1
 cut = text[:lo]
 if not text[lo].isspace():  # mid-word: go back to the word's start if that is near
  space = cut.rfind(" ")
  if space >= lo * WORD_CUT_KEEPS:
   cut = cut[:space]
 return _ellipsized(cut)


def _ellipsized(prefix: str) -> str:
 return prefix.rstrip(" \t,;:") + ELLIPSIS


def clear_color() -> Any:
 """The theme's window background, opaque: what the GL clear must paint (no_background)."""
 color = imgui.get_style().color_(imgui.Col_.window_bg)
 return imgui.ImVec4(color.x, color.y, color.z, 1.0)


def item_rect() -> list[float]:
 """The last item's rectangle, [x0, y0, x1, y1] in screen pixels (for the test hook)."""
 lo, hi = imgui.get_item_rect_min(), imgui.get_item_rect_max()
 return [lo.x, lo.y, hi.x, hi.y]


def button(text: str, enabled: bool, report: Report, width: float = 0.0, why: str = "") -> bool:
 """A button drawn disabled unless `enabled`; `why` is its tooltip (also when disabled)."""
 imgui.begin_disabled(not enabled)
 pressed = bool(imgui.button(text, (width, 0)))
 imgui.end_disabled()
 if why and imgui.is_item_hovered(imgui.HoveredFlags_.allow_when_disabled):
  report.tip(why)
 return pressed and enabled


class WholeRows:
 """Keeps one scrolled list on whole rows of `step` pixels: a scroll that stopped between
 two rows goes on to the next row in the direction it moved (a small touchpad step still
 moves), from the next frame. The two ends stay where they are. With a height of whole
 rows, the list then never shows a row cut in half."""

 def __init__(self) -> None:
  self._last = 0.0  # the scroll after the last frame

 def snap(self, step: float) -> None:
  """Call inside the scrolled window, after its rows."""
  y, end = imgui.get_scroll_y(), imgui.get_scroll_max_y()
  if step > 0 and 0.0 < y < end and abs(y - round(y / step) * step) >= 0.5:
   rows = math.ceil(y / step) if y > self._last else math.floor(y / step)
   y = min(rows * step, end)
   imgui.set_scroll_y(y)
  self._last = y


class Awaiting:
 """`snap.awaiting_approval` as a set, rebuilt only when the snapshot's tuple changes: with
 auto_queue off it can hold thousands of ids, and the table asks once per visible row."""

 def __init__(self) -> None:
  self._seen: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())

 def __call__(self, snap: Snapshot) -> frozenset[str]:
  if snap.awaiting_approval is not self._seen[0]:
   self._seen = (snap.awaiting_approval, frozenset(snap.awaiting_approval))
  return self._seen[1]


def paused_at(snap: Snapshot) -> float:
 """When the pause began (time.time()). Right after a click the snapshot may predate the
 pause: it began now, then."""
 if snap.paused and snap.paused_at is not None:
  return snap.paused_at
 return time.time()


def finishing(snap: Snapshot) -> tuple[tuple[str, ...], tuple[str, ...]]:
 """(running at the pause, still finishing). Right after a click the snapshot may still
 predate the pause: then everything running is what was running when it began."""
 if snap.paused:
  return snap.running_at_pause, snap.finishing
 running = tuple(w.ticket for w in snap.running)
 return running, running


class Dashboard:
 """Draws the dashboard for a `PipelineRunner`; `draw()` is the `show_gui` callback.

 The frame, the header (badge, buttons, counts, clock, state line) and the keyboard are
 here; the banner strip, the ticket table and the side pane are parts of their own
 (`Banner`, `TicketTable`, `SidePane`). All state belongs to the GUI thread. When
 `reporting` is on (the test hook), each frame also publishes `drawn`: the snapshot it
 drew and a fresh dict of what it showed (texts, buttons as drawn, where things are),
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
  index = {tid: i for i, tid in enumerate(runner.ticket_ids)}  # the rows' order is fixed
  awaiting = Awaiting()
  self.banner = Banner(runner)
  self.table = TicketTable(index, awaiting)
  self.side = SidePane(runner, index, awaiting, self._act)
  self._drawn_controls = Controls(False, False, False, False)

 def draw(self) -> None:
  self.frame += 1
  now = time.monotonic()
  runner = self.runner
  snap = runner.snapshot()
  report = Report(self.reporting)
  self.side.settle_retries(snap)

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
  self._header(snap, self._controls(), report)  # after the keyboard: Space may have paused
  status = runner.conductor.mma_status  # again: a button above may have just changed it
  action = self.last_action
  if action is not None and action.effect_frame is None:
   action.check(status, self.frame)  # the badge above and the banner below show `status`
  self.banner.draw(snap, status, report)

  avail = imgui.get_content_region_avail()
  side_width = max(300.0, avail.x * 0.38)
  if imgui.begin_child(
   "tickets-pane", (avail.x - side_width - imgui.get_style().item_spacing.x, 0)
  ):
   clicked = self.table.draw(snap, now, self.selected, report)
   if clicked is not None:
    self.selected = clicked
  imgui.end_child()
  imgui.same_line()
  if imgui.begin_child("side-pane", (0, 0)):
   self.side.draw(snap, now, status, self.selected, report)
  imgui.end_child()
  imgui.end()

  self._keep_fresh(snap, status)
  if self.reporting:
   self._publish_report(snap, status, report)

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
  command()  # Pause and Resume take effect in it; the others are posted to the loop
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

 def _start_why(self, snap: Snapshot, enabled: bool) -> str:
  if enabled:
   todo = plural(snap.counts.todo, "ticket")
   return f"Run the pipeline: {todo} to run, {snap.max_workers} at a time"
  if self.runner.active:
   return "A run is going"
  if snap.counts.failed:
   return "Nothing to start: select a failed ticket and press Retry"
  return "Nothing to start: every ticket is completed"

 # -- header: badge, buttons, counts, clock, state -------------------------------------------

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

 def _header(self, snap: Snapshot, controls: Controls, report: Report) -> None:
  runner = self.runner
  self._drawn_controls = controls  # what the buttons below are drawn as: the hook reports it
  slot = self._badge_slot()
  imgui.same_line(0, 14)
  imgui.align_text_to_frame_padding()
  imgui.text(snap.name)
  imgui.same_line(0, 18)

  imgui.push_style_var(imgui.StyleVar_.disabled_alpha, DISABLED_ALPHA)
  if button("Start", controls.start, report, why=self._start_why(snap, controls.start)):
   self._act("Start", runner.start)
  imgui.same_line()
  style = imgui.get_style()
  # Pause and Resume share one place and one width, so nothing moves when they swap.
  width = imgui.calc_text_size("Resume").x + 2 * style.frame_padding.x
  if controls.resume_shown:
   if button("Resume", True, report, width):
    self._act("Resume", runner.resume)
  elif button("Pause", controls.pause, report, width, "" if controls.pause else "Nothing runs"):
   self._act("Pause", lambda: runner.pause("paused from the dashboard"))
  imgui.same_line()
  stop = "Stop now: running workers are cancelled and their tickets run again later"
  if button("Cancel", controls.cancel, report, why=stop):
   self._act("Cancel", runner.cancel)
  imgui.pop_style_var()
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
  report.clock = f"{clock(snap.elapsed)} run time"  # see the module docstring
  if runner.active and runner.conductor.paused:
   report.clock += f" · paused {clock(time.time() - paused_at(snap))}"
  parts.append(report.clock)
  imgui.text("   ·   ".join(parts))
  if imgui.is_item_hovered():
   report.tip(
    "Run time counts while the pipeline is not paused: it stops when a pause begins, "
    "even while the workers running then finish"
   )
  imgui.same_line(0, 24)
  imgui.text_disabled(runner.note)  # where the state is (and, before a run, what it held)
  if runner.runs and imgui.is_item_hovered():
   report.tip("When this window opened: " + "; ".join(n.text for n in runner.opened))
  imgui.push_style_color(imgui.Col_.plot_histogram, TICKET_COLOR[Status.COMPLETED])
  imgui.progress_bar(counts.completed / max(counts.total, 1), (-1, 6), "")
  imgui.pop_style_color()

 # -- what the test hook reads ---------------------------------------------------------------

 def _publish_report(self, snap: Snapshot, status: MmaStatus, report: Report) -> None:
  buttons = self._drawn_controls.as_dict()  # as drawn this frame, not as they would be now
  buttons.update(self.side.buttons(snap, self.selected))
  self.drawn = (
   snap,
   {
    "frame": self.frame,
    "badge": status.value.upper(),
    "buttons": buttons,
    "banner": report.banner or None,
    "strip": report.strip,
    "clock": report.clock,
    "workers": report.workers,
    "selected": self.selected,
    "shown_rows": self.table.shown_rows(snap),
    "runs": self.runner.runs,
    "note": self.runner.note,
    "run_active": self.runner.active,
    "crash": self.runner.crash,
    "tooltip": report.tooltip,
    "layout": report.layout,
    "cells": report.cells,
   },
  )


class Banner:
 """The strip under the header that holds the PAUSED banner: one height in every state, so
 nothing below it moves when a pause begins or ends. Amber while paused (since when, why,
 the workers finishing, what Resume starts); otherwise what runs (outlined), or on a dark
 tint what the run came to or what Start will do."""

 def __init__(self, runner: PipelineRunner) -> None:
  self.runner = runner

 def draw(self, snap: Snapshot, status: MmaStatus, report: Report) -> None:
  flags = imgui.ChildFlags_.always_use_window_padding
  bg: Color
  if status is MmaStatus.PAUSED:
   lines = report.banner = self.paused_lines(snap)
   bg, fg = AMBER, BLACK
  else:
   tint, lines = self.status_lines(snap)
   fill, fg = STRIP_TINT[tint], WHITE
   if fill is None:  # an outline only: Dear ImGui draws no background for alpha 0
    bg, flags = (0.0, 0.0, 0.0, 0.0), flags | imgui.ChildFlags_.borders
   else:
    bg = fill
  report.strip = lines
  imgui.push_style_color(imgui.Col_.child_bg, bg)
  imgui.push_style_color(imgui.Col_.text, fg)
  if imgui.begin_child("banner", (-1, self.height()), flags):
   imgui.push_font(None, imgui.get_style().font_size_base * BANNER_SCALE)
   imgui.text(lines[0])
   imgui.pop_font()
   imgui.same_line(0, 16)
   imgui.align_text_to_frame_padding()
   imgui.text(lines[1])
   for line in lines[2:]:
    imgui.text(line)
  imgui.end_child()
  imgui.pop_style_color(2)
  if report.reporting:
   report.layout["strip"] = item_rect()

 @staticmethod
 def height() -> float:
  """A big first line (the word and a title) and two lines, with the window padding."""
  style = imgui.get_style()
  imgui.push_font(None, style.font_size_base * BANNER_SCALE)
  first = max(imgui.get_text_line_height(), imgui.get_frame_height())
  imgui.pop_font()
  lines = 2 * (style.item_spacing.y + imgui.get_text_line_height())
  return first + lines + 2 * style.window_padding.y

 @staticmethod
 def paused_lines(snap: Snapshot) -> list[str]:
  _, still = finishing(snap)
  wall = time.time()
  began = paused_at(snap)
  since = time.strftime("%H:%M:%S", time.localtime(began))
  reason = snap.pause_reason if snap.paused else None
  title = f"since {since} ({seconds(max(0.0, wall - began))} ago)"
  if reason:
   title += f"  —  {reason}"
  if still:
   n = len(still)
   drain = f"{n} worker{'s' if n != 1 else ''} finishing: {preview(still)}"
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
  return ["PAUSED", title, drain, upcoming]

 def status_lines(self, snap: Snapshot) -> tuple[str, list[str]]:
  """(tint, lines) when not paused: a word, a title and up to two lines."""
  runner, counts = self.runner, snap.counts
  problem = runner.crash or snap.error
  if runner.active:
   running = [w.ticket for w in snap.running]
   busy = f"{len(running)} of {snap.max_workers} workers busy"
   lines = ["RUNNING", f"{busy}  —  Pause or Space: no new worker starts; running ones finish"]
   if running:
    lines.append(f"Running: {preview(running)}")
   elif snap.awaiting_approval:
    n = len(snap.awaiting_approval)
    lines.append(f"{plural(n, 'ticket')} awaiting approval: select one and press Queue")
   else:
    lines.append("no worker is running")
   upcoming = f"Up next: {preview(snap.ready)}" if snap.ready else "Up next: nothing is ready"
   lines.append(f"{upcoming}   ·   {plural(len(snap.pending), 'ticket')} pending")
   return "running", lines
  if problem:
   return "failed", ["FAILED", "The run failed", problem]
  if counts.failed:
   by = "it" if counts.failed == 1 else "them"
   blocked = f", {counts.blocked} blocked by {by}" if counts.blocked else ""
   return "failed", [
    "FAILED",
    f"{plural(counts.failed, 'ticket')} failed{blocked}",
    "Select a failed ticket and press Retry: it runs again, then what it blocked",
   ]
  if counts.total and counts.completed == counts.total:
   if runner.runs:
    title = f"all {plural(counts.total, 'ticket')} completed in {clock(snap.elapsed)} run time"
    return "done", ["DONE", title, "Nothing left to run"]
   return "done", [
    "DONE",
    f"all {plural(counts.total, 'ticket')} completed in an earlier run",
    "Nothing left to run: `conductor gui --fresh` starts it over",
   ]
  if runner.runs:
   word, title = "STOPPED", f"{plural(counts.todo, 'ticket')} left: Start carries on"
  else:
   word = "READY"
   title = f"{plural(counts.todo, 'ticket')} to run, {snap.max_workers} at a time: press Start"
  if snap.paused:
   # A pause kept in the state (from an earlier run, or another terminal): say what Start
   # will do rather than show a pipeline that looks ready to go.
   why = f" ({snap.pause_reason})" if snap.pause_reason else ""
   hint = f"Paused{why}: Start opens the run paused; then press Resume"
  else:
   hint = "Pause (or Space) while it runs: no new worker starts; running ones finish"
  return "other", [word, title, hint]


class TicketTable:
 """The ticket table: the filter, and the rows in sight (a clipper: a frame costs the same
 at 30 or 10,000 tickets). Its height is the header and whole rows, measured by the frame
 before; a description that does not fit is cut after a word (`fit_text`), whole in its
 tooltip."""

 def __init__(self, index: dict[str, int], awaiting: Awaiting) -> None:
  self.filter_text = ""
  self.status_filter = 0
  self._index = index
  self._awaiting = awaiting
  self._haystack: list[str] | None = None  # per row, lower case: what the filter searches
  self._view: list[int] | None = None  # filtered row indices; None shows every row
  self._view_key: tuple[str, int] = ("", 0)
  self._view_rows: tuple[TicketRow, ...] = ()
  self._view_at = 0.0
  self._fitted: dict[int, tuple[float, str]] = {}  # row -> (cell width, description shown)
  self._rows: tuple[float, float] | None = None  # (header height, row height) as measured
  self._scroll = WholeRows()

 def shown_rows(self, snap: Snapshot) -> int:
  return len(snap.rows) if self._view is None else len(self._view)

 def filtered(self, snap: Snapshot, now: float) -> list[int] | None:
  """The rows the filter lets through (None: all), re-filtered at most every
  FILTER_REFRESH seconds while they change."""
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

 def _fit(self, i: int, text: str, width: float) -> str:
  # Per row and cell width: a row's text never changes, so a frame measures only rows that
  # came into sight or a column that was resized.
  cached = self._fitted.get(i)
  if cached is not None and cached[0] == width:
   return cached[1]
  shown = fit_text(text, width, lambda s: imgui.calc_text_size(s).x)
  self._fitted[i] = (width, shown)
  return shown

 def _height(self, avail: float) -> float:
  # The header and as many whole rows as fit (0: fill, until a frame has measured them).
  if self._rows is None:
   return 0.0
  header, row = self._rows
  return header + max(1, math.floor((avail - header) / row)) * row

 def draw(self, snap: Snapshot, now: float, selected: str | None, report: Report) -> str | None:
  """Draw the filter and the table; return the ticket clicked, if one was."""
  imgui.set_next_item_width(max(120.0, imgui.get_content_region_avail().x * 0.45))
  _, self.filter_text = imgui.input_text_with_hint(
   "##filter", "filter: id, description, command", self.filter_text
  )
  imgui.same_line()
  imgui.set_next_item_width(150)
  _, self.status_filter = imgui.combo(
   "##status-filter", self.status_filter, [name for name, _ in STATUS_FILTERS]
  )
  view = self.filtered(snap, now)
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
  height = self._height(imgui.get_content_region_avail().y)
  # The theme's row lines are nearly invisible on its dark background: lift them a little.
  imgui.push_style_color(imgui.Col_.table_border_light, ROW_LINE)
  if not imgui.begin_table("tickets", 5, flags, (0, height)):
   imgui.pop_style_color()
   return None
  fixed = imgui.TableColumnFlags_.width_fixed
  em = imgui.get_font_size()
  imgui.table_setup_column("ticket", imgui.TableColumnFlags_.width_stretch, 1.0)
  imgui.table_setup_column("status", fixed, em * 7.5)
  imgui.table_setup_column("tries", fixed, em * 2.5)
  imgui.table_setup_column("time", fixed, em * 4.0)
  imgui.table_setup_column("description", imgui.TableColumnFlags_.width_stretch, 2.2)
  imgui.table_setup_scroll_freeze(0, 1)
  imgui.table_headers_row()

  finishing = set(snap.finishing) if snap.paused else set()
  awaiting = self._awaiting(snap)
  span = imgui.SelectableFlags_.span_all_columns
  cells = report.cells if report.reporting else None
  picked = None
  clipper = imgui.ListClipper()
  clipper.begin(shown)
  while clipper.step():
   for k in range(clipper.display_start, clipper.display_end):
    i = k if view is None else view[k]
    row = rows[i]
    imgui.table_next_row()
    imgui.table_next_column()
    imgui.push_id(i)
    clicked, _ = imgui.selectable(label(row.id), row.id == selected, span)
    imgui.pop_id()
    if clicked:
     picked = row.id
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
    full = row.description or row.work
    text = self._fit(i, full, imgui.get_content_region_avail().x)
    imgui.text(text)
    if text is not full and imgui.is_item_hovered():
     report.tip(full)
    if cells is not None:
     cells.append({"id": row.id, "text": text, "full": full, "rect": item_rect()})
  if shown:
   self._rows = (imgui.internal.table_get_header_row_height(), clipper.items_height)
   self._scroll.snap(clipper.items_height)
  if report.reporting:
   report.layout["table"] = {
    "rows": self._rows,
    "scroll": imgui.get_scroll_y(),
    "scroll_max": imgui.get_scroll_max_y(),
   }
  imgui.end_table()
  imgui.pop_style_color()
  if report.reporting:
   report.layout["table"]["rect"] = item_rect()
  return picked


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
