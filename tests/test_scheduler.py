"""The Scheduler contract: bounded, pausable, linearizable admission, nothing lost."""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial

import anyio
import pytest
from anyio import create_task_group, fail_after, wait_all_tasks_blocked

from scheduler import LoopHandle, Scheduler, ThreadBridge

pytestmark = pytest.mark.anyio


async def test_max_workers_below_one_is_refused() -> None:
 with pytest.raises(ValueError, match="max_workers"):
  Scheduler(max_workers=0)


async def test_spawn_outside_async_with_says_how_to_use_it() -> None:
 async def noop() -> None:
  pass

 with pytest.raises(RuntimeError, match="async with Scheduler"):
  await Scheduler().spawn(noop)


async def test_never_more_than_max_workers_run_at_once() -> None:
 now = peak = 0
 release = anyio.Event()

 async def worker() -> None:
  nonlocal now, peak
  now += 1
  peak = max(peak, now)
  await release.wait()
  now -= 1

 async def spawn_all(s: Scheduler) -> None:
  for i in range(10):
   await s.spawn(worker, name=f"w{i}")

 with fail_after(5):
  async with Scheduler(max_workers=3) as s, create_task_group() as tg:
   tg.start_soon(spawn_all, s)
   await wait_all_tasks_blocked()
   assert s.running == ("w0", "w1", "w2")
   release.set()
 assert peak == 3
 assert s.spawned == 10


async def test_pause_stops_new_spawns_and_lets_running_workers_finish() -> None:
 started: list[int] = []
 finish = anyio.Event()

 async def worker(i: int) -> None:
  started.append(i)
  await finish.wait()

 async def spawn_all(s: Scheduler) -> None:
  for i in range(5):
   await s.spawn(worker, i, name=f"w{i}")

 with fail_after(5):
  async with Scheduler(max_workers=2) as s, create_task_group() as tg:
   tg.start_soon(spawn_all, s)
   await wait_all_tasks_blocked()
   assert sorted(started) == [0, 1]
   s.pause()
   assert s.paused
   assert s.running_at_pause == ("w0", "w1")
   finish.set()
   await s.wait_drained()
   await wait_all_tasks_blocked()
   assert sorted(started) == [0, 1]  # the freed slots were not used while paused
   assert s.running == ()
   assert s.statistics().parked_spawns == 1
   s.resume()
 assert sorted(started) == [0, 1, 2, 3, 4]  # trio may start a batch in any order


async def test_resume_starts_parked_spawn_once() -> None:
 runs = Counter[str]()

 async def worker(name: str) -> None:
  runs[name] += 1

 with fail_after(5):
  async with Scheduler(max_workers=1, paused=True) as s, create_task_group() as tg:
   tg.start_soon(s.spawn, worker, "only")
   await wait_all_tasks_blocked()
   assert s.spawned == 0
   s.resume()
   s.resume()
   s.pause()
   s.resume()
 assert runs == {"only": 1}
 assert s.spawned == 1


async def test_cancelled_parked_spawn_starts_nothing_and_frees_its_slot() -> None:
 ran: list[str] = []

 async def worker(name: str) -> None:
  ran.append(name)

 with fail_after(5):
  async with Scheduler(max_workers=1, paused=True) as s:
   async with create_task_group() as tg:
    tg.start_soon(s.spawn, worker, "cancelled")
    await wait_all_tasks_blocked()
    tg.cancel_scope.cancel()
   s.resume()
   await s.spawn(worker, "next")  # would hang if the slot had leaked
 assert ran == ["next"]
 assert s.spawned == 1


async def test_spawn_cancelled_as_the_gate_opens_starts_at_most_once_and_frees_its_slot() -> None:
 ran: list[str] = []

 async def worker(name: str) -> None:
  ran.append(name)

 with fail_after(5):
  async with Scheduler(max_workers=1, paused=True) as s:
   async with create_task_group() as tg:
    tg.start_soon(s.spawn, worker, "raced")
    await wait_all_tasks_blocked()
    assert s.statistics().parked_spawns == 1
    s.resume()  # wakes the parked worker...
    tg.cancel_scope.cancel()  # ...and cancels its spawn in the same step
   await s.spawn(worker, "next")  # would hang if the slot had leaked
 # Either the worker was admitted before the cancellation (then it ran, once) or not at all.
 assert ran == (["raced", "next"] if s.spawned == 2 else ["next"])
 assert s.statistics().parked_spawns == 0


async def test_wait_drained_returns_when_the_last_worker_finishes() -> None:
 finish = anyio.Event()

 async def worker() -> None:
  await finish.wait()

 with fail_after(5):
  async with Scheduler(max_workers=2) as s:
   await s.wait_drained()  # nothing in flight: at once
   await s.spawn(worker)
   await s.spawn(worker)
   async with create_task_group() as tg:
    tg.start_soon(s.wait_drained)
    await wait_all_tasks_blocked()
    assert len(s.running) == 2
    finish.set()
   assert s.running == ()


async def test_worker_error_propagates_through_the_task_group() -> None:
 async def boom() -> None:
  raise LookupError("boom")

 with fail_after(5), pytest.RaisesGroup(LookupError):
  async with Scheduler() as s:
   await s.spawn(boom)


async def test_pause_and_resume_after_exit_are_harmless() -> None:
 async with Scheduler() as s:
  pass
 s.pause()
 s.resume()
 s.pause()
 with pytest.raises(RuntimeError):
  await s.spawn(anyio.lowlevel.checkpoint)


async def test_scheduler_cannot_be_entered_twice() -> None:
 s = Scheduler()
 async with s:
  pass
 with pytest.raises(RuntimeError, match="only once"):
  async with s:
   pass


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
 # By default CPython switches threads every 5 ms, mostly while the loop sits in select():
 # the pauser would almost never land inside the admission code. Switching every
 # microsecond makes "a random moment" really random, so a check-then-act race shows.
 old = sys.getswitchinterval()
 sys.setswitchinterval(1e-6)
 yield
 sys.setswitchinterval(old)


@pytest.mark.usefixtures("frequent_thread_switches")
async def test_no_worker_starts_after_pause_returns_on_a_foreign_thread() -> None:
 """The linearizability stress test: thousands of pauses at random moments."""
 trials = 2000
 violations: list[tuple[int, int, int]] = []
 stop = anyio.Event()

 async def noop() -> None:
  pass

 async def spawn_forever(s: Scheduler) -> None:
  while not stop.is_set():
   await s.spawn(noop)

 def round_trip(loop: LoopHandle) -> None:
  turned = threading.Event()
  assert loop.call_soon(turned.set)
  assert turned.wait(10)

 def pauser(s: Scheduler, loop: LoopHandle) -> None:
  rng = random.Random(7)
  for trial in range(trials):
   # Let spawning run, then pause at a random moment in the middle of it.
   round_trip(loop)
   for _ in range(rng.randrange(2000)):
    pass
   s.pause()
   before = s.spawned
   for _ in range(3):  # the loop takes several turns while paused
    round_trip(loop)
   after = s.spawned
   if after != before:
    violations.append((trial, before, after))
   s.resume()
  loop.call_soon(stop.set)

 # A hang guard, not a speed check: with a thread switch every µs this test takes ~10 s on
 # asyncio and ~20 s on trio on a 2-vCPU machine.
 with fail_after(240):
  async with Scheduler(max_workers=2) as s, create_task_group() as tg:
   tg.start_soon(spawn_forever, s)
   await anyio.to_thread.run_sync(pauser, s, LoopHandle())
   s.resume()
 assert violations == []
 assert s.spawned > trials  # spawning really ran between the pauses


async def test_rapid_toggling_from_a_thread_loses_no_wakeup_and_starts_nothing_twice() -> None:
 n = 300
 runs = Counter[int]()
 spawned_all = threading.Event()

 async def worker(i: int) -> None:
  runs[i] += 1

 async def spawn_all(s: Scheduler) -> None:
  for i in range(n):
   await s.spawn(worker, i)
  spawned_all.set()

 def toggler(s: Scheduler) -> None:
  while not spawned_all.is_set():
   s.pause()
   s.resume()

 with fail_after(30):
  async with Scheduler(max_workers=4) as s, create_task_group() as tg:
   tg.start_soon(anyio.to_thread.run_sync, toggler, s)
   await spawn_all(s)
 assert runs == Counter(range(n))
 assert s.spawned == n


# -- on_admit: who admitted the worker ----------------------------------------------------


async def test_on_admit_runs_in_the_spawners_step_when_a_slot_is_free() -> None:
 events: list[tuple[str, int]] = []

 async def worker() -> None:
  events.append(("worker", anyio.get_current_task().id))

 def on_admit() -> None:
  events.append(("admitted", anyio.get_current_task().id))

 with fail_after(5):
  async with Scheduler(max_workers=1) as s:
   await s.spawn(worker, on_admit=on_admit)
   assert events == [("admitted", anyio.get_current_task().id)]  # the worker has not run
 assert [what for what, _ in events] == ["admitted", "worker"]


async def test_on_admit_runs_in_the_workers_own_task_when_a_resume_admits_it() -> None:
 events: list[tuple[str, int]] = []
 spawner: list[int] = []

 async def worker() -> None:
  events.append(("worker", anyio.get_current_task().id))

 def on_admit() -> None:
  events.append(("admitted", anyio.get_current_task().id))

 async def spawn(s: Scheduler) -> None:
  spawner.append(anyio.get_current_task().id)
  await s.spawn(worker, on_admit=on_admit)

 with fail_after(5):
  async with Scheduler(max_workers=1, paused=True) as s, create_task_group() as tg:
   tg.start_soon(spawn, s)
   await wait_all_tasks_blocked()
   assert events == [] and s.statistics().parked_spawns == 1
   s.resume()
 [(first, admitting), (second, running)] = events
 assert (first, second) == ("admitted", "worker")
 assert admitting == running != spawner[0]  # the worker's own task, in the step before it ran


async def test_try_spawn_runs_on_admit_only_when_it_starts_the_worker() -> None:
 admitted: list[str] = []

 with fail_after(5):
  async with Scheduler(max_workers=1) as s:
   s.pause()
   assert not s.try_spawn(anyio.lowlevel.checkpoint, on_admit=lambda: admitted.append("p"))
   s.resume()
   assert s.try_spawn(anyio.lowlevel.checkpoint, on_admit=lambda: admitted.append("a"))
   assert admitted == ["a"]
   assert not s.try_spawn(anyio.lowlevel.checkpoint, on_admit=lambda: admitted.append("b"))
 assert admitted == ["a"]


@pytest.mark.parametrize("paused", [False, True])
async def test_an_on_admit_that_raises_starts_nothing_frees_the_slot_and_reaches_the_spawner(
 paused: bool,
) -> None:
 ran: list[str] = []

 async def worker(name: str) -> None:
  ran.append(name)

 def broken() -> None:
  raise LookupError("on_admit broke")

 async def spawn_broken(s: Scheduler) -> None:
  with pytest.raises(LookupError, match="on_admit broke"):
   await s.spawn(worker, "broken", on_admit=broken)

 with fail_after(5):
  async with Scheduler(max_workers=1, paused=paused) as s:
   async with create_task_group() as tg:
    tg.start_soon(spawn_broken, s)
    await wait_all_tasks_blocked()
    s.resume()  # admits the parked one (when paused)
   assert s.running == ()
   await s.spawn(worker, "next")  # would hang if the slot had leaked
 assert ran == ["next"]


async def test_workers_run_in_a_pool_of_at_most_max_workers_tasks() -> None:
 tasks: set[int] = set()

 async def worker() -> None:
  tasks.add(anyio.get_current_task().id)
  await anyio.lowlevel.checkpoint()

 with fail_after(5):
  async with Scheduler(max_workers=2) as s:
   for _ in range(50):
    await s.spawn(worker)
   await s.wait_drained()
   for _ in range(50):
    while not s.try_spawn(worker):
     await s.wait_drained()
 assert 1 <= len(tasks) <= 2  # no task of its own per worker: the pool's
 assert s.spawned == 100


async def test_a_handoff_runs_next_in_the_finishing_workers_task_before_anything_else() -> None:
 events: list[tuple[str, int]] = []

 async def second() -> None:
  events.append(("second", anyio.get_current_task().id))

 async def other() -> None:
  events.append(("other", anyio.get_current_task().id))

 async def first(s: Scheduler) -> None:
  events.append(("first", anyio.get_current_task().id))
  on_admit = partial(events.append, ("admitted", 0))
  assert s.try_spawn(second, name="second", on_admit=on_admit, handoff=True)
  assert s.try_spawn(other, name="other")  # to another task of the pool
  assert s.running == ("first", "second", "other")  # admitted at once

 with fail_after(5):
  async with Scheduler(max_workers=4) as s:
   await s.spawn(first, s, name="first")
   await s.wait_drained()
 assert [what for what, _ in events] == ["first", "admitted", "second", "other"]
 assert events[0][1] == events[2][1]


async def test_a_handoff_after_turn_lets_the_steps_already_due_run_first() -> None:
 events: list[str] = []
 go = anyio.Event()

 async def successor() -> None:
  events.append("successor")

 async def a(s: Scheduler) -> None:
  await go.wait()
  events.append("a")
  assert s.try_spawn(successor, name="successor", handoff=True, after_turn=True)

 async def b() -> None:
  await go.wait()
  events.append("b")

 with fail_after(5):
  async with Scheduler(max_workers=2) as s:
   await s.spawn(a, s, name="a")
   await s.spawn(b, name="b")
   await wait_all_tasks_blocked()
   go.set()  # a and b are both due in the same loop turn
   await s.wait_drained()
 # Without after_turn the successor would run right after a, before b (on asyncio).
 assert sorted(events[:2]) == ["a", "b"]
 assert events[2:] == ["successor"]


async def test_a_handoff_from_outside_the_pool_starts_the_worker_as_usual() -> None:
 ran = anyio.Event()

 async def worker() -> None:
  ran.set()

 with fail_after(5):
  async with Scheduler(max_workers=1) as s:
   assert s.try_spawn(worker, handoff=True)  # not a worker: nobody to hand off to
   await ran.wait()


async def test_a_worker_handed_off_as_the_group_is_cancelled_still_runs_and_sees_the_cancel() -> (
 None
):
 outcome: list[str] = []

 async def second() -> None:
  try:
   await anyio.lowlevel.checkpoint()
  except anyio.get_cancelled_exc_class():
   outcome.append("second cancelled")
   raise
  outcome.append("second ran to the end")

 async def first(s: Scheduler) -> None:
  assert s.try_spawn(second, handoff=True)
  s.cancel()
  await anyio.lowlevel.checkpoint()  # breaks the handoff's promise: cancelled here

 with fail_after(5):
  async with Scheduler(max_workers=2) as s:
   await s.spawn(first, s)
 assert outcome == ["second cancelled"]  # admitted, so it ran, and it was told
 assert s.running == ()


async def test_the_pool_ends_with_the_scheduler_even_when_workers_spawn_while_it_closes() -> None:
 ran: list[int] = []

 async def worker(s: Scheduler, i: int) -> None:
  ran.append(i)
  await anyio.lowlevel.checkpoint()
  if i < 20:
   await s.spawn(worker, s, i + 1)

 with fail_after(5):
  async with Scheduler(max_workers=2) as s:
   await s.spawn(worker, s, 0)
 assert ran == list(range(21))  # the chain went on after the body, then the pool ended


# -- ThreadBridge ---------------------------------------------------------------------------


async def test_bridge_runs_posted_commands_in_the_loop_and_serves_snapshots() -> None:
 bridge: ThreadBridge[tuple[int, ...]] = ThreadBridge(())
 bridge.attach()
 done = anyio.Event()
 loop_thread = threading.get_ident()
 seen: list[bool] = []

 def command() -> None:
  seen.append(threading.get_ident() == loop_thread)
  bridge.publish((1, 2, 3))
  done.set()

 with fail_after(5):
  assert await anyio.to_thread.run_sync(bridge.post, command)
  await done.wait()
 assert seen == [True]
 assert await anyio.to_thread.run_sync(lambda: bridge.snapshot) == (1, 2, 3)


async def test_bridge_holds_commands_until_attach_runs_them_in_order_then_drops_after_detach() -> (
 None
):
 bridge: ThreadBridge[int] = ThreadBridge(0)
 ran: list[tuple[str, bool]] = []
 loop_thread = threading.get_ident()
 later = anyio.Event()

 def command(name: str) -> Callable[[], None]:
  return lambda: ran.append((name, threading.get_ident() == loop_thread))

 # Posted before the loop "runs" (attach): from another thread, and from this one.
 assert await anyio.to_thread.run_sync(bridge.post, command("first"))
 assert bridge.post(command("second"))
 assert ran == []
 bridge.attach()  # runs them, in order, now
 assert ran == [("first", True), ("second", True)]
 with fail_after(5):
  assert await anyio.to_thread.run_sync(bridge.post, later.set)
  await later.wait()
 bridge.detach(7)
 assert not bridge.post(command("too late")) and bridge.snapshot == 7
 await anyio.lowlevel.checkpoint()
 assert [name for name, _ in ran] == ["first", "second"]
 with pytest.raises(RuntimeError, match="attached once"):
  bridge.attach()


async def test_bridge_request_is_folded_while_in_flight_and_throttled_by_min_interval() -> None:
 bridge: ThreadBridge[int] = ThreadBridge(0)
 built = [anyio.Event() for _ in range(3)]  # set by the first, second, third build

 def build() -> int:
  number = sum(event.is_set() for event in built) + 1
  built[number - 1].set()
  return number

 bridge.attach()
 with fail_after(5):
  # From the loop's thread the posted request cannot run before this task yields.
  assert bridge.request(build)
  assert not bridge.request(build)  # on its way: folded into it
  await built[0].wait()
  assert bridge.snapshot == 1
  assert not bridge.request(build, min_interval=3600)  # the last was posted just now
  assert bridge.request(build)  # no interval asked: posted again
  await built[1].wait()
  assert bridge.snapshot == 2
  # From another thread too; never waiting for the loop.
  assert await anyio.to_thread.run_sync(bridge.request, build)
  await built[2].wait()
  assert bridge.snapshot == 3
 bridge.detach()
 assert not bridge.request(build)


async def test_bridge_request_before_attach_is_answered_at_attach() -> None:
 bridge: ThreadBridge[str] = ThreadBridge("initial")
 built = anyio.Event()

 def fresh() -> str:
  built.set()
  return "fresh"

 assert bridge.request(fresh)
 assert not bridge.request(lambda: "again")  # folded into the one held
 bridge.attach()
 with fail_after(5):
  await built.wait()
 assert bridge.snapshot == "fresh"


async def test_bridge_ask_is_built_by_the_loop_and_detach_answers_an_ask_it_never_ran() -> None:
 class DroppingBridge(ThreadBridge[int]):
  """Loses its posts, like a loop that ends before it runs them."""

  __slots__ = ("dropping", "posted")

  def post(self, fn: Callable[[], object]) -> bool:
   if not self.dropping:
    return super().post(fn)
   self.posted.set()
   return True

 bridge = DroppingBridge(0)
 bridge.dropping, bridge.posted = False, threading.Event()
 assert bridge.ask(lambda: 1, timeout=5) == 1  # before attach: built here
 bridge.attach()
 loop_thread = threading.get_ident()
 with fail_after(5):
  built_on = await anyio.to_thread.run_sync(bridge.ask, threading.get_ident, 5)
 assert built_on == loop_thread and bridge.snapshot == loop_thread
 bridge.dropping = True
 with fail_after(5):
  async with create_task_group() as tg:
   answers: list[int] = []

   async def ask() -> None:
    answers.append(await anyio.to_thread.run_sync(bridge.ask, lambda: -1, 30))

   tg.start_soon(ask)
   assert await anyio.to_thread.run_sync(bridge.posted.wait, 5)
   bridge.detach(99)  # the run's final snapshot, for every ask still waiting
 assert answers == [99]
 assert bridge.ask(lambda: -1, timeout=5) == 99  # after detach: the final one
