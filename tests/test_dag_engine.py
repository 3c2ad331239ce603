"""ExecutionEngine: readiness, failure and retry, approval, restore, validation, scale."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conductor.dag_engine import (
 CycleError,
 DuplicateTicketError,
 ExecutionEngine,
 PipelineError,
 SelfDependencyError,
 Status,
 Ticket,
 UnknownDependencyError,
 gc_paused,
)


def build(graph: Mapping[str, Sequence[str]], *, auto_queue: bool = True) -> ExecutionEngine:
 return ExecutionEngine(
  [Ticket(tid, tuple(deps)) for tid, deps in graph.items()], auto_queue=auto_queue
 )


def ids(tickets: Sequence[Ticket]) -> list[str]:
 return [t.id for t in tickets]


def run(engine: ExecutionEngine, tid: str) -> list[str]:
 engine.start(tid)
 return ids(engine.complete(tid))


def drain(engine: ExecutionEngine) -> list[str]:
 """Run everything that can run, one ticket at a time; return the start order."""
 order: list[str] = []
 while batch := engine.tick():
  for ticket in batch:
   order.append(ticket.id)
   run(engine, ticket.id)
 return order


def statuses(engine: ExecutionEngine) -> dict[str, Status]:
 return {tid: t.status for tid, t in engine.tickets.items()}


DIAMOND = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


# -- readiness ---------------------------------------------------------------------------------


def test_tick_hands_out_only_tickets_whose_dependencies_completed() -> None:
 engine = build(DIAMOND)
 assert ids(engine.tick()) == ["a"]
 assert run(engine, "a") == ["b", "c"]
 assert ids(engine.tick()) == ["b", "c"]
 assert run(engine, "b") == []
 assert engine.tick() == []
 assert run(engine, "c") == ["d"]
 assert ids(engine.tick()) == ["d"]
 run(engine, "d")
 assert engine.is_done


def test_each_ready_ticket_is_handed_out_once_even_before_it_starts() -> None:
 engine = build({"a": (), "b": ()})
 assert ids(engine.tick()) == ["a", "b"]
 assert engine.tick() == []
 engine.start("a")
 assert engine.tick() == []


def test_tickets_may_depend_on_tickets_defined_later() -> None:
 engine = build({"late": ("early",), "early": ()})
 assert drain(engine) == ["early", "late"]


def test_a_chain_listed_from_its_end_runs_from_its_start() -> None:
 # Every dependency defined after its dependent: the build cannot trust the listing order.
 engine = build({"c": ("b", "b"), "b": ("a",), "a": ()})
 assert engine.counts()[Status.TODO] == 3
 assert drain(engine) == ["a", "b", "c"]


def test_a_ticket_naming_a_later_ticket_after_earlier_ones_waits_for_all_of_them() -> None:
 engine = build({"a": (), "b": (), "x": ("a", "a", "b", "y"), "y": ()})
 assert ids(engine.tick()) == ["a", "b", "y"]
 assert run(engine, "a") == [] and run(engine, "b") == []
 assert run(engine, "y") == ["x"]


def test_restored_statuses_of_tickets_listed_before_their_dependencies_are_honoured() -> None:
 engine = ExecutionEngine(
  [
   Ticket("c", ("b",), status=Status.BLOCKED, blocked_by="a", error="x"),
   Ticket("b", ("a",), status=Status.TODO),
   Ticket("a", status=Status.FAILED, attempts=1, error="broke"),
  ]
 )
 assert engine.tickets["b"].status is Status.BLOCKED and engine.tickets["c"].blocked_by == "a"
 assert engine.retry("a") == ["b", "c"]
 assert drain(engine) == ["a", "b", "c"]


def test_repeated_dependency_ids_count_as_one_dependency() -> None:
 engine = build({"a": (), "b": ("a", "a")})
 assert drain(engine) == ["a", "b"]


def test_start_counts_the_attempt_and_clears_the_last_error() -> None:
 engine = build({"a": ()})
 engine.tick()
 engine.start("a")
 engine.fail("a", "boom")
 engine.retry("a")
 assert engine.tickets["a"].error == "boom"
 engine.tick()
 started = engine.start("a")
 assert started is engine.tickets["a"]
 assert (started.status, started.attempts, started.error) == (Status.IN_PROGRESS, 2, None)


def test_start_refuses_a_ticket_that_tick_did_not_hand_out() -> None:
 engine = build({"a": (), "b": ("a",)})
 with pytest.raises(RuntimeError, match=r"'b'.*not handed it out"):
  engine.start("b")
 engine.tick()
 engine.start("a")
 with pytest.raises(RuntimeError, match="'a'"):
  engine.start("a")
 with pytest.raises(KeyError, match="nope"):
  engine.start("nope")


def test_complete_and_fail_refuse_a_ticket_that_is_not_in_progress() -> None:
 engine = build({"a": ()})
 with pytest.raises(RuntimeError, match="cannot complete ticket 'a': it is todo"):
  engine.complete("a")
 engine.tick()
 with pytest.raises(RuntimeError, match="cannot fail ticket 'a'"):
  engine.fail("a", "x")
 run(engine, "a")
 with pytest.raises(RuntimeError, match="it is completed"):
  engine.complete("a")


# -- failure and retry -------------------------------------------------------------------------


def test_failure_blocks_transitive_dependents_only() -> None:
 engine = build(
  {
   "root": (),
   "bad": ("root",),
   "child": ("bad",),
   "grandchild": ("child", "side"),
   "side": ("root",),
   "after_side": ("side",),
  }
 )
 run(engine, engine.tick()[0].id)
 assert ids(engine.tick()) == ["bad", "side"]
 engine.start("bad")
 assert engine.fail("bad", "exit 1") == ["child", "grandchild"]
 bad, child, grandchild = (engine.tickets[t] for t in ("bad", "child", "grandchild"))
 assert (bad.status, bad.error) == (Status.FAILED, "exit 1")
 for blocked in (child, grandchild):
  assert blocked.status is Status.BLOCKED
  assert blocked.blocked_by == "bad"
  assert blocked.error is not None
  assert blocked.error == "dependency 'bad' failed; retry 'bad' to unblock"  # no status in it
 # The independent branch goes on.
 assert run(engine, "side") == ["after_side"]
 assert ids(engine.tick()) == ["after_side"]
 run(engine, "after_side")
 assert engine.is_settled
 assert not engine.is_done


def test_retry_restores_blocked_dependents_and_the_run_finishes() -> None:
 engine = build(DIAMOND)
 engine.tick()
 engine.start("a")
 assert engine.fail("a", "boom") == ["b", "c", "d"]
 unblocked = engine.retry("a")
 assert sorted(unblocked[:2]) == ["b", "c"] and unblocked[2:] == ["d"]  # dependencies first
 assert statuses(engine) == dict.fromkeys("abcd", Status.TODO)
 assert all(engine.tickets[t].blocked_by is None for t in "bcd")
 assert all(engine.tickets[t].error is None for t in "bcd")
 assert drain(engine) == ["a", "b", "c", "d"]
 assert engine.tickets["a"].attempts == 2
 assert engine.is_done


def test_retry_keeps_tickets_blocked_by_another_failure_and_names_it() -> None:
 engine = build({"x": (), "y": (), "dx": ("x",), "both": ("dx", "y"), "below": ("both",)})
 engine.tick()
 engine.start("x")
 engine.start("y")
 assert engine.fail("x", "boom") == ["dx", "both", "below"]
 assert engine.fail("y", "bang") == []
 # dx is todo again; both and below are now blocked by y: all three changed.
 assert engine.retry("x") == ["dx", "both", "below"]
 assert engine.tickets["dx"].status is Status.TODO
 for tid in ("both", "below"):
  ticket = engine.tickets[tid]
  assert (ticket.status, ticket.blocked_by) == (Status.BLOCKED, "y")
  assert ticket.error is not None
  assert "'y'" in ticket.error
 engine.retry("y")
 assert engine.pending() == ["x", "y", "dx", "both", "below"]
 assert drain(engine) == ["x", "y", "dx", "both", "below"]


def test_a_second_failure_does_not_rewrite_the_reason_of_tickets_already_blocked() -> None:
 engine = build({"x": (), "y": (), "both": ("x", "y")})
 engine.tick()
 engine.start("x")
 engine.start("y")
 assert engine.fail("x", "boom") == ["both"]
 assert engine.fail("y", "bang") == []
 assert engine.tickets["both"].blocked_by == "x"
 engine.retry("y")
 assert engine.tickets["both"].blocked_by == "x"


def test_retrying_a_ticket_that_has_not_failed_raises_value_error() -> None:
 engine = build({"a": (), "b": ("a",)})
 with pytest.raises(ValueError, match="cannot retry ticket 'a': it is todo, only failed"):
  engine.retry("a")
 engine.tick()
 engine.start("a")
 engine.fail("a", "boom")
 with pytest.raises(ValueError, match="it is blocked"):
  engine.retry("b")


# -- requeue -----------------------------------------------------------------------------------


def test_requeue_hands_an_interrupted_ticket_out_again_without_failing_anything() -> None:
 engine = build({"a": (), "b": ("a",)})
 engine.tick()
 engine.start("a")
 engine.requeue("a")
 assert statuses(engine) == {"a": Status.TODO, "b": Status.TODO}
 assert engine.tickets["a"].attempts == 1
 assert ids(engine.tick()) == ["a"]
 assert engine.tick() == []
 engine.start("a")
 assert engine.tickets["a"].attempts == 2


def test_requeue_gives_back_a_handed_out_ticket_that_never_started() -> None:
 engine = build({"a": ()})
 engine.tick()
 engine.requeue("a")
 assert not engine.is_settled
 assert ids(engine.tick()) == ["a"]
 engine.start("a")
 assert engine.tickets["a"].attempts == 1
 engine.complete("a")
 assert engine.is_settled


def test_an_automatic_retry_keeps_the_failure_until_the_ticket_starts_again() -> None:
 engine = build({"a": ()})
 engine.tick()
 engine.start("a")
 engine.requeue("a", "exit 3")
 assert (engine.tickets["a"].status, engine.tickets["a"].error) == (Status.TODO, "exit 3")
 engine.tick()
 engine.start("a")
 assert engine.tickets["a"].error is None


def test_each_try_has_the_full_retry_budget_and_attempts_keep_counting() -> None:
 engine = ExecutionEngine([Ticket("a", retries=1)])
 left: list[int] = []

 def attempt(fails: bool) -> None:
  engine.tick()
  engine.start("a")
  left.append(engine.retries_left("a"))
  if fails and engine.retries_left("a"):
   engine.requeue("a", "broke")
  elif fails:
   engine.fail("a", "broke")
  else:
   engine.complete("a")

 assert engine.retries_left("a") == 1
 attempt(fails=True)  # the first attempt, then its one retry
 attempt(fails=True)
 assert engine.tickets["a"].status is Status.FAILED and left == [1, 0]
 engine.retry("a")  # a person's retry: a new try
 assert engine.retries_left("a") == 1
 attempt(fails=True)
 attempt(fails=False)
 assert left == [1, 0, 1, 0]
 assert engine.tickets["a"].attempts == 4  # every attempt has its own number


def test_a_refunded_requeue_spends_no_retry_but_keeps_its_attempt_number() -> None:
 # An attempt lost (or that paused the pipeline) through no fault of its own.
 engine = ExecutionEngine([Ticket("a", retries=1)])
 engine.tick()
 engine.start("a")
 engine.requeue("a", refund=True)
 engine.tick()
 engine.start("a")
 assert engine.tickets["a"].attempts == 2
 assert engine.retries_left("a") == 1  # as on its first attempt: the retry is still there
 engine.requeue("a", "broke")  # a failure: spends it
 engine.tick()
 engine.start("a")
 assert engine.retries_left("a") == 0


def test_a_new_engine_begins_a_new_try_for_restored_tickets() -> None:
 # A re-run: the store hands back a ticket that used up its budget (3 attempts, 2 retries).
 engine = ExecutionEngine([Ticket("a", retries=2, attempts=3)])
 assert engine.retries_left("a") == 2
 engine.tick()
 engine.start("a")
 assert engine.tickets["a"].attempts == 4 and engine.retries_left("a") == 2


def test_requeue_refuses_a_ticket_that_is_neither_running_nor_handed_out() -> None:
 engine = build({"a": ()})
 with pytest.raises(RuntimeError, match="cannot requeue ticket 'a'"):
  engine.requeue("a")


# -- approval ----------------------------------------------------------------------------------


def test_without_auto_queue_ready_tickets_wait_for_approval() -> None:
 engine = build({"a": (), "b": (), "c": ("a",)}, auto_queue=False)
 assert not engine.auto_queue
 assert engine.tick() == []
 assert engine.awaiting_approval() == ["a", "b"]
 assert engine.is_settled
 engine.queue("b")
 assert engine.awaiting_approval() == ["a"]
 assert ids(engine.tick()) == ["b"]
 engine.queue("a")
 assert ids(engine.tick()) == ["a"]
 assert run(engine, "a") == []
 assert engine.awaiting_approval() == ["c"]


def test_approving_a_ticket_before_it_is_ready_releases_it_once_ready() -> None:
 engine = build({"a": (), "b": ("a",)}, auto_queue=False)
 engine.queue("b")
 assert engine.awaiting_approval() == ["a"]
 engine.queue("a")
 engine.tick()
 assert run(engine, "a") == ["b"]
 assert ids(engine.tick()) == ["b"]


def test_queue_is_idempotent() -> None:
 engine = build({"a": ()}, auto_queue=False)
 engine.queue("a")
 engine.queue("a")
 assert ids(engine.tick()) == ["a"]
 engine.queue("a")
 assert engine.tick() == []


def test_turning_auto_queue_on_releases_tickets_awaiting_approval() -> None:
 engine = build({"a": (), "b": ()}, auto_queue=False)
 engine.auto_queue = True
 assert engine.awaiting_approval() == []
 assert ids(engine.tick()) == ["a", "b"]


def test_a_restored_failure_retried_without_auto_queue_needs_no_approval() -> None:
 engine = ExecutionEngine([Ticket("a", status=Status.FAILED)], auto_queue=False)
 engine.retry("a")
 assert ids(engine.tick()) == ["a"]


# -- restored statuses -------------------------------------------------------------------------


def test_restored_completed_tickets_count_as_satisfied_dependencies() -> None:
 engine = ExecutionEngine(
  [
   Ticket("a", status=Status.COMPLETED, attempts=1),
   Ticket("b", ("a",)),
   Ticket("c", ("b",)),
  ]
 )
 assert ids(engine.tick()) == ["b"]
 assert engine.counts()[Status.COMPLETED] == 1


def test_restored_in_progress_ticket_is_reset_to_todo_and_keeps_its_attempts() -> None:
 engine = ExecutionEngine([Ticket("a", status=Status.IN_PROGRESS, attempts=3)])
 assert engine.tickets["a"].status is Status.TODO
 assert engine.counts()[Status.IN_PROGRESS] == 0
 assert ids(engine.tick()) == ["a"]
 assert engine.start("a").attempts == 4


def test_restored_failure_blocks_its_todo_dependents_and_can_be_retried() -> None:
 engine = ExecutionEngine(
  [
   Ticket("a", status=Status.FAILED, error="boom", attempts=1),
   Ticket("b", ("a",), status=Status.IN_PROGRESS),
   Ticket("c", ("b",)),
   Ticket("free", ()),
  ]
 )
 assert statuses(engine) == {
  "a": Status.FAILED,
  "b": Status.BLOCKED,
  "c": Status.BLOCKED,
  "free": Status.TODO,
 }
 assert engine.tickets["c"].blocked_by == "a"
 assert engine.tickets["a"].error == "boom"
 assert ids(engine.tick()) == ["free"]
 engine.retry("a")
 assert drain(engine) == ["a", "b", "c"]


def test_restored_blocked_ticket_stays_blocked_by_its_failed_dependency() -> None:
 engine = ExecutionEngine(
  [
   Ticket("a", status=Status.FAILED),
   Ticket("b", ("a",), status=Status.BLOCKED, blocked_by="a", error="blocked"),
  ]
 )
 assert engine.tickets["b"].status is Status.BLOCKED
 assert engine.tickets["b"].blocked_by == "a"
 assert engine.is_settled


def test_restored_blocked_ticket_with_nothing_failed_upstream_becomes_todo() -> None:
 # A store written between retry's own transitions: nothing could ever unblock it otherwise.
 engine = ExecutionEngine(
  [
   Ticket("a", status=Status.COMPLETED),
   Ticket("b", ("a",), status=Status.BLOCKED, blocked_by="a", error="blocked"),
  ]
 )
 b = engine.tickets["b"]
 assert (b.status, b.blocked_by, b.error) == (Status.TODO, None, None)
 assert ids(engine.tick()) == ["b"]


def test_a_restored_completed_ticket_is_not_run_again_when_a_new_dependency_completes() -> None:
 # The pipeline file gained a dependency after "b" had already completed.
 engine = ExecutionEngine([Ticket("new"), Ticket("b", ("new",), status=Status.COMPLETED)])
 assert ids(engine.tick()) == ["new"]
 assert run(engine, "new") == []
 assert engine.tick() == []
 assert engine.is_done


def test_restored_status_strings_are_read_as_statuses() -> None:
 ticket = Ticket("a")
 ticket.status = "completed"  # type: ignore[assignment]  # as a store might hand it back
 engine = ExecutionEngine([ticket, Ticket("b", ("a",))])
 assert engine.tickets["a"].status is Status.COMPLETED
 assert ids(engine.tick()) == ["b"]


def test_an_unknown_restored_status_names_the_ticket() -> None:
 ticket = Ticket("a")
 ticket.status = "paused"  # type: ignore[assignment]
 with pytest.raises(PipelineError, match="ticket 'a' has unknown status 'paused'") as info:
  ExecutionEngine([ticket])
 assert info.value.ticket == "a"


# -- validation --------------------------------------------------------------------------------


def test_duplicate_ticket_ids_are_rejected_naming_the_id() -> None:
 with pytest.raises(DuplicateTicketError, match=r"duplicate ticket id 'a'.*rename") as info:
  ExecutionEngine([Ticket("a"), Ticket("b"), Ticket("a")])
 assert info.value.ticket == "a"
 assert isinstance(info.value, ValueError)


def test_unknown_dependency_names_the_ticket_and_the_missing_id() -> None:
 with pytest.raises(UnknownDependencyError) as info:
  build({"a": (), "b": ("a", "ghost")})
 assert str(info.value) == (
  "ticket 'b' depends on unknown ticket 'ghost': add a ticket 'ghost' or remove it from depends_on"
 )
 assert (info.value.ticket, info.value.dependency) == ("b", "ghost")


def test_self_dependency_is_rejected_naming_the_ticket() -> None:
 with pytest.raises(SelfDependencyError, match="ticket 'a' depends on itself") as info:
  build({"a": ("a",)})
 assert info.value.ticket == "a"


def test_cycle_error_shows_the_path_from_the_first_defined_ticket() -> None:
 with pytest.raises(CycleError) as info:
  build({"start": (), "a": ("start", "b"), "b": ("c",), "c": ("a",), "after": ("a",)})
 assert info.value.cycle == ("a", "b", "c", "a")
 assert info.value.ticket == "a"
 assert "a -> b -> c -> a" in str(info.value)
 assert "\n" not in str(info.value)


def test_cycle_is_found_when_the_walk_starts_downstream_of_it() -> None:
 with pytest.raises(CycleError) as info:
  build({"tail": ("y",), "y": ("x",), "x": ("y",)})
 assert info.value.cycle == ("y", "x", "y")


def test_every_validation_error_is_a_one_line_pipeline_error() -> None:
 bad_pipelines: list[list[Ticket]] = [
  [Ticket("a"), Ticket("a")],
  [Ticket("a", ("nope",))],
  [Ticket("a", ("a",))],
  [Ticket("a", ("b",)), Ticket("b", ("a",))],
 ]
 for tickets in bad_pipelines:
  with pytest.raises(PipelineError) as info:
   ExecutionEngine(tickets)
  assert info.value.ticket == "a"
  assert "\n" not in str(info.value)


# -- views and counters ------------------------------------------------------------------------


def test_counts_follow_every_transition() -> None:
 engine = build({"a": (), "b": ("a",), "c": ()})

 def counts() -> tuple[int, ...]:
  c = engine.counts()
  return tuple(c[s] for s in Status)

 assert set(engine.counts()) == set(Status)
 assert counts() == (3, 0, 0, 0, 0)
 engine.tick()
 engine.start("a")
 engine.start("c")
 assert counts() == (1, 2, 0, 0, 0)
 engine.complete("c")
 engine.fail("a", "boom")
 assert counts() == (0, 0, 1, 1, 1)
 engine.retry("a")
 assert counts() == (2, 0, 1, 0, 0)
 engine.tick()
 engine.start("a")
 engine.requeue("a")
 assert counts() == (2, 0, 1, 0, 0)


def test_is_done_and_is_settled_track_whether_the_run_can_go_on() -> None:
 engine = build({"a": ()})
 assert not engine.is_settled
 engine.tick()
 assert not engine.is_settled  # handed out, about to start
 engine.start("a")
 assert not engine.is_settled
 engine.complete("a")
 assert engine.is_settled
 assert engine.is_done


def test_an_empty_pipeline_is_done() -> None:
 engine = ExecutionEngine([])
 assert engine.is_done
 assert engine.is_settled
 assert engine.tick() == []


def test_pending_lists_todo_tickets_in_insertion_order_including_handed_out_ones() -> None:
 engine = build({"z": (), "y": ("z",), "x": ()})
 engine.tick()
 assert engine.pending() == ["z", "y", "x"]
 engine.start("x")
 assert engine.pending() == ["z", "y"]


def test_tickets_is_a_read_only_view_in_insertion_order() -> None:
 given_tickets = [Ticket("b"), Ticket("a")]
 engine = ExecutionEngine(given_tickets)
 assert list(engine.tickets) == ["b", "a"]
 assert engine.tickets["b"] is given_tickets[0]
 with pytest.raises(TypeError):
  engine.tickets["c"] = Ticket("c")  # type: ignore[index]


# -- scale: nothing recurses -------------------------------------------------------------------

N = 100_000


def chain(n: int) -> list[Ticket]:
 return [Ticket("t0")] + [Ticket(f"t{i}", (f"t{i - 1}",)) for i in range(1, n)]


def test_a_100k_ticket_chain_runs_to_the_end() -> None:
 engine = ExecutionEngine(chain(N))
 assert len(drain(engine)) == N
 assert engine.is_done


def test_a_100k_ticket_chain_is_blocked_and_unblocked_by_its_head() -> None:
 engine = ExecutionEngine(chain(N))
 engine.tick()
 engine.start("t0")
 assert len(engine.fail("t0", "boom")) == N - 1
 assert engine.counts()[Status.BLOCKED] == N - 1
 engine.retry("t0")
 assert engine.counts()[Status.TODO] == N
 assert len(drain(engine)) == N


def test_a_100k_ticket_cycle_is_reported_without_recursion() -> None:
 tickets = [Ticket(f"t{i}", (f"t{(i + 1) % N}",)) for i in range(N)]
 with pytest.raises(CycleError) as info:
  ExecutionEngine(tickets)
 assert len(info.value.cycle) == N + 1


def test_a_100k_wide_dag_runs_to_the_end() -> None:
 middle = [f"m{i}" for i in range(N)]
 engine = ExecutionEngine(
  [
   Ticket("root"),
   *(Ticket(m, ("root",)) for m in middle),
   Ticket("sink", tuple(middle)),
  ]
 )
 assert ids(engine.tick()) == ["root"]
 assert len(run(engine, "root")) == N
 assert drain(engine) == [*middle, "sink"]
 assert engine.is_done


def test_a_failure_at_the_root_of_a_100k_wide_dag_blocks_all_of_it() -> None:
 middle = [f"m{i}" for i in range(N)]
 engine = ExecutionEngine(
  [
   Ticket("root"),
   *(Ticket(m, ("root",)) for m in middle),
   Ticket("sink", tuple(middle)),
  ]
 )
 engine.tick()
 engine.start("root")
 assert len(engine.fail("root", "boom")) == N + 1
 engine.retry("root")
 assert len(drain(engine)) == N + 2


# -- property: random DAGs against a reference model -------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[tuple[int, ...]], list[int]]:
 """Ticket i depends on some tickets j < i; tickets are defined in a random order."""
 n = draw(st.integers(0, 9))
 deps = [
  tuple(draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True))) if i else ()
  for i in range(n)
 ]
 order = draw(st.permutations(range(n)))
 return deps, list(order)


def reference(
 deps: Sequence[tuple[int, ...]], driven: Mapping[int, Status]
) -> tuple[list[Status], list[set[int]]]:
 """Expected status of every ticket and the failed tickets upstream of each, by brute force.

 `driven` holds the tickets the test moved out of todo (in progress, completed or failed);
 every other ticket is blocked if anything upstream failed, else todo.
 """
 status: list[Status] = []
 failed_above: list[set[int]] = []
 for i, ds in enumerate(deps):  # indices are a topological order
  above = set().union(*(failed_above[d] for d in ds))
  above |= {d for d in ds if status[d] is Status.FAILED}
  failed_above.append(above)
  status.append(driven.get(i, Status.BLOCKED if above else Status.TODO))
 return status, failed_above


@settings(max_examples=300, deadline=None)
@given(graph=dags(), auto_queue=st.booleans(), data=st.data())
def test_random_runs_with_failures_retries_and_requeues_match_a_reference_model(
 graph: tuple[list[tuple[int, ...]], list[int]], auto_queue: bool, data: st.DataObject
) -> None:
 deps, order = graph
 name = [f"t{i}" for i in range(len(deps))]
 index = {tid: i for i, tid in enumerate(name)}
 engine = ExecutionEngine(
  [Ticket(name[i], tuple(name[d] for d in deps[i])) for i in order], auto_queue=auto_queue
 )
 driven: dict[int, Status] = {}
 approved: set[int] = set()
 handed: set[int] = set()
 starts: Counter[int] = Counter()
 expected_starts: Counter[int] = Counter(range(len(deps)))
 budget = {"fail": 4, "requeue": 3}

 while True:
  fresh = [index[t.id] for t in engine.tick()]
  assert len(set(fresh)) == len(fresh)
  assert not handed & set(fresh), "a ticket was handed out twice"
  handed |= set(fresh)

  status, failed_above = reference(deps, driven)
  assert statuses(engine) == {name[i]: s for i, s in enumerate(status)}
  assert engine.counts() == {s: status.count(s) for s in Status}
  for i, s in enumerate(status):
   ticket = engine.tickets[name[i]]
   if s is Status.BLOCKED:
    assert ticket.blocked_by in {name[f] for f in failed_above[i]}
   else:
    assert ticket.blocked_by is None
  ready = {
   i
   for i, s in enumerate(status)
   if s is Status.TODO and all(status[d] is Status.COMPLETED for d in deps[i])
  }
  assert handed == {i for i in ready if auto_queue or i in approved}
  assert set(engine.awaiting_approval()) == {name[i] for i in ready - handed}
  running = sorted(i for i, s in driven.items() if s is Status.IN_PROGRESS)
  assert engine.is_settled == (not running and not handed)

  actions: list[tuple[str, int]] = [("start", i) for i in sorted(handed)]
  actions += [("complete", i) for i in running]
  actions += [(act, i) for act in budget if budget[act] for i in running]
  if budget["requeue"]:
   actions += [("requeue", i) for i in sorted(handed)]  # a spawn cancelled before start
  actions += [("retry", i) for i, s in sorted(driven.items()) if s is Status.FAILED]
  if not auto_queue:
   actions += [("queue", i) for i in range(len(deps)) if i not in approved]
  if not actions:
   break
  act, i = data.draw(st.sampled_from(actions))
  tid = name[i]
  if act == "start":
   assert all(driven.get(d) is Status.COMPLETED for d in deps[i])
   engine.start(tid)
   handed.discard(i)
   driven[i] = Status.IN_PROGRESS
   starts[i] += 1
  elif act == "complete":
   engine.complete(tid)
   driven[i] = Status.COMPLETED
  elif act == "fail":
   budget["fail"] -= 1
   newly = engine.fail(tid, "boom")
   driven[i] = Status.FAILED
   after, _ = reference(deps, driven)
   assert {index[t] for t in newly} == {
    j for j, s in enumerate(after) if s is Status.BLOCKED and status[j] is Status.TODO
   }
   expected_starts[i] += 1
  elif act == "requeue":
   budget["requeue"] -= 1
   engine.requeue(tid)
   if i in handed:
    handed.discard(i)
   else:
    del driven[i]
    expected_starts[i] += 1
  elif act == "retry":
   engine.retry(tid)
   del driven[i]
   approved.add(i)
  else:
   engine.queue(tid)
   approved.add(i)

 # Failures are always retried in the end, so every run finishes.
 assert engine.is_done
 assert starts == expected_starts
 assert all(engine.tickets[name[i]].attempts == n for i, n in starts.items())


@settings(max_examples=200, deadline=None)
@given(graph=dags(), data=st.data())
def test_every_ticket_runs_exactly_once_after_its_dependencies_when_nothing_fails(
 graph: tuple[list[tuple[int, ...]], list[int]], data: st.DataObject
) -> None:
 deps, order = graph
 engine = ExecutionEngine([Ticket(str(i), tuple(str(d) for d in deps[i])) for i in order])
 completed: set[int] = set()
 running: list[int] = []
 handed: list[int] = []
 started: list[int] = []
 while True:
  handed += [int(t.id) for t in engine.tick()]
  if not handed and not running:
   break
  # Start or finish something, in an order the test picks, to shake out ordering bugs.
  if handed and (not running or data.draw(st.booleans())):
   i = handed.pop(data.draw(st.integers(0, len(handed) - 1)))
   assert completed.issuperset(deps[i])
   engine.start(str(i))
   started.append(i)
   running.append(i)
  else:
   i = running.pop(data.draw(st.integers(0, len(running) - 1)))
   engine.complete(str(i))
   completed.add(i)
 assert sorted(started) == list(range(len(deps)))
 assert engine.is_done
 assert engine.is_settled


def test_building_holds_off_the_garbage_collector_and_leaves_it_as_it_was() -> None:
 seen: list[bool] = []

 class Watched(Ticket):
  __slots__ = ()

  @property
  def depends_on(self) -> tuple[str, ...]:  # type: ignore[override]
   seen.append(gc.isenabled())
   return ()

  @depends_on.setter
  def depends_on(self, value: tuple[str, ...]) -> None:
   pass

 assert gc.isenabled()
 ExecutionEngine([Watched("a")])
 assert seen and not any(seen) and gc.isenabled()
 with pytest.raises(DuplicateTicketError):
  ExecutionEngine([Ticket("a"), Ticket("a")])
 assert gc.isenabled()
 gc.disable()
 try:
  with gc_paused(), gc_paused():  # nested, and off before: it stays off
   pass
  assert not gc.isenabled()
 finally:
  gc.enable()
