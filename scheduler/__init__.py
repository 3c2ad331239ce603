"""A pausable scheduler for anyio (asyncio and trio).

- `Gate`: a resumable, thread-safe gate that parks tasks without polling.
- `Scheduler`: a bounded spawner behind a gate, with linearizable pause/resume.
- `ThreadBridge`: commands from plain threads into the loop (held until it runs), snapshots
  back out (published, requested without waiting, or waited for).

This package knows nothing about pipelines; `conductor` builds on it.
"""

from ._bridge import ThreadBridge
from ._gate import Gate, GateStatistics
from ._loop import LoopHandle
from ._scheduler import Scheduler, SchedulerStatistics

__all__ = [
 "Gate",
 "GateStatistics",
 "LoopHandle",
 "Scheduler",
 "SchedulerStatistics",
 "ThreadBridge",
]
