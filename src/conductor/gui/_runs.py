"""The engine side of the dashboard: one background thread owns the pipeline's durable state
and runs its event loop for as long as the window is open.

`Output` is a ticket's whole latest output as the details pane shows it: fetched on that
loop (from the engine, or from the state's store, which only the loop may use), its display
lines found there too (`Lines`: offsets, a line's string cut when a frame draws it), and
published whole (`PipelineRunner.output`), so a frame never reads a database or scans
megabytes of text.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import operator
import re
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, overload

import anyio

from scheduler import LoopHandle

from .._text import shown_path
from ..exits import UsageError
from ..multi_agent_conductor import ConductorEngine, Snapshot, TokenBudgetSpent
from ..pipeline import Pipeline
from ..session import DurableRun, Note, on_cluster, open_session, state_path
from ..store import StateError

if TYPE_CHECKING:
 from ..dask_executor import DaskExecutor

# The loop spends about 0.2 µs per ticket building a snapshot (2 ms at 10,000 tickets).
# Asking for one at most every 5 µs per ticket keeps that under ~4% of the loop's time and
# keeps the loop from holding the GIL while the GUI thread wants it for a frame: a
# 30-ticket pipeline is refreshed every frame, 10,000 tickets at 20 Hz.
PULL_SECONDS_PER_TICKET = 5e-6
STARTUP_TIMEOUT = 30.0  # seconds to open the state; claiming it may wait 10 s for a lock
CLOSE_TIMEOUT = 10.0  # seconds to let a cancelled run end when the window closes


@dataclass(frozen=True, slots=True)
class Output:
 """A ticket's whole latest output, cut into display lines (see `wrap_lines`).

 `asked` is what the details pane asked for (the ticket, what its row looked like, the
 width in characters); `text` is None when neither the engine nor the state keeps an output
 for the ticket (not run yet, or nothing printed, or not written down yet).
 """

 asked: tuple[object, ...]
 text: str | None
 lines: Sequence[str]


class Lines(Sequence[str]):
 """A text's display lines (see `wrap_lines`), kept as chunks of the text: a line's string
 is cut when asked for (a frame asks for those in sight), so 4 MB of output costs a few
 bytes a line rather than a second copy of itself in line strings. A chunk whose lines all
 fit as they are (the usual case) is only counted: its lines' offsets are found when one
 of them is first read (a few µs per chunk, the last few kept). Any thread."""

 __slots__ = ("_chunks", "_counts", "_found", "_text")

 def __init__(self, text: str, chunks: list[Chunk]) -> None:
  self._text = text
  self._chunks = chunks
  self._counts = array("q", itertools.accumulate(c[0] for c in chunks))  # lines so far
  # The offsets of the last chunks read (a cache: any thread may replace it whole).
  self._found: dict[int, Offsets] = {}

 def __len__(self) -> int:
  return self._counts[-1] if self._counts else 0

 @overload
 def __getitem__(self, k: int) -> str: ...
 @overload
 def __getitem__(self, k: slice) -> list[str]: ...
 def __getitem__(self, k: int | slice) -> str | list[str]:
  if isinstance(k, slice):
   return [self[i] for i in range(*k.indices(len(self)))]
  if k < 0:
   k += len(self)
  if not 0 <= k < len(self):
   raise IndexError(k)
  c = bisect.bisect_right(self._counts, k)
  local = k - (self._counts[c - 1] if c else 0)
  starts, ends, expanded = self._offsets(c)
  line = expanded.get(local)
  if line is None:
   line = self._text[starts[local] : ends[local]]
  return line

 def _offsets(self, c: int) -> Offsets:
  _, lo, hi, cut = self._chunks[c]
  if cut is not None:
   return cut
  found = self._found.get(c)
  if found is None:
   sizes = list(map(len, self._text[lo:hi].split("\n")))
   firsts = array("q", itertools.accumulate(map(_PLUS_ONE, sizes[:-1]), initial=lo))
   found = (firsts, array("q", map(operator.add, firsts, sizes)), {})
   # A frame reads a chunk or two: keep the last few, in a dict replaced whole.
   kept = dict(list(self._found.items())[-FOUND_KEPT + 1 :])
   kept[c] = found
   self._found = kept
  return found


# A chunk's display lines: starts, ends (line k is text[starts[k] : ends[k]]) and the lines
# shown otherwise (tabs expanded), by their index in the chunk.
Offsets = tuple["array[int]", "array[int]", dict[int, str]]
# A chunk: how many display lines, where it is in the text, and its Offsets when they had
# to be found at once (a line end with \r, a tab, a line too long); None when every line
# fits as it is.
Chunk = tuple[int, int, int, Offsets | None]
WRAP_CHUNK = 4096  # characters of a text in a chunk (about 50 lines of output)
FOUND_KEPT = 8  # chunks whose offsets `Lines` keeps


def wrap_lines(text: str, width: int) -> Lines:
 """`text` as display lines of at most `width` characters: a longer line is cut after the
 last space that fits, or, in a run of `width` characters without one, inside it. Tabs
 become spaces (Dear ImGui draws no tabs). O(len(text)): a few ms per MB when lines fit (a
 chunk is looked at by a few C calls), more when they need cutting; meant for the engine's
 thread, not a frame. It works a chunk at a time, never holding the GIL for long in one C
 call: the GUI thread keeps drawing meanwhile."""
 chunks: list[Chunk] = []
 lo, size = 0, len(text)
 while lo < size:
  hi = text.find("\n", min(lo + WRAP_CHUNK, size))  # a chunk ends at a line's end
  if hi < 0:
   hi = size
  if hi == size and text.endswith("\n"):
   hi -= 1  # the text ends with a line end: no line after it
  chunk = text[lo:hi]
  lines = chunk.split("\n")
  if max(map(len, lines)) <= width and "\r" not in chunk and "\t" not in chunk:
   chunks.append((len(lines), lo, hi, None))  # every line fits as it is (the usual case)
  else:
   chunks.append(_cut(text, lo, hi, lines, width))
  lo = hi + 1
 return Lines(text, chunks)


def _cut(text: str, lo: int, hi: int, lines: list[str], width: int) -> Chunk:
 # A chunk's display lines one by one: its line ends, tabs and lines too long.
 piece = _piece(max(width, 8))
 starts: list[int] = []
 ends: list[int] = []
 expanded: dict[int, str] = {}
 first = lo
 for ended in lines:
  line = ended.rstrip("\r")
  if "\t" in line:
   shown = line.expandtabs(4)
   cuts = [shown] if len(shown) <= width else [c.rstrip(" ") for c in piece.findall(shown)]
   for cut in cuts:
    expanded[len(starts)] = cut
    starts.append(0)
    ends.append(0)
  elif len(line) <= width:
   starts.append(first)
   ends.append(first + len(line))
  else:
   for match in piece.finditer(text, first, first + len(line)):
    start = match.start()
    starts.append(start)
    ends.append(start + len(match.group().rstrip(" ")))  # not the spaces it was cut at
  first += len(ended) + 1
 return (len(starts), lo, hi, (array("q", starts), array("q", ends), expanded))


_PLUS_ONE = functools.partial(operator.add, 1)  # a line and its line end


@functools.lru_cache(maxsize=8)
def _piece(width: int) -> re.Pattern[str]:
 # Up to `width` characters ending before a space (the spaces after it go with it) or at the
 # end; else, with no space to cut at, `width` characters.
 return re.compile(rf".{{1,{width}}}(?: +|$)|.{{1,{width}}}")


class PipelineRunner:
 """A pipeline's runs for the dashboard, driven by one event loop on one background thread.

 The loop lives as long as the window (`anyio.run` on the thread `conductor-engine`). It
 opens and claims the durable state exactly as `conductor run` does (its SQLite connection
 belongs to the thread that opened it, so every write — runs, the control socket that
 `conductor pause|resume|status` reach — happens on this loop), keeps a `ConductorEngine`
 ready for the next run while the control socket serves it (a pause from another terminal
 before Start makes the run start paused), runs it on Start, and prepares the next one when
 it ends: Cancel then Start carries on, Retry after the end retries and starts a run.

 Threads. Pause and Resume trip the gate on the GUI thread itself: `ConductorEngine.pause()`
 and `resume()` are thread-safe and never wait (the engine posts its own bookkeeping to the
 loop), so the gate is closed when the click handler returns, however busy the loop is.
 Every other command is posted to the loop (`LoopHandle`, which never blocks). During a run
 the GUI thread asks the running conductor for fresh snapshots (`request_snapshot`, which
 never blocks and throttles itself) and draws its `published` one. Beyond those calls the
 GUI thread only reads a conductor's lock-free fields (`mma_status`, `paused`, `spawned`),
 and the loop publishes by replacing `conductor`, `latest`, `_next` and `_running` whole.
 `runs` is written by the GUI thread only, `ended` by the loop only.
 """

 def __init__(
  self,
  pipeline: Pipeline,
  *,
  max_workers: int | None,
  backend: str,
  state: str | None,
  fresh: bool,
  on_change: Callable[[], None],
  dask: str | None = None,
 ) -> None:
  self.pipeline = pipeline
  self.dask = dask or pipeline.dask  # run the tickets on this Dask cluster (the flag wins)
  self._executor: DaskExecutor | None = None  # its executor, connected on the loop
  self.ticket_ids = tuple(t.id for t in pipeline.tickets)  # the rows' fixed order
  self.max_workers = max_workers or pipeline.max_workers
  self.backend = backend
  self.state = state_path(pipeline, state)
  self.fresh = fresh
  self._on_change = on_change  # wakes the GUI; any thread, never blocks

  # Published by the loop, replaced whole; read by the GUI thread (and the test hook).
  self._shown: ConductorEngine | None = None  # the one shown: running, last run, or next
  self._latest: Snapshot | None = None  # the snapshot to draw
  self.where = ""  # the state file, as people type it (`session.shown_path`)
  self.opened: tuple[Note, ...] = ()  # what opening the state found (`DurableRun.notes`)
  self.crash: str | None = None  # why the latest run stopped abnormally
  self.ended = 0  # runs that have ended
  # Written by the GUI thread.
  self.runs = 0  # runs asked for (Start, or Retry after the end)
  # The last pause/resume and when its call returned (perf_counter, one clock for every
  # thread): the test hook reports click -> gate closed from it.
  self.applied: tuple[str, float] | None = None
  self._pull_every = len(self.ticket_ids) * PULL_SECONDS_PER_TICKET
  # The details pane's ticket output: published by the loop, replaced whole; `_asked` (GUI
  # thread) is the latest request posted, so a frame posts one only when it changes.
  self.output: Output | None = None
  self._asked: tuple[object, ...] | None = None
  # The running conductor's latest snapshot with every row, as drawn (see snapshot()).
  self._pulled: tuple[ConductorEngine, Snapshot] | None = None

  # Loop side.
  self._loop: LoopHandle | None = None
  self._durable: DurableRun | None = None  # the state, open while the loop runs
  # The conductor commands go to: the one running, else the one prepared for the next run
  # (a command between a Start and its run's first step goes to the run about to begin).
  # Replaced whole by the loop; the GUI thread reads it for pause() and resume().
  self._next: ConductorEngine | None = None
  # `_next` while it runs, else None. The GUI thread reads it: while it is set, the frames
  # draw its `published` snapshots; once the run ends, `latest` (set before it is cleared).
  self._running: ConductorEngine | None = None
  self._begun = 0  # runs the loop has begun
  self._wake: anyio.Event | None = None  # set when a start or quit may be waiting
  self._quitting = False
  self._ready = threading.Event()  # the state is open and the first conductor prepared
  self._startup_error: str | None = None
  self._thread = threading.Thread(target=self._main, name="conductor-engine", daemon=True)

 # -- lifetime (GUI thread) -------------------------------------------------------------

 def open(self) -> None:
  """Start the thread; return once the state is open. Raises UsageError (one line).

  It waits for the engine thread, before the window opens; `close()` does, after it closed.
  No frame ever does.
  """
  self._thread.start()
  if not self._ready.wait(STARTUP_TIMEOUT):
   raise UsageError(f"{self.state}: opening the state took over {STARTUP_TIMEOUT:g} s")
  if self._startup_error is not None:
   raise UsageError(self._startup_error)

 def close(self) -> None:
  """Cancel a run still going (its interrupted tickets are todo again, in the state too),
  let the loop commit and release the state, and end the thread. Idempotent."""
  if self._post(self._quit):
   self._thread.join(CLOSE_TIMEOUT)

 # -- what the GUI reads -----------------------------------------------------------------

 @property
 def conductor(self) -> ConductorEngine:
  """The conductor shown: the running one, else the last run's, else the next run's."""
  shown = self._shown
  assert shown is not None, "open() publishes one before the window opens"
  return shown

 @property
 def latest(self) -> Snapshot:
  """The latest snapshot the loop published for the conductor shown."""
  snap = self._latest
  assert snap is not None, "open() publishes one before the window opens"
  return snap

 @property
 def active(self) -> bool:
  """A run was asked for and has not ended (it may be starting, or paused)."""
  return self.runs > self.ended

 @property
 def note(self) -> str:
  """The state line: where the state is and, until the first run in this window asks to
  begin, what opening it found ("(new)", "(resuming: ...)"); from then on only the path
  and warnings, as what opening found no longer describes the state. GUI thread."""
  if self.runs == 0:
   return "; ".join(note.text for note in self.opened)
  return "; ".join([f"state: {self.where}", *(n.text for n in self.opened if n.warning)])

 def tokens(self) -> tuple[int, int | None]:
  """(tokens used, the token budget or None), live: as the next resume will judge them."""
  target = self._target()
  return target.tokens_used, target.token_budget

 def can_start(self) -> bool:
  return not self.active and self.latest.counts.todo > 0

 def snapshot(self) -> Snapshot:
  """The snapshot to draw this frame. GUI thread; never blocks, O(1).

  During a run: the running conductor's latest `published` snapshot (`refresh` asks for
  them). One published without rows (a `conductor status` from another terminal asks for
  those) is skipped: the last one with rows is drawn again. Between runs: `latest`, which
  the loop replaces on every change.
  """
  running = self._running
  if running is None:
   return self.latest
  published = running.published
  if published.rows or not self.ticket_ids:
   self._pulled = (running, published)
  pulled = self._pulled
  if pulled is not None and pulled[0] is running:
   return pulled[1]
  return self.latest  # the run has just begun: its first full snapshot is on its way

 def refresh(self) -> None:
  """Ask the running conductor for a fresh snapshot, at most every `_pull_every` seconds;
  the loop builds it at its next turn. GUI thread, once a frame, after the frame is on
  screen (hello_imgui's `after_swap`): the loop then builds it (O(tickets), holding the
  GIL) while this thread waits for the next frame rather than while it draws one. Never
  blocks."""
  running = self._running
  if running is not None:
   running.request_snapshot(self._pull_every)

 # -- commands (GUI thread; none waits) ----------------------------------------------------

 def start(self) -> bool:
  if not self.can_start():
   return False
  self.runs += 1  # before the post: the loop reads it when woken
  self._post(self._poke)
  return True

 def pause(self, reason: str | None) -> None:
  """Close the gate, on this thread: once this returns no worker starts (see the class).
  A person's pause: over one the pipeline made, it keeps that reason when `reason` is None
  and the pause no longer ends by itself."""
  self._target().pause(reason)
  self.applied = ("pause", time.perf_counter())

 def resume(self, *, token_budget: int | None = None) -> str | None:
  """Open the gate, on this thread; the loop starts the next workers at its next turn.

  With `token_budget`, the budget is set to it first. Returns None, or the one line that
  says why the engine refused: the token budget is spent."""
  try:
   self._target().resume(token_budget=token_budget)
  except TokenBudgetSpent as exc:  # the gate stays closed
   return str(exc)
  self.applied = ("resume", time.perf_counter())
  if token_budget is not None:
   self._post(partial(self._keep_budget, token_budget))
  return None

 def set_token_budget(self, budget: int) -> None:
  """Set the token budget of the run (or of the next one); it does not resume."""
  self._target().set_token_budget(budget)
  self._post(partial(self._keep_budget, budget))

 def fetch_output(self, ticket_id: str, row_key: object, width: int) -> None:
  """Ask the loop for the whole latest output of `ticket_id`, cut to `width` characters;
  it lands in `output`. Posted only when (ticket, row_key, width) differs from the last
  ask: call it every frame with the selected ticket's row."""
  asked = (ticket_id, row_key, width)
  if asked != self._asked:
   self._asked = asked
   self._post(partial(self._fetch_output, asked))

 def cancel(self) -> None:
  self._post(self._cancel)

 def retry(self, ticket_id: str) -> None:
  """Retry a failed ticket: in the running run, or, after the end, in a new run."""
  if not self.active:
   self.runs += 1
  self._post(lambda: self._retry(ticket_id))

 def queue(self, ticket_id: str) -> None:
  """Approve a ticket that waits for approval (auto_queue off)."""
  self._post(lambda: self._queue(ticket_id))

 def _post(self, fn: Callable[[], object]) -> bool:
  loop = self._loop
  return loop is not None and loop.call_soon(fn)

 # -- the loop ---------------------------------------------------------------------------

 def _main(self) -> None:
  try:
   anyio.run(self._session, backend=self.backend)
  except Exception as exc:
   # A bug: the thread prints the traceback; the window says the engine stopped.
   problem = f"the engine stopped: {type(exc).__name__}: {exc}"
   if not self._ready.is_set():
    self._startup_error = problem
   self.crash = problem
   self.ended = self.runs
   raise
  finally:
   self._ready.set()  # never leave open() waiting
   self._on_change()

 async def _session(self) -> None:
  self._loop = LoopHandle()
  try:
   durable = open_session(self.pipeline, state=self.state, fresh=self.fresh)
  except UsageError as exc:
   self._startup_error = str(exc)
   return
  self.where, self.opened = shown_path(durable.state), tuple(durable.notes())
  self._durable = durable
  try:
   async with contextlib.AsyncExitStack() as stack:
    if self.dask:
     try:
      self._executor = durable.executor(self.dask)
      await stack.enter_async_context(on_cluster(self._executor))
     except UsageError as exc:  # no dask extra, a bad address, an unreachable scheduler
      self._startup_error = str(exc)
      return
    await self._runs(durable)
  finally:
   self._durable = None
   durable.close()

 async def _runs(self, durable: DurableRun) -> None:
  # One engine a run, until the window closes: Start, Cancel, Start again...
  conductor = self._prepare(durable)
  self._shown, self._latest = conductor, conductor.snapshot()
  self._ready.set()
  while not self._quitting:
   final = await durable.drive(conductor, partial(self._wait_and_run, conductor))
   if final is None:
    break
   if durable.store.failure:
    self.crash = f"{durable.store.failure}; the run was stopped"
   conductor = self._prepare(durable)

 def _prepare(self, durable: DurableRun) -> ConductorEngine:
  # A fresh engine each run, from the tickets' current statuses, paused if the state is
  # (see DurableRun.conductor).
  conductor = durable.conductor(self.max_workers, worker=self._executor)
  if self._executor is not None:
   self._executor.attach(conductor)  # a lost scheduler pauses the run until it is back
  conductor.add_listener(lambda _transition: self._changed(conductor))
  self._next = conductor
  return conductor

 async def _wait_and_run(self, conductor: ConductorEngine) -> Snapshot | None:
  # While this waits for Start, the control socket serves `conductor`.
  while self.runs <= self._begun and not self._quitting:
   self._wake = wake = anyio.Event()
   await wake.wait()
  if self._quitting:
   return None
  self._begun += 1
  self._shown, self._running, self.crash = conductor, conductor, None
  try:
   final = await conductor.run()
  except Exception as exc:
   # The run itself crashed (not a ticket: those only fail). Show it; keep the window.
   self.crash = f"{type(exc).__name__}: {exc}"
   final = conductor.snapshot()
  finally:
   # `latest` first: from the moment `_running` is cleared the GUI draws it.
   self._latest = conductor.published
   self._running = None
  self._latest = final
  self.ended = self._begun
  self._on_change()
  return final

 def _changed(self, conductor: ConductorEngine) -> None:
  # A transition (on the loop). During a run the GUI asks for snapshots itself; between
  # runs (a retry, an approval, a pause from another terminal) publish the next run's view.
  if conductor is not self._running and conductor is self._next:
   self._shown, self._latest = conductor, conductor.snapshot()
  self._on_change()

 def _poke(self) -> None:
  wake = self._wake
  if wake is not None:
   wake.set()

 def _target(self) -> ConductorEngine:
  # Any thread. A pause racing the end of a run lands on that run (and is gone with it) or
  # on the next one (which then starts paused, as after `conductor pause` between runs).
  target = self._next
  assert target is not None, "open() prepares one before the window opens"
  return target

 def _cancel(self) -> None:
  if self._running is not None:
   self._running.cancel()
  elif self.runs > self._begun:  # cancelled before it began: it never will
   self._begun = self.runs
   self.ended = self.runs
   self._on_change()

 def _retry(self, ticket_id: str) -> None:
  target = self._target()
  ticket = target.engine.tickets.get(ticket_id)
  if ticket is None or ticket.status != "failed":
   return  # no longer failed (a double click, a retry already applied): nothing to do
  target.retry(ticket_id)
  self._poke()  # after the end: the run asked for by retry() begins now

 def _queue(self, ticket_id: str) -> None:
  target = self._target()
  if ticket_id not in target.engine.tickets:
   return
  target.queue(ticket_id)
  if target is not self._running:  # no transition to announce it: publish the change
   self._shown, self._latest = target, target.snapshot()
   self._on_change()

 def _keep_budget(self, budget: int) -> None:
  # Durable at once, as `conductor resume --budget` makes it (server.py): the store would
  # record the engine's budget only at the next pause or resume, or as it closes, and a
  # kill -9 before that must not undo a budget a person raised.
  durable = self._durable
  if durable is None:
   return
  try:
   durable.store.commit()
   durable.store.set_token_budget(budget)
  except StateError:
   pass  # the store says so (`failure`) and stops the run; the engine has the budget

 def _fetch_output(self, asked: tuple[object, ...]) -> None:
  # On the loop: the engine keeps the outputs other tickets read; the store has the rest.
  ticket_id, _, width = asked
  assert isinstance(ticket_id, str) and isinstance(width, int)
  conductor, durable = self._next, self._durable
  text = conductor.output(ticket_id) if conductor is not None else None
  if text is None and durable is not None:
   text = durable.store.output(ticket_id)
  lines: Sequence[str] = wrap_lines(text, width) if text else ()
  self.output = Output(asked, text, lines)
  self._on_change()

 def _quit(self) -> None:
  self._quitting = True
  if self._running is not None:
   self._running.cancel()
  self._poke()
