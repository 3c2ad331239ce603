"""`ThreadBridge`: how plain threads (a GUI) and an event loop talk without blocking."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ._loop import LoopHandle

S = TypeVar("S")

_BEFORE, _ATTACHED, _DETACHED = 0, 1, 2  # a bridge's life, in this order, once


class ThreadBridge(Generic[S]):
 """Commands in, snapshots out, between one event loop and any number of plain threads.

 A bridge lives once: created anywhere, `attach()`ed by the loop when it runs, `detach()`ed
 by the loop when its work is over.

 - Commands. Any thread calls `post(fn)` to have `fn()` run in the loop, in the order
   posted. Before `attach()` the commands are held, and `attach()` runs them, in order,
   before anything posted after it (a pause clicked before a run began applies as it
   begins). While attached they go to the loop's own thread-safe hook. After `detach()`
   they are dropped and `post` returns False: the work they were meant for is over (one
   posted just before it still runs if the loop gets to it).
 - Snapshots. The loop calls `publish(snapshot)`; any thread reads `snapshot`, one
   attribute read of an object replaced whole, so a snapshot must be immutable (a frozen
   dataclass): readers keep it. A thread that wants a fresh one either asks without
   waiting (`request`: a GUI frame, which reads `snapshot` on a later frame) or waits for
   it, bounded (`ask`).

 Thread-safety: `_lock` guards the life stage, the held commands, the asks waiting and the
 request in flight. It is held for a few attribute updates and a hand-off to the loop's
 hook, never while a command runs or a snapshot is built. `post`, `request`, `publish` and
 `snapshot` never wait for the loop; `ask` does, at most `timeout` seconds, by design.

 What it does not do: it does not run a command on the calling thread when it is the
 loop's (call `fn()` yourself there), and it does not report a command's exceptions to its
 poster: in the loop they are the loop's (asyncio logs them, trio's run fails), and at
 `attach()` they propagate from it.
 """

 __slots__ = (
  "_asks",
  "_held",
  "_lock",
  "_loop",
  "_requested",
  "_requested_at",
  "_snapshot",
  "_stage",
 )

 def __init__(self, initial: S) -> None:
  self._snapshot = initial
  self._lock = threading.Lock()
  self._stage = _BEFORE
  self._loop: LoopHandle | None = None  # set while attached
  self._held: list[Callable[[], object]] = []  # posted before attach()
  self._asks: list[_Ask[S]] = []  # threads waiting in ask() for the loop to answer
  self._requested = False  # a request() is on its way to the loop
  self._requested_at = -float("inf")  # time.monotonic() the last request() was posted

 # -- the loop's side ------------------------------------------------------------------

 def attach(self) -> None:
  """Bind to the running event loop, then run the commands held so far, in order.

  Call from inside that loop, once.
  """
  with self._lock:
   if self._stage != _BEFORE:
    raise RuntimeError("ThreadBridge.attach(): a bridge is attached once")
   self._loop = LoopHandle()
   self._stage = _ATTACHED
   held, self._held = self._held, []
  for fn in held:
   fn()

 def detach(self, final: S | None = None) -> None:
  """Unbind from the loop: from now on `post` drops commands. Call from the loop.

  `final`, if given, is published first, and every thread still waiting in `ask` gets it.
  """
  if final is not None:
   self._snapshot = final
  with self._lock:
   self._stage = _DETACHED
   self._loop = None
   asks, self._asks = self._asks, []
  for ask in asks:  # posted too late for the loop to answer
   ask.answer(self._snapshot)

 def publish(self, snapshot: S) -> None:
  """Replace the published snapshot. Call from the loop."""
  self._snapshot = snapshot

 # -- any thread -----------------------------------------------------------------------

 @property
 def attached(self) -> bool:
  return self._stage == _ATTACHED

 @property
 def detached(self) -> bool:
  """`detach()` was called: the loop's work is over, and `snapshot` is the final one."""
  return self._stage == _DETACHED

 @property
 def in_loop_thread(self) -> bool:
  loop = self._loop
  return loop is not None and loop.in_loop_thread

 @property
 def snapshot(self) -> S:
  """The latest published snapshot. Any thread; never blocks."""
  return self._snapshot

 def post(self, fn: Callable[[], object]) -> bool:
  """Run `fn()` in the loop soon (held until `attach()`). Any thread; never blocks.

  False if it was dropped: the bridge is detached (or the loop has ended).
  """
  with self._lock:  # so that nothing posted after detach() reaches the loop
   if self._stage == _BEFORE:
    self._held.append(fn)
    return True
   loop = self._loop
   return loop is not None and loop.call_soon(fn)  # the hook never waits for the loop

 def request(self, build: Callable[[], S], min_interval: float = 0.0) -> bool:
  """Ask the loop to publish `build()` soon, for `snapshot`. Any thread; never blocks.

  One request is in flight at a time: a request made while one is on its way is folded
  into it (it will publish fresh enough data). A request less than `min_interval` seconds
  after the previous one was posted is ignored: a caller drawing frames calls again on a
  later frame. Returns whether this call posted one. Held until `attach()`; ignored after
  `detach()` (the final snapshot is published then).
  """
  now = time.monotonic()
  with self._lock:
   if self._requested or now - self._requested_at < min_interval or self._stage == _DETACHED:
    return False
   self._requested = True
   self._requested_at = now
  if self.post(lambda: self._fulfil(build)):
   return True
  with self._lock:  # dropped: detached meanwhile
   self._requested = False
  return False

 def _fulfil(self, build: Callable[[], S]) -> None:
  with self._lock:
   self._requested = False  # before building: a request meanwhile is posted anew
  self._snapshot = build()

 def ask(self, build: Callable[[], S], timeout: float) -> S:
  """A snapshot built with `build()`, waiting for it at most `timeout` seconds. Any thread.

  On the loop's thread it is built at once. From another thread, while attached, the loop
  builds it at its next turn (posted through its hook; this thread waits on an event, no
  polling); after `timeout` (a loop held up by a task that never awaits) the latest
  published snapshot is returned instead. Before `attach()` there is no loop, so nothing
  else touches what `build` reads: it is built on this thread. After `detach()` it is the
  final snapshot. Whatever is built is also published.
  """
  if self.in_loop_thread:
   return self._build(build)
  ask: _Ask[S] = _Ask()
  with self._lock:
   stage = self._stage
   if stage == _ATTACHED:
    self._asks.append(ask)
  if stage == _BEFORE:
   return self._build(build)
  if stage == _DETACHED:
   return self._snapshot
  # If the post fails (the loop has just ended), detach() answers it.
  self.post(lambda: self._answer(ask, build))
  ask.done.wait(timeout)
  return ask.snap if ask.snap is not None else self._snapshot

 def _build(self, build: Callable[[], S]) -> S:
  snap = self._snapshot = build()
  return snap

 def _answer(self, ask: _Ask[S], build: Callable[[], S]) -> None:
  with self._lock:
   try:
    self._asks.remove(ask)
   except ValueError:
    return  # answered already, by detach()
  ask.answer(self._build(build))


class _Ask(Generic[S]):
 """A thread waiting in `ThreadBridge.ask` for the loop to build it a snapshot."""

 __slots__ = ("done", "snap")

 def __init__(self) -> None:
  self.done = threading.Event()
  self.snap: S | None = None  # set before `done`

 def answer(self, snap: S) -> None:
  self.snap = snap
  self.done.set()
