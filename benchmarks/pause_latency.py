"""How fast pause and resume act, and what a pause costs while it lasts, on asyncio and trio.

Ways to hold back new workers, all driven by one harness from a foreign (non-loop) thread:

- Scheduler:  ours. `Scheduler.pause()` / `resume()`; a parked `spawn()` starts the worker.
- Gate:       ours, the bare primitive, used as its docstring says: `await gate.wait()`,
              admit with `gate.try_enter(...)`, then `start_soon(worker)`.
- poll 0.5 s: the feature request's pattern as written: a `threading.Event` pause flag and
              `while True: if paused.is_set(): await anyio.sleep(0.5); continue`, then
              start the worker.
- floor:      the backend's own thread-safe wake and nothing else: asyncio
              `loop.call_soon_threadsafe(event.set)` / trio `TrioToken.run_sync_soon(event.set)`
              waking a task parked on a native asyncio.Event / trio.Event. It has no pause.
- floor + start_soon: the floor, then `start_soon(worker)` like every other row: the
              reference for "wake a parked task, then start a new one".
- aiologic.REvent: the peer primitive: `clear()` pauses, `set()` resumes, `await event`
              parks, then `start_soon(worker)`.

Metrics (times in microseconds, p50 / p99 / max):

1. pause(): the call on the foreign thread, loop idle (perf_counter_ns around the call).
2. resume -> start: `resume()` on the foreign thread until the parked spawn's worker runs
   (the worker takes its own timestamp first thing; perf_counter_ns is one clock for all
   threads). Each trial first makes sure the spawn is really parked. Trials of the
   variants alternate in shuffled rounds, so machine noise hits them alike. The poll
   sleeps 0.5 s per check, so it gets few trials, resumed at a random phase of its sleep.
   Also reported: how long the `resume()` call itself takes on the foreign thread.
3. wake-ups: how often the event loop comes back from a blocking wait for I/O during a
   window (1 s) while paused with a parked spawn and otherwise idle. asyncio: the
   selector's `select()` is wrapped; trio: an Instrument watches `before/after_io_wait`.
4. spawns after pause: many trials of a foreign thread calling `pause()` at a random
   moment while the loop spawns no-op workers non-stop, with a 1 µs GIL switch interval;
   a trial fails when the admitted-worker count moves after `pause()` returned.

    python benchmarks/pause_latency.py [--trials N] [--json PATH]

Exits 1 when a target from the issue is missed (the table says which), else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

import aiologic
import anyio
import trio
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint

from benchmarks._common import (
 Summary,
 default_json_path,
 format_table,
 format_us,
 machine_info,
 machine_line,
 write_json,
)
from scheduler import Gate, LoopHandle, Scheduler

BACKENDS = ("asyncio", "trio")
POLL_INTERVAL = 0.5  # seconds, the feature request's `asyncio.sleep(0.5)`
IDLE_OFFSET = 0.1  # seconds between parking and opening the wake-up window
WARMUP = 50  # resume trials thrown away per variant before measuring
SETTLE_ROUND_TRIPS = 3  # loop turns granted after pause() before re-reading `spawned`
PROGRESS_ROUND_TRIPS = 1000  # at most this many loop turns for spawning to move on

Worker = Callable[[], Coroutine[Any, Any, None]]


async def _noop() -> None:
 pass


# -- the variants -------------------------------------------------------------------------


class Variant:
 """One way of holding back new workers, as seen by the harness.

 `pause`/`resume` are called from the foreign (driver) thread; everything else runs in the
 loop. `parked()` tells the harness that a spawn is really waiting, so a trial never
 resumes a spawn that has not parked yet (which would measure the fast path instead).
 """

 name: ClassVar[str]
 ours: ClassVar[bool] = False  # the targets apply to this row
 pausable: ClassVar[bool] = True  # has a pause call at all (the floor does not)
 polls: ClassVar[bool] = False  # resume latency depends on where in its sleep it is
 counts_spawns: ClassVar[bool] = True  # takes part in the spawns-after-pause check

 def __init__(self, backend: str) -> None:
  self.backend = backend
  self._spawned = 0

 async def setup(self, stack: AsyncExitStack) -> None:
  """Create loop-bound state; runs in the loop before any trial."""

 def pause(self) -> None:
  raise NotImplementedError

 def resume(self) -> None:
  raise NotImplementedError

 def parked(self) -> bool:
  """True once a `start_one` call is waiting for `resume()`."""
  raise NotImplementedError

 async def start_one(self, tg: TaskGroup, worker: Worker) -> None:
  """Wait while paused, then start `worker` (the way this variant starts workers)."""
  raise NotImplementedError

 @property
 def spawned(self) -> int:
  """Workers admitted so far; read from the driver thread."""
  return self._spawned

 async def spawn_forever(self, tg: TaskGroup) -> None:
  """Admit no-op workers non-stop, waiting while paused."""
  raise NotImplementedError(f"{self.name} takes no part in the spawns-after-pause check")


class SchedulerVariant(Variant):
 name = "Scheduler"
 ours = True

 async def setup(self, stack: AsyncExitStack) -> None:
  self._scheduler = await stack.enter_async_context(Scheduler(max_workers=4))

 def pause(self) -> None:
  self._scheduler.pause()

 def resume(self) -> None:
  self._scheduler.resume()

 def parked(self) -> bool:
  return self._scheduler.statistics().parked_spawns == 1

 async def start_one(self, tg: TaskGroup, worker: Worker) -> None:
  await self._scheduler.spawn(worker)

 @property
 def spawned(self) -> int:
  return self._scheduler.spawned

 async def spawn_forever(self, tg: TaskGroup) -> None:
  while True:
   await self._scheduler.spawn(_noop)


class GateVariant(Variant):
 name = "Gate"
 ours = True

 def __init__(self, backend: str) -> None:
  super().__init__(backend)
  self._gate = Gate(open=True)

 def pause(self) -> None:
  self._gate.close()

 def resume(self) -> None:
  self._gate.open()

 def parked(self) -> bool:
  return self._gate.statistics().tasks_waiting == 1

 def _admit(self) -> None:
  self._spawned += 1

 async def _enter(self) -> None:
  # wait() only says the gate was open at some moment; try_enter decides under the gate's
  # lock, so a close() that has returned excludes this admission.
  while True:
   await self._gate.wait()
   if self._gate.try_enter(self._admit):
    return

 async def start_one(self, tg: TaskGroup, worker: Worker) -> None:
  await self._enter()
  tg.start_soon(worker)

 async def spawn_forever(self, tg: TaskGroup) -> None:
  while True:
   await self._enter()
   tg.start_soon(_noop)


class PollVariant(Variant):
 name = "poll 0.5 s"
 polls = True
 counts_spawns = False  # a resume takes up to 0.5 s: 10,000 trials would take over an hour

 def __init__(self, backend: str) -> None:
  super().__init__(backend)
  self._paused = threading.Event()
  self._sleeping = False

 def pause(self) -> None:
  self._paused.set()

 def resume(self) -> None:
  self._paused.clear()

 def parked(self) -> bool:
  return self._sleeping

 async def start_one(self, tg: TaskGroup, worker: Worker) -> None:
  # The feature request's loop, kept in its shape.
  while True:
   if self._paused.is_set():
    self._sleeping = True
    await anyio.sleep(POLL_INTERVAL)
    self._sleeping = False
    continue
   self._spawned += 1
   tg.start_soon(worker)
   return


class _NativeEvent(Protocol):
 def set(self) -> None: ...
 def wait(self) -> Awaitable[object]: ...


class FloorVariant(Variant):
 name = "floor"
 pausable = False
 counts_spawns = False  # nothing to pause

 async def setup(self, stack: AsyncExitStack) -> None:
  # The one place that differs per backend: each one's own event and thread-safe hook.
  self._make_event: Callable[[], _NativeEvent]
  self._wake: Callable[[Callable[[], object]], object]
  if self.backend == "asyncio":
   self._make_event = asyncio.Event
   self._wake = asyncio.get_running_loop().call_soon_threadsafe
  else:
   self._make_event = trio.Event
   self._wake = trio.lowlevel.current_trio_token().run_sync_soon
  self._event: _NativeEvent = self._make_event()
  self._waiting = False

 def pause(self) -> None:
  pass  # the floor measures the wake-up alone; a parked task needs no pause to park

 def resume(self) -> None:
  self._wake(self._event.set)

 def parked(self) -> bool:
  return self._waiting

 async def _park(self) -> None:
  # Native events are one-shot (trio's cannot be cleared), so each trial gets its own; the
  # driver reads `_event` only after parked() said so.
  self._event = self._make_event()
  self._waiting = True
  await self._event.wait()
  self._waiting = False

 async def start_one(self, tg: TaskGroup, worker: Worker) -> None:
  await self._park()
  await worker()  # "the waiting task running": no task start on the floor


class FloorTaskVariant(FloorVariant):
 """The floor plus what every other row also pays on resume: starting the worker's task."""

 name = "floor + start_soon"

 async def start_one(self, tg: TaskGroup, worker: Worker) -> None:
  await self._park()
  tg.start_soon(worker)


class AiologicVariant(Variant):
 name = "aiologic.REvent"

 def __init__(self, backend: str) -> None:
  super().__init__(backend)
  self._event = aiologic.REvent()
  self._event.set()  # set = running; clear() is the pause

 def pause(self) -> None:
  self._event.clear()

 def resume(self) -> None:
  self._event.set()

 def parked(self) -> bool:
  return self._event.waiting == 1

 async def start_one(self, tg: TaskGroup, worker: Worker) -> None:
  # `await event` is the async wait; `event.wait()` is the blocking (green) one in 0.17.
  await self._event
  self._spawned += 1
  tg.start_soon(worker)

 async def spawn_forever(self, tg: TaskGroup) -> None:
  while True:
   await self._event
   self._spawned += 1
   tg.start_soon(_noop)
   # On asyncio aiologic skips the checkpoint when the event is set (its default), so
   # without this the loop would spawn forever without letting anything else run.
   await checkpoint()


VARIANTS: tuple[type[Variant], ...] = (
 SchedulerVariant,
 GateVariant,
 PollVariant,
 FloorVariant,
 FloorTaskVariant,
 AiologicVariant,
)


# -- counting loop wake-ups ---------------------------------------------------------------


class WakeCounter:
 """Counts the loop's waits for I/O, as seen from inside the loop, while installed.

 `waits` counts every wait, including the non-blocking polls a busy loop makes between
 batches of callbacks. `wakeups` counts only returns from a wait that was allowed to block
 (timeout > 0 or none): the loop had gone to sleep and something woke it. A loop that is
 paused and idle should not do that at all. `steps` counts task steps where the backend
 exposes them (trio). Plain ints: written by the loop, read by the driver under the GIL.

 Installed only around the idle window: a trio Instrument is called on every task step
 and would slow down the latency trials.
 """

 def __init__(self, backend: str) -> None:
  self.backend = backend
  self.waits = 0
  self.wakeups = 0
  self.steps: int | None = None if backend == "asyncio" else 0
  self._uninstall: Callable[[], None] | None = None

 def snapshot(self) -> tuple[int, int, int | None]:
  return self.waits, self.wakeups, self.steps

 def __enter__(self) -> WakeCounter:
  """Start counting; call from inside the running loop."""
  if self.backend == "asyncio":
   self._uninstall = self._wrap_asyncio_select()
  else:
   instrument = _TrioWakeInstrument(self)
   trio.lowlevel.add_instrument(instrument)
   self._uninstall = partial(trio.lowlevel.remove_instrument, instrument)
  return self

 def __exit__(self, *exc_info: object) -> None:
  assert self._uninstall is not None
  self._uninstall()

 def _wrap_asyncio_select(self) -> Callable[[], None]:
  # asyncio has no instrumentation hook; every turn of a selector loop goes through
  # `_selector.select(timeout)`, so that is where to count. Private, hence checked.
  selector: Any = getattr(asyncio.get_running_loop(), "_selector", None)
  if selector is None:
   raise RuntimeError("wake-up counting needs a selector event loop")
  select = selector.select

  def counting_select(timeout: float | None = None) -> object:
   self.waits += 1
   try:
    return select(timeout)
   finally:
    if timeout is None or timeout > 0:
     self.wakeups += 1

  selector.select = counting_select
  return partial(delattr, selector, "select")  # back to the class's own method


class _TrioWakeInstrument(trio.abc.Instrument):
 def __init__(self, counter: WakeCounter) -> None:
  self._counter = counter

 def before_io_wait(self, timeout: float) -> None:
  self._counter.waits += 1

 def after_io_wait(self, timeout: float) -> None:
  if timeout > 0:
   self._counter.wakeups += 1

 def before_task_step(self, task: trio.lowlevel.Task) -> None:
  assert self._counter.steps is not None
  self._counter.steps += 1


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Idle:
 seconds: float
 wakeups: int  # returns from a blocking wait for I/O during the window
 waits: int  # all waits for I/O during the window, non-blocking polls included
 task_steps: int | None  # trio only


@dataclass(frozen=True, slots=True)
class Safety:
 trials: int
 violations: int  # trials in which a worker was admitted after pause() returned
 extra_spawns: int  # workers admitted after pause() returned, over all trials
 stalled: int  # trials in which spawning did not move on before the pause (should be 0)
 pause_call_busy: Summary  # pause() while the loop spawns non-stop, 1 µs switch interval


@dataclass(slots=True)
class Result:
 backend: str
 variant: str
 ours: bool
 pause_call: Summary | None = None
 resume_call: Summary | None = None
 resume_to_start: Summary | None = None
 idle: Idle | None = None
 safety: Safety | None = None


@dataclass(frozen=True, slots=True)
class Config:
 trials: int
 poll_trials: int
 pause_trials: int
 safety_trials: int
 idle_seconds: float
 seed: int


# -- the harness ---------------------------------------------------------------------------


class Harness:
 """Loop side and driver side of the trials for one variant on one running loop.

 Synchronisation between the two sides uses only threading.Events and the loop's own
 thread-safe hook (`LoopHandle.call_soon`): no sleeps, so every wait ends when the thing
 waited for has happened.
 """

 def __init__(self, variant: Variant, tg: TaskGroup) -> None:
  self.variant = variant
  self._tg = tg
  self._loop = LoopHandle()
  self._arms, self._armed = anyio.create_memory_object_stream[None](math.inf)
  self._parked = threading.Event()
  self._started = threading.Event()
  self._turned = threading.Event()
  self._started_ns = 0

 # loop side

 async def serve_parked_spawns(self) -> None:
  """Per arm: start one spawn (it parks while paused) and tell the driver once it has."""
  async for _ in self._armed:
   self._tg.start_soon(self._report_parked)
   await self.variant.start_one(self._tg, self._worker)

 async def _report_parked(self) -> None:
  # This task starts right after the spawn's first step, in which it parks; the loop is
  # a yield-and-look for a variant that needs another turn, never a sleep.
  while not self.variant.parked():
   await checkpoint()
  self._parked.set()

 async def _worker(self) -> None:
  self._started_ns = time.perf_counter_ns()  # first thing the worker does
  self._started.set()

 # driver side (the foreign thread)

 def park_one(self) -> None:
  """Pause, and return once a spawn is parked waiting for resume()."""
  self.variant.pause()
  self._started.clear()
  self._loop.call_soon(partial(self._arms.send_nowait, None))
  self._parked.wait()
  self._parked.clear()

 def resume_trial(self, rng: random.Random) -> tuple[int, int]:
  """One parked spawn resumed: (ns in the resume() call, ns from resume() to the worker)."""
  self.park_one()
  if self.variant.polls:
   # Resume at a random phase of the poll's sleep, as a user's click would; resuming
   # right after it parks would always cost the full 0.5 s.
   time.sleep(rng.uniform(0, POLL_INTERVAL))
  t0 = time.perf_counter_ns()
  self.variant.resume()
  t1 = time.perf_counter_ns()
  self._started.wait()
  return t1 - t0, self._started_ns - t0

 def measure_idle(self, counter: WakeCounter, seconds: float) -> Idle:
  """Loop wake-ups while paused with a parked spawn and nothing else to do."""
  self.park_one()
  # Open the window a little after the spawn parked, so that a periodic waker (the poll's
  # 0.5 s timer, armed as it parked) does not tick exactly on the window's edges.
  time.sleep(IDLE_OFFSET)
  waits0, wakeups0, steps0 = counter.snapshot()
  time.sleep(seconds)  # the measurement window itself: leave the loop alone
  waits1, wakeups1, steps1 = counter.snapshot()
  self.variant.resume()
  self._started.wait()
  steps = None if steps0 is None or steps1 is None else steps1 - steps0
  return Idle(seconds, wakeups1 - wakeups0, waits1 - waits0, steps)

 def _round_trip(self) -> None:
  """Return after the loop has taken at least one more turn."""
  self._turned.clear()
  self._loop.call_soon(self._turned.set)
  self._turned.wait()

 def check_no_spawn_after_pause(self, trials: int, rng: random.Random) -> Safety:
  """pause() at random moments while the loop spawns non-stop; count later admissions.

  Run while the variant's `spawn_forever` is going in the loop.
  """
  variant = self.variant
  violations = extra = stalled = 0
  pause_calls = []
  switch_interval = sys.getswitchinterval()
  # Hand the GIL over every microsecond so that pause() lands at arbitrary bytecodes of
  # the loop thread, including inside the admission path.
  sys.setswitchinterval(1e-6)
  try:
   for _ in range(trials):
    before = variant.spawned
    variant.resume()
    for _ in range(PROGRESS_ROUND_TRIPS):
     self._round_trip()
     if variant.spawned > before:
      break
    else:
     stalled += 1
    for _ in range(rng.randrange(200)):  # a random extra delay, so pauses do not phase-lock
     pass
    t0 = time.perf_counter_ns()
    variant.pause()
    t1 = time.perf_counter_ns()
    at_pause = variant.spawned
    for _ in range(SETTLE_ROUND_TRIPS):
     self._round_trip()
    moved = variant.spawned - at_pause
    violations += moved > 0
    extra += moved
    pause_calls.append(t1 - t0)
  finally:
   sys.setswitchinterval(switch_interval)
  variant.resume()
  return Safety(trials, violations, extra, stalled, Summary.from_ns(pause_calls))


# Trials of different variants alternate, in a shuffled order each round, so that whatever
# the machine does meanwhile (frequency, scheduling of the two threads on the CPUs, another
# process) lands on all of them alike; the side-by-side comparison is the point.


def interleaved_pause_calls(
 harnesses: list[Harness], trials: int, rng: random.Random
) -> dict[str, Summary]:
 samples: dict[str, list[int]] = {h.variant.name: [] for h in harnesses}
 gc.collect()
 for _ in range(trials):
  rng.shuffle(harnesses)
  for h in harnesses:
   t0 = time.perf_counter_ns()
   h.variant.pause()
   t1 = time.perf_counter_ns()
   h.variant.resume()
   samples[h.variant.name].append(t1 - t0)
 return {name: Summary.from_ns(ns) for name, ns in samples.items()}


def interleaved_resumes(
 harnesses: list[Harness], trials: int, warmup: int, rng: random.Random
) -> dict[str, tuple[Summary, Summary]]:
 """Per variant: (resume() call, resume() -> worker start)."""
 calls: dict[str, list[int]] = {h.variant.name: [] for h in harnesses}
 latencies: dict[str, list[int]] = {h.variant.name: [] for h in harnesses}
 gc.collect()
 for i in range(warmup + trials):
  rng.shuffle(harnesses)
  for h in harnesses:
   call, latency = h.resume_trial(rng)
   if i >= warmup:
    calls[h.variant.name].append(call)
    latencies[h.variant.name].append(latency)
 return {name: (Summary.from_ns(calls[name]), Summary.from_ns(latencies[name])) for name in calls}


async def measure_backend(backend: str, config: Config) -> list[Result]:
 """Every metric for every variant on one loop of `backend`."""
 variants = [kind(backend) for kind in VARIANTS]
 results = {v.name: Result(backend, v.name, v.ours) for v in variants}
 rng = random.Random(config.seed)
 async with AsyncExitStack() as stack:
  for variant in variants:
   await variant.setup(stack)
  async with anyio.create_task_group() as tg:
   harnesses = [Harness(v, tg) for v in variants]
   for h in harnesses:
    tg.start_soon(h.serve_parked_spawns)

   pausable = [h for h in harnesses if h.variant.pausable]
   pauses = await anyio.to_thread.run_sync(
    interleaved_pause_calls, pausable, config.pause_trials, rng
   )
   for name, summary in pauses.items():
    results[name].pause_call = summary

   fast = [h for h in harnesses if not h.variant.polls]
   slow = [h for h in harnesses if h.variant.polls]
   resumes = await anyio.to_thread.run_sync(interleaved_resumes, fast, config.trials, WARMUP, rng)
   if config.poll_trials:
    resumes |= await anyio.to_thread.run_sync(interleaved_resumes, slow, config.poll_trials, 0, rng)
   for name, (call, latency) in resumes.items():
    results[name].resume_call, results[name].resume_to_start = call, latency

   for h in harnesses:
    with WakeCounter(backend) as counter:
     idle = await anyio.to_thread.run_sync(h.measure_idle, counter, config.idle_seconds)
    results[h.variant.name].idle = idle
   tg.cancel_scope.cancel()

  for variant in variants:
   if not (variant.counts_spawns and config.safety_trials):
    continue
   async with anyio.create_task_group() as tg:
    harness = Harness(variant, tg)
    tg.start_soon(variant.spawn_forever, tg)
    results[variant.name].safety = await anyio.to_thread.run_sync(
     harness.check_no_spawn_after_pause, config.safety_trials, rng
    )
    tg.cancel_scope.cancel()
 return [results[v.name] for v in variants]


# -- targets and report -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
 backend: str
 variant: str
 target: str
 measured: str
 passed: bool


# What each of our rows' resume latency is held against. The Scheduler wakes the worker's own
# task, so its reference is the bare floor. The bare Gate, used as a spawner (wait, then
# start_soon a worker), necessarily pays one task start after the wake-up: its fair
# reference is the floor plus that same start_soon.
REFERENCE = {SchedulerVariant.name: FloorVariant.name, GateVariant.name: FloorTaskVariant.name}


def check_targets(results: list[Result]) -> list[Target]:
 """The issue's numbers, applied to our rows, each against its reference row (REFERENCE)."""
 by_name = {(r.backend, r.variant): r.resume_to_start for r in results}
 targets: list[Target] = []
 for r in results:
  if not r.ours:
   continue

  def add(target: str, measured: str, passed: bool, r: Result = r) -> None:
   targets.append(Target(r.backend, r.variant, target, measured, passed))

  ref_name = REFERENCE.get(r.variant, FloorVariant.name)
  floor = by_name.get((r.backend, ref_name))
  if r.resume_to_start is not None and floor is not None:
   p99, floor_p99 = r.resume_to_start.p99_us, floor.p99_us
   add(
    f"resume→start p99 <= 1.5x {ref_name} p99",
    f"{format_us(p99)} µs = {p99 / floor_p99:.2f}x {format_us(floor_p99)} µs",
    p99 <= 1.5 * floor_p99,
   )
   add("resume→start p99 < 1 ms", f"{format_us(p99)} µs", p99 < 1000)
  if r.pause_call is not None:
   p50 = r.pause_call.p50_us
   add("pause() p50 < 20 µs", f"{format_us(p50)} µs", p50 < 20)
  if r.idle is not None:
   add("0 wake-ups while paused", f"{r.idle.wakeups} in {r.idle.seconds:g} s", r.idle.wakeups == 0)
  if r.safety is not None:
   s = r.safety
   add(
    "0 spawns after pause",
    f"{s.violations} of {s.trials:,} trials" + (f" ({s.stalled} stalled)" if s.stalled else ""),
    s.violations == 0 and s.stalled == 0,
   )
 return targets


def results_table(results: list[Result], config: Config) -> str:
 headers = [
  "backend",
  "variant",
  "pause() µs p50/p99/max",
  "resume() call µs p50/p99",
  "resume→start µs p50/p99/max",
  "trials",
  f"wake-ups in {config.idle_seconds:g} s",
  "spawns after pause",
 ]
 rows = []
 for r in results:
  s = r.safety
  trials = "" if r.resume_to_start is None else f"{r.resume_to_start.n:,}"
  if trials and r.variant == PollVariant.name:
   trials += " (capped)"
  rows.append(
   [
    r.backend,
    r.variant + (" (ours)" if r.ours else ""),
    "n/a" if r.pause_call is None else r.pause_call.cell(),
    "" if r.resume_call is None else r.resume_call.cell(with_max=False),
    "" if r.resume_to_start is None else r.resume_to_start.cell(),
    trials,
    "" if r.idle is None else str(r.idle.wakeups),
    "n/a" if s is None else f"{s.violations:,} of {s.trials:,}",
   ]
  )
 return format_table(headers, rows, left=2)


def targets_table(targets: list[Target]) -> str:
 rows = [
  [t.backend, t.variant, t.target, t.measured, "PASS" if t.passed else "FAIL"] for t in targets
 ]
 return format_table(["backend", "variant", "target", "measured", "result"], rows, left=4)


def _shown(path: Path) -> str:
 """`path` relative to the working directory when it lies below it: output gets pasted."""
 try:
  return str(path.resolve().relative_to(Path.cwd()))
 except ValueError:
  return str(path)


def _count(minimum: int) -> Callable[[str], int]:
 """An argparse type: a whole number >= `minimum`."""

 def parse(text: str) -> int:
  value = int(text)
  if value < minimum:
   raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
  return value

 return parse


def main(argv: list[str] | None = None) -> int:
 parser = argparse.ArgumentParser(
  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
 )
 parser.add_argument(
  "--trials", type=_count(1), default=2000, help="resume trials per variant (default 2000)"
 )
 parser.add_argument(
  "--poll-trials",
  type=_count(0),
  default=20,
  help="resume trials for the 0.5 s poll, ~0.5 s each (default 20)",
 )
 parser.add_argument(
  "--pause-trials", type=_count(1), default=10_000, help="timed pause() calls per variant"
 )
 parser.add_argument(
  "--safety-trials",
  type=_count(0),
  default=1000,
  help="spawns-after-pause trials per variant and backend (default 1000, about 2 minutes in "
  "all on a 2-vCPU machine; 10000 is a stronger check and takes several times longer)",
 )
 parser.add_argument(
  "--idle", type=float, default=1.0, help="seconds to count wake-ups while paused"
 )
 parser.add_argument("--seed", type=int, default=0)
 parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
 parser.add_argument("--json", type=Path, default=default_json_path("pause_latency"))
 args = parser.parse_args(argv)
 config = Config(
  args.trials, args.poll_trials, args.pause_trials, args.safety_trials, args.idle, args.seed
 )

 machine = machine_info(["anyio", "trio", "aiologic"])
 print(f"pause / resume latency · {machine_line(machine)}")
 print(
  f"anyio {machine['anyio']} · trio {machine['trio']} · aiologic {machine['aiologic']} · "
  f"{config.trials:,} resume trials ({config.poll_trials} for the poll) · "
  f"{config.pause_trials:,} pause() calls · {config.safety_trials:,} pause-safety trials\n",
  flush=True,
 )
 started = time.perf_counter()
 results: list[Result] = []
 for backend in args.backends:
  results += anyio.run(measure_backend, backend, config, backend=backend)
 elapsed = time.perf_counter() - started

 targets = check_targets(results)
 print(results_table(results, config))
 print(
  "\nresume→start: resume() on a foreign thread until the worker's first line. floor: the"
  "\nbackend's own wake of a parked task, no task start; floor + start_soon adds one, like"
  f"\nevery other row. The poll gets {config.poll_trials} trials (0.5 s each), resumed at random phases.\n"
 )
 print(targets_table(targets))
 met = all(t.passed for t in targets)
 print(f"\nall targets: {'PASS' if met else 'FAIL'} · measured in {elapsed:.0f} s")

 write_json(
  args.json,
  {
   "benchmark": "pause_latency",
   "machine": machine,
   "config": {**asdict(config), "warmup": WARMUP, "poll_interval_s": POLL_INTERVAL},
   "results": [asdict(r) for r in results],
   "targets": [asdict(t) for t in targets],
   "targets_met": met,
   "seconds": elapsed,
  },
 )
 print(f"wrote {_shown(args.json)}")
 return 0 if met else 1


if __name__ == "__main__":
 sys.exit(main())
