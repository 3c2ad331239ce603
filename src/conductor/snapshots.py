"""What a run looks like from outside: the immutable `Snapshot`, and the cache that builds it.

`Snapshot` (with `Counts`, `RunningWorker`, `TicketRow`, `MmaStatus`, `Ids`) is what the
terminal view, the dashboard and `conductor status` read, from any thread. `SnapshotCache`
builds snapshots on the loop for `ConductorEngine`, rebuilding only the rows of tickets that
changed since the last one, and only the blocks of `pending` they changed; it also keeps,
for `conductor status`, each ticket's item of the report encoded (`ticket_json`), joined in
blocks, and the notable tickets, updated per changed ticket (`status_blocks`, `notable`).
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import json
import math
import operator
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, SupportsIndex, overload

from .dag_engine import ExecutionEngine, Status, Ticket
from .workers import describe_work

__all__ = [
 "OUTPUT_TAIL",
 "SUMMARY_IDS",
 "SUMMARY_ROWS",
 "Counts",
 "Ids",
 "MmaStatus",
 "Rows",
 "RunningWorker",
 "Snapshot",
 "SnapshotCache",
 "TicketIds",
 "TicketRow",
 "is_notable",
 "ticket_json",
]

OUTPUT_TAIL = 4000  # characters of a ticket's output kept for display
SUMMARY_ROWS = 30  # tickets plain `conductor status` lists (all of a pipeline this small)
SUMMARY_IDS = 12  # ids it shows of `pending` and of `awaiting_approval`
_BLOCK = 10  # tickets are kept in blocks of 2**_BLOCK indexes (see SnapshotCache._pending)
# Changed tickets noted before they are settled anyway (`SnapshotCache.changed`): without a
# reader (a terminal run off a terminal) the set would grow to every ticket (4 MB at 100,000).
_SETTLE_AT = 4096
_JOIN_COST = 64  # `fill_entries`: joining a block's items costs about as much as encoding 64


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
 # Tokens its latest completed attempt spent (`WorkResult.usage`); None if it spent none.
 tokens: int | None = None


# json.dumps's own string encoder (ensure_ascii): `ticket_json` writes what json.dumps would.
_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


def ticket_json(
 ticket: Ticket, exit_code: int | None, updated_at: float | None, tokens: int | None = None
) -> str:
 """One item of a status report's `tickets` (`conductor.report`), encoded: exactly what
 `json.dumps` writes of `{"id": ..., "status": ..., "attempts": ..., "error": ...,
 "exit_code": ..., "updated_at": ...}`, without building the dict. `updated_at`: wall time
 of the ticket's latest start or end in this run. A str: not tracked by the garbage
 collector, so 100,000 of them kept cost no collection time."""
 error = ticket.error
 return (
  f'{{"id": {_string(ticket.id)}, "status": {_string(ticket.status)}, '
  f'"attempts": {int(ticket.attempts)}, '
  f'"error": {"null" if error is None else _string(error)}, '
  f'"exit_code": {"null" if exit_code is None else int.__repr__(exit_code)}, '
  f'"updated_at": {"null" if updated_at is None else float.__repr__(updated_at)}, '
  f'"tokens": {"null" if tokens is None else int.__repr__(tokens)}}}'
 )


def is_notable(status: str, attempts: int, error: str | None) -> bool:
 """Whether plain `conductor status` lists the ticket: running, failed or blocked, or done
 or not started after a retry or with an error (the counts say the rest)."""
 if status in (Status.COMPLETED, Status.TODO):
  return attempts > 1 or bool(error)
 return True


class _IdSequence(Sequence[str]):
 # What `Ids` and `TicketIds` share: an index gives an id, a slice a tuple of ids (`_item`);
 # they compare, hash and print as the tuple of their ids (equal to a tuple, never to a
 # list, as a tuple is).
 __slots__ = ()

 @overload
 def __getitem__(self, index: SupportsIndex) -> str: ...

 @overload
 def __getitem__(self, index: slice) -> tuple[str, ...]: ...

 def __getitem__(self, index: SupportsIndex | slice) -> str | tuple[str, ...]:
  return self._item(index)

 def _item(self, index: SupportsIndex | slice) -> str | tuple[str, ...]:
  raise NotImplementedError

 def __eq__(self, other: object) -> bool:
  if other is self:
   return True
  if isinstance(other, _IdSequence | tuple):
   return len(self) == len(other) and all(map(operator.eq, self, other))
  return NotImplemented

 def __hash__(self) -> int:
  return hash(tuple(self))

 def __repr__(self) -> str:
  return f"{type(self).__name__}({list(self)!r})"


class Ids(_IdSequence):
 """An immutable sequence of ticket ids, held as the blocks (tuples) it is made of.

 A snapshot's `pending` is one: the blocks are shared with the snapshots before and after
 it but for the blocks that changed, so a snapshot takes it in O(blocks), not O(ids), and
 the loop building it is not held up for a copy of every id. `len` is O(1), an index
 O(log blocks), a slice a tuple; it equals an `Ids` or a tuple of the same ids in the
 same order. Immutable: safe to read from any thread.
 """

 __slots__ = ("_blocks", "_ends")

 def __init__(self, blocks: Sequence[tuple[str, ...]] = ()) -> None:
  self._blocks = tuple(b for b in blocks if b)
  self._ends = tuple(itertools.accumulate(map(len, self._blocks)))

 @property
 def blocks(self) -> tuple[tuple[str, ...], ...]:
  """The non-empty blocks, in order: the same tuple objects while a block is unchanged."""
  return self._blocks

 def __len__(self) -> int:
  return self._ends[-1] if self._ends else 0

 def __iter__(self) -> Iterator[str]:
  return itertools.chain.from_iterable(self._blocks)

 def _item(self, index: SupportsIndex | slice) -> str | tuple[str, ...]:
  if isinstance(index, slice):
   start, stop, step = index.indices(len(self))
   if step != 1:
    return tuple(self)[index]
   return tuple(itertools.islice(self, start, max(start, stop)))
  i = operator.index(index)
  if i < 0:
   i += len(self)
  if not 0 <= i < len(self):
   raise IndexError("Ids index out of range")
  b = bisect.bisect_right(self._ends, i)
  return self._blocks[b][i - (self._ends[b - 1] if b else 0)]


@dataclass(frozen=True, slots=True)
class Snapshot:
 """An immutable view of a run; safe to keep and read from any thread.

 `running_at_pause` are the workers that were in flight when the pause began (they finish
 normally); `finishing` are those of them still running: it drains to zero. `ready` are
 the tickets that start first on resume, in order; `pending` all tickets not yet started,
 in ticket order (an `Ids`: taken in O(blocks)).
 `version` changes with every change of a ticket, of the pause or of `stopping` (not with
 `status` or `elapsed` alone): two snapshots of one run with the same version have the same
 rows, so a reader can skip redrawing them.

 A pause is a person's (`paused_by_person`: only a person's resume ends it) or the
 pipeline's own (a worker's `PausePipeline`, the token budget), which may end by itself at
 `auto_resume_at`. `tokens_used` counts every attempt's `usage` against `token_budget`.
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
 ready: TicketIds
 pending: Ids
 awaiting_approval: tuple[str, ...]
 elapsed: float  # seconds of run time, excluding time spent paused
 spawned: int
 max_workers: int
 error: str | None  # why the run itself failed, if it did
 stopping: bool  # stop() or cancel() was asked: the run ends once running workers finish
 rows: Sequence[TicketRow] = field(repr=False)  # a tuple, or the final snapshot's `Rows`
 paused_by_person: bool = True  # meaningful while paused
 auto_resume_at: float | None = None  # time.time() the automatic pause ends, if it does
 tokens_used: int = 0
 token_budget: int | None = None  # None: no budget

 @property
 def draining(self) -> bool:
  return self.paused and bool(self.finishing)


class TicketIds(_IdSequence):
 """The ids of a sequence of tickets, read as they are asked for.

 A snapshot's `ready` is one: the driver's queue can hold every ticket of a wide DAG
 while the pipeline is paused or its slots are full, and taking it is then one tuple copy
 in C instead of 100,000 attribute reads on the loop. A ticket's id never changes, so it
 is safe to read from any thread; `len` and an index are O(1), a slice a tuple of ids; it
 equals a tuple (or an `Ids`) of the same ids in the same order.
 """

 __slots__ = ("_tickets",)

 def __init__(self, tickets: Sequence[Ticket] = ()) -> None:
  self._tickets = tuple(tickets)

 def __len__(self) -> int:
  return len(self._tickets)

 def __iter__(self) -> Iterator[str]:
  return map(_ID, self._tickets)

 def _item(self, index: SupportsIndex | slice) -> str | tuple[str, ...]:
  if isinstance(index, slice):
   return tuple(map(_ID, self._tickets[index]))
  return self._tickets[index].id


class Rows(Sequence[TicketRow]):
 """A run's final rows, built when first read.

 `ConductorEngine.run()` returns a snapshot with every ticket's row; at 100,000 tickets
 building them costs a third of a second and 14 MB, which a terminal run that never reads
 them should not pay on its way out. Once the run has ended its tickets no longer change,
 so rows built later are the rows of that moment. Built once, under a lock: safe to read
 from any thread; otherwise a tuple (equal to the tuple of the same rows).
 """

 __slots__ = ("_build", "_lock", "_rows")

 def __init__(self, build: Callable[[], tuple[TicketRow, ...]]) -> None:
  self._build: Callable[[], tuple[TicketRow, ...]] | None = build
  self._lock = threading.Lock()
  self._rows: tuple[TicketRow, ...] | None = None

 def _get(self) -> tuple[TicketRow, ...]:
  rows = self._rows
  if rows is None:
   with self._lock:
    if self._rows is None:
     assert self._build is not None
     self._rows, self._build = self._build(), None
    rows = self._rows
  return rows

 def __len__(self) -> int:
  return len(self._get())

 def __iter__(self) -> Iterator[TicketRow]:
  return iter(self._get())

 @overload
 def __getitem__(self, index: SupportsIndex) -> TicketRow: ...

 @overload
 def __getitem__(self, index: slice) -> tuple[TicketRow, ...]: ...

 def __getitem__(self, index: SupportsIndex | slice) -> TicketRow | tuple[TicketRow, ...]:
  return self._get()[index]

 def __eq__(self, other: object) -> bool:
  if isinstance(other, Rows):
   return other is self or self._get() == other._get()
  if isinstance(other, tuple):
   return self._get() == other
  return NotImplemented

 def __hash__(self) -> int:
  return hash(self._get())

 def __repr__(self) -> str:
  return f"Rows({len(self)} rows)"


_ID = operator.attrgetter("id")


def _ignore(_i: int) -> None:
 pass


_NO_DETAILS: tuple[int | None, str, float | None, float | None] = (None, "", None, None)


class SnapshotCache:
 """Builds `Snapshot`s of one run, keeping each ticket's row until the ticket changes.

 The driver reports what a snapshot shows beyond the DAG's own state: a worker started
 (`started`), an attempt ended with its exit code and output (`finished`), a ticket changed
 otherwise (`changed`), anything else changed (`touch`). A row is rebuilt only when its
 ticket changed, so a snapshot costs a copy of the list of rows (in C: about 0.3 ms per
 100,000) and O(changed tickets) beyond that; without rows, O(changed tickets) plus O(2**_BLOCK) per block of
 `pending` they changed, plus a copy of `awaiting_approval`.

 Loop-side, except `touch()`, which any thread may call (a pause changes what a snapshot
 shows). `version` is drawn from a counter (one C call, atomic under the GIL), so two
 threads touching at once still give distinct versions, never a lost change.
 """

 __slots__ = (
  "_began",
  "_dirty",
  "_ended",
  "_engine",
  "_entries",
  "_exits",
  "_fill",
  "_index",
  "_joined",
  "_notable",
  "_rows",
  "_stale",
  "_tails",
  "_tickets",
  "_todo",
  "_todo_ids",
  "_tokens",
  "_unbuilt",
  "_unjoined",
  "_unsorted",
  "_versions",
  "_wall",
  "running",
  "version",
 )

 def __init__(self, engine: ExecutionEngine) -> None:
  self._engine = engine
  self._versions = itertools.count(1)
  self.version = 0
  # One int object per index, shared by the structures below (a `range` makes new ones
  # each time it is walked: 3 MB per structure at 100,000 tickets).
  numbers = list(range(len(engine.tickets)))
  self._index = dict(zip(engine.tickets, numbers, strict=True))
  # Each ticket's row as of its last change; `_unbuilt` the indexes whose row is out of
  # date (None: all of them, at first): a snapshot with rows rebuilds those and copies the
  # list, so that one every half second of a 100,000-ticket run does not hold the loop for
  # all of them.
  self._rows: list[TicketRow | None] = [None] * len(numbers)
  self._unbuilt: set[int] | None = None
  # Of each ticket's latest finished attempt, by index: when it started and ended (NaN: no
  # attempt ended in this run), its exit code and output tail when it had them. Arrays and
  # sparse dicts rather than a tuple per ticket: 100,000 finished tickets cost 1.6 MB here,
  # not 15.
  n = len(self._rows)
  self._began = array("d", bytes(8 * n))
  self._ended = array("d", [math.nan]) * n
  self._exits: dict[int, int] = {}
  self._tails: dict[int, str] = {}
  self._tokens: dict[str, int] = {}  # of each ticket's latest completed attempt that spent any
  self.running: dict[str, RunningWorker] = {}  # the workers running, by ticket
  # What status reads, kept up to date per changed ticket rather than rescanned (O(tickets)
  # once, here): `_dirty` are the ids changed since `_settle()` last looked; `_todo`
  # the todo tickets (index -> id) in blocks of 2**_BLOCK indexes, each in ticket order
  # but those in `_unsorted`, and `_todo_ids` each block's ids as a tuple, None until
  # taken again; `_notable` the indexes `is_notable` picks; `_entries` each ticket's
  # `ticket_json`, None until taken (`_fill` counts the first ones taken, `_stale` the ones
  # to take again), and `_joined` each block's entries joined, encoded (None: in
  # `_unjoined`, to join again).
  self._tickets = list(engine.tickets.values())
  self._dirty: set[str] = set()
  tickets, todo, done, size = self._tickets, Status.TODO, Status.COMPLETED, 1 << _BLOCK
  self._todo: list[dict[int, str]] = [
   {
    i: t.id
    for i, t in zip(numbers[lo : lo + size], tickets[lo : lo + size], strict=True)
    if t.status is todo
   }
   for lo in range(0, len(tickets) + 1, size)
  ]
  self._unsorted: set[int] = set()
  self._todo_ids: list[tuple[str, ...] | None] = [None] * len(self._todo)
  self._notable: set[int] = {  # is_notable, inlined: this runs once per ticket at start-up
   i
   for i, t in zip(numbers, tickets, strict=True)
   if (t.status is not todo and t.status is not done) or t.attempts > 1 or t.error
  }
  self._entries: list[str | None] = [None] * len(self._tickets)
  blocks = (len(tickets) + size - 1) >> _BLOCK
  self._joined: list[bytes | None] = [None] * blocks
  self._unjoined: set[int] = set(range(blocks))
  # One offset from the monotonic clock to the wall clock for the whole run, so that an
  # encoded `updated_at` stays valid for as long as its ticket does not change.
  self._wall = time.time() - time.monotonic()
  self._fill = 0
  self._stale: set[int] = set()

 def touch(self) -> None:
  """Something a snapshot shows changed. Any thread."""
  self.version = next(self._versions)

 def changed(self, ticket: Ticket) -> None:
  """`ticket` changed: its row, and what status shows of it, are rebuilt when next read
  (and `version` moves on then). O(1) amortized."""
  self._note(ticket.id)

 def _note(self, tid: str) -> None:
  dirty = self._dirty
  dirty.add(tid)
  if len(dirty) >= _SETTLE_AT:  # nobody read for a while: settle, so the set stays small
   self._settle()

 # `started` and `finished` run once per attempt, on the loop: they note, and leave the
 # rest to whoever reads next (`_settle`), which sees a ticket changed twice once.

 def started(self, ticket: Ticket) -> None:
  """An attempt of `ticket` started (after `ExecutionEngine.start` counted it)."""
  tid = ticket.id
  self.running[tid] = RunningWorker(tid, ticket.attempts, time.monotonic())
  self._note(tid)

 def finished(
  self, ticket: Ticket, exit_code: int | None, output: str, tokens: int | None = None
 ) -> None:
  """The running attempt of `ticket` ended, however it ended. `tokens`: it completed,
  having spent that many."""
  tid = ticket.id
  i = self._index[tid]
  worker = self.running.pop(tid, None)
  self._began[i] = worker.started_at if worker is not None else math.nan
  self._ended[i] = time.monotonic()
  if exit_code is None:
   self._exits.pop(i, None)
  else:
   self._exits[i] = exit_code
  if output:
   self._tails[i] = output[-OUTPUT_TAIL:]
  else:
   self._tails.pop(i, None)
  if tokens is not None:
   self._tokens[tid] = tokens
  self._note(tid)

 def restore_tokens(self, tokens: Mapping[str, int]) -> None:
  """The tokens of tickets' latest completed attempts in earlier runs (what a store kept),
  for their rows. Before the run."""
  index = self._index
  for tid, n in tokens.items():
   if tid in index:
    self._tokens[tid] = n
    if self._unbuilt is not None:
     self._unbuilt.add(index[tid])
  self.touch()

 def build(
  self,
  *,
  rows: bool | Literal["final"],
  name: str,
  status: MmaStatus,
  paused: bool,
  pause_reason: str | None,
  paused_at: float | None,
  running_at_pause: tuple[str, ...],
  finishing: tuple[str, ...],
  ready: Sequence[Ticket],
  elapsed: float,
  spawned: int,
  max_workers: int,
  error: str | None,
  stopping: bool,
  paused_by_person: bool = True,
  auto_resume_at: float | None = None,
  tokens_used: int = 0,
  token_budget: int | None = None,
 ) -> Snapshot:
  """A snapshot of the DAG's state and the rows, with the driver's own state given.
  `rows="final"`: the rows are built when first read (`Rows`): only once nothing changes
  the tickets any more, i.e. for the snapshot a run ends with."""
  engine = self._engine
  self._settle()
  counts = engine.counts()
  table: Sequence[TicketRow] = ()
  if rows == "final":
   table = Rows(self._table)
  elif rows:
   table = self._table()
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
   ready=TicketIds(ready),
   pending=self._pending(),
   awaiting_approval=tuple(engine.awaiting_approval()),
   elapsed=elapsed,
   spawned=spawned,
   max_workers=max_workers,
   error=error,
   stopping=stopping,
   rows=table,
   paused_by_person=paused_by_person,
   auto_resume_at=auto_resume_at,
   tokens_used=tokens_used,
   token_budget=token_budget,
  )

 def _table(self) -> tuple[TicketRow, ...]:
  # O(rows out of date) plus a copy of the list (in C).
  rows, tickets, unbuilt = self._rows, self._tickets, self._unbuilt
  if unbuilt is None:
   rows[:] = map(self._row, range(len(tickets)), tickets)
  else:
   for i in unbuilt:
    rows[i] = self._row(i, tickets[i])
  self._unbuilt = set()
  return tuple(rows)  # type: ignore[arg-type]  # no None left

 def _details(self, i: int) -> tuple[int | None, str, float | None, float | None]:
  # Of ticket i's latest finished attempt: (exit code, output tail, started, finished);
  # all None ("" for the tail) if no attempt of it ended in this run.
  ended = self._ended[i]
  if math.isnan(ended):
   return _NO_DETAILS
  began = self._began[i]
  return self._exits.get(i), self._tails.get(i, ""), None if math.isnan(began) else began, ended

 def _row(self, i: int, ticket: Ticket) -> TicketRow:
  exit_code, output, started, finished = self._details(i)
  worker = self.running.get(ticket.id)
  if worker is not None:  # running again: the last attempt's end is no longer news
   started, finished = worker.started_at, None
  work = describe_work(ticket.work)  # no copy: work specs keep their text
  return TicketRow(
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
   self._tokens.get(ticket.id) if self._tokens else None,
  )

 # -- for conductor status ----------------------------------------------------------------

 def _settle(self) -> None:
  # O(tickets changed since the last call): the tickets' changes reach `version`, `_rows`,
  # `_todo`, `_notable` and `_entries`. Lazily: `changed()` may come before the change
  # itself, and a ticket that changed twice meanwhile is settled once.
  if not self._dirty:
   return
  dirty, self._dirty = self._dirty, set()
  self.version = next(self._versions)
  tickets, notable, index = self._tickets, self._notable, self._index
  # Rows to rebuild: none to note while none was ever built (`_unbuilt` None: all are).
  note = self._unbuilt.add if self._unbuilt is not None else _ignore
  todo_ids = self._todo_ids
  for tid in dirty:
   i = index[tid]
   note(i)
   t = tickets[i]
   b = i >> _BLOCK
   block = self._todo[b]
   if t.status is Status.TODO:
    if i not in block:
     if block and i < next(reversed(block)):  # back to todo (a retry): out of order
      self._unsorted.add(b)
     block[i] = t.id
     todo_ids[b] = None
   elif block.pop(i, None) is not None:
    todo_ids[b] = None
   if is_notable(t.status, t.attempts, t.error):
    notable.add(i)
   else:
    notable.discard(i)
   if i < self._fill:
    self._stale.add(i)

 def _pending(self) -> Ids:
  # O(blocks), plus O(2**_BLOCK) per block changed since the last call: blocks, rather
  # than one dict, so that a retry re-sorts a thousand tickets, not all of them, and a
  # snapshot copies the blocks that changed, not every todo id.
  for b in self._unsorted:
   self._todo[b] = dict(sorted(self._todo[b].items()))
  self._unsorted.clear()
  todo_ids = self._todo_ids
  for b, ids in enumerate(todo_ids):
   if ids is None:
    todo_ids[b] = tuple(self._todo[b].values())
  return Ids(todo_ids)  # type: ignore[arg-type]  # no None left

 def fill_entries(self, limit: int) -> bool:
  """Encode up to `limit` tickets' `ticket_json` that are missing or out of date, then join
  the blocks of them that changed (one costing `_JOIN_COST`); True when none is left.
  Loop-side. O(limit): a caller spreads the first fill (every ticket) over several loop
  turns."""
  self._settle()
  n = len(self._tickets)
  if self._fill < n:
   end = min(n, self._fill + limit)
   for i in range(self._fill, end):
    self._entries[i] = self._entry(i)
   limit -= end - self._fill
   self._fill = end
  stale, unjoined = self._stale, self._unjoined
  while stale and limit > 0:
   i = stale.pop()
   self._entries[i] = self._entry(i)
   unjoined.add(i >> _BLOCK)
   limit -= 1
  if self._fill < n or stale:
   return False
  entries, size = self._entries, 1 << _BLOCK
  while unjoined and limit > 0:
   b = unjoined.pop()
   joined = ", ".join(entries[b * size : (b + 1) * size])  # type: ignore[arg-type]  # filled
   self._joined[b] = (", " + joined if b else joined).encode()
   limit -= _JOIN_COST
  return not unjoined

 def status_blocks(self) -> tuple[bytes, ...]:
  """Every ticket's `ticket_json`, in ticket order, as of now, joined by ", " and encoded:
  in blocks (each but the first starts with ", "), the blocks of unchanged tickets the same
  bytes objects as before. Loop-side: O(blocks) once `fill_entries` returned True, plus
  the tickets changed since and their blocks."""
  while not self.fill_entries(len(self._tickets)):
   pass
  return tuple(self._joined)  # type: ignore[arg-type]  # filled: no None left

 def status_items(self) -> list[str]:
  """Every ticket's `ticket_json`, in ticket order, as of now. Loop-side: O(tickets) in C
  (a list copy) once `fill_entries` returned True, plus the tickets changed since."""
  while not self.fill_entries(len(self._tickets)):
   pass
  return self._entries.copy()  # type: ignore[return-value]  # filled: no None left

 def notable(self, limit: int) -> tuple[list[str], int]:
  """The first `limit` notable tickets' `ticket_json`, in ticket order, and how many are
  notable. Loop-side: O(notable) in C, plus O(limit)."""
  self._settle()
  first = heapq.nsmallest(limit, self._notable)
  return [self._entry(i) for i in first], len(self._notable)

 def _entry(self, i: int) -> str:
  # ~1.5 µs: the first report encodes one per ticket.
  t = self._tickets[i]
  tokens = self._tokens.get(t.id)
  worker = self.running.get(t.id)
  if worker is not None:
   return ticket_json(t, None, worker.started_at + self._wall, tokens)
  ended = self._ended[i]
  if math.isnan(ended):  # no attempt of it ended in this run
   return ticket_json(t, None, None, tokens)
  return ticket_json(t, self._exits.get(i), ended + self._wall, tokens)
