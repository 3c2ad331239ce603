"""The pure, synchronous DAG of tickets: statuses, readiness and validation.

`ExecutionEngine` is modelled on CPython's `graphlib.TopologicalSorter`: one `_Node` record per
ticket holding a counter of unmet dependencies, so finding what may start next never rescans the
pipeline and a whole run costs O(V + E). It does no I/O, owns no event loop and starts no threads;
the caller (`ConductorEngine`) decides when and where work runs and reports back. Building
one holds off Python's cyclic garbage collector (`_heap.gc_paused`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._heap import gc_paused
from ._text import printable

__all__ = [
 "CycleError",
 "DuplicateTicketError",
 "ExecutionEngine",
 "InvalidTicketIdError",
 "PipelineError",
 "SelfDependencyError",
 "Status",
 "Ticket",
 "UnknownDependencyError",
 "gc_paused",
]


class Status(enum.StrEnum):
 """Where a ticket is in its life. Values are the strings shown to users and stored."""

 TODO = "todo"
 IN_PROGRESS = "in_progress"
 COMPLETED = "completed"
 FAILED = "failed"
 BLOCKED = "blocked"


@dataclass(slots=True, eq=False)
class Ticket:
 """One unit of work in the pipeline.

 `work` is opaque to the DAG engine: a worker spec (see `conductor.workers`) or anything a
 custom worker understands. The engine owns `status`, `attempts`, `error` and `blocked_by`.
 """

 id: str
 depends_on: tuple[str, ...] = ()
 description: str = ""
 work: object | None = None
 retries: int = 0  # automatic retries after a failure, in each try (see ExecutionEngine)
 status: Status = Status.TODO
 attempts: int = 0  # how many times the ticket has been started
 error: str | None = None  # last failure, or why it is blocked
 blocked_by: str | None = None  # id of the failed ticket that blocks this one
 # While an attempt runs: the whole outputs of the dependencies its work reads
 # (`WorkSpec.inputs`), by id; set by the driver as the attempt starts, None otherwise.
 inputs: Mapping[str, str] | None = None


# ---------------------------------------------------------------------------------------------
# Errors a user can cause by writing a bad pipeline. Each message is one line that names the
# ticket and says how to fix it, so the CLI can print it instead of a traceback.


class PipelineError(ValueError):
 """A pipeline that cannot run as written. `ticket` names the offending ticket, if any."""

 ticket: str | None

 def __init__(self, message: str, ticket: str | None = None) -> None:
  super().__init__(message)
  self.ticket = ticket


class DuplicateTicketError(PipelineError):
 """Two tickets share an id."""

 def __init__(self, ticket: str) -> None:
  super().__init__(
   f"duplicate ticket id {ticket!r}: ticket ids must be unique, rename one of them", ticket
  )


class UnknownDependencyError(PipelineError):
 """A ticket depends on an id that no ticket has. `dependency` is that id."""

 dependency: str

 def __init__(self, ticket: str, dependency: str) -> None:
  super().__init__(
   f"ticket {ticket!r} depends on unknown ticket {dependency!r}: "
   f"add a ticket {dependency!r} or remove it from depends_on",
   ticket,
  )
  self.dependency = dependency


class InvalidTicketIdError(PipelineError):
 """A ticket id, or an id in a `depends_on`, that is not a string of printable characters.

 A newline, NUL, escape or any other character `str.isprintable()` rejects would forge log
 lines, repaint a terminal, or break the environment a shell ticket gets its id in.
 `ticket` is the ticket it is about (for a `depends_on` entry, the ticket listing it).
 """

 def __init__(self, ticket: object, dependency: object | None = None) -> None:
  bad = dependency if dependency is not None else ticket
  if isinstance(bad, str):
   chars = ", ".join(dict.fromkeys(printable(ch) for ch in bad if not ch.isprintable()))
   problem = f"has a character that cannot be printed ({chars})"
  else:
   problem = f"is a {type(bad).__name__}, not a string"
  tid = ticket if isinstance(ticket, str) else None
  if dependency is None:
   message = f"ticket id '{_shown(bad)}' {problem}: a ticket id must be printable text; rename it"
  else:
   message = (
    f"ticket '{_shown(ticket)}' depends on '{_shown(bad)}', which {problem}: "
    "list printable ticket ids in depends_on"
   )
  super().__init__(message, tid)


def _shown(value: object, limit: int = 60) -> str:
 text = printable(value if isinstance(value, str) else repr(value))
 return text if len(text) <= limit else text[: limit - 1] + "…"


class CycleError(PipelineError):
 """Tickets depend on each other in a circle, so none of them could ever start.

 `cycle` lists the ids along the circle in depends-on direction, first and last equal
 (`("a", "b", "a")`: a depends on b, b depends on a), starting at the ticket defined first.
 Only one cycle is reported when there are several. `ticket` is the first id of the cycle.
 """

 cycle: tuple[str, ...]

 def __init__(self, cycle: tuple[str, ...]) -> None:
  super().__init__(
   f"dependency cycle: {' -> '.join(map(printable, cycle))} ('->' means 'depends on'): "
   f"remove one of these dependencies",
   cycle[0],
  )
  self.cycle = cycle


class SelfDependencyError(CycleError):
 """A ticket lists itself in its own `depends_on`: the shortest cycle, `(id, id)`."""

 def __init__(self, ticket: str) -> None:
  PipelineError.__init__(
   self, f"ticket {ticket!r} depends on itself: remove {ticket!r} from its depends_on", ticket
  )
  self.cycle = (ticket, ticket)


# ---------------------------------------------------------------------------------------------
# Where a `todo` ticket stands on its way to being started. Only `todo` tickets are ever in a
# stage other than _IDLE, and only those with every dependency completed go past _IDLE.

_IDLE = 0  # not ready (or not todo): in no queue
_AWAITING = 1  # ready, but auto_queue is off and nobody approved it yet: in `_awaiting`
_QUEUED = 2  # ready and approved: in `_ready`, the next tick() hands it out
_HANDED = 3  # handed out by tick(), not started yet: counted in `_n_handed`


class _Node:
 __slots__ = ("approved", "dependents", "stage", "ticket", "try_began", "unmet")

 def __init__(self, ticket: Ticket) -> None:
  # The ticket this record augments; the engine mutates its status, attempts, error and
  # blocked_by in place, so callers holding the Ticket see every transition.
  self.ticket = ticket

  # The tickets depending on this one, in insertion order: a list while the engine is
  # built, a tuple once it is (the smaller; a quarter of a random DAG's nodes have none).
  # (Those it depends on are not kept: only a restore, retry() and a cycle's report need
  # them, `ExecutionEngine._deps`.)
  self.dependents: list[_Node] | tuple[_Node, ...] = ()

  # How many of its distinct dependencies are not completed. It only ever goes down
  # (nothing un-completes), and a todo ticket is ready exactly when it reaches 0. Also the
  # in-degree counter of the topological sort during __init__.
  self.unmet = 0

  # One of _IDLE, _AWAITING, _QUEUED, _HANDED; see above.
  self.stage = _IDLE

  # queue() was called (or retry(), an explicit request to run it again). Only consulted
  # when auto_queue is off. Survives failures and requeues: approval is given once.
  self.approved = False

  # The ticket's attempts when its current try began: when the engine was built (a run, so
  # also a re-run) or at retry(). Attempts beyond the first since then used its retries.
  self.try_began = ticket.attempts


def _blocked_message(root: str) -> str:
 # No "blocked:" in front: every view shows the status beside the error already.
 return f"dependency {root!r} failed; retry {root!r} to unblock"


class ExecutionEngine:
 """The state machine of one pipeline run: which tickets may start, and what follows a result.

 Life of a ticket::

  todo --tick()--> handed out --start()--> in_progress --complete()--> completed
                                           in_progress --fail()------> failed --retry()--> todo
                                           in_progress --requeue()---> todo, handed out again
  todo --(a dependency fails)--> blocked --(that dependency is retried)--> todo

 Retries. A ticket's `retries` are automatic retries of a failed attempt within one *try*.
 A try begins when the engine is built (every run, so a re-run gives a failed ticket its
 full budget again) and when a person calls `retry()`; `retries_left()` says what is left
 of it, and the driver requeues a failed attempt while it is not 0. `attempts` counts every
 start across tries, so an attempt number is never reused.

 Complexity: like `graphlib.TopologicalSorter`, every ticket carries a counter of its unmet
 dependencies, so a run from start to finish costs O(V + E) in total and tick() costs only
 O(number returned). fail() and retry() cost O(size of the affected downstream part plus its
 edges). Nothing here recurses, so pipelines of any depth are fine.

 Not thread-safe and not async: one owner drives it (ConductorEngine, from its event loop).
 It performs no I/O; persisting transitions is the caller's job.

 The engine mutates the `Ticket` objects it was given (status, attempts, error, blocked_by),
 and returns those same objects, so a caller may keep references to them.

 About 480 lines, half of them docstrings: one state machine over one set of counters, which
 every method must keep consistent; split, each part would have to reach into the others'.
 """

 __slots__ = (
  "_auto_queue",
  "_awaiting",
  "_counts",
  "_n_handed",
  "_nodes",
  "_ready",
  "_tickets",
  "_view",
 )

 def __init__(self, tickets: Iterable[Ticket], *, auto_queue: bool = True) -> None:
  """Validate the pipeline and resume it from the tickets' current statuses.

  Raises `DuplicateTicketError`, `InvalidTicketIdError` (an id, or an id in a depends_on,
  that is not printable text), `SelfDependencyError` (a `CycleError`), `UnknownDependencyError`
  or `CycleError` (all `PipelineError`, a `ValueError`) for a pipeline that cannot run, naming
  the first offending ticket in insertion order. O(V + E).

  Statuses restored from a store are honoured: `completed` tickets count as satisfied
  dependencies; `failed` stays failed and `blocked` stays blocked; `in_progress` means the
  run was interrupted, so the ticket goes back to `todo` to be handed out again (its
  `attempts` are kept). Then the DAG is made consistent: a todo ticket downstream of a failed
  one becomes blocked, and a blocked ticket with no failed ticket upstream (a store written
  half-way through a retry) becomes todo, since nothing could ever unblock it.
  """
  with gc_paused():
   self._build(tickets, auto_queue)

 def _build(self, tickets: Iterable[Ticket], auto_queue: bool) -> None:
  self._auto_queue = auto_queue
  # All tickets by id in insertion order, which is the order every listing uses.
  self._nodes: dict[str, _Node] = {}
  self._tickets: dict[str, Ticket] = {}
  self._view = MappingProxyType(self._tickets)
  # Ready and approved, in the order they became so; tick() hands them out and empties it.
  self._ready: list[_Node] = []
  # Ready but awaiting approval (auto_queue off), in the order they became ready.
  self._awaiting: dict[str, _Node] = {}
  # Number of nodes in stage _HANDED.
  self._n_handed = 0
  # Number of tickets in each status; updated on every transition, never recounted.
  self._counts: dict[Status, int] = dict.fromkeys(Status, 0)

  nodes = self._nodes
  fresh = True  # every ticket todo: nothing to restore (the common case, made cheap)
  # A file lists dependencies before their dependents, as a rule: each ticket is linked to
  # them as it is added, the insertion order is a topological order, and no cycle is
  # possible. From the first ticket that names one not added yet (or itself), the rest are
  # linked once all are added (`_link`), which also finds what is wrong with them.
  late: list[_Node] | None = None
  for ticket in tickets:
   tid = ticket.id
   if type(tid) is not str or not tid.isprintable():
    raise InvalidTicketIdError(tid)
   if tid in nodes:
    raise DuplicateTicketError(tid)
   try:
    if type(ticket.status) is not Status:  # a store may hand back plain strings
     ticket.status = Status(ticket.status)
   except ValueError:
    raise PipelineError(
     f"ticket {tid!r} has unknown status {ticket.status!r}: use one of {', '.join(Status)}",
     tid,
    ) from None
   node = nodes[tid] = _Node(ticket)
   self._tickets[tid] = ticket
   fresh = fresh and ticket.status is Status.TODO
   if late is not None:
    late.append(node)
    continue
   depends_on = ticket.depends_on
   for dep_id in dict.fromkeys(depends_on) if len(depends_on) > 1 else depends_on:
    dep = nodes.get(dep_id)
    if dep is None or dep is node:
     for linked in list(dict.fromkeys(depends_on))[: node.unmet]:  # undone: linked later
      nodes[linked].dependents.pop()  # type: ignore[union-attr]  # a list while built
     node.unmet = 0
     late = [node]
     break
    node.unmet += 1
    if type(dependents := dep.dependents) is list:
     dependents.append(node)
    else:
     dep.dependents = [node]
  if late is not None:
   for node in late:
    self._link(node)

  order = list(nodes.values()) if late is None else self._topological_order()
  if fresh:  # nothing to restore; the counters, if the sort counted them down
   if late is not None:
    for node in order:
     node.unmet = len(self._deps(node))
   self._counts[Status.TODO] = len(order)
  else:
   self._restore(order)

  for node in nodes.values():
   if node.dependents:
    node.dependents = tuple(node.dependents)
   if node.unmet == 0 and node.ticket.status is Status.TODO:
    self._make_ready(node)

 def _link(self, node: _Node) -> None:
  # Count `node`'s distinct dependencies and add it to their dependents, or raise what
  # `__init__` says about a dependency that is unknown, not an id, or the ticket itself.
  tid, nodes = node.ticket.id, self._nodes
  depends_on = node.ticket.depends_on
  for dep_id in dict.fromkeys(depends_on) if len(depends_on) > 1 else depends_on:
   if dep_id == tid:
    raise SelfDependencyError(tid)
   dep = nodes.get(dep_id)
   if dep is None:  # every known id is printable: only an unknown one needs checking
    if type(dep_id) is not str or not dep_id.isprintable():
     raise InvalidTicketIdError(tid, dep_id)
    raise UnknownDependencyError(tid, dep_id)
   node.unmet += 1
   if type(dependents := dep.dependents) is list:
    dependents.append(node)
   else:
    dep.dependents = [node]

 def _restore(self, order: list[_Node]) -> None:
  # Honour the statuses a store handed back (see __init__) and count them. Dependencies
  # come first in `order`, so each ticket sees its dependencies' final statuses.
  for node in order:
   ticket = node.ticket
   if ticket.status is Status.IN_PROGRESS:
    ticket.status = Status.TODO
   if ticket.status is Status.TODO or ticket.status is Status.BLOCKED:
    root = self._blocking_root(node)
    if root is not None:
     ticket.status = Status.BLOCKED
     ticket.blocked_by = root
     ticket.error = _blocked_message(root)
    elif ticket.status is Status.BLOCKED:
     ticket.status = Status.TODO
     ticket.blocked_by = None
     ticket.error = None
   node.unmet = sum(1 for dep in self._deps(node) if dep.ticket.status is not Status.COMPLETED)
   self._counts[ticket.status] += 1

 def _topological_order(self) -> list[_Node]:
  # Kahn's algorithm on the `unmet` counters (each node's number of dependencies, still).
  # Nodes left with unmet > 0 afterwards are on a cycle or downstream of one.
  nodes = self._nodes
  order = [node for node in nodes.values() if node.unmet == 0]
  i = 0
  while i < len(order):
   for dependent in order[i].dependents:
    dependent.unmet -= 1
    if dependent.unmet == 0:
     order.append(dependent)
   i += 1
  if len(order) == len(nodes):
   return order

  # Every leftover node has a leftover dependency, so walking dependencies from any of them
  # must revisit a node; the walk from there on is a cycle. Each node is stepped on once.
  start = next(node for node in nodes.values() if node.unmet > 0)
  path: list[_Node] = []
  position: dict[_Node, int] = {}
  node = start
  while node not in position:
   position[node] = len(path)
   path.append(node)
   node = next(dep for dep in self._deps(node) if dep.unmet > 0)
  cycle = path[position[node] :]
  # Start at the ticket defined first so the message does not depend on where the walk began.
  index = {tid: i for i, tid in enumerate(nodes)}
  first = min(range(len(cycle)), key=lambda k: index[cycle[k].ticket.id])
  ids = [n.ticket.id for n in cycle[first:] + cycle[:first]]
  raise CycleError((*ids, ids[0]))

 # -- read-only views --------------------------------------------------------------------------

 @property
 def tickets(self) -> Mapping[str, Ticket]:
  """All tickets by id, in insertion order. A read-only live view; O(1)."""
  return self._view

 @property
 def auto_queue(self) -> bool:
  """Whether ready tickets are handed out without approval.

  When off, a ready ticket waits in `awaiting_approval()` until `queue()` approves it.
  Turning it on releases every awaiting ticket to the next tick(); turning it off does not
  take back tickets already queued or handed out. O(number awaiting).
  """
  return self._auto_queue

 @auto_queue.setter
 def auto_queue(self, value: bool) -> None:
  self._auto_queue = value
  if value and self._awaiting:
   for node in self._awaiting.values():
    node.stage = _QUEUED
    self._ready.append(node)
   self._awaiting.clear()

 def counts(self) -> dict[Status, int]:
  """How many tickets are in each status (every status present, zeros included).

  A fresh dict; the engine keeps the counters up to date on each transition, so this is O(1).
  """
  return dict(self._counts)

 @property
 def is_done(self) -> bool:
  """Every ticket is completed. O(1)."""
  return self._counts[Status.COMPLETED] == len(self._nodes)

 @property
 def is_settled(self) -> bool:
  """The run cannot progress without the user: nothing is running, queued or handed out.

  True when done, and also when every remaining ticket is failed, blocked, or waiting (directly
  or through its dependencies) for approval: then only `retry()` or `queue()` can move things
  on. A driver loop stops when this turns true. O(1).
  """
  return self._counts[Status.IN_PROGRESS] == 0 and not self._ready and self._n_handed == 0

 def retries_left(self, ticket_id: str) -> int:
  """How many automatic retries the ticket's current try still allows after its latest
  attempt: `retries` minus the attempts beyond the first since the try began (see the class
  docstring). A driver retries a failed attempt while this is not 0. O(1)."""
  node = self._node(ticket_id)
  ticket = node.ticket
  used = max(0, ticket.attempts - node.try_began - 1)
  return max(0, ticket.retries - used)

 def awaiting_approval(self) -> list[str]:
  """Ids of ready tickets that wait for `queue()` (auto_queue off), in the order they became
  ready. O(number awaiting)."""
  return list(self._awaiting)

 def pending(self) -> list[str]:
  """Ids of all todo tickets, handed out or not, in insertion order.

  For display (the tickets that will run on resume): O(V), unlike everything else here.
  """
  return [tid for tid, t in self._tickets.items() if t.status is Status.TODO]

 def __repr__(self) -> str:
  counts = ", ".join(f"{s}={n}" for s, n in self._counts.items())
  return f"<ExecutionEngine {len(self._nodes)} tickets: {counts}>"

 # -- transitions ------------------------------------------------------------------------------

 def tick(self) -> list[Ticket]:
  """Hand out the tickets that may start now, each exactly once.

  A ticket may start when it is todo, every dependency is completed, and (with auto_queue
  off) it was approved. A handed-out ticket is not returned again unless `requeue()` or
  `retry()` puts it back; the caller is expected to `start()` it. Tickets come in the order
  they became ready (insertion order at first). O(number returned).
  """
  ready = self._ready
  if not ready:
   return []
  self._ready = []
  for node in ready:
   node.stage = _HANDED
  self._n_handed += len(ready)
  return [node.ticket for node in ready]

 def start(self, ticket_id: str) -> Ticket:
  """Mark a handed-out ticket `in_progress`, count the attempt and clear its last error. O(1).

  Raises `KeyError` for an unknown id and `RuntimeError` if tick() did not hand it out:
  both are bugs in the caller, not user errors.
  """
  node = self._node(ticket_id)
  if node.stage != _HANDED:
   raise RuntimeError(f"cannot start ticket {ticket_id!r}: tick() has not handed it out")
  node.stage = _IDLE
  self._n_handed -= 1
  ticket = node.ticket
  self._move(ticket, Status.IN_PROGRESS)
  ticket.attempts += 1
  ticket.error = None
  return ticket

 def complete(self, ticket_id: str) -> list[Ticket]:
  """Mark an in-progress ticket `completed` and release its dependents.

  Returns the dependents that this made startable. They are only reported here, not handed
  out: the next tick() hands them out (so each is still handed out once). Dependents that
  became ready but await approval are not returned; see `awaiting_approval()`.
  O(number of dependents). Raises `RuntimeError` if the ticket is not in progress.
  """
  node = self._running(ticket_id, "complete")
  self._move(node.ticket, Status.COMPLETED)
  released: list[Ticket] = []
  for dependent in node.dependents:
   dependent.unmet -= 1
   if (
    dependent.unmet == 0 and dependent.ticket.status is Status.TODO and self._make_ready(dependent)
   ):
    released.append(dependent.ticket)
  return released

 def fail(self, ticket_id: str, error: str) -> list[str]:
  """Mark an in-progress ticket `failed` and block everything downstream of it.

  Every todo ticket that depends on it, directly or transitively, becomes `blocked` with
  `blocked_by` set to this id and an error saying so. Tickets already blocked by another
  failure keep their reason, and tickets on independent branches are untouched and go on.
  Returns the ids newly blocked, nearest first. O(newly blocked + their dependents).
  Raises `RuntimeError` if the ticket is not in progress.
  """
  node = self._running(ticket_id, "fail")
  ticket = node.ticket
  self._move(ticket, Status.FAILED)
  ticket.error = error
  message = _blocked_message(ticket_id)
  # Breadth-first with an explicit list: chains may be far deeper than the recursion limit.
  # A todo dependent of a ticket that is not completed has unmet > 0, so it is in no queue.
  frontier = [node]
  i = 0
  while i < len(frontier):
   for dependent in frontier[i].dependents:
    dep_ticket = dependent.ticket
    if dep_ticket.status is Status.TODO:
     self._move(dep_ticket, Status.BLOCKED)
     dep_ticket.blocked_by = ticket_id
     dep_ticket.error = message
     frontier.append(dependent)
   i += 1
  return [n.ticket.id for n in frontier[1:]]

 def requeue(self, ticket_id: str, error: str | None = None, *, refund: bool = False) -> None:
  """Put an interrupted ticket back to `todo` and hand it out again on the next tick().

  For a worker that was cancelled or interrupted, which is not a failure, and for an
  automatic retry of a failed attempt (`error` says why it failed; kept until the ticket
  starts again): nothing downstream changes and `attempts` is kept. Accepts an
  `in_progress` ticket, and also one handed out by tick() but never started (its spawn was
  cancelled). O(1). Raises `RuntimeError` for a ticket in any other state.

  `refund`: the attempt that just ended spends none of the try's retries (it was lost, or
  paused the pipeline, through no fault of its own): the try begins one attempt later, so
  `retries_left` is as before it. Its attempt number is still used up.
  """
  node = self._node(ticket_id)
  ticket = node.ticket
  if node.stage == _HANDED:
   self._n_handed -= 1
  elif ticket.status is Status.IN_PROGRESS:
   self._move(ticket, Status.TODO)
   if refund:
    node.try_began += 1
  else:
   raise RuntimeError(
    f"cannot requeue ticket {ticket_id!r}: it is {ticket.status}, not in progress or handed out"
   )
  if error is not None:
   ticket.error = error
  node.stage = _QUEUED
  self._ready.append(node)

 def retry(self, ticket_id: str) -> list[str]:
  """Put a failed ticket back to `todo`, with a new try (its full `retries`), and unblock
  what its failure blocked.

  Every ticket blocked (transitively) because of it returns to `todo`, unless another failed
  ticket still blocks it; then `blocked_by` (and `error`) name that one. The retried ticket
  is handed out by the next tick() (retrying counts as approval when auto_queue is off); the
  unblocked tickets follow as their dependencies complete. Its last `error` is kept until it
  starts. Returns the ids of the other tickets it changed (now todo, or blocked by another
  failure), dependencies before dependents, like fail(). O(size of the blocked part
  downstream of it plus its edges).

  Raises `ValueError` if the ticket has not failed (a user can ask for that).
  """
  node = self._node(ticket_id)
  ticket = node.ticket
  if ticket.status is not Status.FAILED:
   raise ValueError(
    f"cannot retry ticket {ticket_id!r}: it is {ticket.status}, only failed tickets can be retried"
   )
  self._move(ticket, Status.TODO)
  node.approved = True
  node.try_began = ticket.attempts
  if node.unmet == 0:
   self._make_ready(node)

  # The tickets whose blocking may change are the blocked ones reachable from here through
  # blocked tickets: every blocked ticket has a dependency carrying its root, so all those
  # rooted here are among them. Count, for each, its dependencies inside that region...
  members: dict[_Node, None] = {}
  stack = [node]
  while stack:
   for dependent in stack.pop().dependents:
    if dependent.ticket.status is Status.BLOCKED and dependent not in members:
     members[dependent] = None
     stack.append(dependent)
  region = {member: sum(1 for dep in self._deps(member) if dep in members) for member in members}

  # ...then settle them in topological order, so each sees its dependencies' final state.
  changed: list[str] = []
  stack = [member for member, inside in region.items() if inside == 0]
  while stack:
   member = stack.pop()
   member_ticket = member.ticket
   root = self._blocking_root(member)
   if root is None:
    self._move(member_ticket, Status.TODO)
    member_ticket.blocked_by = None
    member_ticket.error = None
    changed.append(member_ticket.id)
    # No _make_ready(): the dependency it was blocked through is todo now, not completed,
    # so `unmet` > 0 and complete() will release it like any other waiting ticket.
   elif root != member_ticket.blocked_by:
    member_ticket.blocked_by = root
    member_ticket.error = _blocked_message(root)
    changed.append(member_ticket.id)
   for dependent in member.dependents:
    if dependent in region:
     region[dependent] -= 1
     if region[dependent] == 0:
      stack.append(dependent)
  return changed

 def queue(self, ticket_id: str) -> None:
  """Approve a ticket for handing out when auto_queue is off. Idempotent; O(1).

  A ready ticket goes to the next tick(); a ticket not ready yet is handed out as soon as it
  becomes ready. Approval lasts: a later requeue or retry does not need it again. With
  auto_queue on, approval is recorded but changes nothing.
  """
  node = self._node(ticket_id)
  node.approved = True
  if node.stage == _AWAITING:
   del self._awaiting[ticket_id]
   node.stage = _QUEUED
   self._ready.append(node)

 # -- helpers ----------------------------------------------------------------------------------

 def _node(self, ticket_id: str) -> _Node:
  try:
   return self._nodes[ticket_id]
  except KeyError:
   raise KeyError(f"unknown ticket {ticket_id!r}") from None

 def _deps(self, node: _Node) -> list[_Node]:
  # The distinct tickets `node` depends on, in depends_on order; _build checked every id.
  nodes, depends_on = self._nodes, node.ticket.depends_on
  return [nodes[d] for d in (dict.fromkeys(depends_on) if len(depends_on) > 1 else depends_on)]

 def _running(self, ticket_id: str, action: str) -> _Node:
  node = self._node(ticket_id)
  if node.ticket.status is not Status.IN_PROGRESS:
   raise RuntimeError(
    f"cannot {action} ticket {ticket_id!r}: it is {node.ticket.status}, not in progress"
   )
  return node

 def _move(self, ticket: Ticket, status: Status) -> None:
  counts = self._counts
  counts[ticket.status] -= 1
  counts[status] += 1
  ticket.status = status

 def _make_ready(self, node: _Node) -> bool:
  """Queue a todo node whose dependencies are all completed; False if it awaits approval."""
  if self._auto_queue or node.approved:
   node.stage = _QUEUED
   self._ready.append(node)
   return True
  node.stage = _AWAITING
  self._awaiting[node.ticket.id] = node
  return False

 def _blocking_root(self, node: _Node) -> str | None:
  """The failed ticket upstream that blocks `node`, or None if nothing does.

  Relies on the dependencies' own state being final: a failed dependency is a root itself,
  a blocked one passes on its root. Prefers the root the ticket already names, so reasons
  do not churn. O(number of dependencies).
  """
  current = node.ticket.blocked_by
  found: str | None = None
  for dep in self._deps(node):
   status = dep.ticket.status
   if status is Status.FAILED:
    root: str | None = dep.ticket.id
   elif status is Status.BLOCKED:
    root = dep.ticket.blocked_by
   else:
    continue
   if root == current:
    return root
   if found is None:
    found = root
  return found
