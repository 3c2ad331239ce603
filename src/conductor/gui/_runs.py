"""The engine side of the dashboard: one background thread owns the pipeline's durable state
and runs its event loop for as long as the window is open."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial

import anyio

from scheduler import LoopHandle

from ..exits import UsageError
from ..multi_agent_conductor import ConductorEngine, Snapshot
from ..pipeline import Pipeline
from ..session import DurableRun, open_session, state_path

# The loop spends about 0.2 µs per ticket building a snapshot (2 ms at 10,000 tickets).
# Pulling one at most every 5 µs per ticket keeps that under ~4% of the loop's time and
# keeps the loop from holding the GIL while the GUI thread wants it for a frame: a
# 30-ticket pipeline is pulled every frame, 10,000 tickets at 20 Hz.
PULL_SECONDS_PER_TICKET = 5e-6
STARTUP_TIMEOUT = 30.0  # seconds to open the state; claiming it may wait 10 s for a lock
CLOSE_TIMEOUT = 10.0  # seconds to let a cancelled run end when the window closes


class PipelineRunner:
 """A pipeline's runs for the dashboard, driven by one event loop on one background thread.

 The loop lives as long as the window (`anyio.run` on the thread `conductor-engine`). It
 opens and claims the durable state exactly as `conductor run` does (its SQLite connection
 belongs to the thread that opened it, so every write — runs, the control socket that
 `conductor pause|resume|status` reach — happens on this loop), keeps a `ConductorEngine`
 ready for the next run while the control socket serves it (a pause from another terminal
 before Start makes the run start paused), runs it on Start, and prepares the next one when
 it ends: Cancel then Start carries on, Retry after the end retries and starts a run.

 Threads. The GUI thread never calls into a conductor except its lock-free reads
 (`mma_status`, `paused`, `spawned`): every command is posted to the loop (`LoopHandle`,
 which never blocks), and the loop publishes by replacing `conductor` and `latest` whole.
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
 ) -> None:
  self.pipeline = pipeline
  self.ticket_ids = tuple(t.id for t in pipeline.tickets)  # the rows' fixed order
  self.max_workers = max_workers or pipeline.max_workers
  self.backend = backend
  self.state = state_path(pipeline, state)
  self.fresh = fresh
  self._on_change = on_change  # wakes the GUI; any thread, never blocks

  # Published by the loop, replaced whole; read by the GUI thread (and the test hook).
  self._shown: ConductorEngine | None = None  # the one shown: running, last run, or next
  self._latest: Snapshot | None = None  # the snapshot to draw
  self.note = ""  # where the state is and what was restored from it
  self.crash: str | None = None  # why the latest run stopped abnormally
  self.ended = 0  # runs that have ended
  self.applied: tuple[str, float] | None = None  # the last pause/resume the loop applied
  # Written by the GUI thread.
  self.runs = 0  # runs asked for (Start, or Retry after the end)
  self._pull_posted = False  # a snapshot pull is on its way (the loop clears it)
  self._pulled_at = 0.0
  self._pull_every = len(self.ticket_ids) * PULL_SECONDS_PER_TICKET

  # Loop side.
  self._loop: LoopHandle | None = None
  self._next: ConductorEngine | None = None  # prepared for the next run
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

 def can_start(self) -> bool:
  return not self.active and self.latest.counts.todo > 0

 def snapshot(self, now: float) -> Snapshot:
  """The snapshot to draw this frame. Never blocks, O(1).

  During a run, asks the loop for a fresh one at most every `_pull_every` seconds; it
  replaces `latest` a loop turn later. Between runs the loop publishes on every change.
  """
  if self.active and not self._pull_posted and now - self._pulled_at >= self._pull_every:
   self._pulled_at = now
   self._pull_posted = True
   if not self._post(self._pull):
    self._pull_posted = False
  return self.latest

 # -- commands (GUI thread; each is posted, none waits) ----------------------------------

 def start(self) -> bool:
  if not self.can_start():
   return False
  self.runs += 1  # before the post: the loop reads it when woken
  self._post(self._poke)
  return True

 def pause(self, reason: str) -> None:
  self._post(lambda: self._apply("pause", lambda c: c.pause(reason)))

 def resume(self) -> None:
  self._post(lambda: self._apply("resume", lambda c: c.resume()))

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
  self.note = "; ".join(note.text for note in durable.notes())
  try:
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
  finally:
   durable.close()

 def _prepare(self, durable: DurableRun) -> ConductorEngine:
  # A fresh engine each run, from the tickets' current statuses, paused if the state is
  # (see DurableRun.conductor).
  conductor = durable.conductor(self.max_workers)
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
   self._running = None
  self._latest = final
  self.ended = self._begun
  self._on_change()
  return final

 def _changed(self, conductor: ConductorEngine) -> None:
  # A transition (on the loop). During a run the GUI pulls snapshots itself; between runs
  # (a retry, an approval, a pause from another terminal) publish the next run's view.
  if conductor is not self._running and conductor is self._next:
   self._shown, self._latest = conductor, conductor.snapshot()
  self._on_change()

 def _pull(self) -> None:
  self._pull_posted = False
  running = self._running
  if running is not None:
   self._latest = running.snapshot()  # exact: built on the loop

 def _poke(self) -> None:
  wake = self._wake
  if wake is not None:
   wake.set()

 def _target(self) -> ConductorEngine:
  # A command between a Start and its run's first step goes to the run about to begin.
  target = self._running or self._next
  assert target is not None
  return target

 def _apply(self, name: str, command: Callable[[ConductorEngine], None]) -> None:
  command(self._target())
  # When the loop carried it out (perf_counter is one clock for all threads): the test
  # hook reports click -> paused from it.
  self.applied = (name, time.perf_counter())

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

 def _quit(self) -> None:
  self._quitting = True
  if self._running is not None:
   self._running.cancel()
  self._poke()
