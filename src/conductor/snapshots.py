"""What a run looks like from outside: the immutable `Snapshot`, and the cache that builds it.

`Snapshot` (with `Counts`, `RunningWorker`, `TicketRow`, `MmaStatus`) is what the terminal
view, the dashboard and `conductor status` read, from any thread. `SnapshotCache` builds
snapshots on the loop for `ConductorEngine`, rebuilding only the rows of tickets that
changed since the last one.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from .dag_engine import ExecutionEngine, Status, Ticket
from .workers import describe_work

__all__ = [
 "OUTPUT_TAIL",
 "Counts",
 "MmaStatus",
 "RunningWorker",
 "Snapshot",
 "SnapshotCache",
 "TicketRow",
]

OUTPUT_TAIL = 4000  # characters of a ticket's output kept for display


class MmaStatus(enum.StrEnum):
 """The pipeline's status as the dashboard shows it."""

 IDLE = "idle"  # not started, or stopped before finishing
 PLANNING = "planning"  # setting up the run
 EXECUTING = "executing"
 PAUSED = "paused"  # no worker starts; the ones running at the pause may still finish
 DONE = "done"  # every ticket completed
 ERROR = "error"  # finished with failed or blocked tickets, or the run itself crashed


@dataclass(frozen=True, slots=True)
class Counts:
 todo: int = 0
 in_progress: int = 0
 completed: int = 0
 failed: int = 0
 blocked: int = 0

 @property
 def total(self) -> int:
  return self.todo + self.in_progress + self.completed + self.failed + self.blocked


# RunningWorker and TicketRow are NamedTuples rather than frozen dataclasses: one of each is
# built per ticket and a tuple builds in a third of the time (a run's final table of 100,000
# rows is built at its end).


class RunningWorker(NamedTuple):
 ticket: str
 attempt: int
 started_at: float  # time.monotonic()


class TicketRow(NamedTuple):
 """One ticket as displayed: immutable, rebuilt whenever the ticket changes."""

 id: str
 status: Status
 attempts: int
 description: str
 depends_on: tuple[str, ...]
 work: str  # what it runs, for display
 error: str | None
 exit_code: int | None
 output: str  # tail of the output
 started_at: float | None  # time.monotonic() of the latest start
 finished_at: float | None


@dataclass(frozen=True, slots=True)
class Snapshot:
 """An immutable view of a run; safe to keep and read from any thread.

 `running_at_pause` are the workers that were in flight when the pause began (they finish
 normally); `finishing` are those of them still running: it drains to zero. `ready` are
 the tickets that start first on resume, in order; `pending` all tickets not yet started.
 `version` changes with every change of a ticket, of the pause or of `stopping` (not with
 `status` or `elapsed` alone): two snapshots of one run with the same version have the same
 rows, so a reader can skip redrawing them.
 """

 version: int
 name: str
 status: MmaStatus
 counts: Counts
 running: tuple[RunningWorker, ...]
 paused: bool
 pause_reason: str | None
 paused_at: float | None  # time.time() when the current pause began
 running_at_pause: tuple[str, ...]
 finishing: tuple[str, ...]
 ready: tuple[str, ...]
 pending: tuple[str, ...]
 awaiting_approval: tuple[str, ...]
 elapsed: float  # seconds of run time, excluding time spent paused
 spawned: int
 max_workers: int
 error: str | None  # why the run itself failed, if it did
 stopping: bool  # stop() or cancel() was asked: the run ends once running workers finish
 rows: tuple[TicketRow, ...] = field(repr=False)

 @property
 def draining(self) -> bool:
  return self.paused and bool(self.finishing)


_NO_DETAILS: tuple[int | None, str, float | None, float | None] = (None, "", None, None)


class SnapshotCache:
 """Builds `Snapshot`s of one run, keeping each ticket's row until the ticket changes.

 The driver reports what a snapshot shows beyond the DAG's own state: a worker started
 (`started`), an attempt ended with its exit code and output (`finished`), a ticket changed
 otherwise (`changed`), anything else changed (`touch`). A row is rebuilt only when its
 ticket changed, so a snapshot costs O(tickets) for the tuple of rows and O(changed
 tickets) beyond that; without rows, O(pending + awaiting).

 Loop-side, except `touch()`, which any thread may call (a pause changes what a snapshot
 shows). `version` is drawn from a counter (one C call, atomic under the GIL), so two
 threads touching at once still give distinct versions, never a lost change.
 """

 __slots__ = (
  "_details",
  "_engine",
  "_index",
  "_rows",
  "_versions",
  "_work_text",
  "running",
  "version",
 )

 def __init__(self, engine: ExecutionEngine) -> None:
  self._engine = engine
  self._versions = itertools.count(1)
  self.version = 0
  self._index = {tid: i for i, tid in enumerate(engine.tickets)}
  self._rows: list[TicketRow | None] = [None] * len(self._index)  # None: rebuild
  # Of each ticket's latest finished attempt: (exit code, output tail, started, finished).
  self._details: dict[str, tuple[int | None, str, float | None, float | None]] = {}
  self._work_text: dict[str, str] = {}  # describe_work() of each ticket, once built
  self.running: dict[str, RunningWorker] = {}  # the workers running, by ticket

 def touch(self) -> None:
  """Something a snapshot shows changed. Any thread."""
  self.version = next(self._versions)

 def changed(self, ticket: Ticket) -> None:
  """`ticket` changed: its row is rebuilt for the next snapshot."""
  self._rows[self._index[ticket.id]] = None
  self.version = next(self._versions)

 def started(self, ticket: Ticket) -> None:
  """An attempt of `ticket` started (after `ExecutionEngine.start` counted it)."""
  self.running[ticket.id] = RunningWorker(ticket.id, ticket.attempts, time.monotonic())
  self.changed(ticket)

 def finished(self, ticket: Ticket, exit_code: int | None, output: str) -> None:
  """The running attempt of `ticket` ended, however it ended."""
  worker = self.running.pop(ticket.id, None)
  started = worker.started_at if worker is not None else None
  self._details[ticket.id] = (exit_code, output[-OUTPUT_TAIL:], started, time.monotonic())
  self.changed(ticket)

 def build(
  self,
  *,
  rows: bool,
  name: str,
  status: MmaStatus,
  paused: bool,
  pause_reason: str | None,
  paused_at: float | None,
  running_at_pause: tuple[str, ...],
  finishing: tuple[str, ...],
  ready: tuple[str, ...],
  elapsed: float,
  spawned: int,
  max_workers: int,
  error: str | None,
  stopping: bool,
 ) -> Snapshot:
  """A snapshot of the DAG's state and the rows, with the driver's own state given."""
  engine = self._engine
  counts = engine.counts()
  table = tuple(self._row(i, t) for i, t in enumerate(engine.tickets.values())) if rows else ()
  return Snapshot(
   version=self.version,
   name=name,
   status=status,
   counts=Counts(
    counts.get(Status.TODO, 0),
    counts.get(Status.IN_PROGRESS, 0),
    counts.get(Status.COMPLETED, 0),
    counts.get(Status.FAILED, 0),
    counts.get(Status.BLOCKED, 0),
   ),
   running=tuple(self.running.values()),
   paused=paused,
   pause_reason=pause_reason,
   paused_at=paused_at,
   running_at_pause=running_at_pause,
   finishing=finishing,
   ready=ready,
   pending=tuple(engine.pending()),
   awaiting_approval=tuple(engine.awaiting_approval()),
   elapsed=elapsed,
   spawned=spawned,
   max_workers=max_workers,
   error=error,
   stopping=stopping,
   rows=table,
  )

 def _row(self, i: int, ticket: Ticket) -> TicketRow:
  row = self._rows[i]
  if row is None:
   exit_code, output, started, finished = self._details.get(ticket.id, _NO_DETAILS)
   worker = self.running.get(ticket.id)
   if worker is not None:  # running again: the last attempt's end is no longer news
    started, finished = worker.started_at, None
   work = self._work_text.get(ticket.id)
   if work is None:  # the work spec never changes: describe it once
    work = self._work_text[ticket.id] = describe_work(ticket.work)
   row = TicketRow(
    ticket.id,
    ticket.status,
    ticket.attempts,
    ticket.description,
    ticket.depends_on,
    work,
    ticket.error,
    exit_code,
    output,
    started,
    finished,
   )
   self._rows[i] = row
  return row
