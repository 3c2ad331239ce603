"""`Scheduler`: a bounded, pausable spawner over an anyio task group."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVarTuple, Unpack

from anyio import CancelScope, Event, Semaphore, WouldBlock, create_task_group
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._gate import Gate

PosArgs = TypeVarTuple("PosArgs")


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

 A worker that raises propagates through the task group and cancels its siblings, as in
 any anyio task group: catch inside the worker what should not stop the others. Once the
 group is cancelled (`cancel()`, or a worker raised), nothing is admitted any more, ever:
 `try_spawn` refuses and `spawn` raises, so a worker that starts more work while it is being
 cancelled cannot restart its siblings in a loop.

 About 310 lines, most of them the contracts above and below: admission, parking and
 draining share one lock and one slot semaphore, so they stay one class.
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
  try:
   # Workers still finishing may spawn more (while not paused) until the group is done.
   return await tg.__aexit__(exc_type, exc, tb)
  finally:
   self._tg = None

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
 def running_at_pause(self) -> tuple[str, ...]:
  """Names of the workers that were in flight when the current (or last) pause began."""
  return self._running_at_pause

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
  """Wait for a free slot and an open gate, then start `fn(*args)` in the task group.

  Returns as soon as the worker is admitted (not when it finishes). Cancelling a parked
  spawn starts nothing and gives its slot back.

  `on_admit()`, if given, runs in the step that admits the worker, before `fn` runs: the
  caller's own step when the worker is admitted at once, or the worker's own task's step
  when a `resume()` admits it (see `_park_then_run`). So a caller can mark its work started
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
  # Closed. Start the worker's own task now, parked at the gate: resume() then wakes the
  # worker itself, which admits itself and runs `fn` in the same step. (Parking this spawner
  # instead would cost a second task start after every resume: 1.6x the wake-up floor.)
  parked = _ParkedSpawn()
  tg.start_soon(self._park_then_run, fn, args, name, on_admit, parked, name=name)
  try:
   await parked.admitted.wait()
  except BaseException:
   if not parked.admitted.is_set():
    parked.scope.cancel()  # it starts nothing and gives the slot back
   raise
  if parked.error is not None:
   raise parked.error

 async def _park_then_run(
  self,
  fn: Callable[..., Awaitable[Any]],
  args: tuple[Any, ...],
  name: str,
  on_admit: Callable[[], object] | None,
  parked: _ParkedSpawn,
 ) -> None:
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
      key = self._admit(name)
    finally:
     self._parked -= 1
  finally:
   if key is None:
    assert self._slots is not None
    self._slots.release()
  if key is None:
   return
  if on_admit is not None:
   try:
    on_admit()
   except BaseException as exc:  # handed to the spawner, which raises it (see spawn)
    self._release(key)
    parked.error = exc
    parked.admitted.set()
    return
  parked.admitted.set()
  await self._run(fn, args, key)

 def try_spawn(
  self,
  fn: Callable[[*PosArgs], Awaitable[Any]],
  *args: *PosArgs,
  name: str | None = None,
  on_admit: Callable[[], object] | None = None,
 ) -> bool:
  """Start `fn(*args)` now if a slot is free and the gate is open; never waits.

  Returns whether it started. The same admission as `spawn` (`on_admit` included: it runs
  here, before this returns True), minus the waiting: a driver that learns of new work
  inside a finishing worker can start it without a task switch. Call from the scheduler's
  loop.
  """
  slots = self._slots
  if slots is not None and (slots.value == 0 or self.paused):  # cheap refusals first:
   return False  # raising WouldBlock is not (and this is the common refusal)
  tg, slots = self._live("try_spawn")
  if tg.cancel_scope.cancel_called:  # the invariant: never start into a cancelled group
   return False
  try:
   slots.acquire_nowait()
  except WouldBlock:
   return False
  name = _name_of(fn, name)
  key = self._admit(name)
  if key is None:
   slots.release()
   return False
  self._launch(tg, fn, args, key, name, on_admit=on_admit)
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
 ) -> None:
  # Start an admitted worker from the admitting step; `on_admit` first (see spawn).
  if on_admit is not None:
   try:
    on_admit()
   except BaseException:
    self._release(key)
    raise
  tg.start_soon(self._run, fn, args, key, name=name)

 async def _run(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], key: int) -> None:
  try:
   await fn(*args)
  finally:
   self._release(key)

 def _release(self, key: int) -> None:
  # An admitted worker is done (or never ran): free its slot, and wake wait_drained().
  with self._lock:
   del self._running[key]
   idle = not self._running
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


class _ParkedSpawn:
 """A spawn whose worker's own task waits at the gate (see `Scheduler.spawn`)."""

 __slots__ = ("admitted", "error", "scope")

 def __init__(self) -> None:
  self.admitted = Event()  # set once the worker is admitted (or its on_admit failed)
  self.scope = CancelScope()  # cancelled when the spawner gives up before admission
  self.error: BaseException | None = None  # what on_admit raised, for the spawner to raise


def _name_of(fn: Callable[..., object], name: str | None) -> str:
 return name if name is not None else getattr(fn, "__qualname__", None) or repr(fn)
