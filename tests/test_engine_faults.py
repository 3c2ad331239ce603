"""User code is untrusted input: whatever a worker raises fails its ticket and nothing else.

And the scheduler never starts work into a cancelled task group, and a thread's snapshot is
at most one loop turn old. Every test runs on asyncio and trio.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from pathlib import Path

import anyio
import pytest
from anyio import from_thread, to_thread

from conductor.dag_engine import ExecutionEngine, Status, Ticket
from conductor.multi_agent_conductor import ConductorEngine, MmaStatus, Transition
from conductor.transitions import Change
from conductor.workers import CallWork, WorkResult, describe_exception, run_work
from scheduler import Scheduler

pytestmark = pytest.mark.anyio

TIMEOUT = 20  # seconds: a storm or a hang fails the test instead of hanging CI


class Custom(BaseException):
 pass


class HostileStr(Exception):
 def __str__(self) -> str:
  raise ValueError("no message for you")


RAISED: dict[str, BaseException] = {
 "sys.exit": SystemExit(3),
 "KeyboardInterrupt": KeyboardInterrupt(),
 "GeneratorExit": GeneratorExit(),
 "custom BaseException": Custom("mine"),
 "a CancelledError of its own": asyncio.CancelledError(),
 "RecursionError": RecursionError("deep"),
 "hostile __str__": HostileStr(),
}


@pytest.mark.parametrize("what", list(RAISED))
async def test_whatever_a_worker_raises_fails_its_ticket_and_siblings_run_once(
 what: str,
) -> None:
 starts: Counter[str] = Counter()

 async def worker(ticket: Ticket) -> WorkResult:
  starts[ticket.id] += 1
  if ticket.id == "bad":
   raise RAISED[what]
  await anyio.sleep(0.01)  # the siblings are still running when "bad" raises
  return WorkResult()

 tickets = [Ticket("bad"), *(Ticket(f"sib{i}") for i in range(6)), Ticket("after", ("sib0",))]
 conductor = ConductorEngine(ExecutionEngine(tickets), worker, max_workers=4)
 with anyio.fail_after(TIMEOUT):
  final = await conductor.run()

 assert final.status is MmaStatus.ERROR
 assert final.counts.failed == 1 and final.counts.completed == 7
 assert set(starts.values()) == {1}, starts  # no restart storm: every ticket ran once
 bad = next(r for r in final.rows if r.id == "bad")
 assert bad.status is Status.FAILED
 assert type(RAISED[what]).__name__ in (bad.error or "")


async def test_a_call_ticket_that_calls_sys_exit_in_its_thread_fails_with_one_line(
 tmp_path: Path,
) -> None:
 module = f"exits_{next(_unique)}"
 (tmp_path / f"{module}.py").write_text(
  "import sys\n\ndef sync(ticket):\n    sys.exit(3)\n\n"
  "async def coro(ticket):\n    raise SystemExit('bye')\n\n"
  "def interrupted(ticket):\n    raise KeyboardInterrupt\n\n"
  "def closed(ticket):\n    raise GeneratorExit\n"
 )
 tickets = [
  Ticket(name, work=CallWork(f"{module}:{name}", tmp_path))
  for name in ("sync", "coro", "interrupted", "closed")
 ]
 with anyio.fail_after(TIMEOUT):
  final = await ConductorEngine(ExecutionEngine(tickets), run_work).run()
 errors = {r.id: r.error for r in final.rows}
 assert errors["sync"] == "SystemExit: sys.exit(3) was called; a ticket cannot exit the runner"
 assert errors["coro"] == "SystemExit: sys.exit('bye') was called; a ticket cannot exit the runner"
 assert errors["interrupted"] == "KeyboardInterrupt"
 # Raised across the thread boundary, this one escaped every `except` on asyncio.
 assert errors["closed"] == "GeneratorExit"
 assert final.counts.failed == 4


async def test_a_module_that_exits_while_imported_fails_its_ticket(tmp_path: Path) -> None:
 module = f"exits_on_import_{next(_unique)}"
 (tmp_path / f"{module}.py").write_text("raise SystemExit(7)\n")
 tickets = [Ticket("t", work=CallWork(f"{module}:f", tmp_path)), Ticket("u")]

 async def worker(ticket: Ticket) -> WorkResult:
  return await run_work(ticket) if ticket.work is not None else WorkResult()

 with anyio.fail_after(TIMEOUT):
  final = await ConductorEngine(ExecutionEngine(tickets), worker).run()
 row = final.rows[0]
 assert row.status is Status.FAILED
 assert row.error == (
  "SystemExit: sys.exit(7) was called; a ticket cannot exit the runner"
  f" (while importing {module}:f)"
 )
 assert final.rows[1].status is Status.COMPLETED


def test_describe_exception_never_raises_and_stays_one_line() -> None:
 assert describe_exception(HostileStr()) == "HostileStr (its message could not be read)"
 assert describe_exception(ValueError("a\nb")) == "ValueError: a"
 assert describe_exception(SystemExit()) == (
  "SystemExit: sys.exit(None) was called; a ticket cannot exit the runner"
 )
 assert len(describe_exception(ValueError("x" * 10_000))) < 320


async def test_a_real_cancellation_still_interrupts_the_worker() -> None:
 started = anyio.Event()

 async def worker(ticket: Ticket) -> WorkResult:
  started.set()
  await anyio.sleep_forever()
  raise AssertionError("unreachable")

 conductor = ConductorEngine(ExecutionEngine([Ticket("a")]), worker)
 async with anyio.create_task_group() as tg:
  tg.start_soon(conductor.run)
  with anyio.fail_after(TIMEOUT):
   await started.wait()
  conductor.cancel()
 final = conductor.snapshot()
 assert final.rows[0].status is Status.TODO  # interrupted, not failed: it runs again
 assert final.rows[0].error is None


async def test_the_scheduler_refuses_to_start_work_in_a_cancelled_group() -> None:
 spawned_late: list[bool] = []
 release = anyio.Event()

 async def stubborn() -> None:
  try:
   await release.wait()
  finally:
   # Started while being cancelled, this is what turned one failure into a storm.
   spawned_late.append(sched.try_spawn(anyio.sleep, 0))

 with anyio.fail_after(TIMEOUT):
  async with Scheduler(2) as sched:
   assert not sched.cancelled
   assert sched.try_spawn(stubborn)
   await anyio.lowlevel.checkpoint()
   sched.cancel()
   assert sched.cancelled
   assert not sched.try_spawn(anyio.sleep, 0)
   with pytest.raises(anyio.get_cancelled_exc_class()):
    await sched.spawn(anyio.sleep, 0)
 assert spawned_late == [False]
 assert sched.spawned == 1
 assert sched.cancelled  # and after it has exited


async def test_a_threads_snapshot_is_at_most_one_loop_turn_old() -> None:
 gate = anyio.Event()
 running = anyio.Event()
 finished = threading.Event()

 async def worker(ticket: Ticket) -> WorkResult:
  if ticket.id == "slow":
   await gate.wait()
  return WorkResult()

 def listener(t: Transition) -> None:
  if t.ticket == "slow" and t.change is Change.STARTED:
   running.set()
  if t.ticket == "slow" and t.change is Change.COMPLETED:
   finished.set()

 tickets = [Ticket("slow"), Ticket("next", ("slow",))]
 conductor = ConductorEngine(ExecutionEngine(tickets), worker, max_workers=2)
 conductor.add_listener(listener)

 def from_a_thread() -> None:
  # The run has started "slow": the thread sees it at once, not the construction-time view.
  snap = conductor.snapshot()
  assert snap.status is MmaStatus.EXECUTING
  assert [w.ticket for w in snap.running] == ["slow"]
  conductor.pause("test")
  snap = conductor.snapshot()
  assert (snap.status, snap.paused, snap.pause_reason) == (MmaStatus.PAUSED, True, "test")
  assert snap.running_at_pause == ("slow",) and snap.finishing == ("slow",)
  from_thread.run_sync(gate.set)
  assert finished.wait(TIMEOUT)
  # The completion was handled on the loop: the very next snapshot shows it.
  snap = conductor.snapshot()
  assert snap.running == () and snap.finishing == ()
  assert snap.counts.completed == 1 and snap.ready == ("next",)
  assert snap.version == conductor.snapshot().version  # nothing changed in between
  conductor.resume()

 async with anyio.create_task_group() as tg:
  tg.start_soon(conductor.run)
  with anyio.fail_after(TIMEOUT):
   await running.wait()
   await to_thread.run_sync(from_a_thread)
 assert conductor.snapshot().status is MmaStatus.DONE


def test_a_threads_snapshot_before_and_after_the_run_needs_no_loop() -> None:
 conductor = ConductorEngine(ExecutionEngine([Ticket("a")]), lambda t: _done())
 before = conductor.snapshot()
 assert before.status is MmaStatus.IDLE and before.counts.todo == 1
 final = anyio.run(conductor.run)
 after: list[object] = []
 thread = threading.Thread(target=lambda: after.append(conductor.snapshot()))
 thread.start()
 thread.join(TIMEOUT)
 assert after == [final]


async def _done() -> WorkResult:
 return WorkResult()


_unique = itertools.count()
