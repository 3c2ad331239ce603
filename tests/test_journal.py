"""The journal's transitions, built on the hot path as plain tuples, are the Transitions
they stand for, field for field."""

from __future__ import annotations

from conductor.dag_engine import Status, Ticket
from conductor.journal import Journal
from conductor.transitions import Change, Transition
from conductor.workers import Usage


def _journal() -> tuple[Journal, list[Transition]]:
 seen: list[Transition] = []
 journal = Journal()
 journal.add_listener(seen.append)
 return journal, seen


def test_a_start_is_the_transition_it_stands_for() -> None:
 journal, seen = _journal()
 ticket = Ticket("a", status=Status.IN_PROGRESS, attempts=2)
 journal.started(ticket)
 (t,) = seen
 assert type(t) is Transition and len(t) == len(Transition._fields)
 assert t == Transition("a", Change.STARTED, t.at, Status.IN_PROGRESS, 2)
 assert t.running_at_pause == () and t.by_person is True and t.output is None


def test_a_completion_is_the_transition_it_stands_for() -> None:
 journal, seen = _journal()
 ticket = Ticket("b", status=Status.COMPLETED, attempts=1, error="earlier")
 usage = Usage(3, 4)
 journal.completed(ticket, 0, "out", usage)
 journal.completed(ticket, None, "", None)
 with_output, empty = seen
 assert type(with_output) is Transition and len(with_output) == len(Transition._fields)
 assert with_output == Transition(
  "b", Change.COMPLETED, with_output.at, Status.COMPLETED, 1, None, "earlier", 0, (), "out", usage
 )
 assert empty == Transition(
  "b", Change.COMPLETED, empty.at, Status.COMPLETED, 1, error="earlier", output=None
 )
