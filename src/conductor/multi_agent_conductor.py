"""`ConductorEngine`: runs an `ExecutionEngine`'s DAG on a pausable `scheduler.Scheduler`.

Where pause happens: `ConductorEngine.pause()` calls `Scheduler.pause()`, which closes the
scheduler's gate under its admission lock. The run loop (`_drive`) hands every ready ticket
to `Scheduler.spawn`, which parks at that gate. Nothing here polls: the loop wakes on a
completion, on a free slot, or on the gate opening.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from anyio import CancelScope, Event, get_cancelled_exc_class
from anyio.lowlevel import checkpoint

from scheduler import Scheduler, ThreadBridge

from .dag_engine import ExecutionEngine, Status, Ticket
from .workers import WorkFailed, WorkResult, describe_exception, is_cancellation, run_work

Worker = Callable[[Ticket], Awaitable[WorkResult | None]]

OUTPUT_TAIL = 4000  # characters of a ticket's output kept for display


class MmaStatus(enum.StrEnum):
 """The pipeline's status as the dashboard shows it."""

 IDLE = "idle"  # not started, or stopped before finishing
 PLANNING = "planning"  # setting up the run
 EXECUTING = "executing"
 PAUSED = "paused"  # no worker starts; the ones running at the pause may still finish
 DONE = "done"  # every ticket completed
 ERROR = "error"  # finished with failed or blocked tickets, or the run itself crashed


@dataclass(frozen=True, slots=True)
class Counts:
 todo: int = 0
 in_progress: int = 0
 completed: int = 0
 failed: int = 0
 blocked: int = 0

 @property
 def total(self) -> int:
  return self.todo + self.in_progress + self.completed + self.failed + self.blocked


# RunningWorker and TicketRow are NamedTuples rather than frozen dataclasses: one of each is
# built per ticket and a tuple builds in a third of the time (a run's final table of 100,000
# rows is built at its end).


class RunningWorker(NamedTuple):
 ticket: str
 attempt: int
 started_at: float  # time.monotonic()


class TicketRow(NamedTuple):
 """One ticket as displayed: immutable, rebuilt whenever the ticket changes."""

 id: str
 status: Status
 attempts: int
 description: str
 depends_on: tuple[str, ...]
 work: str  # what it runs, for display
 error: str | None
 exit_code: int | None
 output: str  # tail of the output
 started_at: float | None  # time.monotonic() of the latest start
 finished_at: float | None


@dataclass(frozen=True, slots=True)
class Snapshot:
 """An immutable view of a run; safe to keep and read from any thread.

 `running_at_pause` are the workers that were in flight when the pause began (they finish
 normally); `finishing` are those of them still running: it drains to zero. `ready` are
 the tickets that start first on resume, in order; `pending` all tickets not yet started.
 """

 version: int
 name: str
 status: MmaStatus
 counts: Counts
 running: tuple[RunningWorker, ...]
 paused: bool
 pause_reason: str | None
 paused_at: float | None  # time.time() when the current pause began
 running_at_pause: tuple[str, ...]
 finishing: tuple[str, ...]
 ready: tuple[str, ...]
 pending: tuple[str, ...]
 awaiting_approval: tuple[str, ...]
 elapsed: float  # seconds of run time, excluding time spent paused
 spawned: int
 max_workers: int
 error: str | None  # why the run itself failed, if it did
 stopping: bool  # stop() or cancel() was asked: the run ends once running workers finish
 rows: tuple[TicketRow, ...] = field(repr=False)

 @property
 def draining(self) -> bool:
  return self.paused and bool(self.finishing)


class Transition(NamedTuple):
 """A ticket changed status (or, with `ticket=None`, the pipeline was paused/resumed).

 A NamedTuple, not a frozen dataclass: two are built per ticket when a store listens, and a
 tuple builds in a third of the time.
 """

 ticket: str | None
 status: str  # a Status value, or "paused" / "resumed" / "interrupted"
 at: float  # time.time()
 attempt: int = 0
 detail: str | None = None  # error, pause reason, ...
 exit_code: int | None = None  # of the attempt that just ended (completed, failed, retrying)


SNAPSHOT_WAIT = 1.0
"""Seconds a thread's `snapshot()` waits for the loop before it settles for the latest one."""


class _SnapshotRequest:
 """A thread waiting for the loop to build it a snapshot (see `ConductorEngine.snapshot`)."""

 __slots__ = ("done", "rows", "snap")

 def __init__(self, rows: bool) -> None:
  self.rows = rows
  self.done = threading.Event()
  self.snap: Snapshot | None = None  # set by the loop (or the run's end) before `done`


Listener = Callable[[Transition], None]
Flush = Callable[[], None]
_NO_DETAILS: tuple[int | None, str, float | None, float | None] = (None, "", None, None)


def describe_work(work: object) -> str:
 """A short human description of a ticket's work spec."""
 for attr in ("command", "target"):
  value = getattr(work, attr, None)
  if isinstance(value, str):
   return value
 seconds = getattr(work, "seconds", None)
 if isinstance(seconds, int | float):
  return f"sleep {seconds:g}s" + (" then fail" if getattr(work, "fail", False) else "")
 return "" if work is None else type(work).__name__


class ConductorEngine:
 """Drives a DAG of tickets with at most `max_workers` workers, pausable from any thread.

 `await run()` returns the final `Snapshot` when every ticket completed, when nothing can
 progress any more (the rest failed or blocked), after `stop()` once running workers have
 finished, or after `cancel()`. With `linger=True` it does not end by itself: it waits for
 `retry()`/`queue()` until `stop()` (what a dashboard wants).

 Thread-safety: `pause`, `resume`, `stop`, `cancel`, `retry`, `queue`, `mma_status` and
 `published` may be called from any thread and never wait for the event loop; `snapshot`
 too, and from another thread it waits for the loop to build it (one loop turn, bounded).
 Everything else (the DAG engine, listeners) runs on the loop.
 """

 def __init__(
  self,
  engine: ExecutionEngine,
  worker: Worker | None = None,
  max_workers: int = 4,
  *,
  name: str = "pipeline",
  paused: bool = False,
  pause_reason: str | None = None,
  paused_at: float | None = None,
  linger: bool = False,
 ) -> None:
  if not isinstance(max_workers, int) or max_workers < 1:
   raise ValueError(f"max_workers must be a whole number >= 1, got {max_workers!r}")
  self.engine = engine
  self.name = name
  self._worker: Worker = worker or run_work
  self._max_workers = max_workers
  self._listeners: list[Listener] = []
  self._flushes: list[Flush] = []
  # Write-ahead for listeners that batch (a store): `_unflushed` says transitions were
  # emitted since the last flush; `_unflushed_starts` are the tickets started since then,
  # whose workers flush before they run (see add_listener).
  self._unflushed = False
  self._unflushed_starts: set[str] = set()
  # With `linger` the run does not end when nothing can progress: it waits (no polling) for
  # retry() or queue() until stop(). A dashboard wants that; a batch run does not.
  self._linger = linger

  # `_control` guards the fields that pause/resume/run hand between threads:
  # `_sched`, `_paused`, `_pause_reason`, `_paused_at`, `_active`, `_active_since`.
  self._control = threading.Lock()
  self._sched: Scheduler | None = None
  self._paused = paused
  self._pause_reason = pause_reason if paused else None
  # A pause restored from a store keeps its own time (`paused_at`, time.time()).
  self._paused_at: float | None = (paused_at or time.time()) if paused else None
  self._active = 0.0  # run time accumulated before `_active_since`
  self._active_since: float | None = None  # monotonic; None while paused or not running

  self._phase = MmaStatus.IDLE  # IDLE, PLANNING, EXECUTING, DONE or ERROR
  self._error: str | None = None
  self._version = 0  # bumped on every change a snapshot shows

  # Loop-side state.
  self._ready: deque[Ticket] = deque()  # handed out by tick(), not yet admitted
  self._parked: Ticket | None = None  # the next one, waiting in Scheduler.spawn
  self._started_itself: Ticket | None = None  # ... admitted by a resume: _work started it
  self._running: dict[str, RunningWorker] = {}
  self._wake: Event | None = None  # set when a completion may unblock the run loop
  self._drive_scope: CancelScope | None = None
  self._index = {tid: i for i, tid in enumerate(engine.tickets)}
  self._details: dict[str, tuple[int | None, str, float | None, float | None]] = {}
  self._rows: list[TicketRow | None] = [None] * len(self._index)  # None: rebuild
  self._work_text: dict[str, str] = {}  # describe_work() of each ticket, once built
  self._started = False
  self._spawned = 0  # workers admitted by the run, once it has ended
  self._stopping = False  # stop() or cancel() asked: no new workers, the run ends
  self._early: list[Callable[[], None]] = []  # commands given before the run began
  self._finished = False
  # The first published snapshot leaves out the rows: building them is O(tickets), and a
  # reader gets a full one on its first request anyway.
  self._bridge: ThreadBridge[Snapshot] = ThreadBridge(self._build_snapshot(rows=False))
  # Snapshots other threads are waiting for (see snapshot()); guarded by `_control`.
  self._snapshot_requests: list[_SnapshotRequest] = []

 # -- observers ------------------------------------------------------------------------

 def add_listener(self, listener: Listener, *, flush: Flush | None = None) -> None:
  """Call `listener(transition)` on the loop for every ticket transition, pause, resume.

  A listener that batches (a store that commits) also gives `flush`, which the engine
  calls on the loop, with no argument, so that what was emitted is flushed
  - before a worker runs, if its own start was not flushed yet: the first worker of a
    round flushes for all the starts of the round (and the completions that released
    them), the others find theirs done; so a worker never runs before its start, and
    everything emitted before it, is flushed (write-ahead);
  - at the end of a step that emitted transitions and started no worker (a failure, the
    last completion, a pause, a command), unless it is a worker's last step and the next
    worker is about to take its slot (that one flushes);
  - when the run ends.
  So every transition is flushed within a few task steps, never waiting on a worker or a
  timer; and a chain of tickets costs one flush per ticket, a wide DAG one per round of
  workers, not one per transition.
  """
  self._listeners.append(listener)
  if flush is not None:
   self._flushes.append(flush)

 def _emit(
  self,
  ticket: str | None,
  status: str,
  attempt: int = 0,
  detail: str | None = None,
  exit_code: int | None = None,
 ) -> None:
  if self._listeners:  # no Transition is built when nobody listens: this is the hot path
   self._unflushed = True
   transition = Transition(ticket, status, time.time(), attempt, detail, exit_code)
   for listener in self._listeners:
    listener(transition)

 def _flush(self) -> None:
  # The flags are cleared first: a flush that fails cancels the run, which may come back here.
  self._unflushed = False
  self._unflushed_starts.clear()
  for flush in self._flushes:
   flush()

 def _step_end(self, *, worker_done: bool = False) -> None:
  # The end of a step that emitted: flush, unless a worker started in it will (see
  # add_listener): it runs next and flushes for this step too. `worker_done`: this step is
  # a worker's last; if the run loop waits in Scheduler.spawn for the slot it frees, the
  # next worker starts at once and flushes.
  if not self._unflushed or self._unflushed_starts:
   return
  if worker_done and self._parked is not None and not self._paused:
   return
  self._flush()

 # -- control: any thread --------------------------------------------------------------

 def pause(self, reason: str | None = None) -> None:
  """Stop starting workers; running ones finish. Any thread; non-blocking; idempotent.

  As soon as this returns, `mma_status` reads "paused" and no worker starts until
  `resume()`. Works before `run()` too: the run then starts paused.
  """
  with self._control:
   was_paused = self._paused
   self._paused = True
   if not was_paused:
    self._pause_reason = reason
    self._paused_at = time.time()
    if self._active_since is not None:
     self._active += time.monotonic() - self._active_since
     self._active_since = None
   elif reason is not None:
    self._pause_reason = reason
   if self._sched is not None:
    self._sched.pause()
   self._version += 1
  if not was_paused:
   self._in_loop(lambda: self._emit(None, "paused", detail=reason))

 def resume(self) -> None:
  """Start workers again, where the run stopped. Any thread; non-blocking; idempotent."""
  with self._control:
   was_paused = self._paused
   self._paused = False
   self._pause_reason = None
   self._paused_at = None
   if self._sched is not None:
    if self._active_since is None:
     self._active_since = time.monotonic()
    self._sched.resume()
   self._version += 1
  if was_paused:
   self._in_loop(lambda: self._emit(None, "resumed"))

 def stop(self) -> None:
  """Start no more workers and end the run once the running ones have finished.

  Tickets not started stay `todo`: a later run picks them up. Any thread; non-blocking.
  """
  self._in_loop(self._stop_in_loop)

 def cancel(self) -> None:
  """Cancel running workers too and end the run; interrupted tickets go back to `todo`.

  Any thread; non-blocking; works while paused.
  """
  self._in_loop(self._cancel_in_loop)

 def retry(self, ticket_id: str) -> None:
  """Put a failed ticket, and the tickets it blocked, back in play. Any thread."""
  self._ticket(ticket_id)  # an unknown id is the caller's error, raised here
  self._in_loop(lambda: self._retry_in_loop(ticket_id))

 def queue(self, ticket_id: str) -> None:
  """Approve a ticket for starting when `auto_queue` is off. Any thread."""
  self._ticket(ticket_id)  # an unknown id is the caller's error, raised here
  self._in_loop(lambda: self._queue_in_loop(ticket_id))

 @property
 def mma_status(self) -> MmaStatus:
  """The live status; "paused" as soon as `pause()` has returned. Any thread."""
  phase = self._phase
  if self._paused and phase in (MmaStatus.EXECUTING, MmaStatus.PLANNING):
   return MmaStatus.PAUSED
  return phase

 @property
 def paused(self) -> bool:
  return self._paused

 @property
 def spawned(self) -> int:
  """How many workers have been admitted in this run so far. Any thread; exact."""
  sched = self._sched
  return sched.spawned if sched is not None else self._spawned

 @property
 def max_workers(self) -> int:
  return self._max_workers

 @property
 def running_at_pause(self) -> tuple[str, ...]:
  """The workers in flight when the current pause began; () when not paused. Any thread."""
  sched = self._sched
  return sched.running_at_pause if sched is not None and self._paused else ()

 def snapshot(self, *, rows: bool = True, timeout: float = SNAPSHOT_WAIT) -> Snapshot:
  """An immutable view of the run. Any thread.

  On the loop it is exact and built at once. From another thread during a run it is built
  by the loop at its next turn (the request is posted with the loop's thread-safe hook and
  this thread waits on an event, no polling), so it is at most one loop turn old; the wait is
  a loop turn, bounded by `timeout` seconds, after which (a loop blocked by a worker that
  never awaits) the latest published snapshot is returned instead. Before and after the run
  there is no loop: the snapshot is built here, or is the run's final one. A GUI thread that
  must never wait reads `published` instead; `mma_status` is always live.

  `rows=False` leaves out the per-ticket table (`rows` is empty): the part that costs
  O(tickets) the first time, which a quick answer does not need.
  """
  bridge = self._bridge
  if bridge.in_loop_thread:
   return self._build_and_publish(rows)
  request = _SnapshotRequest(rows)
  with self._control:
   live = bridge.attached
   if live:
    self._snapshot_requests.append(request)
   elif self._finished:
    return bridge.snapshot  # the run's final snapshot, with every row
  if not live:  # the run has not begun: nothing else touches its state
   return self._build_and_publish(rows)
  # Not posted (the loop has just ended): run() answers every request still listed.
  bridge.post(lambda: self._answer(request))
  request.done.wait(timeout)
  return request.snap if request.snap is not None else bridge.snapshot

 @property
 def published(self) -> Snapshot:
  """The latest snapshot built on the loop (for any caller). Any thread; never waits.

  Its `rows` are empty if that build left them out; the run's final snapshot has them all.
  """
  return self._bridge.snapshot

 def _build_and_publish(self, rows: bool) -> Snapshot:
  snap = self._build_snapshot(rows=rows)
  self._bridge.publish(snap)
  return snap

 def _answer(self, request: _SnapshotRequest, final: Snapshot | None = None) -> None:
  with self._control:
   try:
    self._snapshot_requests.remove(request)
   except ValueError:
    return  # answered already (by the end of the run)
  request.snap = final if final is not None else self._build_and_publish(request.rows)
  request.done.set()

 def _in_loop(self, fn: Callable[[], None]) -> None:
  # Run `fn` on the loop, so that listeners (a SQLite store) always run on its thread:
  # directly when already there; posted while a run is live; kept for the start of the
  # run before it begins. After the run, or if it ends between the check and the post,
  # the command is dropped: the run it was meant for is over.
  bridge = self._bridge
  if bridge.in_loop_thread:
   fn()
   self._step_end()
   return
  with self._control:
   if not bridge.attached and not self._finished:
    self._early.append(fn)
    return

  def command() -> None:
   fn()
   self._step_end()

  bridge.post(command)

 # -- the run --------------------------------------------------------------------------

 async def run(self) -> Snapshot:
  """Run the pipeline to its end (see the class docstring) and return the final snapshot.

  Call once per engine.
  """
  if self._started:
   raise RuntimeError("ConductorEngine.run() can be called only once per engine")
  self._started = True
  self._phase = MmaStatus.PLANNING
  with self._control:  # see _in_loop: no command falls between "early" and "posted"
   self._bridge.attach()
   early, self._early = self._early, []
  try:
   async with Scheduler(self._max_workers, paused=True) as sched:
    with self._control:
     self._sched = sched
     if not self._paused:
      self._active_since = time.monotonic()
      sched.resume()
    self._phase = MmaStatus.EXECUTING
    self._touch()
    with CancelScope() as self._drive_scope:
     for command in early:  # pause/resume/stop/... asked before the run began
      command()
     self._step_end()
     await self._drive(sched)
  except BaseException as exc:
   self._phase = MmaStatus.ERROR
   if not isinstance(exc, get_cancelled_exc_class()):
    self._error = f"{type(exc).__name__}: {exc}"
   raise
  else:
   self._phase = MmaStatus.DONE if self.engine.is_done else self._end_phase()
  finally:
   with self._control:
    if self._active_since is not None:
     self._active += time.monotonic() - self._active_since
     self._active_since = None
    if self._sched is not None:
     self._spawned = self._sched.spawned
    self._sched = None
   self._drive_scope = None
   while self._ready:  # handed out but never started: back to the engine, still todo
    self.engine.requeue(self._ready.popleft().id)
   if self._unflushed:  # e.g. starts whose workers were cancelled before they ran
    self._flush()
   self._touch()
   final = self._build_snapshot()
   self._bridge.publish(final)
   with self._control:
    self._bridge.detach()
    self._finished = True
    waiting = list(self._snapshot_requests)
   for request in waiting:  # posted too late for the loop to answer: the final one
    self._answer(request, final)
  return final

 def _end_phase(self) -> MmaStatus:
  counts = self.engine.counts()
  if counts.get(Status.FAILED, 0) or counts.get(Status.BLOCKED, 0):
   return MmaStatus.ERROR
  return MmaStatus.IDLE  # stopped or cancelled with work left to do

 async def _drive(self, sched: Scheduler) -> None:
  engine, ready = self.engine, self._ready
  while not self._stopping:
   self._pump(sched)
   self._step_end()
   if ready:
    # No free slot, or paused: wait for admission. The ticket leaves the queue first so
    # that a worker finishing meanwhile (which pumps too) cannot start it a second time.
    self._parked = ticket = ready.popleft()
    try:
     await sched.spawn(self._work, ticket, name=ticket.id)
    except BaseException:
     if self._started_itself is ticket:  # cancelled just after a resume admitted it
      self._started_itself = None
     else:
      ready.appendleft(ticket)
     raise
    finally:
     self._parked = None
    # Admitted at once (a slot came free): its task has not run yet, so it starts here,
    # in this step, like the tickets `_pump` starts (and is flushed with them). Admitted
    # by a resume instead, its own task has started it already (see _work).
    if self._started_itself is ticket:
     self._started_itself = None
    else:
     self._start(ticket)
    continue
   if not self._running and engine.is_settled and not engine.awaiting_approval():
    if not self._linger:
     return
    self._phase = MmaStatus.DONE if engine.is_done else self._end_phase()
   self._wake = wake = Event()
   await wake.wait()

 def _pump(self, sched: Scheduler) -> None:
  # Start every ready ticket that can start right now, in order, without waiting.
  if self._stopping:  # even if someone resumes meanwhile
   return
  ready = self._ready
  ready.extend(self.engine.tick())
  while ready:
   ticket = ready[0]
   if not sched.try_spawn(self._work, ticket, name=ticket.id):
    return
   ready.popleft()
   # Admitted: started now, in the step that released it (no await in between), so that
   # a store commits the completion and this start together before the worker runs.
   self._start(ticket)

 def _notify(self) -> None:
  wake, self._wake = self._wake, None
  if wake is not None:
   wake.set()

 def _start(self, ticket: Ticket) -> None:
  self._phase = MmaStatus.EXECUTING  # also when a lingering run gets going again
  self.engine.start(ticket.id)
  self._running[ticket.id] = RunningWorker(ticket.id, ticket.attempts, time.monotonic())
  self._changed(ticket)
  if self._listeners:
   self._unflushed_starts.add(ticket.id)
   self._emit(ticket.id, Status.IN_PROGRESS, ticket.attempts)

 async def _work(self, ticket: Ticket) -> None:
  # Runs one attempt; turns every outcome into a DAG transition. Never raises except a
  # real cancellation, so one failing ticket never stops its siblings, whatever it raises.
  exit_code: int | None = None
  output = ""
  # A spawn that waited at the gate is admitted by the worker's own task (see
  # Scheduler.spawn): then this first step is where the ticket starts. Either way it is
  # in_progress (and recorded, for a store listening) before the user's worker runs.
  if ticket.status is not Status.IN_PROGRESS:
   self._start(ticket)
   self._started_itself = ticket
  if ticket.id in self._unflushed_starts:  # write-ahead: see add_listener
   self._flush()
  try:
   try:
    if self._stopping:  # e.g. the flush failed and cancelled the run: do not start
     await checkpoint()
    result = await self._worker(ticket)
   except WorkFailed as exc:
    exit_code, output = exc.exit_code, exc.output
    self._failed(ticket, exc.error, exit_code, output)
   except BaseException as exc:
    # User code is untrusted input: whatever it raises (sys.exit(), KeyboardInterrupt, a
    # CancelledError of its own, ...) fails this ticket and nothing else. Only a real
    # cancellation of this worker (a cancel(), the run ending) propagates.
    if not is_cancellation(exc):
     self._failed(ticket, describe_exception(exc), None, "")
    else:
     self._finish(ticket, None, "")
     self.engine.requeue(ticket.id)
     self._changed(ticket)
     self._emit(ticket.id, "interrupted", ticket.attempts)
     raise
   else:
    if result is not None:
     exit_code, output = result.exit_code, result.output
    self._finish(ticket, exit_code, output)
    self.engine.complete(ticket.id)
    self._changed(ticket)
    self._emit(ticket.id, Status.COMPLETED, ticket.attempts, exit_code=exit_code)
  finally:
   sched = self._sched
   # Being cancelled, this starts nothing: Scheduler never admits into a cancelled group
   # (what ended the restart storm); the tickets it hands out go back at the run's end.
   if sched is not None:
    self._pump(sched)  # start the dependents this may have released, right here
   # Wake the run loop only if it has something to do: tickets that could not start here
   # (no slot, or paused), or a run that may be over. Not waking it otherwise saves a task
   # switch per ticket on a chain.
   if self._ready or self.engine.is_settled:
    self._notify()
   self._step_end(worker_done=True)

 def _failed(self, ticket: Ticket, error: str, exit_code: int | None, output: str) -> None:
  self._finish(ticket, exit_code, output)
  if ticket.attempts <= ticket.retries:
   # An automatic retry: back to todo and handed out again, attempts keep counting.
   self.engine.requeue(ticket.id)
   ticket.error = error
   self._changed(ticket)
   self._emit(ticket.id, "retrying", ticket.attempts, error, exit_code)
   return
  blocked = self.engine.fail(ticket.id, error)
  self._changed(ticket)
  self._emit(ticket.id, Status.FAILED, ticket.attempts, error, exit_code)
  for tid in blocked:
   other = self.engine.tickets[tid]
   self._changed(other)
   self._emit(tid, Status.BLOCKED, other.attempts, other.error)

 def _finish(self, ticket: Ticket, exit_code: int | None, output: str) -> None:
  worker = self._running.pop(ticket.id, None)
  started = worker.started_at if worker is not None else None
  self._details[ticket.id] = (exit_code, output[-OUTPUT_TAIL:], started, time.monotonic())

 def _changed(self, ticket: Ticket) -> None:
  self._rows[self._index[ticket.id]] = None
  self._version += 1

 def _touch(self) -> None:
  self._version += 1

 def _stop_in_loop(self) -> None:
  self._stopping = True
  self._touch()
  if self._sched is not None:
   self._sched.pause()
  if self._drive_scope is not None:
   self._drive_scope.cancel()

 def _cancel_in_loop(self) -> None:
  self._stop_in_loop()
  if self._sched is not None:
   self._sched.cancel()

 def _retry_in_loop(self, ticket_id: str) -> None:
  ticket = self._ticket(ticket_id)
  self.engine.retry(ticket_id)
  for tid, t in self.engine.tickets.items():
   row = self._rows[self._index[tid]]
   if row is None or row.status != t.status:
    self._changed(t)
  self._emit(ticket_id, Status.TODO, ticket.attempts, "retry")
  self._notify()

 def _queue_in_loop(self, ticket_id: str) -> None:
  self._ticket(ticket_id)
  self.engine.queue(ticket_id)
  self._touch()
  self._notify()

 def _ticket(self, ticket_id: str) -> Ticket:
  try:
   return self.engine.tickets[ticket_id]
  except KeyError:
   raise KeyError(f"no ticket {ticket_id!r} in pipeline {self.name!r}") from None

 # -- snapshots ------------------------------------------------------------------------

 def _row(self, i: int, ticket: Ticket) -> TicketRow:
  row = self._rows[i]
  if row is None:
   exit_code, output, started, finished = self._details.get(ticket.id, _NO_DETAILS)
   worker = self._running.get(ticket.id)
   if worker is not None:  # running again: the last attempt's end is no longer news
    started, finished = worker.started_at, None
   work = self._work_text.get(ticket.id)
   if work is None:  # the work spec never changes: describe it once
    work = self._work_text[ticket.id] = describe_work(ticket.work)
   row = TicketRow(
    ticket.id,
    ticket.status,
    ticket.attempts,
    ticket.description,
    ticket.depends_on,
    work,
    ticket.error,
    exit_code,
    output,
    started,
    finished,
   )
   self._rows[i] = row
  return row

 def _build_snapshot(self, *, rows: bool = True) -> Snapshot:
  engine = self.engine
  counts = engine.counts()
  with self._control:
   paused, reason, paused_at = self._paused, self._pause_reason, self._paused_at
   elapsed = self._active
   if self._active_since is not None:
    elapsed += time.monotonic() - self._active_since
   sched = self._sched
  running = tuple(self._running.values())
  at_pause = sched.running_at_pause if sched is not None and paused else ()
  in_flight = set(sched.running) if at_pause and sched is not None else set()
  finishing = tuple(t for t in at_pause if t in in_flight)
  table = tuple(self._row(i, t) for i, t in enumerate(engine.tickets.values())) if rows else ()
  return Snapshot(
   version=self._version,
   name=self.name,
   status=self.mma_status,
   counts=Counts(
    counts.get(Status.TODO, 0),
    counts.get(Status.IN_PROGRESS, 0),
    counts.get(Status.COMPLETED, 0),
    counts.get(Status.FAILED, 0),
    counts.get(Status.BLOCKED, 0),
   ),
   running=running,
   paused=paused,
   pause_reason=reason,
   paused_at=paused_at,
   running_at_pause=at_pause,
   finishing=finishing,
   ready=tuple(t.id for t in (*((self._parked,) if self._parked else ()), *self._ready)),
   pending=tuple(engine.pending()),
   awaiting_approval=tuple(engine.awaiting_approval()),
   elapsed=elapsed,
   spawned=sched.spawned if sched is not None else self._spawned,
   max_workers=self._max_workers,
   error=self._error,
   stopping=self._stopping,
   rows=table,
  )


__all__ = [
 "ConductorEngine",
 "Counts",
 "MmaStatus",
 "RunningWorker",
 "Snapshot",
 "TicketRow",
 "Transition",
 "Worker",
 "describe_work",
]
