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


class _Recorder:
 """A `Recorder` that notes how each transition reached it."""

 def __init__(self) -> None:
  self.calls: list[tuple[str, object]] = []

 def __call__(self, transition: Transition, /) -> None:
  self.calls.append(("transition", transition))

 def started(self, ticket: str, at: float, attempt: int, /) -> None:
  self.calls.append(("started", (ticket, at, attempt)))

 def completed(self, ticket: str, at: float, attempt: int, /) -> None:
  self.calls.append(("completed", (ticket, at, attempt)))


def test_a_recorder_takes_plain_starts_and_completions_as_values() -> None:
 # The same transitions a plain listener gets, the plain start and completion as values.
 journal = Journal()
 recorder, seen = _Recorder(), list[Transition]()
 journal.add_listener(recorder)
 journal.add_listener(seen.append)
 second = _Recorder()  # only the first Recorder is called so; the next, as a listener
 journal.add_listener(second)
 a = Ticket("a", status=Status.IN_PROGRESS, attempts=1)
 journal.started(a)
 a.status = Status.COMPLETED
 journal.completed(a, None, "", None)  # plain
 journal.completed(a, 0, "", None)  # an exit code
 journal.completed(a, None, "out", None)  # an output
 journal.completed(a, None, "", Usage(1, 2))  # a usage
 a.error = "kept"
 journal.completed(a, None, "", None)  # an error
 a.error, a.status = None, Status.TODO
 journal.completed(a, None, "", None)  # not completed (as the engine never says, but)
 journal.changed(a, Change.RETRIED, "retry")
 assert [t.change for t in seen] == [Change.STARTED, *[Change.COMPLETED] * 6, Change.RETRIED]
 assert second.calls == [("transition", t) for t in seen]
 start, plain, *others = seen
 assert recorder.calls == [
  ("started", ("a", start.at, 1)),
  ("completed", ("a", plain.at, 1)),
  *[("transition", t) for t in others],
 ]
 assert start == Transition("a", Change.STARTED, start.at, Status.IN_PROGRESS, 1)
 assert plain == Transition("a", Change.COMPLETED, plain.at, Status.COMPLETED, 1)
 assert journal._unflushed and journal._unflushed_starts == {"a"}


def test_a_recorder_alone_still_makes_the_journal_flush() -> None:
 journal = Journal()
 recorder, flushed = _Recorder(), list[int]()
 journal.add_listener(recorder, lambda: flushed.append(1))
 a = Ticket("a", status=Status.IN_PROGRESS, attempts=1)
 journal.started(a)
 journal.step_end()  # its worker flushes it (rule 1)
 assert not flushed
 journal.before_worker("a")
 assert flushed == [1]
 a.status = Status.COMPLETED
 journal.completed(a, None, "", None)
 journal.step_end()  # rule 2
 assert flushed == [1, 1]
 assert [kind for kind, _ in recorder.calls] == ["started", "completed"]
