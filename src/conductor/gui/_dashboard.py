"""The MMA dashboard: one Dear ImGui window, drawn each frame from an immutable snapshot.

Nothing here waits: a frame reads the runner's latest `Snapshot` (replaced whole by the
engine thread) and the live `mma_status`. Pause and Resume trip the gate on this thread
(`PipelineRunner.pause`: the gate is closed when the click's handler returns); the other
buttons post their command to the engine's loop. The badge, the buttons and the banner use
the live status, so the frame a click lands in already shows its effect.

This module owns the window (`Dashboard`): the frame, the header (the badge, the buttons,
the counts, the clock and the state line), the keyboard, and what the test hook reads of a
frame (`Dashboard.drawn`, `Action`). Below the header, top to bottom: `Banner` (_banner.py,
the strip that holds the PAUSED banner), then `TicketTable` (_table.py) beside `SidePane`
(_side.py). What they share is in _widgets.py.

What the header promises a person:

- Nothing moves under the mouse when the run pauses: the badge and the Pause/Resume slot
  keep their width (and the banner's strip its height: _banner.py).
- The clock is run time: the time the pipeline was not paused (`Snapshot.elapsed`, the
  same figure `conductor status` reports). It stops when a pause begins, even while the
  workers running at the pause finish; while paused the header shows beside it how long
  the pause has lasted ("paused 00:12"), and the banner when it began.
- Buttons that do nothing now are drawn disabled (Start once nothing is left to run, Pause
  while nothing executes, Resume while the token budget is spent: the side pane raises it);
  hovering one says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imgui_bundle import hello_imgui, imgui

from .. import MmaStatus, Snapshot, Status
from .._text import clock, plural
from ..multi_agent_conductor import budget_reached, budget_spent
from ._banner import KEEP_PAUSED, Banner
from ._runs import PipelineRunner
from ._side import RAISE_AND_RESUME, SidePane
from ._table import TicketTable
from ._widgets import AMBER, BLACK, TICKET_COLOR, WHITE, Awaiting, Color, Report, button, paused_at

WINDOW = "Dashboard"  # the one window; test-hook references start with //Dashboard

# Badge background and text colour per status: amber for paused, as on the banner.
BADGE: dict[MmaStatus, tuple[Color, Color]] = {
 MmaStatus.IDLE: ((0.35, 0.36, 0.4, 1.0), WHITE),
 MmaStatus.PLANNING: ((0.2, 0.62, 0.8, 1.0), BLACK),
 MmaStatus.EXECUTING: ((0.2, 0.7, 0.3, 1.0), BLACK),
 MmaStatus.PAUSED: (AMBER, BLACK),
 MmaStatus.DONE: ((0.25, 0.45, 0.9, 1.0), WHITE),
 MmaStatus.ERROR: ((0.85, 0.22, 0.22, 1.0), WHITE),
}

BADGE_PAD = (10.0, 3.0)  # pixels around the status badge's text
DISABLED_ALPHA = 0.35  # a disabled header button (Dear ImGui's 0.6 reads as enabled)


@dataclass(frozen=True, slots=True)
class Controls:
 """Which controls are enabled this frame (Pause and Resume share one place)."""

 start: bool
 pause: bool
 resume_shown: bool  # the Pause button reads "Resume" while paused
 cancel: bool
 resume_refused: str = ""  # why Resume is disabled (the token budget is spent); "" if not

 def as_dict(self) -> dict[str, bool]:
  resume = not self.resume_refused
  slot = {"Resume": resume} if self.resume_shown else {"Pause": self.pause}
  return {"Start": self.start, **slot, "Cancel": self.cancel}


# What a control's effect looks like in the live `mma_status` (None: nothing to wait for).
EXPECTED_STATUS: dict[str, MmaStatus | None] = {
 "Pause": MmaStatus.PAUSED,
 "Resume": MmaStatus.EXECUTING,
 KEEP_PAUSED: MmaStatus.PAUSED,
 RAISE_AND_RESUME: MmaStatus.EXECUTING,
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


def clear_color() -> Any:
 """The theme's window background, opaque: what the GL clear must paint (no_background)."""
 color = imgui.get_style().color_(imgui.Col_.window_bg)
 return imgui.ImVec4(color.x, color.y, color.z, 1.0)


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
  self.banner = Banner(runner, self._act)
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
  resume_shown = active and runner.conductor.paused
  refused = ""
  if resume_shown:
   used, budget = runner.tokens()
   if budget is not None and budget_spent(used, budget):
    refused = f"{budget_reached(used, budget)}; raise it under Tokens, on the right, to resume"
  return Controls(
   start=runner.can_start(),
   pause=active and status in (MmaStatus.EXECUTING, MmaStatus.PLANNING),
   resume_shown=resume_shown,
   cancel=active,
   resume_refused=refused,
  )

 def _act(self, name: str, command: Callable[[], object]) -> None:
  at = time.perf_counter()
  command()  # Pause and Resume take effect in it; the others are posted to the loop
  status = self.runner.conductor.mma_status
  self.last_action = action = Action(name, self.frame, at, str(status))
  action.check(status, self.frame)

 def _resume(self) -> None:
  # Resume is disabled while the budget is spent; one spent since that was decided makes the
  # engine refuse: say why where the budget is raised.
  refused = self.runner.resume()
  if refused is not None:
   self.side.budget_message = refused

 def _toggle_pause(self, controls: Controls, how: str) -> None:
  if controls.resume_shown:
   if not controls.resume_refused:
    self._act("Resume", self._resume)
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
   refused = controls.resume_refused
   if button("Resume", not refused, report, width, refused):
    self._act("Resume", self._resume)
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
  parts = [f"{counts.completed:,} / {counts.total:,} completed", f"{len(snap.running)} {doing}"]
  if counts.failed:
   parts.append(f"{counts.failed:,} failed")
  if counts.blocked:
   parts.append(f"{counts.blocked:,} blocked")
  parts.append(f"{counts.todo:,} todo")
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
    "tokens": report.tokens,
    "budget_message": report.budget_message,
    "output": report.output,
   },
  )
