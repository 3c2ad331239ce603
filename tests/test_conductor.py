"""ConductorEngine: the spec's unit tests and the DAG run, on asyncio and trio."""

from __future__ import annotations

import gc
import random
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio import create_task_group, fail_after, wait_all_tasks_blocked

from conductor.dag_engine import ExecutionEngine, Status, Ticket
from conductor.multi_agent_conductor import ConductorEngine, MmaStatus, Snapshot, Transition
from conductor.transitions import Change
from conductor.workers import CallWork, ShellWork, SleepWork, WorkFailed, WorkResult
from scheduler import LoopHandle

pytestmark = pytest.mark.anyio


class Gatekeeper:
 """A worker whose tickets each finish only when the test releases them."""

 def __init__(self) -> None:
  self.started: list[str] = []
  self.release: dict[str, anyio.Event] = {}
  self.fail: set[str] = set()

 def event(self, tid: str) -> anyio.Event:
  return self.release.setdefault(tid, anyio.Event())

 async def __call__(self, ticket: Ticket) -> WorkResult:
  self.started.append(ticket.id)
  await self.event(ticket.id).wait()
  if ticket.id in self.fail:
   raise WorkFailed(f"{ticket.id} broke", exit_code=3, output="boom")
  return WorkResult(output=f"{ticket.id} ok", exit_code=0)

 def finish(self, *tids: str) -> None:
  for tid in tids:
   self.event(tid).set()


def wide(n: int) -> list[Ticket]:
 return [Ticket(f"t{i}") for i in range(n)]


async def test_pause_stops_task_spawning() -> None:
 gk = Gatekeeper()
 conductor = ConductorEngine(ExecutionEngine(wide(6)), gk, max_workers=2)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   assert sorted(gk.started) == ["t0", "t1"]
   conductor.pause("rate limit")
   assert conductor.mma_status is MmaStatus.PAUSED
   snap = conductor.snapshot()
   assert snap.paused and snap.pause_reason == "rate limit"
   assert snap.running_at_pause == ("t0", "t1")
   assert snap.finishing == ("t0", "t1")
   gk.finish("t0", "t1")
   await wait_all_tasks_blocked()
   snap = conductor.snapshot()
   assert sorted(gk.started) == ["t0", "t1"]  # free slots, but nothing starts while paused
   assert snap.finishing == ()
   assert snap.running_at_pause == ("t0", "t1")
   assert snap.counts.completed == 2
   assert snap.ready[0] == "t2"
   assert set(snap.pending) == {"t2", "t3", "t4", "t5"}
   conductor.resume()
   gk.finish("t2", "t3", "t4", "t5")
 assert sorted(gk.started) == [f"t{i}" for i in range(6)]
 assert conductor.mma_status is MmaStatus.DONE


async def test_resume_continues_from_correct_state() -> None:
 gk = Gatekeeper()
 tickets = [Ticket("a"), Ticket("b", ("a",)), Ticket("c", ("b",)), Ticket("d")]
 conductor = ConductorEngine(ExecutionEngine(tickets), gk, max_workers=2)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   assert sorted(gk.started) == ["a", "d"]
   conductor.pause()
   gk.finish("a", "d")
   await wait_all_tasks_blocked()
   assert conductor.snapshot().ready == ("b",)
   conductor.resume()
   await wait_all_tasks_blocked()
   assert gk.started[2:] == ["b"]
   gk.finish("b", "c")
 assert sorted(gk.started[:2]) == ["a", "d"] and gk.started[2:] == ["b", "c"]
 assert all(t.status is Status.COMPLETED for t in conductor.engine.tickets.values())


async def test_state_preserved_across_pause() -> None:
 gk = Gatekeeper()
 gk.fail.add("bad")
 tickets = [
  Ticket("ok"),
  Ticket("bad"),
  Ticket("after-bad", ("bad",)),
  Ticket("slow"),
  Ticket("later", ("ok",)),
 ]
 conductor = ConductorEngine(ExecutionEngine(tickets), gk, max_workers=3)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   conductor.pause()
   gk.finish("ok", "bad")
   await wait_all_tasks_blocked()
   before = [(r.id, r.status, r.attempts, r.error) for r in conductor.snapshot().rows]
   for _ in range(20):
    await anyio.lowlevel.checkpoint()
   await wait_all_tasks_blocked()
   after = [(r.id, r.status, r.attempts, r.error) for r in conductor.snapshot().rows]
   assert before == after
   assert dict((r[0], r[1]) for r in after) == {
    "ok": Status.COMPLETED,
    "bad": Status.FAILED,
    "after-bad": Status.BLOCKED,
    "slow": Status.IN_PROGRESS,
    "later": Status.TODO,
   }
   conductor.resume()
   gk.finish("slow", "later")
 final = conductor.snapshot()
 assert final.status is MmaStatus.ERROR
 assert (final.counts.completed, final.counts.failed, final.counts.blocked) == (3, 1, 1)
 bad = next(r for r in final.rows if r.id == "bad")
 assert bad.exit_code == 3 and bad.output == "boom" and "bad broke" in (bad.error or "")


async def test_dependencies_run_in_order() -> None:
 order: list[str] = []

 async def worker(ticket: Ticket) -> None:
  order.append(ticket.id)
  await anyio.lowlevel.checkpoint()

 tickets = [Ticket("d", ("b", "c")), Ticket("b", ("a",)), Ticket("c", ("a",)), Ticket("a")]
 with fail_after(10):
  snap = await ConductorEngine(ExecutionEngine(tickets), worker, max_workers=4).run()
 assert snap.status is MmaStatus.DONE
 assert order[0] == "a" and order[-1] == "d" and sorted(order[1:3]) == ["b", "c"]


async def test_failure_blocks_dependents_while_independent_branches_finish() -> None:
 async def worker(ticket: Ticket) -> None:
  if ticket.id == "x":
   raise RuntimeError("kaput")
  await anyio.lowlevel.checkpoint()

 tickets = [
  Ticket("x"),
  Ticket("y", ("x",)),
  Ticket("z", ("y",)),
  Ticket("free"),
  Ticket("free2", ("free",)),
 ]
 with fail_after(10):
  snap = await ConductorEngine(ExecutionEngine(tickets), worker).run()
 status = {r.id: r.status for r in snap.rows}
 assert status == {
  "x": Status.FAILED,
  "y": Status.BLOCKED,
  "z": Status.BLOCKED,
  "free": Status.COMPLETED,
  "free2": Status.COMPLETED,
 }
 assert snap.status is MmaStatus.ERROR
 assert "RuntimeError: kaput" in (next(r for r in snap.rows if r.id == "x").error or "")


async def test_automatic_retries_run_a_failing_ticket_again() -> None:
 attempts = Counter[str]()

 async def flaky(ticket: Ticket) -> None:
  attempts[ticket.id] += 1
  if ticket.id == "f" and attempts["f"] < 3:
   raise WorkFailed("not yet")

 with fail_after(10):
  snap = await ConductorEngine(
   ExecutionEngine([Ticket("f", retries=2), Ticket("g", ("f",))]), flaky
  ).run()
 assert snap.status is MmaStatus.DONE
 assert attempts == {"f": 3, "g": 1}
 assert next(r for r in snap.rows if r.id == "f").attempts == 3


async def test_retry_puts_a_failed_ticket_and_its_dependents_back() -> None:
 gk = Gatekeeper()
 gk.fail.add("a")
 tickets = [Ticket("a"), Ticket("b", ("a",)), Ticket("keepalive")]
 conductor = ConductorEngine(ExecutionEngine(tickets), gk, max_workers=2)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   gk.finish("a")
   await wait_all_tasks_blocked()
   assert conductor.engine.tickets["b"].status is Status.BLOCKED
   gk.fail.clear()
   gk.release["a"] = anyio.Event()
   conductor.retry("a")
   await wait_all_tasks_blocked()
   assert gk.started.count("a") == 2
   gk.finish("a", "b", "keepalive")
 assert conductor.mma_status is MmaStatus.DONE


async def test_auto_queue_off_waits_for_approval() -> None:
 gk = Gatekeeper()
 conductor = ConductorEngine(ExecutionEngine([Ticket("a"), Ticket("b")], auto_queue=False), gk)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   assert gk.started == []
   assert set(conductor.snapshot().awaiting_approval) == {"a", "b"}
   conductor.queue("b")
   await wait_all_tasks_blocked()
   assert gk.started == ["b"]
   conductor.queue("a")
   gk.finish("a", "b")
 assert conductor.mma_status is MmaStatus.DONE


async def test_cancel_while_paused_interrupts_workers_and_keeps_them_todo() -> None:
 gk = Gatekeeper()
 conductor = ConductorEngine(ExecutionEngine(wide(4)), gk, max_workers=2)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   conductor.pause()
   conductor.cancel()
 snap = conductor.snapshot()
 assert snap.counts.todo == 4 and snap.counts.in_progress == 0
 assert snap.status is MmaStatus.IDLE
 assert [r.attempts for r in snap.rows] == [1, 1, 0, 0]


async def test_stop_lets_running_workers_finish_and_starts_nothing_new() -> None:
 gk = Gatekeeper()
 conductor = ConductorEngine(ExecutionEngine(wide(5)), gk, max_workers=2)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   conductor.stop()
   await wait_all_tasks_blocked()
   gk.finish("t0", "t1")
 snap = conductor.snapshot()
 assert sorted(gk.started) == ["t0", "t1"]
 assert (snap.counts.completed, snap.counts.todo) == (2, 3)


async def test_paused_before_run_starts_paused() -> None:
 gk = Gatekeeper()
 conductor = ConductorEngine(ExecutionEngine(wide(2)), gk, paused=True, pause_reason="night")
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   assert gk.started == []
   assert conductor.mma_status is MmaStatus.PAUSED
   assert conductor.snapshot().pause_reason == "night"
   conductor.resume()
   gk.finish("t0", "t1")
 assert conductor.mma_status is MmaStatus.DONE


async def test_listeners_see_every_transition_and_the_pause() -> None:
 seen: list[Transition] = []

 async def worker(ticket: Ticket) -> None:
  await anyio.lowlevel.checkpoint()

 conductor = ConductorEngine(ExecutionEngine([Ticket("a"), Ticket("b", ("a",))]), worker)
 conductor.add_listener(seen.append)
 conductor.pause()
 conductor.resume()
 with fail_after(10):
  await conductor.run()
 assert [(t.ticket, t.change) for t in seen] == [
  (None, Change.PAUSED),
  (None, Change.RESUMED),
  ("a", Change.STARTED),
  ("a", Change.COMPLETED),
  ("b", Change.STARTED),
  ("b", Change.COMPLETED),
 ]
 # The values are the event names a state's history has always stored.
 assert [t.change.value for t in seen[:3]] == ["paused", "resumed", "in_progress"]


class FlushLog:
 """A batching listener: `flushed` is how many of `seen` the engine has asked it to flush."""

 def __init__(self, conductor: ConductorEngine) -> None:
  self.seen: list[Transition] = []
  self.flushed = 0
  self.flushes = 0
  conductor.add_listener(self.seen.append, flush=self.flush)

 def flush(self) -> None:
  self.flushed = len(self.seen)
  self.flushes += 1

 def index(self, ticket: str, change: Change) -> int:
  return max(i for i, t in enumerate(self.seen) if (t.ticket, t.change) == (ticket, change))


async def test_a_worker_runs_only_after_its_start_and_its_dependencies_were_flushed() -> None:
 tickets = [Ticket(f"r{i}") for i in range(6)]
 tickets += [Ticket(f"m{i}", (f"r{i}", f"r{(i + 1) % 6}")) for i in range(6)]
 tickets += [Ticket("join", tuple(f"m{i}" for i in range(6)))]
 checked: list[str] = []

 async def worker(ticket: Ticket) -> None:
  assert log.index(ticket.id, Change.STARTED) < log.flushed, ticket.id
  for dep in ticket.depends_on:
   assert log.index(dep, Change.COMPLETED) < log.flushed, (ticket.id, dep)
  checked.append(ticket.id)
  await anyio.lowlevel.checkpoint()

 conductor = ConductorEngine(ExecutionEngine(tickets), worker, max_workers=4)
 log = FlushLog(conductor)
 with fail_after(10):
  await conductor.run()
 assert sorted(checked) == sorted(t.id for t in tickets)
 assert log.flushed == len(log.seen) == 2 * len(tickets)  # all of it, by the end of the run


async def test_a_chain_flushes_once_a_ticket_and_a_wide_dag_once_a_round() -> None:
 async def worker(ticket: Ticket) -> None:
  await anyio.lowlevel.checkpoint()

 chain = [Ticket(f"c{i}", (f"c{i - 1}",) if i else ()) for i in range(20)]
 conductor = ConductorEngine(ExecutionEngine(chain), worker, max_workers=4)
 log = FlushLog(conductor)
 with fail_after(10):
  await conductor.run()
 # Each start together with the completion that released it; then the last completion.
 assert log.flushes == len(chain) + 1

 wide = [Ticket(f"w{i}") for i in range(160)]
 conductor = ConductorEngine(ExecutionEngine(wide), worker, max_workers=8)
 log = FlushLog(conductor)
 with fail_after(10):
  await conductor.run()
 assert log.flushed == len(log.seen) == 2 * len(wide)
 # About one a round of 8 workers (and one for each of the last completions), not one a
 # ticket: measured 28 on asyncio, 30-47 on trio (150 runs), which starts a round in any
 # order; one a ticket would be 160 or more.
 assert log.flushes < len(wide) // 2


async def test_a_step_that_starts_no_worker_flushes_at_its_end() -> None:
 gate = Gatekeeper()
 gate.fail.add("bad")
 conductor = ConductorEngine(ExecutionEngine([Ticket("slow"), Ticket("bad")]), gate, 2)
 log = FlushLog(conductor)
 async with create_task_group() as tg:
  tg.start_soon(conductor.run)
  with fail_after(10):
   while len(gate.started) < 2:
    await wait_all_tasks_blocked()
   gate.event("bad").set()  # fails; nothing else can start
   await wait_all_tasks_blocked()
   assert log.seen[-1].change is Change.FAILED and log.flushed == len(log.seen)
   await anyio.to_thread.run_sync(conductor.pause)  # a command from another thread
   await wait_all_tasks_blocked()
   assert log.seen[-1].change is Change.PAUSED and log.flushed == len(log.seen)
   assert gate.started in (["slow", "bad"], ["bad", "slow"])
   conductor.resume()
   gate.event("slow").set()
  tg.cancel_scope.cancel()


async def test_a_completion_that_frees_a_slot_is_flushed_by_the_worker_taking_it() -> None:
 gate = Gatekeeper()
 tickets = [Ticket("a"), Ticket("b"), Ticket("c")]
 conductor = ConductorEngine(ExecutionEngine(tickets), gate, 1)  # b and c wait for a slot
 log = FlushLog(conductor)
 async with create_task_group() as tg:
  tg.start_soon(conductor.run)
  with fail_after(10):
   while gate.started != ["a"]:
    await wait_all_tasks_blocked()
   gate.event("a").set()
   while gate.started != ["a", "b"]:
    await wait_all_tasks_blocked()
   await wait_all_tasks_blocked()
   # a's completion went out with b's start, in one flush, before b's worker ran.
   assert [(t.ticket, t.change) for t in log.seen[-2:]] == [
    ("a", Change.COMPLETED),
    ("b", Change.STARTED),
   ]
   assert log.flushed == len(log.seen)
   flushes = log.flushes
   gate.event("b").set()
   gate.event("c").set()
  tg.cancel_scope.cancel()
 assert flushes == 2  # a's start; then a's completion with b's start


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
 old = sys.getswitchinterval()
 sys.setswitchinterval(1e-5)
 yield
 sys.setswitchinterval(old)


@pytest.mark.usefixtures("frequent_thread_switches")
async def test_storm_every_ticket_runs_once_in_order_and_nothing_starts_while_paused() -> None:
 rng = random.Random(11)
 n = 400
 tickets = [
  Ticket(f"t{i}", tuple(f"t{j}" for j in rng.sample(range(i), k=min(i, rng.randrange(3)))))
  for i in range(n)
 ]
 deps = {t.id: t.depends_on for t in tickets}
 done: set[str] = set()
 runs = Counter[str]()
 order_violations: list[str] = []

 async def worker(ticket: Ticket) -> None:
  runs[ticket.id] += 1
  if not all(d in done for d in deps[ticket.id]):
   order_violations.append(ticket.id)
  number = int(ticket.id[1:])
  if number % 50 == 49:  # the run cannot end before the storm has really raged
   await storm_raged.wait()
  for _ in range(number % 150):  # workers of different lengths overlap
   await anyio.lowlevel.checkpoint()
  done.add(ticket.id)

 conductor = ConductorEngine(ExecutionEngine(tickets), worker, max_workers=4)
 pause_violations: list[tuple[int, int]] = []
 finished = threading.Event()

 cycles = 0
 storm_raged = anyio.Event()

 def storm(loop: LoopHandle) -> None:
  nonlocal cycles
  while not finished.is_set():
   cycles += 1
   if cycles == 60:
    loop.call_soon(storm_raged.set)
   conductor.pause()
   before = conductor.spawned
   for _ in range(2):
    turned = threading.Event()
    if not loop.call_soon(turned.set) or not turned.wait(10):
     return
   after = conductor.spawned
   if after != before:
    pause_violations.append((before, after))
   conductor.resume()
   turned = threading.Event()
   if not loop.call_soon(turned.set) or not turned.wait(10):
    return

 async def run_then_flag() -> None:
  try:
   await conductor.run()
  finally:
   finished.set()
   conductor.resume()

 with fail_after(60):
  async with create_task_group() as tg:
   tg.start_soon(run_then_flag)
   await anyio.to_thread.run_sync(storm, LoopHandle())
 assert conductor.mma_status is MmaStatus.DONE
 assert runs == Counter({t.id: 1 for t in tickets})
 assert order_violations == []
 assert pause_violations == []
 assert cycles > 50  # the storm really paused the run many times


async def test_a_lingering_run_waits_for_retry_and_ends_on_stop() -> None:
 gk = Gatekeeper()
 gk.fail.add("a")
 conductor = ConductorEngine(ExecutionEngine([Ticket("a"), Ticket("b", ("a",))]), gk, linger=True)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   gk.finish("a")
   await wait_all_tasks_blocked()
   assert conductor.mma_status is MmaStatus.ERROR  # settled with a failure, still running
   gk.fail.clear()
   gk.release["a"] = anyio.Event()
   conductor.retry("a")
   await wait_all_tasks_blocked()
   assert conductor.mma_status is MmaStatus.EXECUTING
   gk.finish("a", "b")
   await wait_all_tasks_blocked()
   assert conductor.mma_status is MmaStatus.DONE
   conductor.stop()
 assert conductor.snapshot().counts.completed == 2


async def test_a_retry_that_arrives_after_the_ticket_stopped_failing_is_ignored() -> None:
 # Two retries of one failure (a double click, two terminals): the second reaches the loop
 # when the ticket is todo again. It must change nothing, not crash the run.
 gk = Gatekeeper()
 gk.fail.add("a")
 conductor = ConductorEngine(ExecutionEngine([Ticket("a"), Ticket("b", ("a",))]), gk, linger=True)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   gk.finish("a")
   await wait_all_tasks_blocked()
   gk.fail.clear()
   gk.release["a"] = anyio.Event()
   await anyio.to_thread.run_sync(conductor.retry, "a")
   await anyio.to_thread.run_sync(conductor.retry, "a")
   await wait_all_tasks_blocked()
   assert conductor.mma_status is MmaStatus.EXECUTING
   gk.finish("a", "b")
   await wait_all_tasks_blocked()
   conductor.retry("b")  # completed: left alone too
   await wait_all_tasks_blocked()
   assert conductor.mma_status is MmaStatus.DONE
   conductor.stop()
 snap = conductor.snapshot()
 assert snap.counts.completed == 2
 assert [row.attempts for row in snap.rows] == [2, 1]


async def test_commands_given_before_the_run_apply_on_its_loop_at_start() -> None:
 gk = Gatekeeper()
 conductor = ConductorEngine(ExecutionEngine(wide(3)), gk)
 seen_threads: set[int] = set()
 conductor.add_listener(lambda t: seen_threads.add(threading.get_ident()))
 await anyio.to_thread.run_sync(conductor.pause, "from another thread")
 await anyio.to_thread.run_sync(conductor.stop)
 with fail_after(10):
  snap = await conductor.run()
 assert gk.started == []  # stopped before anything could start
 assert snap.counts.todo == 3
 assert seen_threads == {threading.get_ident()}  # the "paused" event came on the loop


# -- typed transitions ---------------------------------------------------------------------


def fields(t: Transition) -> tuple[object, ...]:
 return (t.ticket, t.change, t.status, t.attempt, t.detail, t.error, t.exit_code)


async def test_a_transition_carries_the_tickets_state_after_it() -> None:
 async def worker(ticket: Ticket) -> WorkResult:
  if ticket.id == "x":
   raise WorkFailed(f"broke {ticket.attempts}", exit_code=3)
  return WorkResult(exit_code=0)

 seen: list[Transition] = []
 tickets = [Ticket("x", retries=1), Ticket("after", ("x",)), Ticket("ok")]
 conductor = ConductorEngine(ExecutionEngine(tickets), worker, max_workers=1)
 conductor.add_listener(seen.append)
 with fail_after(10):
  await conductor.run()
 blocked = "dependency 'x' failed; retry 'x' to unblock"
 assert [fields(t) for t in seen] == [
  ("x", Change.STARTED, Status.IN_PROGRESS, 1, None, None, None),
  ("x", Change.RETRYING, Status.TODO, 1, "broke 1", "broke 1", 3),
  ("ok", Change.STARTED, Status.IN_PROGRESS, 1, None, None, None),
  ("ok", Change.COMPLETED, Status.COMPLETED, 1, None, None, 0),
  ("x", Change.STARTED, Status.IN_PROGRESS, 2, None, None, None),
  ("x", Change.FAILED, Status.FAILED, 2, "broke 2", "broke 2", 3),
  ("after", Change.BLOCKED, Status.BLOCKED, 0, blocked, blocked, None),
 ]


async def test_a_pause_transition_names_the_workers_running_as_the_gate_closed() -> None:
 gk = Gatekeeper()
 seen: list[Transition] = []
 conductor = ConductorEngine(ExecutionEngine(wide(3)), gk, max_workers=2)
 conductor.add_listener(seen.append)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   await anyio.to_thread.run_sync(conductor.pause, "lunch")
   gk.finish("t0", "t1")
   await wait_all_tasks_blocked()
   conductor.resume()  # t0 and t1 have finished by now: the pause still names them
   gk.finish("t2")
 paused = next(t for t in seen if t.change is Change.PAUSED)
 assert (paused.ticket, paused.status, paused.detail) == (None, None, "lunch")
 assert sorted(paused.running_at_pause) == ["t0", "t1"]
 resumed = next(t for t in seen if t.change is Change.RESUMED)
 assert resumed.running_at_pause == ()


async def test_a_retry_emits_one_transition_for_each_ticket_it_changed() -> None:
 gk = Gatekeeper()
 gk.fail.update({"x", "y"})
 tickets = [
  Ticket("x"),
  Ticket("y"),
  Ticket("dx", ("x",)),
  Ticket("both", ("dx", "y")),
  Ticket("free"),
 ]
 seen: list[Transition] = []
 conductor = ConductorEngine(ExecutionEngine(tickets), gk, max_workers=3, linger=True)
 conductor.add_listener(seen.append)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   gk.finish("x")  # first: both is blocked by x
   await wait_all_tasks_blocked()
   gk.finish("y")
   await wait_all_tasks_blocked()
   before = len(seen)
   conductor.retry("x")  # dx is todo again; both is still blocked, by y now
   changes = [(t.ticket, t.change, t.status, t.detail) for t in seen[before : before + 3]]
   assert changes == [
    ("x", Change.RETRIED, Status.TODO, "retry"),
    ("dx", Change.UNBLOCKED, Status.TODO, "unblocked by a retry"),
    ("both", Change.BLOCKED, Status.BLOCKED, "dependency 'y' failed; retry 'y' to unblock"),
   ]
   conductor.stop()
   gk.finish("x", "free")


async def test_a_retry_gives_a_failed_ticket_its_full_retries_again() -> None:
 attempts: list[int] = []
 failing = True

 async def worker(ticket: Ticket) -> WorkResult:
  attempts.append(ticket.attempts)
  await anyio.lowlevel.checkpoint()
  if failing:
   raise WorkFailed("not yet")
  return WorkResult()

 conductor = ConductorEngine(ExecutionEngine([Ticket("f", retries=2)]), worker, linger=True)
 seen: list[Transition] = []
 conductor.add_listener(seen.append)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   assert attempts == [1, 2, 3] and conductor.engine.tickets["f"].status is Status.FAILED
   conductor.retry("f")  # a new try: three attempts again, numbered on
   await wait_all_tasks_blocked()
   assert attempts == [1, 2, 3, 4, 5, 6]
   failing = False
   conductor.retry("f")
   await wait_all_tasks_blocked()
   conductor.stop()
 assert attempts == [1, 2, 3, 4, 5, 6, 7]
 assert [t.change for t in seen].count(Change.FAILED) == 2


# -- admission: started once, whoever admits it -----------------------------------------------


async def test_a_ticket_a_resume_admits_starts_once_and_is_flushed_before_its_worker_runs() -> None:
 ran: list[str] = []

 async def worker(ticket: Ticket) -> None:
  assert log.index(ticket.id, Change.STARTED) < log.flushed, ticket.id
  ran.append(ticket.id)

 tickets = [Ticket("a"), Ticket("b"), Ticket("c", ("a", "b"))]
 conductor = ConductorEngine(ExecutionEngine(tickets), worker, max_workers=1, paused=True)
 log = FlushLog(conductor)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   assert conductor.snapshot().ready == ("a", "b")  # a waits in Scheduler.spawn, parked
   conductor.resume()
 assert sorted(ran[:2]) == ["a", "b"] and ran[2:] == ["c"]
 starts = Counter(t.ticket for t in log.seen if t.change is Change.STARTED)
 assert starts == {"a": 1, "b": 1, "c": 1}
 assert conductor.mma_status is MmaStatus.DONE


async def test_a_stop_in_the_step_a_resume_admits_a_ticket_runs_it_once_and_keeps_the_rest() -> (
 None
):
 # The resumed ticket is admitted by its worker's own task; the run loop, waiting in
 # Scheduler.spawn for it, is cancelled in that same step. It must neither take the ticket
 # back (it has started) nor lose the next ones.
 gk = Gatekeeper()
 conductor = ConductorEngine(ExecutionEngine(wide(3)), gk, max_workers=1, paused=True)

 def stop_at_the_first_start(t: Transition) -> None:
  if t.change is Change.STARTED:
   conductor.stop()

 conductor.add_listener(stop_at_the_first_start)
 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   conductor.resume()
   await wait_all_tasks_blocked()
   assert gk.started == ["t0"]
   gk.finish("t0")
 snap = conductor.snapshot()
 assert gk.started == ["t0"]
 assert (snap.counts.completed, snap.counts.todo, snap.counts.in_progress) == (1, 2, 0)
 assert [r.attempts for r in snap.rows] == [1, 0, 0]


# -- snapshots for a thread that never waits ---------------------------------------------------


async def test_request_snapshot_publishes_a_full_snapshot_without_waiting_for_it() -> None:
 gk = Gatekeeper()
 conductor = ConductorEngine(ExecutionEngine(wide(3)), gk, max_workers=2)
 loop = LoopHandle()

 def one_loop_turn() -> None:
  # The bridge posts through the same hook, first in, first out: once this has run, a
  # request posted before it has been answered.
  turned = threading.Event()
  assert loop.call_soon(turned.set) and turned.wait(10)

 def ask_twice_then_look() -> tuple[Snapshot, Snapshot]:
  conductor.request_snapshot()
  conductor.request_snapshot()  # folded into the first
  one_loop_turn()
  fresh = conductor.published
  conductor.request_snapshot(min_interval=3600)  # too soon after the last: ignored
  one_loop_turn()
  return fresh, conductor.published

 with fail_after(10):
  async with create_task_group() as tg:
   tg.start_soon(conductor.run)
   await wait_all_tasks_blocked()
   assert conductor.published.rows == ()  # the first one leaves the rows out
   fresh, later = await anyio.to_thread.run_sync(ask_twice_then_look)
   assert later is fresh
   assert [r.status for r in fresh.rows] == [Status.IN_PROGRESS] * 2 + [Status.TODO]
   gk.finish("t0", "t1", "t2")
 final = conductor.published
 conductor.request_snapshot()  # after the run: the final snapshot stays
 assert conductor.published is final and final.counts.completed == 3


async def test_a_row_shows_what_a_work_spec_describes_and_other_work_by_its_type() -> None:
 class Prompt:  # a custom worker's own work value: the engine never looks inside it
  text = "write the README"

 tickets = [
  Ticket("sh", work=ShellWork("make test", Path("."))),
  Ticket("py", work=CallWork("tools.build:main")),
  Ticket("nap", work=SleepWork(0.5, fail=True)),
  Ticket("agent", work=Prompt()),
  Ticket("none"),
 ]
 snap = ConductorEngine(ExecutionEngine(tickets)).snapshot()
 assert [r.work for r in snap.rows] == [
  "make test",
  "tools.build:main",
  "sleep 0.5s then fail",
  "Prompt",
  "",
 ]


async def test_a_run_keeps_the_heap_frozen_until_the_last_run_of_the_process_ends() -> None:
 # The objects that exist as a run begins are left out of the cyclic GC while it goes on
 # (gc.freeze); two runs at once: the first to end must not thaw the other's.
 assert gc.get_freeze_count() == 0
 seen: dict[str, int] = {}
 second_ends = anyio.Event()

 async def first_worker(ticket: Ticket) -> None:
  seen["first"] = gc.get_freeze_count()

 async def second_worker(ticket: Ticket) -> None:
  await second_ends.wait()
  seen["second"] = gc.get_freeze_count()

 async def first() -> None:
  await ConductorEngine(ExecutionEngine([Ticket("a")]), first_worker).run()
  seen["between"] = gc.get_freeze_count()
  second_ends.set()

 with fail_after(5):
  async with create_task_group() as tg:
   tg.start_soon(ConductorEngine(ExecutionEngine([Ticket("b")]), second_worker).run)
   await wait_all_tasks_blocked()
   tg.start_soon(first)
 assert seen["first"] > 0 and seen["between"] > 0 and seen["second"] > 0
 assert gc.get_freeze_count() == 0  # thawed: the collector sees everything again
