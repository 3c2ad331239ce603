"""Keeping CPython's cyclic garbage collector off a run's big, long-lived heap: the one place.

A 100,000-ticket pipeline is a few hundred thousand objects (the parsed file, the tickets,
the DAG's nodes, the run's records) that all live until the run ends, most until the
process exits. The collector starts a collection every 700 allocations, and the oldest
generation's walk every object tracked: over that heap they find nothing and cost more than
the work (building took twice as long, and 10x the tickets took 13x the time to run).
Three moves, each where it is used:

- `gc_paused()`: no collection while many long-lived objects are built (a pipeline file
  loaded, `ExecutionEngine` built, the final snapshot). The collector is back on after.
- `frozen_for_run()`: while a run goes on (`ConductorEngine.run`), what exists as it begins
  is left out of the collector's walks (`gc.freeze`); what the run makes is collected as
  ever. Runs count, so overlapping ones (threads, nested loops) thaw only when the last ends.
- `keep_until_exit()`: a command whose objects live until the process exits (`conductor
  run`, `validate`) freezes them for good and turns the collector on: the collections of the
  rest of its life, and the one at exit, do not walk them.

What none of them does: collect. A library user who builds a big engine with the collector
on pays one young-generation collection of what was built at the next allocation after
`gc_paused` ends (about 40 ms at 100,000 tickets); the CLI avoids it with `keep_until_exit`.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["frozen_for_run", "gc_paused", "keep_until_exit"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
 """Hold off the cyclic collector while building many long-lived objects.

 Re-enabled on exit (if it was on), also after an error. Nests; the switch is process-wide,
 so another thread's garbage waits too, for as long as the build takes.
 """
 enabled = gc.isenabled()
 gc.disable()
 try:
  yield
 finally:
  if enabled:
   gc.enable()


# Runs going on in this process that keep the heap frozen (`frozen_for_run`), under its lock.
_frozen_lock = threading.Lock()
_frozen_runs = 0


@contextlib.contextmanager
def frozen_for_run() -> Iterator[None]:
 """Leave what exists now out of the collector's walks until the block ends (`gc.freeze`).

 A cycle among the frozen objects that becomes garbage meanwhile waits for the end. The
 freeze is process-wide, so blocks count: each freezes what exists as it begins, and only
 the last to end thaws (`gc.unfreeze`); the collector catches up then. Thread-safe.
 """
 global _frozen_runs
 with _frozen_lock:
  gc.freeze()
  _frozen_runs += 1
 try:
  yield
 finally:
  with _frozen_lock:
   _frozen_runs -= 1
   if _frozen_runs == 0:
    gc.unfreeze()


def keep_until_exit() -> None:
 """Freeze everything that exists now for the rest of the process, and turn the collector on
 (a command held it off while loading: `gc_paused`). Call it inside that `gc_paused`: turned
 on first, the collector's next allocation would collect all that was built, for nothing.
 For commands, not for library code: a frozen object that becomes garbage is never
 collected."""
 gc.freeze()
 gc.enable()
