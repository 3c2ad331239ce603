"""The pipeline's own pauses (a worker's `PausePipeline`, the token budget), the automatic
resume, lost attempts (`WorkInterrupted`) and outputs flowing down the DAG, on asyncio and
trio."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import anyio
import pytest
from anyio import create_task_group, fail_after, wait_all_tasks_blocked

from conductor import TokenBudgetSpent
from conductor.dag_engine import ExecutionEngine, Status, Ticket
from conductor.multi_agent_conductor import ConductorEngine
from conductor.transitions import Change, Transition
from conductor.workers import (
 PausePipeline,
 Usage,
 WorkFailed,
 WorkInterrupted,
 WorkResult,
 WorkSpec,
)

pytestmark = pytest.mark.anyio

Step = BaseException | WorkResult


class Script:
 """A worker that plays, for each attempt of a ticket, the next of its steps (raise an
 exception, or return a result; "<id> ok" once they run out). A ticket with a gate waits for
 the test to release it first. `started` lists every attempt, in order."""

 def __init__(self, steps: dict[str, list[Step]] | None = None) -> None:
  self.steps = steps or {}
  self.started: list[str] = []
  self.gates: dict[str, anyio.Event] = {}
  self.inputs: dict[str, dict[str, str] | None] = {}

 def gate(self, *tids: str) -> None:
  for tid in tids:
   self.gates[tid] = anyio.Event()

 def release(self, *tids: str) -> None:
  for tid in tids:
   self.gates[tid].set()

 async def __call__(self, ticket: Ticket) -> WorkResult:
  self.started.append(ticket.id)
  self.inputs[ticket.id] = None if ticket.inputs is None else dict(ticket.inputs)
  await anyio.lowlevel.checkpoint()
  gate = self.gates.get(ticket.id)
  if gate is not None:
   await gate.wait()
  steps = self.steps.get(ticket.id)
  step: Step = steps.pop(0) if steps else WorkResult(output=f"{ticket.id} ok")
  if isinstance(step, BaseException):
   raise step
  return step


class Watch:
 """A listener that records every transition, and lets a test wait for one."""

 def __init__(self, conductor: ConductorEngine) -> None:
  self.seen: list[Transition] = []
  self._waiting: list[tuple[Change, str | None, anyio.Event]] = []
  conductor.add_listener(self)

 def __call__(self, t: Transition) -> None:
  self.seen.append(t)
  for change, ticket, event in self._waiting:
   if t.change is change and t.ticket == ticket:
    event.set()

 async def wait(self, change: Change, ticket: str | None = None, count: int = 1) -> None:
  while len(self.of(change, ticket)) < count:
   event = anyio.Event()
   self._waiting.append((change, ticket, event))
   await event.wait()

 def of(self, change: Change, ticket: str | None = None) -> list[Transition]:
  return [t for t in self.seen if t.change is change and t.ticket == ticket]


def wide(n: int, **kw: int) -> list[Ticket]:
 return [Ticket(f"t{i}", **kw) for i in range(n)]  # type: ignore[arg-type]


# -- PausePipeline ---------------------------------------------------------------------------


async def test_a_worker_raising_pause_pipeline_pauses_everything_and_its_ticket_runs_after_resume() -> (
 None
):
 script = Script({"t0": [PausePipeline("rate limited by the provider")]})
 script.gate("t1", "t2", "t3")
 conductor = ConductorEngine(ExecutionEngine(wide(8)), script, max_workers=4)
 watch = Watch(conductor)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await watch.wait(Change.INTERRUPTED, "t0")
   assert conductor.paused and not conductor.paused_by_person
   snap = conductor.snapshot()
   assert snap.pause_reason == "rate limited by the provider"
   assert not snap.paused_by_person and snap.auto_resume_at is None
   # The others in flight finish, each freeing a slot: nothing starts after the pause.
   for tid in ("t1", "t2", "t3"):
    script.release(tid)
    await watch.wait(Change.COMPLETED, tid)
   await wait_all_tasks_blocked()
   assert conductor.spawned == 4
   assert sorted(script.started) == ["t0", "t1", "t2", "t3"]
   assert "t0" in conductor.snapshot().ready  # waits for the resume
   conductor.resume()
 assert sorted(script.started) == sorted(["t0", *(f"t{i}" for i in range(8))])
 assert conductor.engine.tickets["t0"].status is Status.COMPLETED
 assert conductor.engine.tickets["t0"].attempts == 2
 paused = watch.of(Change.PAUSED)
 assert [(t.detail, t.by_person, t.auto_resume_at) for t in paused] == [
  ("rate limited by the provider", False, None)
 ]
 assert set(paused[0].running_at_pause) == {"t0", "t1", "t2", "t3"}
 (interrupted,) = watch.of(Change.INTERRUPTED, "t0")
 assert interrupted.detail == "rate limited by the provider" and interrupted.status is Status.TODO
 # The pause came before the ticket went back, in the same step.
 assert watch.seen.index(paused[0]) < watch.seen.index(interrupted)


async def test_pause_pipeline_and_work_interrupted_spend_no_retry() -> None:
 # retries=1: one automatic retry after a failure. Neither the paused attempt nor the lost
 # one spends it, so the failure after them is retried, and the second failure is final.
 script = Script(
  {
   "p": [PausePipeline("429"), WorkFailed("broke"), WorkResult(output="p ok")],
   "i": [WorkInterrupted("worker lost"), WorkFailed("broke"), WorkResult(output="i ok")],
   "z": [PausePipeline("429"), WorkFailed("broke")],
  }
 )
 tickets = [Ticket("p", retries=1), Ticket("i", retries=1), Ticket("z", retries=0)]
 conductor = ConductorEngine(ExecutionEngine(tickets), script, max_workers=1)
 watch = Watch(conductor)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   for n in (1, 2):
    await watch.wait(Change.PAUSED, None, n)
    assert conductor.paused
    conductor.resume()
 t = conductor.engine.tickets
 assert (t["p"].status, t["p"].attempts) == (Status.COMPLETED, 3)
 assert (t["i"].status, t["i"].attempts) == (Status.COMPLETED, 3)
 # retries=0: the paused attempt leaves it its one real attempt, which fails for good.
 assert (t["z"].status, t["z"].attempts) == (Status.FAILED, 2)
 assert [x.detail for x in watch.of(Change.INTERRUPTED, "i")] == ["worker lost"]
 assert len(watch.of(Change.RETRYING, "p")) == len(watch.of(Change.RETRYING, "i")) == 1
 assert len(watch.of(Change.PAUSED)) == 2  # WorkInterrupted pauses nothing


# -- the automatic resume --------------------------------------------------------------------


async def test_an_automatic_pause_with_resume_after_resumes_by_itself() -> None:
 script = Script({"t0": [PausePipeline("429: retry after 0.05 s", resume_after=0.05)]})
 conductor = ConductorEngine(ExecutionEngine(wide(3)), script, max_workers=1)
 watch = Watch(conductor)
 at_pause = []
 conductor.add_listener(
  lambda t: at_pause.append(conductor.snapshot(rows=False)) if t.change is Change.PAUSED else None
 )
 before = time.time()
 with fail_after(10):
  snap = await conductor.run()
 assert snap.counts.completed == 3 and not snap.paused
 (paused,) = watch.of(Change.PAUSED)
 assert not paused.by_person and paused.auto_resume_at is not None
 assert paused.auto_resume_at >= before + 0.05
 assert at_pause[0].paused and at_pause[0].auto_resume_at == paused.auto_resume_at
 assert not at_pause[0].paused_by_person
 (resumed,) = watch.of(Change.RESUMED)
 assert resumed.detail == "resumed by itself"
 assert watch.seen.index(paused) < watch.seen.index(resumed)
 assert sorted(script.started) == ["t0", "t0", "t1", "t2"]


async def test_a_persons_pause_during_an_automatic_one_wins() -> None:
 script = Script({"t0": [PausePipeline("429", resume_after=60)]})
 conductor = ConductorEngine(ExecutionEngine(wide(2)), script, max_workers=1)
 watch = Watch(conductor)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await watch.wait(Change.INTERRUPTED, "t0")
   await wait_all_tasks_blocked()
   assert conductor.auto_resume_at is not None
   assert conductor._timer is not None and conductor._timer.deadline < math.inf
   await anyio.to_thread.run_sync(conductor.pause, "mine")
   await watch.wait(Change.PAUSED, None, 2)
   await wait_all_tasks_blocked()
   snap = conductor.snapshot()
   assert snap.paused and snap.paused_by_person and snap.auto_resume_at is None
   assert snap.pause_reason == "mine"
   # The timer is disarmed; were it to fire, or the cluster to come back, still paused.
   assert conductor._timer is not None and conductor._timer.deadline == math.inf
   conductor._auto_resume_due()
   conductor.auto_resume()
   conductor.auto_pause("another 429", 0.0)
   await wait_all_tasks_blocked()
   assert conductor.paused and conductor.paused_by_person
   assert script.started == ["t0"]
   conductor.resume()
 assert sorted(script.started) == ["t0", "t0", "t1"]
 assert [(t.detail, t.by_person, t.auto_resume_at is None) for t in watch.of(Change.PAUSED)] == [
  ("429", False, False),
  ("mine", True, True),
 ]
 assert [t.detail for t in watch.of(Change.RESUMED)] == [None]


async def test_auto_pause_while_paused_by_a_person_changes_nothing() -> None:
 conductor = ConductorEngine(ExecutionEngine(wide(2)), Script(), paused=True, linger=True)
 watch = Watch(conductor)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   await anyio.to_thread.run_sync(conductor.auto_pause, "429", 0.0)
   conductor.auto_pause("429", None)
   conductor.auto_resume()
   await wait_all_tasks_blocked()
   snap = conductor.snapshot()
   assert snap.paused and snap.paused_by_person and snap.pause_reason is None
   assert snap.auto_resume_at is None and snap.spawned == 0
   conductor.stop()
 assert watch.seen == []


async def test_repeated_automatic_pauses_keep_the_later_end_and_only_by_hand_wins() -> None:
 conductor = ConductorEngine(ExecutionEngine(wide(1)), Script())
 watch = Watch(conductor)
 for bad in (-1.0, math.nan, math.inf):
  with pytest.raises(ValueError, match="resume_after must be a finite number"):
   conductor.auto_pause("a", bad)
 assert not conductor.paused
 conductor.auto_pause("a", 100)
 first = conductor.auto_resume_at
 assert first is not None
 conductor.auto_pause("b", 10)  # earlier: the first end stays, the reason is the new one
 snap = conductor.snapshot()
 assert (snap.pause_reason, snap.auto_resume_at, snap.paused_by_person) == ("b", first, False)
 conductor.auto_pause("c", 1000)
 later = conductor.auto_resume_at
 assert later is not None and later > first
 conductor.auto_pause("d", None)
 conductor.auto_pause("e", 5)
 assert conductor.auto_resume_at is None and conductor.snapshot().pause_reason == "e"
 conductor.stop()
 with fail_after(10):
  await conductor.run()
 assert [(t.detail, t.auto_resume_at) for t in watch.of(Change.PAUSED)] == [
  ("a", first),
  ("b", first),
  ("c", later),
  ("d", None),
  ("e", None),
 ]


async def test_the_timer_is_re_armed_from_another_thread_and_auto_resume_ends_it_now() -> None:
 script = Script()
 script.gate("t0")
 conductor = ConductorEngine(ExecutionEngine(wide(3)), script, max_workers=1, linger=True)
 watch = Watch(conductor)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()  # t0 runs; the run loop waits for its slot
   await anyio.to_thread.run_sync(conductor.auto_pause, "far", 3600.0)
   await watch.wait(Change.PAUSED)
   await anyio.to_thread.run_sync(conductor.auto_resume)  # e.g. the cluster is back
   await watch.wait(Change.RESUMED)
   assert not conductor.paused
   await anyio.to_thread.run_sync(conductor.auto_pause, "soon", 0.05)
   await watch.wait(Change.RESUMED, None, 2)  # the timer, armed anew
   assert not conductor.paused
   script.release("t0")
   await watch.wait(Change.COMPLETED, "t2")
   conductor.stop()
 assert [(t.detail, t.auto_resume_at is None) for t in watch.of(Change.PAUSED)] == [
  ("far", False),
  ("soon", False),
 ]
 assert [t.detail for t in watch.of(Change.RESUMED)] == ["resumed by itself"] * 2


@pytest.mark.parametrize("after", [-5.0, 0.05], ids=["passed", "to-come"])
async def test_a_restored_automatic_pause_resumes_at_its_time_or_as_the_run_starts(
 after: float,
) -> None:
 script = Script()
 at = time.time() + after
 conductor = ConductorEngine(
  ExecutionEngine(wide(2)),
  script,
  paused=True,
  pause_reason="429",
  paused_at=time.time() - 10,
  paused_by_person=False,
  auto_resume_at=at,
 )
 assert conductor.snapshot().auto_resume_at == at
 watch = Watch(conductor)
 with fail_after(10):
  snap = await conductor.run()
 assert snap.counts.completed == 2
 assert [t.detail for t in watch.of(Change.RESUMED)] == ["resumed by itself"]


async def test_a_restored_persons_pause_ignores_an_automatic_resume_time() -> None:
 script = Script()
 conductor = ConductorEngine(
  ExecutionEngine(wide(2)),
  script,
  paused=True,
  paused_by_person=True,
  auto_resume_at=time.time() - 5,
 )
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   assert conductor.paused and script.started == []
   assert conductor.snapshot().auto_resume_at is None
   conductor.resume()
 assert sorted(script.started) == ["t0", "t1"]


# -- the token budget ------------------------------------------------------------------------


def spend(tokens: int, tid: str) -> WorkResult:
 return WorkResult(
  output=f"{tid} said", usage=Usage(prompt_tokens=tokens - 10, completion_tokens=10)
 )


async def test_reaching_the_token_budget_pauses_in_the_completions_step_and_refuses_resume() -> (
 None
):
 script = Script({f"t{i}": [spend(60, f"t{i}")] for i in range(4)})
 conductor = ConductorEngine(ExecutionEngine(wide(4)), script, max_workers=1, token_budget=100)
 watch = Watch(conductor)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await watch.wait(Change.PAUSED)
   await wait_all_tasks_blocked()
   # t1 reached it: its worker's handoff started nothing.
   assert script.started == ["t0", "t1"] and conductor.spawned == 2
   snap = conductor.snapshot()
   assert snap.pause_reason == "token budget reached: 120 of 100 tokens"
   assert (snap.tokens_used, snap.token_budget) == (120, 100)
   assert not snap.paused_by_person and snap.auto_resume_at is None
   conductor.auto_resume()  # an automatic resume cannot end it
   with pytest.raises(TokenBudgetSpent) as caught:
    await anyio.to_thread.run_sync(conductor.resume)
   assert str(caught.value) == (
    "token budget reached: 120 of 100 tokens; raise it to resume (e.g. resume --budget 150)"
   )
   assert isinstance(caught.value, ValueError)
   with pytest.raises(TokenBudgetSpent):
    conductor.resume(token_budget=120)
   assert conductor.paused and conductor.token_budget == 120
   conductor.resume(token_budget=1000)
   assert not conductor.paused
 snap = conductor.snapshot()
 assert snap.counts.completed == 4
 assert (snap.tokens_used, snap.token_budget, conductor.tokens_used) == (240, 1000, 240)
 assert [row.tokens for row in snap.rows] == [60, 60, 60, 60]
 (paused,) = watch.of(Change.PAUSED)
 assert paused.detail == "token budget reached: 120 of 100 tokens" and not paused.by_person
 done = watch.of(Change.COMPLETED, "t1")[0]
 assert done.usage == Usage(50, 10) and done.output == "t1 said"
 assert watch.seen.index(done) + 1 == watch.seen.index(paused)


async def test_a_budget_reached_by_the_last_ticket_leaves_the_finished_run_unpaused() -> None:
 # Nothing is left to hold back: a finished pipeline never reads "paused".
 script = Script({f"t{i}": [spend(60, f"t{i}")] for i in range(2)})
 conductor = ConductorEngine(ExecutionEngine(wide(2)), script, max_workers=1, token_budget=100)
 watch = Watch(conductor)
 with fail_after(10):
  final = await conductor.run()
 assert final.counts.completed == 2 and not final.paused
 assert (final.tokens_used, final.token_budget) == (120, 100)
 assert watch.of(Change.PAUSED) == []


async def test_a_budget_spent_before_the_run_pauses_it_at_start() -> None:
 script = Script()
 conductor = ConductorEngine(
  ExecutionEngine(wide(1)), script, token_budget=100, tokens_used=100, linger=True
 )
 watch = Watch(conductor)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await watch.wait(Change.PAUSED)
   await wait_all_tasks_blocked()
   assert script.started == []
   conductor.set_token_budget(None)  # no budget: a person may resume
   conductor.resume()
   await watch.wait(Change.COMPLETED, "t0")
   conductor.stop()
 assert [t.detail for t in watch.of(Change.PAUSED)] == ["token budget reached: 100 of 100 tokens"]


async def test_pause_pipeline_usage_counts_towards_the_budget() -> None:
 script = Script({"t0": [PausePipeline("429", resume_after=0.0, usage=Usage(30, 0))]})
 conductor = ConductorEngine(ExecutionEngine(wide(1)), script, token_budget=30, linger=True)
 watch = Watch(conductor)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await watch.wait(Change.PAUSED, None, 2)
   await wait_all_tasks_blocked()
   # The budget's pause replaced the 429's: it does not end by itself.
   snap = conductor.snapshot()
   assert snap.paused and snap.auto_resume_at is None and snap.tokens_used == 30
   assert snap.pause_reason == "token budget reached: 30 of 30 tokens"
   assert script.started == ["t0"]
   conductor.stop()


# -- outputs down the DAG --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reads(WorkSpec):
 ids: tuple[str, ...] = ()

 @property
 def inputs(self) -> tuple[str, ...]:
  return self.ids


async def test_outputs_flow_into_the_inputs_of_the_tickets_that_read_them() -> None:
 tickets = [
  Ticket("a", work=Reads()),
  Ticket("b", ("a",), work=Reads(("a",))),
  Ticket("c", ("a", "b"), work=Reads(("b", "a"))),
  Ticket("d", ("c",)),
 ]
 script = Script()
 conductor = ConductorEngine(ExecutionEngine(tickets), script)
 assert conductor.needed_outputs == {"a", "b"}
 with fail_after(10):
  await conductor.run()
 assert script.inputs == {
  "a": None,
  "b": {"a": "a ok"},
  "c": {"b": "b ok", "a": "a ok"},
  "d": None,
 }
 assert all(t.inputs is None for t in tickets)  # cleared as each attempt ended
 assert (conductor.output("a"), conductor.output("b")) == ("a ok", "b ok")
 assert conductor.output("c") is None and conductor.output("d") is None  # nobody reads them


async def test_restored_outputs_reach_the_tickets_that_read_them() -> None:
 tickets = [
  Ticket("a", status=Status.COMPLETED, attempts=1),
  Ticket("e", status=Status.COMPLETED, attempts=1),
  Ticket("b", ("a", "e"), work=Reads(("a", "e"))),
 ]
 script = Script()
 conductor = ConductorEngine(ExecutionEngine(tickets), script)
 conductor.restore_outputs({"a": "from the store", "zz": "not read by anyone"})
 with fail_after(10):
  await conductor.run()
 assert script.started == ["b"]
 assert script.inputs["b"] == {"a": "from the store", "e": ""}  # "e" printed nothing
 assert conductor.output("zz") is None


async def test_a_pipeline_without_inputs_keeps_no_output() -> None:
 conductor = ConductorEngine(ExecutionEngine(wide(3)), Script())
 assert conductor.needed_outputs == frozenset()
 with fail_after(10):
  await conductor.run()
 assert conductor.output("t0") is None and conductor._outputs == {}
