"""The Gate contract: parks without polling, wakes from any thread, never leaks a waiter."""

from __future__ import annotations

import threading

import anyio
import pytest
from anyio import create_task_group, fail_after, wait_all_tasks_blocked
from anyio.lowlevel import checkpoint

from scheduler import Gate, LoopHandle

pytestmark = pytest.mark.anyio


async def test_wait_returns_at_once_when_open() -> None:
 gate = Gate()
 with fail_after(5):
  await gate.wait()
 assert gate.statistics().tasks_waiting == 0


async def test_closed_gate_parks_until_opened() -> None:
 gate = Gate(open=False)
 passed: list[int] = []

 async def waiter(i: int) -> None:
  await gate.wait()
  passed.append(i)

 with fail_after(5):
  async with create_task_group() as tg:
   for i in range(3):
    tg.start_soon(waiter, i)
   await wait_all_tasks_blocked()
   assert passed == []
   assert gate.statistics().tasks_waiting == 3
   gate.open()
 assert sorted(passed) == [0, 1, 2]
 assert gate.statistics().tasks_waiting == 0


async def test_gate_is_reusable_many_times() -> None:
 gate = Gate(open=False)
 rounds = 0

 async def waiter() -> None:
  nonlocal rounds
  await gate.wait()
  rounds += 1

 with fail_after(10):
  for _ in range(200):
   gate.close()
   async with create_task_group() as tg:
    tg.start_soon(waiter)
    await wait_all_tasks_blocked()
    assert gate.statistics().tasks_waiting == 1
    gate.open()
 assert rounds == 200


async def test_open_and_close_are_idempotent() -> None:
 gate = Gate()
 gate.open()
 gate.open()
 assert gate.is_open
 gate.close()
 gate.close()
 assert not gate.is_open
 gate.open()
 assert gate.is_open


async def test_cancelled_waiter_leaves_no_waiter_behind() -> None:
 gate = Gate(open=False)
 with fail_after(5):
  async with create_task_group() as tg:
   tg.start_soon(gate.wait)
   await wait_all_tasks_blocked()
   assert gate.statistics().tasks_waiting == 1
   tg.cancel_scope.cancel()
 assert gate.statistics().tasks_waiting == 0


async def test_open_from_a_foreign_thread_wakes_the_waiter() -> None:
 gate = Gate(open=False)
 woke = anyio.Event()

 async def waiter() -> None:
  await gate.wait()
  woke.set()

 with fail_after(5):
  async with create_task_group() as tg:
   tg.start_soon(waiter)
   await wait_all_tasks_blocked()
   thread = threading.Thread(target=gate.open)
   thread.start()
   await woke.wait()
   thread.join()


async def test_try_enter_runs_the_action_only_while_open() -> None:
 gate = Gate()
 ran: list[str] = []
 assert gate.try_enter(lambda: ran.append("open"))
 gate.close()
 assert not gate.try_enter(lambda: ran.append("closed"))
 assert ran == ["open"]


async def test_try_enter_passes_its_arguments_and_an_action_that_raises_enters_nothing() -> None:
 gate = Gate()
 admitted: list[str] = []
 assert gate.try_enter(admitted.append, "w1")
 with pytest.raises(ZeroDivisionError):
  gate.try_enter(lambda: 1 / 0)
 gate.close()  # the lock was released by the raise: close() does not hang
 assert not gate.try_enter(admitted.append, "w2")
 assert admitted == ["w1"]


# The cases of anyio's own Event tests, with open() in the role of set().


async def test_event_parity_set_from_another_task() -> None:
 gate = Gate(open=False)

 async def opener() -> None:
  assert not gate.is_open
  gate.open()

 with fail_after(5):
  async with create_task_group() as tg:
   tg.start_soon(opener)
   await gate.wait()
 assert gate.is_open


async def test_event_parity_cancelled_before_open_does_not_pass() -> None:
 gate = Gate(open=False)
 task_started = passed = False

 async def task() -> None:
  nonlocal task_started, passed
  task_started = True
  await gate.wait()
  passed = True

 with fail_after(5):
  async with create_task_group() as tg:
   tg.start_soon(task)
   tg.cancel_scope.cancel()
   gate.open()
 assert task_started
 assert not passed


async def test_event_parity_woken_before_cancel_counts_as_woken() -> None:
 gate = Gate(open=False)
 opener_started = waiter_woke = False

 async def opener() -> None:
  nonlocal opener_started
  opener_started = True
  assert not gate.is_open
  gate.open()
  tg.cancel_scope.cancel()

 with fail_after(5):
  async with create_task_group() as tg:
   tg.start_soon(opener)
   await gate.wait()
   waiter_woke = True
 assert opener_started
 assert waiter_woke


async def test_wait_on_an_open_gate_is_still_a_checkpoint() -> None:
 gate = Gate()
 with fail_after(5), anyio.CancelScope() as scope:
  scope.cancel()
  with pytest.raises(anyio.get_cancelled_exc_class()):
   await gate.wait()


# Threads and loops: a gate made before any loop, waited on from two loops at once.


def test_one_gate_serves_an_asyncio_and_a_trio_loop_at_once() -> None:
 gate = Gate(open=False)
 parked = threading.Barrier(3, timeout=10)
 passed: dict[str, bool] = {}

 def run_loop(backend: str) -> None:
  async def main() -> None:
   with fail_after(10):
    async with create_task_group() as tg:
     tg.start_soon(gate.wait)
     await wait_all_tasks_blocked()
     await anyio.to_thread.run_sync(parked.wait)
   passed[backend] = True

  anyio.run(main, backend=backend)

 threads = [threading.Thread(target=run_loop, args=(b,)) for b in ("asyncio", "trio")]
 for thread in threads:
  thread.start()
 parked.wait()
 assert gate.statistics().tasks_waiting == 2
 gate.open()
 for thread in threads:
  thread.join(timeout=10)
 assert passed == {"asyncio": True, "trio": True}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_open_after_the_loop_has_ended_does_not_raise(backend: str) -> None:
 gate = Gate(open=False)
 handles: list[LoopHandle] = []

 async def main() -> None:
  handles.append(LoopHandle())
  with anyio.move_on_after(0):
   await gate.wait()
  await checkpoint()

 anyio.run(main, backend=backend)
 assert not handles[0].call_soon(lambda: None)
 gate.open()
 gate.close()
 gate.open()
