"""The strip under the dashboard's header, `Banner`: the PAUSED banner, and what the run
does or came to when not paused.

What it promises a person: nothing moves under the mouse when the run pauses. The banner has
its own strip below the header, the same height in every state (`Banner.height`), so nothing
below it moves when a pause begins or ends. While paused it says when the pause began (the
header's clock says how long it has lasted).
"""

from __future__ import annotations

import time

from imgui_bundle import imgui

from .. import MmaStatus, Snapshot
from .._text import clock, plural
from ._runs import PipelineRunner
from ._widgets import (
 AMBER,
 BLACK,
 WHITE,
 Color,
 Report,
 finishing,
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


class Banner:
 """Draws the strip each frame: amber while paused (since when, why, the workers finishing,
 what Resume starts); otherwise what runs (outlined), or on a dark tint what the run came
 to or what Start will do."""

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
