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
The pause's state (whose it is, when an automatic one ends, the token budget) is
`_PauseClock`'s, one lock for all of it. The pipeline pauses itself (`auto_pause`) when a
worker raises `PausePipeline` or the token budget is spent, in the step of that attempt's
end, so its own handoff starts nothing; the automatic resume is the run loop's own wait's
deadline (`_timed`), not a task or a poll.

Outputs: the driver keeps the whole output of the tickets some ticket's work reads
(`needed_outputs`) and hands them to that work in `Ticket.inputs` for one attempt.

Where a ticket's status changes: in `dag_engine.ExecutionEngine`, called from the driver
here (`_start`, `_work`, `_failed`, the retry command), which emits one `Transition` for
each ticket changed.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from functools import partial
from itertools import chain
from typing import Literal, NamedTuple

from anyio import CancelScope, Event, current_time, get_cancelled_exc_class
from anyio.lowlevel import checkpoint

from scheduler import Scheduler, ThreadBridge

from ._heap import frozen_for_run, gc_paused
from .dag_engine import ExecutionEngine, Status, Ticket
from .journal import Flush, Journal, Listener
from .snapshots import Counts, MmaStatus, RunningWorker, Snapshot, SnapshotCache, TicketRow
from .transitions import Change, Transition
from .workers import (
 PausePipeline,
 Usage,
 Worker,
 WorkFailed,
 WorkInterrupted,
 WorkSpec,
 describe_exception,
 describe_work,
 is_cancellation,
 run_work,
)

SNAPSHOT_WAIT = 1.0
"""Seconds a thread's `snapshot()` waits for the loop before it settles for the latest one."""

_RESUMED_BY_ITSELF = "resumed by itself"  # the detail of an automatic RESUMED
_EARLY = 0.001  # seconds: a timer this close to the automatic resume's time is on time


class TokenBudgetSpent(ValueError):
 """`resume()` refused: the token budget is spent. Raise the budget to resume (`resume(
 token_budget=...)`). The message is one line; `used` and `budget` are the numbers."""

 def __init__(self, used: int, budget: int) -> None:
  super().__init__(
   f"{budget_reached(used, budget)}; raise it to resume "
   f"(e.g. resume --budget {suggested_budget(used, budget)})"
  )
  self.used = used
  self.budget = budget


def budget_reached(used: int, budget: int) -> str:
 """The reason of the pause the token budget makes; every view says it in these words."""
 return f"token budget reached: {used:,} of {budget:,} tokens"


def budget_spent(used: int, budget: int | None) -> bool:
 """Whether a token budget is set and spent (the engine pauses then; a resume is refused)."""
 return budget is not None and used >= budget


def suggested_budget(used: int, budget: int | None) -> int:
 """A budget to suggest raising to: half as much again as the current one, and above what
 was used (200,000 -> 300,000)."""
 return max((budget or 0) * 3 // 2, used + 1)


class _PauseState(NamedTuple):
 paused: bool
 reason: str | None
 since: float | None
 elapsed: float  # run seconds so far
 sched: Scheduler | None
 by_person: bool
 resume_at: float | None
 tokens_used: int
 token_budget: int | None


class _PauseClock:
 """A run's pause (flag, reason, since when, whose, until when), its clock and its tokens.

 A pause is a person's (`by_person`) or the pipeline's own; only the latter ends by itself
 (`auto_resume`, at `resume_at`), and a person's pause always wins: pausing by hand turns an
 automatic pause into a person's, an automatic pause changes nothing in a person's. The
 token budget lives here too, since reaching it pauses and a spent one refuses a resume.

 `_lock` guards every field and the scheduler's pause and resume made with them, so the
 flag and the scheduler's gate never disagree, whatever threads pause, resume and start
 the run at once. It is held for a few attribute updates, never across an await. The clock
 counts run time, not time paused: it runs while a scheduler is bound and not paused.
 """

 __slots__ = (
  "_active",
  "_active_since",
  "_lock",
  "_resume_mono",
  "budget",
  "by_person",
  "paused",
  "reason",
  "resume_at",
  "sched",
  "since",
  "used",
 )

 def __init__(
  self,
  paused: bool,
  reason: str | None,
  since: float | None,
  *,
  by_person: bool = True,
  resume_at: float | None = None,
  budget: int | None = None,
  used: int = 0,
 ) -> None:
  self._lock = threading.Lock()
  self.paused = paused
  self.reason = reason if paused else None
  # A pause restored from a store keeps its own time (time.time()).
  self.since: float | None = (since or time.time()) if paused else None
  self.by_person = by_person or not paused
  # When an automatic pause ends: time.time() (shown, stored) and time.monotonic() (the
  # timer's, immune to the wall clock being set).
  self.resume_at: float | None = None
  self._resume_mono: float | None = None
  if paused and not self.by_person and resume_at is not None:
   self.resume_at = resume_at
   self._resume_mono = time.monotonic() + (resume_at - time.time())
  self.budget = budget
  self.used = used
  self.sched: Scheduler | None = None  # bound while a run goes on
  self._active = 0.0  # run time accumulated before `_active_since`
  self._active_since: float | None = None  # monotonic; None while paused or not running

 def pause(self, reason: str | None) -> tuple[bool, str | None, tuple[str, ...]]:
  """A person's pause. Return whether this call changed the pause (paused, or made an
  automatic pause a person's), its reason, and the workers in flight as the gate closed."""
  with self._lock:
   changed = not self.paused or not self.by_person
   self.by_person = True
   self.resume_at = self._resume_mono = None
   if reason is not None:
    self.reason = reason
   self._close()
   return changed, self.reason, self._at_pause()

 def auto_pause(
  self, reason: str, resume_after: float | None
 ) -> tuple[bool, str | None, float | None, tuple[str, ...]]:
  """The pipeline's own pause (see `ConductorEngine.auto_pause`). Return whether this call
  changed the pause, its reason and end, and the workers in flight as the gate closed."""
  with self._lock:
   if self.paused and self.by_person:
    return False, None, None, ()
   if self.paused and (self.resume_at is None or resume_after is None):
    self.resume_at = self._resume_mono = None  # "only by hand" wins over a time
   else:
    previous = (self.resume_at, self._resume_mono) if self.paused else (None, None)
    self._set_resume(resume_after)
    if (
     previous[1] is not None and self._resume_mono is not None and previous[1] > self._resume_mono
    ):
     self.resume_at, self._resume_mono = previous  # the later time wins
   if not self.spent:  # else the budget's reason stays: only raising it resumes
    self.reason = reason
   self.by_person = False
   self._close()
   return True, self.reason, self.resume_at, self._at_pause()

 def spend(self, tokens: int, *, pause: bool = True) -> tuple[str, tuple[str, ...]] | None:
  """Count `tokens`. If that spends the budget, pause automatically until a person raises
  it (unless a person has paused: theirs wins; or not `pause`: nothing is left to start)
  and return the pause's reason and the workers in flight; None if the pause did not
  change."""
  with self._lock:
   self.used += tokens
   if (
    not pause or self.budget is None or self.used < self.budget or (self.paused and self.by_person)
   ):
    return None
   reason = budget_reached(self.used, self.budget)
   if self.paused and self.reason == reason and self.resume_at is None:
    return None
   self.reason, self.by_person = reason, False
   self.resume_at = self._resume_mono = None
   self._close()
   return reason, self._at_pause()

 def set_budget(self, budget: int | None) -> None:
  with self._lock:
   self.budget = budget

 def resume(self, budget: int | None = None, *, set_budget: bool = False) -> bool:
  """A person's resume (with `set_budget`, of `budget` first); return whether this call
  resumed. Raises `TokenBudgetSpent` if the budget is spent."""
  with self._lock:
   if set_budget:
    self.budget = budget
   if self.budget is not None and self.used >= self.budget:
    raise TokenBudgetSpent(self.used, self.budget)
   return self._open()

 def auto_resume(self, *, due: bool = False) -> bool:
  """End an automatic pause (`due`: only if its time has come); return whether this call
  resumed. Never a person's pause, nor one the spent token budget keeps."""
  with self._lock:
   if not self.paused or self.by_person or self.spent:
    return False
   if due and (self._resume_mono is None or self._resume_mono - time.monotonic() > _EARLY):
    return False
   return self._open()

 @property
 def spent(self) -> bool:
  return budget_spent(self.used, self.budget)

 def deadline(self) -> float:
  """When the timer ends the automatic pause, on the loop's clock (anyio's
  `current_time()`); inf if it does not. On the loop."""
  mono = self._resume_mono
  if mono is None or not self.paused or self.by_person:
   return math.inf
  return current_time() + (mono - time.monotonic())

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

 def read(self) -> _PauseState:
  """The whole state, consistently."""
  with self._lock:
   elapsed = self._active
   if self._active_since is not None:
    elapsed += time.monotonic() - self._active_since
   return _PauseState(
    self.paused,
    self.reason,
    self.since,
    elapsed,
    self.sched,
    self.by_person,
    self.resume_at,
    self.used,
    self.budget,
   )

 # Under the lock:

 def _close(self) -> None:
  if not self.paused:
   self.paused, self.since = True, time.time()
   self._stop_clock()
  if self.sched is not None:
   self.sched.pause()

 def _open(self) -> bool:
  was_paused = self.paused
  self.paused, self.reason, self.since, self.by_person = False, None, None, True
  self.resume_at = self._resume_mono = None
  if self.sched is not None:
   self._start_clock()
   self.sched.resume()
  return was_paused

 def _at_pause(self) -> tuple[str, ...]:
  return self.sched.running_at_pause if self.sched is not None else ()

 def _set_resume(self, after: float | None) -> None:
  if after is None:
   self.resume_at = self._resume_mono = None
  else:
   self.resume_at = time.time() + after
   self._resume_mono = time.monotonic() + after

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

 Two kinds of pause: a person's (`pause`) and the pipeline's own (`auto_pause`: a worker's
 `PausePipeline`, the token budget), which may end by itself; a person's always wins. A
 durable run passes what its store restored: `paused`, `pause_reason`, `paused_at`,
 `paused_by_person`, `auto_resume_at` (time.time()), `token_budget`, `tokens_used`.

 Thread-safety: `pause`, `auto_pause`, `resume`, `auto_resume`, `set_token_budget`, `stop`,
 `cancel`, `retry`, `queue`, `request_snapshot`, `output`, `mma_status`, `published` and the
 pause's and budget's properties may be called from any thread and never wait for the event
 loop; `snapshot` too, and from another thread it waits for the loop to build it (one loop
 turn, bounded). Commands given before `run()` apply, in order, as it begins. Everything
 else (the DAG engine, listeners) runs on the loop.

 About 640 lines for its two jobs, which act on one run state (the
 scheduler, the queue, the phase, the pause): splitting them would hand that state between
 two classes. Its other parts are units of their own (see the module docstring).
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
  paused_by_person: bool = True,
  auto_resume_at: float | None = None,
  token_budget: int | None = None,
  tokens_used: int = 0,
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

  # Shared with every thread. A durable run passes what its store restored: who paused,
  # when an automatic pause ends, the tokens spent before.
  self._pause = _PauseClock(
   paused,
   pause_reason,
   paused_at,
   by_person=paused_by_person,
   resume_at=auto_resume_at,
   budget=token_budget,
   used=tokens_used,
  )

  # Outputs that some ticket's work reads (`WorkSpec.inputs`, an agent's `{{ID}}`): only
  # those are kept, by id. `_inputs_of` maps each ticket whose work reads some to their ids.
  self._inputs_of = _inputs_of(engine.tickets.values())
  self._needed = frozenset(chain.from_iterable(self._inputs_of.values()))
  self._outputs: dict[str, str] = {}  # written on the loop; read from any thread

  self._phase = MmaStatus.IDLE  # IDLE, PLANNING, EXECUTING, DONE or ERROR
  self._error: str | None = None

  # Loop-side state.
  self._ready: deque[Ticket] = deque()  # handed out by tick(), not yet admitted
  self._parked: Ticket | None = None  # the next one, waiting in Scheduler.spawn
  self._wake: Event | None = None  # set when a completion may unblock the run loop
  self._drive_scope: CancelScope | None = None
  self._timer: CancelScope | None = None  # what the run loop waits in: its deadline ends an
  # automatic pause (see `_timed`)
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
  """A person's pause: stop starting workers; running ones finish. Any thread;
  non-blocking; idempotent.

  As soon as this returns, `mma_status` reads "paused" and no worker starts until
  `resume()`. Works before `run()` too: the run then starts paused. It wins over an
  automatic pause: one in force becomes a person's (it no longer ends by itself), and
  `auto_pause` changes nothing while it lasts.
  """
  changed, reason, at_pause = self._pause.pause(reason)
  self._table.touch()
  if changed:
   self._in_loop(partial(self._pause_changed, Change.PAUSED, reason, at_pause))

 def auto_pause(self, reason: str, resume_after: float | None = None) -> None:
  """The pipeline's own pause (a rate limit, a lost cluster): like `pause`, but it ends by
  itself after `resume_after` seconds (None: only a person's resume ends it). Any thread;
  non-blocking.

  Paused by a person: nothing changes. Already paused automatically: `reason` replaces the
  reason, and the later of the two ends wins (None over a time). A worker can ask for it
  by raising `PausePipeline`.
  """
  if resume_after is not None and not (resume_after >= 0 and math.isfinite(resume_after)):
   raise ValueError(f"resume_after must be a finite number of seconds >= 0, got {resume_after!r}")
  changed, reason_now, at, at_pause = self._pause.auto_pause(reason, resume_after)
  if changed:
   self._table.touch()
   self._in_loop(
    partial(self._pause_changed, Change.PAUSED, reason_now, at_pause, at, by_person=False)
   )

 def auto_resume(self) -> None:
  """End an automatic pause now (the cluster is back). Nothing else: not a person's pause,
  not one the spent token budget keeps, nor a run not paused. Any thread; non-blocking."""
  if self._pause.auto_resume():
   self._table.touch()
   self._in_loop(partial(self._pause_changed, Change.RESUMED, _RESUMED_BY_ITSELF))

 def resume(self, *, token_budget: int | None = None) -> None:
  """A person's resume: start workers again, where the run stopped, whoever paused. Any
  thread; non-blocking; idempotent.

  With `token_budget`, the budget is set to it first. Raises `TokenBudgetSpent` (and stays
  paused) if a budget is set and spent.
  """
  set_budget = token_budget is not None
  try:
   newly = self._pause.resume(token_budget, set_budget=set_budget)
  finally:
   self._table.touch()
  if newly:
   self._in_loop(partial(self._pause_changed, Change.RESUMED))

 def set_token_budget(self, budget: int | None) -> None:
  """Set the token budget (None: none). Any thread; non-blocking. It never resumes; a
  budget already spent pauses the run as a completion reaching it does."""
  self._pause.set_budget(budget)
  self._table.touch()
  self._in_loop(partial(self._spend, 0))

 @property
 def token_budget(self) -> int | None:
  """The token budget; None: none. Any thread."""
  return self._pause.budget

 @property
 def tokens_used(self) -> int:
  """Tokens spent so far (`WorkResult.usage` and `PausePipeline.usage`, with the restored
  ones). Any thread."""
  return self._pause.used

 @property
 def paused_by_person(self) -> bool:
  """Whether the current pause is a person's (True when not paused). Any thread."""
  return self._pause.by_person

 @property
 def pause_reason(self) -> str | None:
  """Why the pipeline is paused (None: no reason given, or not paused). Any thread."""
  return self._pause.reason

 @property
 def auto_resume_at(self) -> float | None:
  """When the current automatic pause ends by itself (time.time()), if it does. Any thread."""
  return self._pause.resume_at

 @property
 def needed_outputs(self) -> frozenset[str]:
  """The tickets whose outputs some ticket's work reads: the ones `output` keeps."""
  return self._needed

 def output(self, ticket_id: str) -> str | None:
  """The whole output of the ticket's latest completed attempt, if kept (see
  `needed_outputs`); else None. Any thread."""
  return self._outputs.get(ticket_id)

 def restore_outputs(self, outputs: Mapping[str, str]) -> None:
  """The outputs a store kept of tickets completed before, for the tickets that read them.
  Before `run()`; only `needed_outputs` are kept."""
  needed = self._needed
  self._outputs.update((tid, out) for tid, out in outputs.items() if tid in needed)

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
  # What exists as the run begins (its tickets, the DAG, whatever the program holds) is left
  # out of the cyclic GC's walks while it goes on: see `_heap`.
  with frozen_for_run():
   try:
    self._bridge.attach()  # and pause/resume/stop/... asked before the run apply now
    async with Scheduler(self._max_workers, paused=True) as sched:
     self._pause.bind(sched)
     self._phase = MmaStatus.EXECUTING
     self._table.touch()
     self._spend(0)  # a budget spent before (restored) pauses at once
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
    with gc_paused():
     self._bridge.detach(self._build_snapshot(rows="final"))
  return self._bridge.snapshot

 def _end_phase(self) -> MmaStatus:
  counts = self.engine.counts()
  if counts.get(Status.FAILED, 0) or counts.get(Status.BLOCKED, 0):
   return MmaStatus.ERROR
  return MmaStatus.IDLE  # stopped or cancelled with work left to do

 async def _drive(self, sched: Scheduler) -> None:
  engine, ready = self.engine, self._ready
  self._auto_resume_due()  # a restored automatic pause whose time has passed
  # The timer ended a wait at the gate: that spawn gives its slot back only once its pool
  # task has run, so wait for the slot in the next spawn rather than for a wake-up.
  freeing = False
  while not self._stopping:
   self._pump(sched)
   self._journal.step_end()
   if ready and (freeing or not sched.full):
    # A free slot but a closed gate: wait for admission there, where a resume admits the
    # worker in one wake-up. The ticket leaves the queue first so that a worker finishing
    # meanwhile (which pumps too) cannot start it a second time. It starts in the step
    # that admits it (`on_admit`): the worker's own when a resume admits it. (With no
    # free slot the workers running pass theirs on as they finish (`_work`), or wake this
    # loop when they cannot.)
    freeing = False
    self._parked = ticket = ready.popleft()
    with self._timed() as timer:
     try:
      await sched.spawn(
       self._work, ticket, name=ticket.id, on_admit=partial(self._start_parked, ticket)
      )
     except BaseException:
      if self._parked is ticket:  # not admitted: first in line again
       self._parked = None
       ready.appendleft(ticket)
      raise
    if timer.cancelled_caught:
     freeing = True
     self._auto_resume_due()
    continue
   if (
    not ready and not self._table.running and engine.is_settled and not engine.awaiting_approval()
   ):
    if not self._linger:
     return
    self._phase = MmaStatus.DONE if engine.is_done else self._end_phase()
   freeing = False  # no spawn to wait for it: the slot comes back as a worker's would
   self._wake = wake = Event()
   with self._timed() as timer:
    await wake.wait()
   if timer.cancelled_caught:
    self._auto_resume_due()

 def _timed(self) -> CancelScope:
  # The automatic resume's timer: the run loop waits (for a completion, or at the gate) in
  # a scope whose deadline is when the automatic pause ends, inf otherwise; `_arm` moves
  # it when that changes. No task of its own, so nothing to end with the run, and no task
  # switch on the way of a ticket.
  self._timer = timer = CancelScope(deadline=self._pause.deadline())
  return timer

 def _arm(self) -> None:
  # The end of the automatic pause may have changed: move the run loop's deadline. On the
  # loop.
  timer = self._timer
  if timer is not None and not timer.cancel_called:
   timer.deadline = self._pause.deadline()

 def _auto_resume_due(self) -> None:
  # The timer fired (or the run begins): resume if the automatic pause's time has come.
  # Else (it was moved, or a person paused) the loop waits again, with the new deadline.
  if self._pause.auto_resume(due=True):
   self._table.touch()
   self._pause_changed(Change.RESUMED, _RESUMED_BY_ITSELF)

 def _pause_changed(
  self,
  change: Change,
  detail: str | None = None,
  at_pause: tuple[str, ...] = (),
  auto_resume_at: float | None = None,
  *,
  by_person: bool = True,
 ) -> None:
  # On the loop, for any pause or resume: tell the listeners, move the timer.
  self._journal.pipeline(
   change, detail, at_pause, auto_resume_at=auto_resume_at, by_person=by_person
  )
  self._arm()

 def _spend(self, tokens: int) -> None:
  # On the loop: count an attempt's tokens; reaching the budget pauses here, in the step
  # of the completion, so that its worker's handoff starts nothing.
  # When every ticket has completed there is nothing left to hold back: no pause (a
  # finished pipeline that reads "paused" would only puzzle; the total still says it).
  paused = self._pause.spend(tokens, pause=not self.engine.is_done)
  self._table.touch()
  if paused is not None:
   reason, at_pause = paused
   self._pause_changed(Change.PAUSED, reason, at_pause, by_person=False)

 def _pump(self, sched: Scheduler, *, handoff: bool = False, after_turn: bool = False) -> None:
  # Start every ready ticket that can start right now, in order, without waiting: each in
  # the step that released it (no await in between), so that a store commits the
  # completion and this start together before the worker runs. `handoff`: called by a
  # finishing worker, whose task then runs the first of them (Scheduler.try_spawn), after
  # a loop turn if `after_turn`.
  if self._stopping:  # even if someone resumes meanwhile
   return
  ready = self._ready
  ready.extend(self.engine.tick())
  work, start = self._work, self._start_first
  while ready:
   ticket = ready[0]
   if not sched.try_spawn(
    work, ticket, name=ticket.id, on_admit=start, handoff=handoff, after_turn=after_turn
   ):
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
  if self._inputs_of:  # else nothing to do, at no cost (no pipeline without them pays)
   ids = self._inputs_of.get(ticket.id)
   if ids:
    # Its dependencies, all completed, so all kept; one a store has not (an empty output
    # is not stored, nor one completed before outputs were) reads as empty.
    get = self._outputs.get
    ticket.inputs = {tid: get(tid, "") for tid in ids}
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
   except PausePipeline as exc:
    # The pause first, in this step: the finally below starts nothing (nor does any other
    # worker from now on); then the ticket waits for the resume, no retry spent.
    changed, reason, at, at_pause = self._pause.auto_pause(exc.reason, exc.resume_after)
    if changed:
     self._table.touch()
     self._pause_changed(Change.PAUSED, reason, at_pause, at, by_person=False)
    self._interrupted(ticket, exc.reason, exc.usage)  # its tokens are recorded too
    if exc.usage is not None:
     self._spend(exc.usage.total)
   except WorkInterrupted as exc:
    self._interrupted(ticket, exc.reason)
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
    usage: Usage | None = None
    if result is not None:
     exit_code, output, usage = result.exit_code, result.output, result.usage
    tokens = None if usage is None else usage.total
    self._table.finished(ticket, exit_code, output, tokens)
    if self._needed and ticket.id in self._needed:
     self._outputs[ticket.id] = output
    self.engine.complete(ticket.id)
    self._journal.completed(ticket, exit_code, output, usage)
    if tokens is not None:
     self._spend(tokens)
  finally:
   if ticket.inputs is not None:  # kept by the driver for the attempt only
    ticket.inputs = None
   sched = self._pause.sched
   # Being cancelled, this starts nothing: Scheduler never admits into a cancelled group
   # (what ended the restart storm); the tickets it hands out go back at the run's end.
   handed_off = False
   if sched is not None:  # start the dependents this may have released, right here
    # This returns right after, as a handoff asks: the first ticket started takes over
    # this worker's slot and runs next in its task. With a journal that batches and other
    # workers in flight, it runs after a loop turn: those finishing in this turn release
    # theirs first, so the first of the round flushes once for all (not once a ticket).
    # Alone (a chain), nothing could join that flush: it runs at once.
    self._pump(sched, handoff=True, after_turn=self._journal.batches and sched.in_flight > 1)
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
   self._journal.changed(ticket, Change.RETRYING, error, exit_code, output=output or None)
   return
  blocked = engine.fail(ticket.id, error)
  self._journal.changed(ticket, Change.FAILED, error, exit_code, output=output or None)
  self._changed_others(blocked)

 def _interrupted(self, ticket: Ticket, reason: str, usage: Usage | None = None) -> None:
  # The attempt was lost, or paused the pipeline: not the ticket's fault, so todo again
  # with no retry spent (its attempt number stays used).
  self._table.finished(ticket, None, "")
  self.engine.requeue(ticket.id, refund=True)
  self._journal.changed(ticket, Change.INTERRUPTED, reason, usage=usage)

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

 def _build_snapshot(self, *, rows: bool | Literal["final"] = True) -> Snapshot:
  # The driver's and the control's part of a snapshot; the cache adds the DAG and rows.
  state = self._pause.read()
  paused, reason, paused_at, elapsed, sched = state[:5]
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
   ready=(*parked, *self._ready),  # tickets: the snapshot reads their ids when asked
   elapsed=elapsed,
   spawned=sched.spawned if sched is not None else self._spawned,
   max_workers=self._max_workers,
   error=self._error,
   stopping=self._stopping,
   paused_by_person=state.by_person,
   auto_resume_at=state.resume_at,
   tokens_used=state.tokens_used,
   token_budget=state.token_budget,
  )


def _inputs_of(tickets: Collection[Ticket]) -> dict[str, tuple[str, ...]]:
 # The tickets whose work reads dependencies' outputs, and their ids. Only work types that
 # override `WorkSpec.inputs` are asked, so a pipeline of shell, call and sleep tickets
 # costs one set of types here (100,000 tickets: about 3 ms).
 base = WorkSpec.inputs
 kinds = {type(t.work) for t in tickets}
 if not any(issubclass(k, WorkSpec) and k.inputs is not base for k in kinds):
  return {}
 found: dict[str, tuple[str, ...]] = {}
 for t in tickets:
  work = t.work
  if isinstance(work, WorkSpec):
   ids = work.inputs
   if ids:
    found[t.id] = ids
 return found


__all__ = [
 "SNAPSHOT_WAIT",
 "Change",
 "ConductorEngine",
 "Counts",
 "MmaStatus",
 "RunningWorker",
 "Snapshot",
 "TicketRow",
 "TokenBudgetSpent",
 "Transition",
 "Worker",
 "describe_work",
]
