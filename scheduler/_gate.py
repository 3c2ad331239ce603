"""`Gate`: a resumable, thread-safe gate that parks tasks without polling."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVarTuple, Unpack

from anyio import Event
from anyio.lowlevel import checkpoint

from ._loop import LoopHandle

Args = TypeVarTuple("Args")


class _Waiter:
 """One parked `wait()`: an anyio Event in the waiter's own loop, and a way to reach it."""

 __slots__ = ("event", "loop")

 def __init__(self) -> None:
  self.event = Event()
  self.loop = LoopHandle()

 def wake(self) -> None:
  # On the waiter's own thread set the event at once: a waiter opened and then cancelled
  # in the same step must count as woken, exactly like anyio.Event. From any other thread
  # hand it to the loop; if that loop is gone there is nobody left to wake.
  if self.loop.in_loop_thread:
   self.event.set()
  else:
   self.loop.call_soon(self.event.set)


@dataclass(frozen=True, slots=True)
class GateStatistics:
 is_open: bool
 tasks_waiting: int


class Gate:
 """A gate that tasks wait at while it is closed; reusable forever.

 `await wait()` returns at once (after a checkpoint, like `anyio.Event.wait`) while the gate
 is open. While it is closed the task is parked on an event of its own loop, with no timer
 and no polling, until `open()` wakes it. `open()` and `close()` are idempotent, may be
 called from any thread, and never wait for an event loop: a foreign thread hands the
 wake-up to the loop's own thread-safe hook and returns. Waiters may live on asyncio and
 trio loops at once; a gate may be created before any loop runs.

 Unlike `anyio.Event` it can be closed again, so it is not a one-shot latch: `wait()`
 returns once the gate has been open at some moment after the call began; it may be closed
 again by the time the task runs. Code that must act only while the gate is open (start a
 worker) uses `try_enter`, which decides under the gate's lock.

 What it deliberately does not do: it does not queue tasks fairly or wake them one at a
 time (opening releases everyone, as an Event does), and it never blocks `close()` until
 tasks that already passed have finished: that is the caller's bookkeeping (see Scheduler).
 """

 __slots__ = ("_lock", "_open", "_waiters")

 def __init__(self, open: bool = True, *, lock: threading.RLock | None = None) -> None:
  # `lock` guards `_open` and `_waiters`. It is never held across an await, only for a few
  # attribute updates. Share one (like threading.Condition) when your own bookkeeping must
  # change atomically with the gate; it must then be reentrant.
  self._lock: AbstractContextManager[object] = lock if lock is not None else threading.Lock()
  self._open = open
  self._waiters: dict[_Waiter, None] = {}  # insertion-ordered set; only while closed

 @property
 def is_open(self) -> bool:
  return self._open

 def open(self) -> None:
  """Open the gate and wake every parked waiter. Idempotent; any thread; non-blocking."""
  with self._lock:
   if self._open:
    return
   self._open = True
   waiters, self._waiters = self._waiters, {}
  for waiter in waiters:
   waiter.wake()

 def close(self) -> None:
  """Close the gate: from now on `wait()` parks. Idempotent; any thread; non-blocking.

  Once `close()` has returned, `try_enter` fails on every thread until `open()`.
  """
  with self._lock:
   self._open = False

 def try_enter(self, action: Callable[[Unpack[Args]], object] | None = None, *args: *Args) -> bool:
  """Run `action(*args)` and return True if the gate is open, atomically with respect to
  `close()`; return False if it is closed. Any thread; never blocks for long.

  This is the linearization point: an action that ran happened before any `close()` that
  returns after it, so a `close()` that has returned excludes every later action (the
  `Scheduler` admits its workers here). `action` runs under the gate's lock: keep it to a
  few attribute updates. If it raises, the exception propagates and nothing was entered.
  """
  with self._lock:
   if not self._open:
    return False
   if action is not None:
    action(*args)
   return True

 async def wait(self) -> None:
  """Return once the gate is open; park without polling while it is closed.

  Cancellable: a cancelled waiter is unregistered, so no waiter ever leaks; a waiter that
  was woken before its scope got cancelled counts as woken (returns normally).
  """
  if self._open:
   await checkpoint()
   return
  waiter = _Waiter()
  with self._lock:
   parked = not self._open
   if parked:
    self._waiters[waiter] = None
  if not parked:
   await checkpoint()
   return
  try:
   await waiter.event.wait()
  finally:
   if not waiter.event.is_set():
    with self._lock:
     self._waiters.pop(waiter, None)

 def statistics(self) -> GateStatistics:
  """How many tasks are parked here right now (for debugging and tests)."""
  with self._lock:
   return GateStatistics(self._open, len(self._waiters))
