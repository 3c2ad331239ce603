"""`ThreadBridge`: how a plain thread (a GUI) and an event loop talk without blocking."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ._loop import LoopHandle

S = TypeVar("S")


class ThreadBridge(Generic[S]):
 """Commands in, snapshots out, between one event loop and any number of plain threads.

 - The loop calls `attach()` once it runs and `publish(snapshot)` whenever it likes; a
   snapshot must be immutable (a frozen dataclass), because readers keep it.
 - Any thread calls `post(fn)` to run `fn()` in the loop soon, and reads `snapshot`.
   Neither waits for the loop or takes a lock: `post` hands the call to the loop's own
   thread-safe hook, `snapshot` is one attribute read of an object replaced whole.

 Before `attach()` and after `detach()` there is no loop: `post` returns False and does
 nothing, so a button pressed at the wrong moment is simply ignored by the caller's choice.
 """

 __slots__ = ("_loop", "_snapshot")

 def __init__(self, initial: S) -> None:
  self._snapshot = initial
  self._loop: LoopHandle | None = None

 def attach(self) -> None:
  """Bind to the running event loop. Call from inside that loop."""
  self._loop = LoopHandle()

 def detach(self) -> None:
  self._loop = None

 @property
 def attached(self) -> bool:
  return self._loop is not None

 @property
 def in_loop_thread(self) -> bool:
  loop = self._loop
  return loop is not None and loop.in_loop_thread

 def post(self, fn: Callable[[], object]) -> bool:
  """Run `fn()` in the loop soon. Any thread; never blocks. False if no loop runs."""
  loop = self._loop
  return loop is not None and loop.call_soon(fn)

 def publish(self, snapshot: S) -> None:
  """Replace the published snapshot. Call from the loop."""
  self._snapshot = snapshot

 @property
 def snapshot(self) -> S:
  """The latest published snapshot. Any thread; never blocks."""
  return self._snapshot
