"""The one seam between this package and the event-loop backends.

Everything that must reach a loop from another thread goes through `LoopHandle`, which
wraps anyio's event-loop token: on asyncio that is `loop.call_soon_threadsafe`, on trio
`TrioToken.run_sync_soon`. Both enqueue a callback and wake the loop through its own
self-pipe; neither waits for the loop to run it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from anyio import RunFinishedError
from anyio.lowlevel import EventLoopToken, current_token


class LoopHandle:
 """A handle on the event loop that created it, usable from any thread.

 Create it inside a running loop (asyncio or trio, via anyio). `call_soon` never blocks.
 """

 __slots__ = ("_thread", "_token")

 def __init__(self) -> None:
  self._token: EventLoopToken = current_token()
  self._thread = threading.get_ident()  # the loop's own thread

 @property
 def in_loop_thread(self) -> bool:
  """True when called from the thread that runs this loop."""
  return threading.get_ident() == self._thread

 def call_soon(self, fn: Callable[[], object]) -> bool:
  """Schedule `fn()` to run in the loop soon; safe from any thread, never blocks.

  Returns False, without raising, when the loop has already finished: a GUI clicking
  Resume after the pipeline ended must not crash.
  """
  token = self._token
  try:
   token.backend_class.run_sync_soon(fn, (), token.native_token)
  except RunFinishedError:
   return False
  return True
