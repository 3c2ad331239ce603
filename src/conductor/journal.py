"""`Journal`: the write-ahead journal of a run: where durability happens.

`ConductorEngine` tells its journal what changed (a ticket, with its state after the change,
or the pause) and where its steps and workers begin and end; the journal delivers a
`Transition` to each listener and decides when listeners that batch must flush.
`StateStore.attach` is the listener that makes this durable (its flush is a commit). The
contract is written here, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .dag_engine import Status, Ticket
from .transitions import Change, Transition
from .workers import Usage

__all__ = ["Flush", "Journal", "Listener", "Recorder"]

Listener = Callable[[Transition], None]
Flush = Callable[[], None]

# The two transitions of every ticket (`started`, `completed`) are built as tuples of all
# the fields, with the enum members looked up once here: `Transition(...)` runs the
# NamedTuple's `__new__`, a Python function (for its defaults), and `Change.STARTED` costs
# 70 ns on CPython 3.11; that made a start's transition 4x dearer to build (0.7 µs, about a
# twentieth of a chain's ticket with a store). tests/test_journal.py checks that these
# equal the `Transition(...)` they stand for.
_new = tuple.__new__
_STARTED, _COMPLETED, _IN_PROGRESS = Change.STARTED, Change.COMPLETED, Status.IN_PROGRESS
_DONE = Status.COMPLETED
_NOTHING_MORE = (None, None, None, (), None, None, None, True)  # a start's other fields


@runtime_checkable
class Recorder(Protocol):
 """A listener that also takes the two transitions of every ticket's way as plain values:
 a start, and a plain completion (status completed; no error, exit code, output or usage).

 The journal calls `started` and `completed` for those instead of building a `Transition`
 (each stands for the `Transition` the journal would have built, at the same `at`); every
 other transition still comes through `__call__`. A store only appends a row for them:
 building the tuple and taking it apart again was a tenth of a chain's ticket with a store.
 The first `Recorder` added is called so; any later one is called as a plain listener.
 """

 def __call__(self, transition: Transition, /) -> None: ...

 def started(self, ticket: str, at: float, attempt: int, /) -> None: ...

 def completed(self, ticket: str, at: float, attempt: int, /) -> None: ...


class Journal:
 """Delivers a run's transitions to its listeners and calls their flushes write-ahead.

 A listener is called on the loop, synchronously, for every transition, in order. A
 listener that batches (a store that commits) also gives a `flush`, and the journal calls
 every flush, on the loop, with no argument, so that:

 1. a worker never runs before its own start, and everything emitted before that start
    (in particular the completions of its dependencies), is flushed. The engine calls
    `before_worker` first thing in a worker: it flushes if that start is not flushed yet.
    So the first worker of a round flushes for all the starts of its round and the
    completions that released them; the others find theirs done;
 2. every other transition is flushed at the end of the step that emitted it (`step_end`),
    unless a worker started in that step will flush it first (rule 1), or the step is a
    worker's last and the next worker is about to take the slot it frees (`handoff`),
    which flushes it by rule 1. Nothing waits on a running worker or a timer;
 3. everything left is flushed when the run ends (`close`).

 So a flushed listener holds a prefix of the transitions, in order, within a few task
 steps of the last one, and flushes are few: a chain of tickets costs one flush per
 ticket, a wide DAG one per round of workers, not one per transition.

 A flush that fails should not raise: it should stop the run (`StateStore` cancels it and
 keeps the reason), since no worker may start on a state that is not durable.
 """

 __slots__ = (
  "_flushes",
  "_listeners",
  "_on_completed",
  "_on_started",
  "_others",
  "_unflushed",
  "_unflushed_starts",
  "listening",
 )

 def __init__(self) -> None:
  self._listeners: list[Listener] = []
  self._others: list[Listener] = []  # all but the Recorder whose own calls are below
  self._on_started: Callable[[str, float, int], None] | None = None  # Recorder.started
  self._on_completed: Callable[[str, float, int], None] | None = None  # Recorder.completed
  self._flushes: list[Flush] = []
  self.listening = False  # when nobody listens, no Transition is built at all
  self._unflushed = False  # transitions were emitted since the last flush
  self._unflushed_starts: set[str] = set()  # tickets started since the last flush

 def add_listener(self, listener: Listener, flush: Flush | None = None) -> None:
  """Call `listener(transition)` for every transition from now on (a `Recorder`: see
  there); `flush` as above."""
  self._listeners.append(listener)
  self.listening = True
  if self._on_started is None and isinstance(listener, Recorder):
   self._on_started, self._on_completed = listener.started, listener.completed
  else:
   self._others.append(listener)
  if flush is not None:
   self._flushes.append(flush)

 @property
 def batches(self) -> bool:
  """Some listener flushes. Then, while other workers are in flight, a worker should run a
  loop turn after the step that started it, not within it, so that the first worker of a
  round flushes for the whole round (rule 1) instead of each flushing for itself. (With
  none in flight, as in a chain, nothing could join its flush: it may run at once.)"""
  return bool(self._flushes)

 # -- what happened: each builds a Transition only when someone listens (the hot path) ---

 def started(self, ticket: Ticket) -> None:
  """An attempt of `ticket` started: its worker flushes before it runs (rule 1)."""
  if self.listening:
   tid, at, attempt = ticket.id, time.time(), ticket.attempts
   self._unflushed = True
   self._unflushed_starts.add(tid)
   if self._on_started is not None:
    self._on_started(tid, at, attempt)
   if self._others:
    t = _new(Transition, (tid, _STARTED, at, _IN_PROGRESS, attempt, *_NOTHING_MORE))
    for listener in self._others:
     listener(t)

 def changed(
  self,
  ticket: Ticket,
  change: Change,
  detail: str | None = None,
  exit_code: int | None = None,
  *,
  output: str | None = None,
  usage: Usage | None = None,
 ) -> None:
  """`ticket` changed otherwise; the transition carries its state after the change (and,
  for an attempt that ended, its whole output and usage)."""
  if self.listening:
   at = time.time()
   t = ticket
   self.emit(
    Transition(
     t.id, change, at, t.status, t.attempts, detail, t.error, exit_code, (), output, usage
    )
   )

 def completed(
  self, ticket: Ticket, exit_code: int | None, output: str, usage: Usage | None
 ) -> None:
  """An attempt of `ticket` completed: `changed(COMPLETED)` with its whole output (None
  when empty) and usage; positional, as it is on every ticket's way."""
  if self.listening:
   t, at = ticket, time.time()
   self._unflushed = True
   on_completed = self._on_completed
   if (
    on_completed is not None
    and exit_code is None
    and not output
    and usage is None
    and t.error is None
    and t.status is _DONE
   ):
    on_completed(t.id, at, t.attempts)  # a plain completion: see Recorder
    listeners = self._others
    if not listeners:
     return
   else:
    listeners = self._listeners
   transition = _new(
    Transition,
    (
     t.id,
     _COMPLETED,
     at,
     t.status,
     t.attempts,
     None,
     t.error,
     exit_code,
     (),
     output or None,
     usage,
     None,
     True,
    ),
   )
   for listener in listeners:
    listener(transition)

 def pipeline(
  self,
  change: Change,
  detail: str | None = None,
  running_at_pause: tuple[str, ...] = (),
  *,
  auto_resume_at: float | None = None,
  by_person: bool = True,
 ) -> None:
  """The pipeline was paused (with who was running as the gate closed, who paused it and
  when it resumes by itself) or resumed."""
  if self.listening:
   at = time.time()
   self.emit(
    Transition(
     None,
     change,
     at,
     detail=detail,
     running_at_pause=running_at_pause,
     auto_resume_at=auto_resume_at,
     by_person=by_person,
    )
   )

 def emit(self, transition: Transition) -> None:
  """Deliver a transition to every listener. On the loop."""
  self._unflushed = True
  for listener in self._listeners:
   listener(transition)

 def before_worker(self, ticket_id: str) -> None:
  """A worker is about to run: flush its start if it is not flushed yet (rule 1)."""
  if ticket_id in self._unflushed_starts:
   self.flush()

 def step_end(self, *, handoff: bool = False) -> None:
  """The end of a step: flush what it emitted, unless a worker will (rule 2).

  `handoff`: the step is a worker's last, and the next worker takes its slot at once.
  """
  if self._unflushed and not self._unflushed_starts and not handoff:
   self.flush()

 def close(self) -> None:
  """The run ends: flush whatever is left (rule 3), e.g. starts whose workers were
  cancelled before they ran."""
  if self._unflushed:
   self.flush()

 def flush(self) -> None:
  # The flags are cleared first: a flush that fails cancels the run, which comes back here.
  self._unflushed = False
  self._unflushed_starts.clear()
  for flush in self._flushes:
   flush()
