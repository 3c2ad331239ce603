"""`Scheduler`: a bounded, pausable spawner over a pool of long-lived worker tasks."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVarTuple, Unpack

from anyio import CancelScope, Event, Semaphore, WouldBlock, create_task_group
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._gate import Gate

PosArgs = TypeVarTuple("PosArgs")

HANDOFF_CHECKPOINT = 16
"""A pool task that runs this many handed-off workers in a row yields to the loop once."""


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
 paused: bool
 max_workers: int
 running: tuple[str, ...]
 spawned: int
 parked_spawns: int


class Scheduler:
 """Starts workers in an anyio task group, at most `max_workers` at once, behind a gate.

 `async with Scheduler(max_workers=4) as s: await s.spawn(fn, arg, name="x")`.

 Guarantees:

 - `spawn` waits for a free slot, then for the gate, then starts the worker; it never
   polls. The decision "the gate is open, start this worker" is the gate's `try_enter`,
   under the lock that `pause()` holds while it closes the gate, so admission is
   linearizable: once `pause()` has returned, on any thread, no worker is admitted until
   `resume()`. A worker admitted before that counts as running at the pause and finishes
   normally. `on_admit` tells the caller, in the admitting step, that its worker was
   admitted (see `spawn`).
 - `pause()`, `resume()` are idempotent, callable from any thread, and never wait for the
   event loop (they hold the lock for a few attribute updates at most). After the
   scheduler has exited they are harmless no-ops.
 - `paused`, `running`, `running_at_pause` and `spawned` may be read from any thread.

 Workers run in a pool of at most `max_workers` long-lived tasks of the group (`_serve`),
 started as needed: an admitted worker is handed to an idle task of the pool (one wake-up;
 a spawn that finds the gate closed parks such a task at the gate), or, with
 `try_spawn(handoff=True)`, runs next in the task of the worker finishing (no wake-up at
 all), instead of starting a task of its own, which costs several times more. So workers
 share their task's context variables and task name, one after another. A worker that is
 cancelled, or whose group is, still gets to run if it was admitted: it sees the
 cancellation at its first checkpoint, as a task started just before the cancel would.

 A worker that raises propagates through the task group and cancels its siblings, as in
 any anyio task group: catch inside the worker what should not stop the others. Once the
 group is cancelled (`cancel()`, or a worker raised), nothing is admitted any more, ever:
 `try_spawn` refuses and `spawn` raises, so a worker that starts more work while it is being
 cancelled cannot restart its siblings in a loop.

 About 490 lines, most of them the contracts above and below: admission, parking, the
 pool and draining share one lock and one slot semaphore, so they stay one class.
 """

 def __init__(self, max_workers: int = 4, *, paused: bool = False) -> None:
  if not isinstance(max_workers, int) or max_workers < 1:
   raise ValueError(f"max_workers must be a whole number >= 1, got {max_workers!r}")
  self._max_workers = max_workers
  # One lock, shared with the gate, guards: the gate's state, `_running`, `_spawned` and
  # `_running_at_pause`. Reentrant so that pause() can close the gate while holding it.
  # Never held across an await.
  self._lock = threading.RLock()
  self._gate = Gate(not paused, lock=self._lock)
  self._running: dict[int, str] = {}  # admitted and not yet finished: key -> name
  self._spawned = 0  # workers admitted so far; also the key of the newest one
  self._running_at_pause: tuple[str, ...] = ()
  # Loop-side state, touched only from the scheduler's own loop:
  self._tg: TaskGroup | None = None
  self._slots: Semaphore | None = None
  self._drained: Event | None = None  # set when `_running` empties; made on demand
  self._parked = 0  # spawns waiting at the gate
  self._entered = False
  # The pool (see `_hand` and `_serve`). Every job holds a slot, so there are never more
  # jobs than tasks to run them.
  self._tasks = 0  # pool tasks started and not ended
  self._idle: list[_Idle] = []  # pool tasks waiting for a job, the latest last
  self._queue: deque[_Job] = deque()  # jobs handed over while no task was idle
  self._closing = False  # the `async with` body is done: idle tasks end once all are idle

 # -- the life cycle -------------------------------------------------------------------

 async def __aenter__(self) -> Self:
  if self._entered:
   raise RuntimeError("a Scheduler can be entered only once; create a new one per run")
  self._entered = True
  self._slots = Semaphore(self._max_workers, fast_acquire=True)
  tg = create_task_group()
  await tg.__aenter__()
  self._tg = tg
  return self

 async def __aexit__(
  self,
  exc_type: type[BaseException] | None,
  exc: BaseException | None,
  tb: TracebackType | None,
 ) -> bool | None:
  tg = self._tg
  assert tg is not None
  self._closing = True
  self._dismiss_if_idle()
  try:
   # Workers still finishing may spawn more (while not paused) until the group is done.
   return await tg.__aexit__(exc_type, exc, tb)
  finally:
   self._tg = None
   # Jobs nobody could run (see _leave; not expected): admitted, never run. Their slots
   # and `running` entries go.
   while self._queue:
    job = self._queue.popleft()
    if job.key is not None:
     self._release(job.key)
    else:
     assert self._slots is not None
     self._slots.release()

 def cancel(self) -> None:
  """Cancel every running worker and parked spawn. Call from the scheduler's loop."""
  if self._tg is not None:
   self._tg.cancel_scope.cancel()

 @property
 def cancelled(self) -> bool:
  """The task group was cancelled, or the scheduler has exited: nothing starts any more.

  Read it on the scheduler's loop.
  """
  tg = self._tg
  return tg.cancel_scope.cancel_called if tg is not None else self._entered

 # -- pause and resume: any thread -----------------------------------------------------

 def pause(self) -> None:
  """Stop admitting workers; in-flight ones go on. Idempotent, any thread, non-blocking."""
  with self._lock:
   if self._gate.is_open:
    self._running_at_pause = tuple(self._running.values())
   self._gate.close()

 def resume(self) -> None:
  """Admit workers again and wake parked spawns. Idempotent, any thread, non-blocking."""
  self._gate.open()

 @property
 def paused(self) -> bool:
  return not self._gate.is_open

 @property
 def max_workers(self) -> int:
  return self._max_workers

 @property
 def spawned(self) -> int:
  """How many workers have been admitted so far. Any thread."""
  return self._spawned

 @property
 def running(self) -> tuple[str, ...]:
  """Names of the workers admitted and not yet finished, oldest first. Any thread."""
  with self._lock:
   return tuple(self._running.values())

 @property
 def in_flight(self) -> int:
  """How many workers are admitted and not yet finished (`len(running)`, without the
  copy). Any thread."""
  return len(self._running)

 @property
 def running_at_pause(self) -> tuple[str, ...]:
  """Names of the workers that were in flight when the current (or last) pause began."""
  return self._running_at_pause

 @property
 def full(self) -> bool:
  """Every slot is taken (by workers admitted or spawns parked). On the scheduler's loop."""
  slots = self._slots
  return slots is not None and slots.value == 0

 @property
 def handed_off(self) -> bool:
  """The calling worker has handed its slot to a successor in this step (see `try_spawn`).

  On the scheduler's loop, from a worker; False anywhere else.
  """
  serving = _serving.get(None)
  return (
   serving is not None and serving.busy and serving.scheduler is self and serving.next is not None
  )

 def statistics(self) -> SchedulerStatistics:
  with self._lock:
   return SchedulerStatistics(
    self.paused, self._max_workers, tuple(self._running.values()), self._spawned, self._parked
   )

 # -- spawning: the scheduler's own loop ----------------------------------------------

 async def spawn(
  self,
  fn: Callable[[Unpack[PosArgs]], Awaitable[Any]],
  *args: *PosArgs,
  name: str | None = None,
  on_admit: Callable[[], object] | None = None,
 ) -> None:
  """Wait for a free slot and an open gate, then start `fn(*args)` in the pool.

  Returns as soon as the worker is admitted (not when it finishes). Cancelling a parked
  spawn starts nothing and gives its slot back.

  `on_admit()`, if given, runs in the step that admits the worker, before `fn` runs: the
  caller's own step when the worker is admitted at once, or the pool task's own step
  when a `resume()` admits it (see `_admit_parked`). So a caller can mark its work started
  exactly once, whoever admitted it. It must not await and should not raise: if it does,
  the admission is undone (`fn` never runs, the slot is freed) and `spawn` raises it.
  """
  tg, slots = self._live("spawn")
  name = _name_of(fn, name)
  await slots.acquire()
  if tg.cancel_scope.cancel_called:
   slots.release()
   await checkpoint_if_cancelled()  # a spawner inside the group is cancelled with it
   raise RuntimeError("Scheduler.spawn(): the scheduler was cancelled; nothing starts any more")
  key = self._admit(name)
  if key is not None:
   self._launch(tg, fn, args, key, name, on_admit=on_admit)
   return
  # Closed. Hand the job to a task of the pool now, which waits at the gate: resume() then
  # wakes that task, which admits the worker and runs `fn` in the same step. (Parking this
  # spawner instead would cost a second wake-up after every resume: 1.6x the floor.)
  parked = _ParkedSpawn()
  self._hand(tg, _Job(fn, args, name, None, on_admit=on_admit, parked=parked))
  try:
   await parked.admitted.wait()
  except BaseException:
   if not parked.admitted.is_set():
    parked.scope.cancel()  # it starts nothing and gives the slot back
   raise
  if parked.error is not None:
   raise parked.error

 async def _admit_parked(self, job: _Job, serving: _Serving | None) -> None:
  # A pool task holding a spawn that found the gate closed (see spawn): wait at the gate,
  # admit the worker, run it. The spawner raises what on_admit raised.
  parked = job.parked
  assert parked is not None
  key: int | None = None
  try:
   with parked.scope:
    self._parked += 1
    try:
     while key is None:
      await self._gate.wait()
      # A spawn cancelled after the gate woke us must still start nothing; nor may one
      # whose group was cancelled meanwhile (an open gate does not checkpoint).
      if parked.scope.cancel_called or self.cancelled:
       break
      key = self._admit(job.name)
    finally:
     self._parked -= 1
  finally:
   if key is None:
    assert self._slots is not None
    self._slots.release()
  if key is None:
   return
  if job.on_admit is not None:
   try:
    job.on_admit()
   except BaseException as exc:  # handed to the spawner, which raises it (see spawn)
    self._release(key)
    parked.error = exc
    parked.admitted.set()
    return
  parked.admitted.set()
  await self._run(job.fn, job.args, key, serving)

 def try_spawn(
  self,
  fn: Callable[[*PosArgs], Awaitable[Any]],
  *args: *PosArgs,
  name: str | None = None,
  on_admit: Callable[[], object] | None = None,
  handoff: bool = False,
  after_turn: bool = False,
 ) -> bool:
  """Start `fn(*args)` now if a slot is free and the gate is open; never waits.

  Returns whether it started. The same admission as `spawn` (`on_admit` included: it runs
  here, before this returns True), minus the waiting: a driver that learns of new work
  inside a finishing worker can start it without a task switch. Call from the scheduler's
  loop.

  `handoff=True` is a promise from a worker of this scheduler that it returns right after
  this call, with no await in between. Then the new worker takes over the caller's slot
  (so it needs no free one) and runs next in the caller's own task, with no wake-up at all.
  Only the first such call of a worker's step hands off; later ones, and calls from
  anywhere else, are plain `try_spawn`s. For that one step the caller and its successor
  are both admitted (`running` may name `max_workers + 1`), but they run one after the
  other. A worker that awaits after all delays its successor until it returns.

  `after_turn=True` (with a handoff) lets the loop turn once before the successor runs: the
  steps already due run first, e.g. the other workers of a round finishing, so that a
  caller that must do something before each worker runs (a commit) does it once for the
  round. The successor waits in the pool's queue meanwhile (the next pool task free runs
  it): a yield, not an event to wake.
  """
  tg, slots = self._tg, self._slots
  if tg is None or slots is None:
   tg, slots = self._live("try_spawn")
  if not self._gate.is_open:  # cheap refusals first: raising WouldBlock is not
   return False
  serving = _serving.get(None) if handoff else None
  if serving is not None and not (serving.busy and serving.scheduler is self and not serving.next):
   serving = None
  if serving is None and slots.value == 0:  # the common refusal
   return False
  if tg.cancel_scope.cancel_called:  # the invariant: never start into a cancelled group
   return False
  if serving is None:
   try:
    slots.acquire_nowait()
   except WouldBlock:
    return False
  if name is None:
   name = _name_of(fn, name)
  key = self._admit(name)
  if key is None:
   if serving is None:
    slots.release()
   return False
  self._launch(tg, fn, args, key, name, on_admit=on_admit, successor_of=serving)
  if serving is not None:
   serving.after_turn = after_turn
  return True

 def _live(self, method: str) -> tuple[TaskGroup, Semaphore]:
  tg, slots = self._tg, self._slots
  if tg is None or slots is None:
   raise RuntimeError(
    f"Scheduler.{method}() needs a running scheduler: "
    f"`async with Scheduler(max_workers=N) as s: ... s.{method}(fn) ...`"
   )
  return tg, slots

 def _admit(self, name: str) -> int | None:
  # The linearization point of admission is the gate's own (`Gate.try_enter`), whose lock
  # pause() holds while it closes the gate: see the class docstring. The key is read after
  # the lock is released; only this loop's thread admits, so no admission comes between.
  if self._gate.try_enter(self._add_running, name):
   return self._spawned
  return None

 def _add_running(self, name: str) -> None:
  # Under the gate's lock, from _admit.
  self._spawned = key = self._spawned + 1
  self._running[key] = name

 def _launch(
  self,
  tg: TaskGroup,
  fn: Callable[..., Awaitable[Any]],
  args: tuple[Any, ...],
  key: int,
  name: str,
  *,
  on_admit: Callable[[], object] | None,
  successor_of: _Serving | None = None,
 ) -> None:
  # Start an admitted worker from the admitting step; `on_admit` first (see spawn).
  # `successor_of`: the pool task whose worker hands off to this one (see try_spawn).
  if on_admit is not None:
   try:
    on_admit()
   except BaseException:
    self._release(key, slot=successor_of is None)
    raise
  job = _Job(fn, args, name, key)
  if successor_of is not None:
   successor_of.next = job  # runs in that task once its worker returns, on its slot
  else:
   self._hand(tg, job)

 # -- the pool: the scheduler's own loop ------------------------------------------------

 def _hand(self, tg: TaskGroup, job: _Job) -> None:
  # Give a job to the latest idle task (one wake-up), else to a new task while the pool is
  # not full, else to the queue, which a busy task empties before it idles: every job
  # holds a slot, so a full pool with no idle task has a task that will take it.
  if self._idle:
   idle = self._idle.pop()
   idle.job = job
   idle.event.set()
  elif self._tasks < self._max_workers:
   self._tasks += 1
   tg.start_soon(self._serve, job, name=f"{type(self).__name__} worker {self._tasks}")
  else:
   self._queue.append(job)

 async def _serve(self, job: _Job | None) -> None:
  # One task of the pool: run jobs until dismissed (the scheduler closing with every task
  # idle) or cancelled.
  serving = _Serving(self)
  _serving.set(serving)  # this task's own context: what try_spawn(handoff=True) finds
  in_a_row = 0  # handed-off jobs run since the loop last turned
  try:
   while job is not None:
    serving.busy = True
    try:
     if job.key is None:
      await self._admit_parked(job, serving)
     else:  # `_run`, inlined: one coroutine less to pass through on every resumption
      try:
       await job.fn(*job.args)
      finally:
       # A successor it handed off to (try_spawn) has taken over its slot.
       self._release(job.key, slot=serving.next is None)
    finally:
     serving.busy = False
    job, serving.next = serving.next, None
    if job is not None:
     in_a_row += 1
     if in_a_row < HANDOFF_CHECKPOINT and not serving.after_turn:
      continue
     # Workers that never await would hold the loop for a whole chain: let it turn. The
     # job waits in the queue meanwhile (any task may take it).
     self._queue.append(job)
     await checkpoint()
    in_a_row = 0
    if self._queue:
     job = self._queue.popleft()
     continue
    idle = serving.idle = _Idle()
    self._idle.append(idle)
    self._dismiss_if_idle()
    await idle.event.wait()
    job, serving.idle = idle.job, None
  except BaseException:
   self._leave(serving)
   raise
  finally:
   self._tasks -= 1

 async def _do(self, job: _Job) -> None:
  # A job outside the pool (see _leave).
  if job.key is None:
   await self._admit_parked(job, None)
  else:
   await self._run(job.fn, job.args, job.key)

 def _leave(self, serving: _Serving) -> None:
  # A pool task ends by an exception (cancelled, or a worker raised): the jobs it holds,
  # and the queue's if it was the last task, each get a task of their own, as if started
  # before the cancel: a worker so sees the cancellation at its first checkpoint (and its
  # caller can record it interrupted) instead of silently never running.
  tg = self._tg
  held = [serving.next] if serving.next is not None else []
  serving.next = None
  idle = serving.idle
  if idle is not None:
   if not idle.event.is_set():  # still listed as idle (whoever sets it unlists it)
    self._idle.remove(idle)
   elif idle.job is not None:
    held.append(idle.job)
  if self._tasks == 1:
   held.extend(self._queue)
   self._queue.clear()
  if tg is None:  # cannot happen while a task of the group runs; belt and braces
   self._queue.extend(held)
   return
  for job in held:
   tg.start_soon(self._do, job, name=job.name)

 def _dismiss_if_idle(self) -> None:
  # Once the scheduler is closing and no task is busy, nothing can hand out a job any more
  # (only workers may spawn then): end the pool, so that the task group can finish.
  if self._closing and len(self._idle) == self._tasks:
   idle, self._idle = self._idle, []
   for task in idle:
    task.event.set()  # with no job: it ends

 async def _run(
  self,
  fn: Callable[..., Awaitable[Any]],
  args: tuple[Any, ...],
  key: int,
  serving: _Serving | None = None,
 ) -> None:
  # `serving`: the pool task this runs in, if any.
  try:
   await fn(*args)
  finally:
   # A successor it handed off to (try_spawn) has taken over its slot.
   self._release(key, slot=serving is None or serving.next is None)

 def _release(self, key: int, *, slot: bool = True) -> None:
  # An admitted worker is done (or never ran): free its slot (unless it was handed over),
  # and wake wait_drained().
  with self._lock:
   del self._running[key]
   idle = not self._running
  if slot:
   assert self._slots is not None
   self._slots.release()
  if idle and self._drained is not None:
   self._drained.set()
   self._drained = None

 async def wait_drained(self) -> None:
  """Return once no worker is in flight (at once if none is). Never polls.

  Call from the scheduler's loop. With the scheduler paused this is "the pause has fully
  taken effect": every worker running at the pause has finished.
  """
  while self._running:
   if self._drained is None:
    self._drained = Event()
   await self._drained.wait()
  await checkpoint()


class _Job:
 """A worker handed to the pool: admitted (`key`), or still to wait at the gate (`parked`)."""

 __slots__ = ("args", "fn", "key", "name", "on_admit", "parked")

 def __init__(
  self,
  fn: Callable[..., Awaitable[Any]],
  args: tuple[Any, ...],
  name: str,
  key: int | None,
  *,
  on_admit: Callable[[], object] | None = None,
  parked: _ParkedSpawn | None = None,
 ) -> None:
  self.fn, self.args, self.name, self.key = fn, args, name, key
  self.on_admit, self.parked = on_admit, parked  # only while not admitted yet


class _Serving:
 """What a pool task holds, in its own context: the successor a worker handed it, or the
 place it idles at."""

 __slots__ = ("after_turn", "busy", "idle", "next", "scheduler")

 def __init__(self, scheduler: Scheduler) -> None:
  self.scheduler = scheduler
  # A handoff is taken only while a worker runs here (the context may outlive that, in
  # tasks a worker started elsewhere), and only one (the task runs it next).
  self.busy = False
  self.next: _Job | None = None  # admitted; runs in this task right after the current job
  self.after_turn = False  # ... once the loop has turned (see try_spawn)
  self.idle: _Idle | None = None  # while the task idles


_serving: ContextVar[_Serving] = ContextVar("_serving")


class _Idle:
 """An idle task of the pool: set `job` (None ends the task), then `event`."""

 __slots__ = ("event", "job")

 def __init__(self) -> None:
  self.event = Event()
  self.job: _Job | None = None


class _ParkedSpawn:
 """A spawn whose pool task waits at the gate for it (see `Scheduler.spawn`)."""

 __slots__ = ("admitted", "error", "scope")

 def __init__(self) -> None:
  self.admitted = Event()  # set once the worker is admitted (or its on_admit failed)
  self.scope = CancelScope()  # cancelled when the spawner gives up before admission
  self.error: BaseException | None = None  # what on_admit raised, for the spawner to raise


def _name_of(fn: Callable[..., object], name: str | None) -> str:
 return name if name is not None else getattr(fn, "__qualname__", None) or repr(fn)
