"""`ConductorEngine`: runs an `ExecutionEngine`'s DAG on a pausable `scheduler.Scheduler`.

It does two jobs: control (pause, resume, stop, cancel, retry, queue and the run clock,
from any thread) and the driver (`run`: hands ready tickets to the scheduler and turns each
worker's outcome into a DAG transition, on the loop). Its other parts are units of their
own: `journal.Journal` delivers the transitions (`transitions.Transition`) to listeners and
is where the write-ahead rule lives; `snapshots.SnapshotCache` builds the `Snapshot`s;
`scheduler.ThreadBridge` carries commands in from other threads and snapshots out.

Where pause happens: `ConductorEngine.pause()` calls `Scheduler.pause()`, which closes the
scheduler's gate under its admission lock. Ready tickets start through `Scheduler.try_spawn`,
from the run loop (`_drive`) and from each finishing worker (`_work`, which hands its slot
to the next ticket); while paused the run loop parks the next ticket in `Scheduler.spawn`,
at that gate. Nothing here polls: the loop wakes on a completion or on the gate opening.

Where a ticket's status changes: in `dag_engine.ExecutionEngine`, called from the driver
here (`_start`, `_work`, `_failed`, the retry command), which emits one `Transition` for
each ticket changed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from anyio import CancelScope, Event, get_cancelled_exc_class
from anyio.lowlevel import checkpoint

from scheduler import Scheduler, ThreadBridge

from .dag_engine import ExecutionEngine, Status, Ticket
from .journal import Flush, Journal, Listener
from .snapshots import Counts, MmaStatus, RunningWorker, Snapshot, SnapshotCache, TicketRow
from .transitions import Change, Transition
from .workers import (
 Worker,
 WorkFailed,
 describe_exception,
 describe_work,
 is_cancellation,
 run_work,
)

SNAPSHOT_WAIT = 1.0
"""Seconds a thread's `snapshot()` waits for the loop before it settles for the latest one."""


class _PauseClock:
 """A run's pause (flag, reason, since when) and its clock, for any thread.

 `_lock` guards every field and the scheduler's pause and resume made with them, so the
 flag and the scheduler's gate never disagree, whatever threads pause, resume and start
 the run at once. It is held for a few attribute updates, never across an await. The clock
 counts run time, not time paused: it runs while a scheduler is bound and not paused.
 """

 __slots__ = ("_active", "_active_since", "_lock", "paused", "reason", "sched", "since")

 def __init__(self, paused: bool, reason: str | None, since: float | None) -> None:
  self._lock = threading.Lock()
  self.paused = paused
  self.reason = reason if paused else None
  # A pause restored from a store keeps its own time (time.time()).
  self.since: float | None = (since or time.time()) if paused else None
  self.sched: Scheduler | None = None  # bound while a run goes on
  self._active = 0.0  # run time accumulated before `_active_since`
  self._active_since: float | None = None  # monotonic; None while paused or not running

 def pause(self, reason: str | None) -> tuple[bool, tuple[str, ...]]:
  """Pause; return whether this call paused, and the workers in flight as the gate closed."""
  with self._lock:
   newly = not self.paused
   self.paused = True
   if newly:
    self.reason, self.since = reason, time.time()
    self._stop_clock()
   elif reason is not None:
    self.reason = reason
   if self.sched is None:
    return newly, ()
   self.sched.pause()
   return newly, self.sched.running_at_pause

 def resume(self) -> bool:
  """Resume; return whether this call resumed."""
  with self._lock:
   was_paused = self.paused
   self.paused, self.reason, self.since = False, None, None
   if self.sched is not None:
    self._start_clock()
    self.sched.resume()
   return was_paused

 def bind(self, sched: Scheduler) -> None:
  """A run begins on `sched` (made paused): it follows the pause from now on."""
  with self._lock:
   self.sched = sched
   if not self.paused:
    self._start_clock()
    sched.resume()

 def unbind(self) -> Scheduler | None:
  """The run has ended: stop the clock; return the scheduler it was bound to, if any."""
  with self._lock:
   self._stop_clock()
   sched, self.sched = self.sched, None
   return sched

 def read(self) -> tuple[bool, str | None, float | None, float, Scheduler | None]:
  """(paused, reason, since, run seconds so far, the scheduler bound), consistently."""
  with self._lock:
   elapsed = self._active
   if self._active_since is not None:
    elapsed += time.monotonic() - self._active_since
   return self.paused, self.reason, self.since, elapsed, self.sched

 def _start_clock(self) -> None:
  if self._active_since is None:
   self._active_since = time.monotonic()

 def _stop_clock(self) -> None:
  if self._active_since is not None:
   self._active += time.monotonic() - self._active_since
   self._active_since = None


class ConductorEngine:
 """Drives a DAG of tickets with at most `max_workers` workers, pausable from any thread.

 `await run()` returns the final `Snapshot` when every ticket completed, when nothing can
 progress any more (the rest failed or blocked), after `stop()` once running workers have
 finished, or after `cancel()`. With `linger=True` it does not end by itself: it waits for
 `retry()`/`queue()` until `stop()` (what a dashboard wants).

 Thread-safety: `pause`, `resume`, `stop`, `cancel`, `retry`, `queue`, `request_snapshot`,
 `mma_status` and `published` may be called from any thread and never wait for the event
 loop; `snapshot` too, and from another thread it waits for the loop to build it (one loop
 turn, bounded). Commands given before `run()` apply, in order, as it begins. Everything
 else (the DAG engine, listeners) runs on the loop.

 About 440 lines for its two jobs, which act on one run state (the
 scheduler, the queue, the phase): splitting them would hand that state between two
 classes. Its other parts are units of their own (see the module docstring).
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
  self._journal = Journal()
  # With `linger` the run does not end when nothing can progress: it waits (no polling) for
  # retry() or queue() until stop(). A dashboard wants that; a batch run does not.
  self._linger = linger

  self._pause = _PauseClock(paused, pause_reason, paused_at)  # shared with every thread

  self._phase = MmaStatus.IDLE  # IDLE, PLANNING, EXECUTING, DONE or ERROR
  self._error: str | None = None

  # Loop-side state.
  self._ready: deque[Ticket] = deque()  # handed out by tick(), not yet admitted
  self._parked: Ticket | None = None  # the next one, waiting in Scheduler.spawn
  self._wake: Event | None = None  # set when a completion may unblock the run loop
  self._drive_scope: CancelScope | None = None
  self._started = False
  self._spawned = 0  # workers admitted by the run, once it has ended
  self._stopping = False  # stop() or cancel() asked: no new workers, the run ends
  self._table = SnapshotCache(engine)
  # The first published snapshot leaves out the rows: building them is O(tickets), and a
  # reader gets a full one on its first request anyway.
  self._bridge: ThreadBridge[Snapshot] = ThreadBridge(self._build_snapshot(rows=False))

 def add_listener(self, listener: Listener, *, flush: Flush | None = None) -> None:
  """Call `listener(transition)` on the loop for every `Transition`: each ticket changed,
  each pause and resume. A listener that batches (a store) gives `flush` too, which is
  called write-ahead: the contract is `journal.Journal`'s. Add listeners before `run()`."""
  self._journal.add_listener(listener, flush)

 # -- control: any thread --------------------------------------------------------------

 def pause(self, reason: str | None = None) -> None:
  """Stop starting workers; running ones finish. Any thread; non-blocking; idempotent.

  As soon as this returns, `mma_status` reads "paused" and no worker starts until
  `resume()`. Works before `run()` too: the run then starts paused.
  """
  newly, at_pause = self._pause.pause(reason)
  self._table.touch()
  if newly:
   self._in_loop(partial(self._journal.pipeline, Change.PAUSED, reason, at_pause))

 def resume(self) -> None:
  """Start workers again, where the run stopped. Any thread; non-blocking; idempotent."""
  newly = self._pause.resume()
  self._table.touch()
  if newly:
   self._in_loop(partial(self._journal.pipeline, Change.RESUMED))

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
  """Put a failed ticket, with its full `retries`, and the tickets it blocked, back in
  play. Any thread. An unknown id raises here; a ticket that is not failed by the time the
  loop carries this out (a double click, another terminal's retry) is left alone."""
  self._ticket(ticket_id)  # an unknown id is the caller's error, raised here
  self._in_loop(partial(self._retry_in_loop, ticket_id))

 def queue(self, ticket_id: str) -> None:
  """Approve a ticket for starting when `auto_queue` is off. Any thread."""
  self._ticket(ticket_id)  # an unknown id is the caller's error, raised here
  self._in_loop(partial(self._queue_in_loop, ticket_id))

 @property
 def mma_status(self) -> MmaStatus:
  """The live status; "paused" as soon as `pause()` has returned. Any thread."""
  phase = self._phase
  if self._pause.paused and phase in (MmaStatus.EXECUTING, MmaStatus.PLANNING):
   return MmaStatus.PAUSED
  return phase

 @property
 def table(self) -> SnapshotCache:
  """The run's live per-ticket view (`snapshots.SnapshotCache`): what a status report is
  assembled from. Read it on the loop only."""
  return self._table

 @property
 def paused(self) -> bool:
  return self._pause.paused

 @property
 def spawned(self) -> int:
  """How many workers have been admitted in this run so far. Any thread; exact."""
  sched = self._pause.sched
  return sched.spawned if sched is not None else self._spawned

 @property
 def max_workers(self) -> int:
  return self._max_workers

 @property
 def running_at_pause(self) -> tuple[str, ...]:
  """The workers in flight when the current pause began; () when not paused. Any thread."""
  sched = self._pause.sched
  return sched.running_at_pause if sched is not None and self._pause.paused else ()

 def snapshot(self, *, rows: bool = True, timeout: float = SNAPSHOT_WAIT) -> Snapshot:
  """An immutable view of the run. Any thread.

  On the loop it is exact and built at once. From another thread during a run it is built
  by the loop at its next turn, so it is at most one loop turn old; this thread waits for
  it (no polling) at most `timeout` seconds, after which (a loop blocked by a worker that
  never awaits) the latest published snapshot is returned instead (`ThreadBridge.ask`).
  Before the run it is built here; after it, it is the run's final one. A GUI thread that
  must never wait uses `request_snapshot` and `published`; `mma_status` is always live.

  `rows=False` leaves out the per-ticket table (`rows` is empty): the part that costs
  O(tickets) the first time, which a quick answer does not need.
  """
  return self._bridge.ask(partial(self._build_snapshot, rows=rows), timeout)

 def request_snapshot(self, min_interval: float = 0.0) -> None:
  """Ask the loop to publish a fresh full snapshot (with rows) into `published` soon.

  Any thread; never blocks. A request while one is on its way is folded into it; one less
  than `min_interval` seconds after the previous one was posted is ignored (a GUI asks
  again next frame). See `ThreadBridge.request`.
  """
  self._bridge.request(self._build_snapshot, min_interval)

 @property
 def published(self) -> Snapshot:
  """The latest snapshot built on the loop (for any caller). Any thread; never waits.

  Its `rows` are empty if that build left them out; the run's final snapshot has them all.
  """
  return self._bridge.snapshot

 def _in_loop(self, fn: Callable[[], None]) -> None:
  # Run `fn` on the loop, so that listeners (a SQLite store) always run on its thread, and
  # end its step (it may have emitted): at once when already there, else through the
  # bridge, which holds it until the run begins and drops it once the run has ended.
  if self._bridge.in_loop_thread:
   self._command(fn)
  else:
   self._bridge.post(partial(self._command, fn))

 def _command(self, fn: Callable[[], None]) -> None:
  fn()
  self._journal.step_end()

 # -- the run --------------------------------------------------------------------------

 async def run(self) -> Snapshot:
  """Run the pipeline to its end (see the class docstring) and return the final snapshot.

  Call once per engine.
  """
  if self._started:
   raise RuntimeError("ConductorEngine.run() can be called only once per engine")
  self._started = True
  self._phase = MmaStatus.PLANNING
  try:
   self._bridge.attach()  # and pause/resume/stop/... asked before the run apply now
   async with Scheduler(self._max_workers, paused=True) as sched:
    self._pause.bind(sched)
    self._phase = MmaStatus.EXECUTING
    self._table.touch()
    with CancelScope() as self._drive_scope:
     await self._drive(sched)
  except BaseException as exc:
   self._phase = MmaStatus.ERROR
   if not isinstance(exc, get_cancelled_exc_class()):
    self._error = f"{type(exc).__name__}: {exc}"
   raise
  else:
   self._phase = MmaStatus.DONE if self.engine.is_done else self._end_phase()
  finally:
   bound = self._pause.unbind()
   if bound is not None:
    self._spawned = bound.spawned
   self._drive_scope = None
   while self._ready:  # handed out but never started: back to the engine, still todo
    self.engine.requeue(self._ready.popleft().id)
   self._journal.close()
   self._table.touch()
   self._bridge.detach(self._build_snapshot())
  return self._bridge.snapshot

 def _end_phase(self) -> MmaStatus:
  counts = self.engine.counts()
  if counts.get(Status.FAILED, 0) or counts.get(Status.BLOCKED, 0):
   return MmaStatus.ERROR
  return MmaStatus.IDLE  # stopped or cancelled with work left to do

 async def _drive(self, sched: Scheduler) -> None:
  engine, ready = self.engine, self._ready
  while not self._stopping:
   self._pump(sched)
   self._journal.step_end()
   if ready and not sched.full:
    # A free slot but a closed gate: wait for admission there, where a resume admits the
    # worker in one wake-up. The ticket leaves the queue first so that a worker finishing
    # meanwhile (which pumps too) cannot start it a second time. It starts in the step
    # that admits it (`on_admit`): the worker's own when a resume admits it. (With no
    # free slot the workers running pass theirs on as they finish (`_work`), or wake this
    # loop when they cannot.)
    self._parked = ticket = ready.popleft()
    try:
     await sched.spawn(
      self._work, ticket, name=ticket.id, on_admit=partial(self._start_parked, ticket)
     )
    except BaseException:
     if self._parked is ticket:  # not admitted: first in line again
      self._parked = None
      ready.appendleft(ticket)
     raise
    continue
   if (
    not ready and not self._table.running and engine.is_settled and not engine.awaiting_approval()
   ):
    if not self._linger:
     return
    self._phase = MmaStatus.DONE if engine.is_done else self._end_phase()
   self._wake = wake = Event()
   await wake.wait()

 def _pump(self, sched: Scheduler, *, handoff: bool = False) -> None:
  # Start every ready ticket that can start right now, in order, without waiting: each in
  # the step that released it (no await in between), so that a store commits the
  # completion and this start together before the worker runs. `handoff`: called by a
  # finishing worker, whose task then runs the first of them (Scheduler.try_spawn).
  if self._stopping:  # even if someone resumes meanwhile
   return
  ready = self._ready
  ready.extend(self.engine.tick())
  work, start = self._work, self._start_first
  while ready:
   ticket = ready[0]
   if not sched.try_spawn(work, ticket, name=ticket.id, on_admit=start, handoff=handoff):
    return

 def _start_first(self) -> None:
  # `_pump`'s on_admit: the first ready ticket was admitted. It leaves the queue only once
  # started, so that a `_start` that raises leaves it there.
  self._start(self._ready[0])
  self._ready.popleft()

 def _notify(self) -> None:
  wake, self._wake = self._wake, None
  if wake is not None:
   wake.set()

 def _start_parked(self, ticket: Ticket) -> None:
  self._parked = None
  self._start(ticket)

 def _start(self, ticket: Ticket) -> None:
  # The scheduler's on_admit: runs in the step that admitted the worker, before it runs.
  self._phase = MmaStatus.EXECUTING  # also when a lingering run gets going again
  self.engine.start(ticket.id)
  self._table.started(ticket)
  self._journal.started(ticket)

 async def _work(self, ticket: Ticket) -> None:
  # Runs one attempt of a ticket `_start` has started; turns every outcome into a DAG
  # transition. Never raises except a real cancellation, so one failing ticket never stops
  # its siblings, whatever it raises.
  self._journal.before_worker(ticket.id)  # write-ahead: see journal.Journal
  exit_code: int | None = None
  output = ""
  try:
   try:
    if self._stopping:  # e.g. the flush failed and cancelled the run: do not start
     await checkpoint()
    result = await self._worker(ticket)
   except WorkFailed as exc:
    self._failed(ticket, exc.error, exc.exit_code, exc.output)
   except BaseException as exc:
    # User code is untrusted input: whatever it raises (sys.exit(), KeyboardInterrupt, a
    # CancelledError of its own, ...) fails this ticket and nothing else. Only a real
    # cancellation of this worker (a cancel(), the run ending) propagates.
    if not is_cancellation(exc):
     self._failed(ticket, describe_exception(exc), None, "")
    else:
     self._table.finished(ticket, None, "")
     self.engine.requeue(ticket.id)
     self._journal.changed(ticket, Change.INTERRUPTED)
     raise
   else:
    if result is not None:
     exit_code, output = result.exit_code, result.output
    self._table.finished(ticket, exit_code, output)
    self.engine.complete(ticket.id)
    self._journal.changed(ticket, Change.COMPLETED, exit_code=exit_code)
  finally:
   sched = self._pause.sched
   # Being cancelled, this starts nothing: Scheduler never admits into a cancelled group
   # (what ended the restart storm); the tickets it hands out go back at the run's end.
   handed_off = False
   if sched is not None:  # start the dependents this may have released, right here
    # This returns right after, as a handoff asks: the first ticket started takes over
    # this worker's slot and runs next in its task. No handoff with a journal that
    # batches: that worker would run within this step, so a round would flush once a
    # ticket, not once.
    self._pump(sched, handoff=not self._journal.batches)
    handed_off = sched.handed_off
   # Wake the run loop only if it has something to do: tickets that could not start here
   # and the slot this frees (not when it was handed off: the tickets wait for the next
   # worker to finish), or a run that may be over. Not waking it otherwise saves a task
   # switch per ticket.
   ready = bool(self._ready) and not handed_off
   if ready or self.engine.is_settled:
    self._notify()
   # If the run loop is about to take the slot this frees (woken, or waiting in
   # Scheduler.spawn), its worker starts at once and flushes (the journal's handoff).
   self._journal.step_end(handoff=(ready or self._parked is not None) and not self._pause.paused)

 def _failed(self, ticket: Ticket, error: str, exit_code: int | None, output: str) -> None:
  self._table.finished(ticket, exit_code, output)
  engine = self.engine
  if engine.retries_left(ticket.id):
   engine.requeue(ticket.id, error)  # an automatic retry: todo again, handed out again
   self._journal.changed(ticket, Change.RETRYING, error, exit_code)
   return
  blocked = engine.fail(ticket.id, error)
  self._journal.changed(ticket, Change.FAILED, error, exit_code)
  self._changed_others(blocked)

 def _changed_others(self, ids: list[str]) -> None:
  # The tickets a failure or a retry changed besides its own: blocked, unblocked, or
  # blocked by another failure now.
  tickets = self.engine.tickets
  for tid in ids:
   other = tickets[tid]
   self._table.changed(other)
   if other.status is Status.TODO:
    self._journal.changed(other, Change.UNBLOCKED, "unblocked by a retry")
   else:
    self._journal.changed(other, Change.BLOCKED, other.error)

 # -- commands, on the loop ------------------------------------------------------------

 def _stop_in_loop(self) -> None:
  self._stopping = True
  self._table.touch()
  if self._pause.sched is not None:
   self._pause.sched.pause()  # the gate only: `paused` is the user's, and stays as it is
  if self._drive_scope is not None:
   self._drive_scope.cancel()

 def _cancel_in_loop(self) -> None:
  self._stop_in_loop()
  if self._pause.sched is not None:
   self._pause.sched.cancel()

 def _retry_in_loop(self, ticket_id: str) -> None:
  ticket = self._ticket(ticket_id)
  if ticket.status is not Status.FAILED:
   return  # stale: see retry()
  others = self.engine.retry(ticket_id)
  self._table.changed(ticket)
  self._journal.changed(ticket, Change.RETRIED, "retry")
  self._changed_others(others)
  self._notify()

 def _queue_in_loop(self, ticket_id: str) -> None:
  self._ticket(ticket_id)
  self.engine.queue(ticket_id)
  self._table.touch()
  self._notify()

 def _ticket(self, ticket_id: str) -> Ticket:
  try:
   return self.engine.tickets[ticket_id]
  except KeyError:
   raise KeyError(f"no ticket {ticket_id!r} in pipeline {self.name!r}") from None

 def _build_snapshot(self, *, rows: bool = True) -> Snapshot:
  # The driver's and the control's part of a snapshot; the cache adds the DAG and rows.
  paused, reason, paused_at, elapsed, sched = self._pause.read()
  at_pause = sched.running_at_pause if sched is not None and paused else ()
  in_flight = set(sched.running) if at_pause and sched is not None else set()
  parked = (self._parked,) if self._parked is not None else ()
  return self._table.build(
   rows=rows,
   name=self.name,
   status=self.mma_status,
   paused=paused,
   pause_reason=reason,
   paused_at=paused_at,
   running_at_pause=at_pause,
   finishing=tuple(t for t in at_pause if t in in_flight),
   ready=tuple(t.id for t in (*parked, *self._ready)),
   elapsed=elapsed,
   spawned=sched.spawned if sched is not None else self._spawned,
   max_workers=self._max_workers,
   error=self._error,
   stopping=self._stopping,
  )


__all__ = [
 "SNAPSHOT_WAIT",
 "Change",
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
