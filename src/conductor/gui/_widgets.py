"""What the dashboard's parts share: the colours, the per-frame `Report`, small widgets and
the readings of a snapshot that more than one part makes.

- `Report`: what one frame showed, for the test hook; each part adds what it drew.
- `button`: a button drawn disabled when it would do nothing now; hovering it says why (also
  when disabled).
- `WholeRows`: scrolled lists (the ticket table, the pending list) show whole rows. Their
  height is a whole number of rows (set by each list: `TicketTable`, `SidePane`), and a
  scroll that stops between two rows moves on to the next one in the direction it was going.
- `fit_text`: a cell's text that does not fit is cut at a word boundary where one is near,
  and ends with "…"; hovering it shows the whole text, as does the details pane.
- `Awaiting`, `paused_at`, `finishing`: what a snapshot says, including the frame right
  after a Pause click, when the snapshot may still predate the pause.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgui_bundle import imgui

from .. import Snapshot, Status
from .._text import clock

Color = tuple[float, float, float, float]

BLACK: Color = (0.05, 0.05, 0.05, 1.0)
WHITE: Color = (1.0, 1.0, 1.0, 1.0)
AMBER: Color = (0.98, 0.75, 0.18, 1.0)

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

LIST_PREVIEW = 6  # ticket ids named inline before "(+N more)"
ELLIPSIS = "…"
# Cut a text at a word boundary only when that keeps at least this share of what fits:
# one long word (a path, a hash) is cut mid-word instead of leaving the cell nearly empty.
WORD_CUT_KEEPS = 0.5


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
 tokens: str | None = None  # the tokens line, when shown
 budget_message: str | None = None  # why the budget entered was refused
 output: dict[str, Any] | None = None  # the details pane's output: whole or tail, its size

 def tip(self, text: str) -> None:
  imgui.set_tooltip(text)
  self.tooltip = text


def seconds(value: float) -> str:
 return f"{value:.1f} s" if value < 60 else clock(value)


def preview(ids: Sequence[str], limit: int = LIST_PREVIEW) -> str:
 shown = ", ".join(ids[:limit])
 return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


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
