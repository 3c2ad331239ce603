"""The strip under the dashboard's header, `Banner`: the PAUSED banner, and what the run
does or came to when not paused.

What it promises a person: nothing moves under the mouse when the run pauses. The banner has
its own strip below the header, the same height in every state (`Banner.height`), so nothing
below it moves when a pause begins or ends. While paused it says who paused and what ends
the pause, in the words every view uses (`views.pause_words`: "paused by you: resume by
hand", "paused: <reason>; resumes by itself at 12:03:10"), and when the pause began (the
header's clock says how long it has lasted). A pause the pipeline made that would end by
itself offers "Keep paused": it becomes the person's, which only a person ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from imgui_bundle import imgui

from .. import MmaStatus, Snapshot
from .._text import clock, plural, printable
from ..multi_agent_conductor import budget_spent
from ..views import pause_words
from ._runs import PipelineRunner
from ._widgets import (
 AMBER,
 BLACK,
 ELLIPSIS,
 WHITE,
 Color,
 Report,
 button,
 finishing,
 fit_text,
 item_rect,
 paused_at,
 preview,
 seconds,
)

# The banner strip's background when not paused: a dark tint of the badge's colour, so the
# amber of a pause stands out and nothing else shouts. Running, only an outline: frames come
# at full speed then, and a fill is one more blended rectangle in each (see `Dashboard.draw`).
STRIP_TINT: dict[str, Color | None] = {
 "running": None,
 "done": (0.13, 0.17, 0.27, 1.0),
 "failed": (0.3, 0.12, 0.12, 1.0),
 "other": (0.17, 0.17, 0.19, 1.0),
}

BANNER_SCALE = 1.6  # the banner's first word, relative to the font size
KEEP_PAUSED = "Keep paused"
KEEP_COLORS: tuple[Color, Color, Color] = (  # the button, hovered, pressed
 (0.16, 0.16, 0.18, 1.0),
 (0.3, 0.3, 0.34, 1.0),
 (0.05, 0.05, 0.05, 1.0),
)
KEEP_PAUSED_WHY = (
 "Make it your pause: it no longer resumes by itself; only you resume it (Resume, or Space)"
)


class Who(NamedTuple):
 """Who paused (a person, or the pipeline itself), why, and when it ends by itself."""

 by_person: bool
 reason: str | None
 until: float | None  # time.time() of the automatic resume; None: only by hand


class Banner:
 """Draws the strip each frame: amber while paused (who paused and what ends it, since
 when, the workers finishing, what Resume starts); otherwise what runs (outlined), or on a
 dark tint what the run came to or what Start will do."""

 def __init__(
  self, runner: PipelineRunner, act: Callable[[str, Callable[[], object]], None]
 ) -> None:
  self.runner = runner
  self._act = act  # Dashboard._act: runs a control's command and records the Action

 def draw(self, snap: Snapshot, status: MmaStatus, report: Report) -> None:
  flags = imgui.ChildFlags_.always_use_window_padding
  bg: Color
  keep = False
  if status is MmaStatus.PAUSED:
   who = self.who(snap)
   lines = report.banner = self.paused_lines(snap, who)
   bg, fg = AMBER, BLACK
   # A pause the pipeline made that ends by itself: a person may make it theirs.
   keep = not who.by_person and who.until is not None
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
   room = imgui.get_content_region_avail().x
   right = imgui.get_cursor_pos_x() + room  # the line's end, in window coordinates
   if keep:
    room -= self._keep_width() + imgui.get_style().item_spacing.x
   auto = who if status is MmaStatus.PAUSED and not who.by_person else None
   self._fitted(lines[1], room, report, auto)
   if keep:
    self._keep_button(right, report)
   for line in lines[2:]:
    self._fitted(line, imgui.get_content_region_avail().x, report)
  imgui.end_child()
  imgui.pop_style_color(2)
  if report.reporting:
   report.layout["strip"] = item_rect()

 @staticmethod
 def _fitted(line: str, width: float, report: Report, auto: Who | None = None) -> None:
  """`line` cut to `width` (whole on hover). With `auto`, `line` is the pipeline's pause in
  `pause_words`: its reason is cut rather than what ends the pause."""

  def measure(text: str) -> float:
   return float(imgui.calc_text_size(text).x)

  shown = fit_text(line, width, measure)
  if shown is not line and auto is not None and auto.reason:
   # A provider's rate-limit message can be long: "resumes by itself at ..." must show.
   bare = measure(pause_words(False, ELLIPSIS, auto.until)) - measure(ELLIPSIS)
   reason = fit_text(printable(auto.reason), width - bare, measure)
   shown = pause_words(False, reason, auto.until)
  imgui.text(shown)
  if shown is not line and imgui.is_item_hovered():
   report.tip(line)

 @staticmethod
 def _keep_width() -> float:
  return imgui.calc_text_size(KEEP_PAUSED).x + 2 * imgui.get_style().frame_padding.x

 def _keep_button(self, right: float, report: Report) -> None:
  # Right-aligned on the title's line: it stays put whatever the reason's length.
  width = self._keep_width()
  imgui.same_line(right - width)
  # Dark on the amber, like the badge's text: the theme's own button is too faint on it.
  imgui.push_style_color(imgui.Col_.text, WHITE)
  imgui.push_style_color(imgui.Col_.button, KEEP_COLORS[0])
  imgui.push_style_color(imgui.Col_.button_hovered, KEEP_COLORS[1])
  imgui.push_style_color(imgui.Col_.button_active, KEEP_COLORS[2])
  pressed = button(KEEP_PAUSED, True, report, width, KEEP_PAUSED_WHY)
  imgui.pop_style_color(4)
  if pressed:
   # A person's pause over the pipeline's: the reason stays (None keeps it).
   self._act(KEEP_PAUSED, lambda: self.runner.pause(None))

 @staticmethod
 def height() -> float:
  """A big first line (the word and a title) and two lines, with the window padding."""
  style = imgui.get_style()
  imgui.push_font(None, style.font_size_base * BANNER_SCALE)
  first = max(imgui.get_text_line_height(), imgui.get_frame_height())
  imgui.pop_font()
  lines = 2 * (style.item_spacing.y + imgui.get_text_line_height())
  return first + lines + 2 * style.window_padding.y

 def who(self, snap: Snapshot) -> Who:
  """Who paused and when it ends, live (as the badge's status is: the frame a click lands
  in shows its effect); the reason from the snapshot, which may predate a click's pause."""
  conductor = self.runner.conductor
  reason = snap.pause_reason if snap.paused else None
  return Who(conductor.paused_by_person, reason, conductor.auto_resume_at)

 @staticmethod
 def paused_lines(snap: Snapshot, who: Who) -> list[str]:
  """The PAUSED banner's lines: the word, who paused and what ends it (with a person's
  reason after it), since when and the workers finishing, what Resume starts."""
  _, still = finishing(snap)
  wall = time.time()
  began = paused_at(snap)
  since = time.strftime("%H:%M:%S", time.localtime(began))
  by_person, reason, until = who
  title = pause_words(by_person, reason, until)
  if by_person and reason:
   title += f"  —  {printable(reason)}"
  drain = f"since {since} ({seconds(max(0.0, wall - began))} ago)   ·   "
  if still:
   n = len(still)
   drain += f"{n} worker{'s' if n != 1 else ''} finishing: {preview(still)}"
   drain += "  —  no new worker starts"
  else:
   drain += "all workers idle  —  nothing starts while paused"
  if budget_spent(snap.tokens_used, snap.token_budget):
   upcoming = "Resume: raise the token budget first (Tokens, on the right)"
  elif snap.ready:
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
   if snap.paused_by_person:
    why = f" ({printable(snap.pause_reason)})" if snap.pause_reason else ""
    hint = f"Paused{why}: Start opens the run paused; then press Resume"
   else:
    words = pause_words(False, snap.pause_reason, snap.auto_resume_at)
    hint = f"{words[0].upper()}{words[1:]}  —  Start opens the run paused"
  else:
   hint = "Pause (or Space) while it runs: no new worker starts; running ones finish"
  return "other", [word, title, hint]
