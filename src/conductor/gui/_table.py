"""The dashboard's ticket table, `TicketTable`: the filter (by text and by status) and the
rows, of which a frame draws only those in sight.

A frame costs O(rows in sight), not O(tickets), filtered or not: filtering 100,000 rows takes
several ms of Python, so a filtering does a share of its rows per frame (`FILTER_BUDGET`)
and the table shows the previous result until it is done (at once for a few thousand rows,
a few frames at 100,000).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence

from imgui_bundle import imgui

from .. import Snapshot, Status, TicketRow
from ._widgets import TICKET_COLOR, Awaiting, Color, Report, WholeRows, fit_text, item_rect, seconds

ROW_LINE: Color = (0.24, 0.24, 0.27, 1.0)

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

FILTER_REFRESH = 0.25  # seconds between re-filterings while the rows change
# A frame's share of a filtering: FILTER_BUDGET rows looked at (about 0.06 µs each; building
# a row's search text, done once, counts as HAYSTACK_COST rows), in steps of FILTER_STEP rows
# (a frame may overrun its budget by one step): about 1 ms of a frame at most.
FILTER_BUDGET = 10_000
FILTER_STEP = 2_000
HAYSTACK_COST = 3

Filtering = Generator[int, None, list[int]]  # yields each step's cost; returns the view


def _stepwise(indexes: Sequence[int], pick: Callable[[Sequence[int]], list[int]]) -> Filtering:
 # What `pick` keeps of `indexes`, given FILTER_STEP of them at a time.
 kept: list[int] = []
 for lo in range(0, len(indexes), FILTER_STEP):
  part = indexes[lo : lo + FILTER_STEP]
  kept += pick(part)
  yield len(part)
 return kept


def label(text: str) -> str:
 # "##" in a label starts Dear ImGui's hidden id part; a ticket id must show whole.
 return text.replace("##", "# #")


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
  self._haystack: list[str] = []  # per row, lower case: what the filter searches
  # The rows whose haystack holds a text: those of the last text searched.
  self._hits: tuple[str, list[int]] | None = None
  self._view: list[int] | None = None  # filtered row indices; None shows every row
  # What `_view` was filtered with: the key, the rows (a snapshot's), and when it began.
  self._view_key: tuple[str, int] = ("", 0)
  self._view_rows: Sequence[TicketRow] = ()
  self._view_at = 0.0
  self._job: tuple[tuple[str, int], Sequence[TicketRow], float, Filtering] | None = None
  self._fitted: dict[int, tuple[float, str]] = {}  # row -> (cell width, description shown)
  self._rows: tuple[float, float] | None = None  # (header height, row height) as measured
  self._scroll = WholeRows()

 def shown_rows(self, snap: Snapshot) -> int:
  return len(snap.rows) if self._view is None else len(self._view)

 def filtered(self, snap: Snapshot, now: float, budget: int | None = None) -> list[int] | None:
  """The rows the filter lets through (None: all). A new filter, or (with a status filter)
  rows changed at least FILTER_REFRESH seconds after the last filtering began, start a
  filtering; each call advances it by `budget` rows' worth of work (None: to its end), and
  until it ends the last view stays."""
  text = self.filter_text.strip().lower()
  key = (text, self.status_filter)
  if not text and not self.status_filter:
   self._view, self._view_key, self._job = None, key, None
   return None
  if self._job is not None and self._job[0] != key:
   self._job = None  # the filter changed: its result is not wanted
  if self._job is None:
   # What a text matches never changes (ids, descriptions, work): only statuses go stale.
   stale = (
    self.status_filter != 0
    and snap.rows is not self._view_rows
    and now - self._view_at >= FILTER_REFRESH
   )
   if key != self._view_key or stale or self._view is None:
    self._job = (key, snap.rows, now, self._filter(key, snap))
  if self._job is not None:
   key, rows, began, steps = self._job
   spent = 0
   try:
    while budget is None or spent < budget:
     spent += next(steps)
   except StopIteration as done:
    self._view, self._view_key, self._view_rows, self._view_at = done.value, key, rows, began
    self._job = None
  return self._view

 def _filter(self, key: tuple[str, int], snap: Snapshot) -> Filtering:
  text, status = key
  rows, hay = snap.rows, self._haystack
  while len(hay) < len(rows):  # ids, descriptions and work never change: built once
   lo = len(hay)
   part = rows[lo : lo + FILTER_STEP]
   hay.extend(f"{r.id}\n{r.description}\n{r.work}".lower() for r in part)
   yield len(part) * HAYSTACK_COST
  want = STATUS_FILTERS[status][1]
  if want == "awaiting":  # few, as a rule: search those only
   waiting = sorted(self._index[t] for t in snap.awaiting_approval)
   return (yield from _stepwise(waiting, lambda part: [i for i in part if text in hay[i]]))
  candidates: Sequence[int] = range(len(rows))
  if text:
   if self._hits is None or self._hits[0] != text:
    # A row that holds the text holds every part of it: typing on searches the last hits.
    if self._hits is not None and self._hits[0] in text:
     candidates = self._hits[1]
    found = yield from _stepwise(candidates, lambda part: [i for i in part if text in hay[i]])
    self._hits = (text, found)
   candidates = self._hits[1]
  if not want:
   return list(candidates)
  return (
   yield from _stepwise(candidates, lambda part: [i for i in part if rows[i].status == want])
  )

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
  view = self.filtered(snap, now, FILTER_BUDGET)
  rows = snap.rows
  shown = len(rows) if view is None else len(view)
  imgui.same_line()
  imgui.text_disabled(f"{shown:,} of {len(rows):,}" + (" · filtering" if self._job else ""))

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
