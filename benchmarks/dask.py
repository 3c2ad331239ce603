"""Conductor on a Dask cluster, side by side with Dask itself, on asyncio and trio.

Starts a Dask cluster of processes on this machine (`dask scheduler` and `--workers` times
`dask worker --nthreads 1`, on 127.0.0.1), or uses `--address` of a running one, and measures:

1. rate: no-op tickets (`call` of a function that does nothing) through `ConductorEngine`
   with a `DaskExecutor`, against Dask's own `client.get` of the same DAG (one task per
   ticket, the same edges): wide (no edges), chain (each depends on the previous one) and
   random (each on up to 3 of the 50 before it). Conductor's time includes validating the
   DAG; Dask's includes sending the graph. Target: conductor >= 50% of Dask's rate. Beside
   it, "Dask futures": a hand-written driver of Dask's own futures that submits each task
   when its dependencies are done, `--max-workers` at once, as conductor does (its gate gates
   each submission, so a ticket can only be sent once admitted), one `client.submit` and one
   read per task: the plain form of that protocol (conductor batches the submissions and the
   reads of one loop turn, see `conductor.dask_executor`).
2. resume -> first remote start, p50/p99: a paused run with one ticket parked at the gate,
   `resume()`, until the ticket's function starts on a worker (it returns
   `time.monotonic_ns()`, one clock for every process of the machine); against Dask's own
   submit -> start (`client.submit` of the same function until it starts). Each trial
   follows `--gap` seconds of quiet, for both (see `resume_latency`). Target: at most 1.5x
   Dask's, at p50 and p99.
3. submissions after pause(): trials of a foreign thread calling `pause()` at a random moment
   while no-op tickets stream to the cluster (1 µs GIL switch interval, to shake out races);
   a trial fails when a ticket that was not running at the pause (`running_at_pause`) is
   handed to the cluster after `pause()` returned. Target: 0 of 1,000. Tickets admitted
   just before the pause and submitted just after are listed as running at the pause: they
   are counted apart ("late"), as allowed.

Dask's baselines do not depend on conductor's backend: they are measured once, with Dask's
own clients (the blocking one for `get`, the asynchronous one for submit -> start).

    python -m benchmarks.dask [--sizes 1000] [--workers 2] [--max-workers 16]
        [--latency-trials 200] [--gap 0.02] [--safety-trials 1000] [--backends asyncio trio]
        [--address tcp://HOST:PORT] [--json PATH]

Run it as a module (`-m`): as a file, its folder would come first on the import path and
this file would hide the `dask` package. The workers import this module (the call targets),
so the cluster it starts has the repository on PYTHONPATH; a cluster given by `--address`
needs the same. Exits 1 when a target is missed, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import graphlib
import importlib
import os
import queue
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: see the docstring
 sys.exit("run it as a module, from the repository: python -m benchmarks.dask")

import anyio
import distributed

from benchmarks._common import (
 Summary,
 default_json_path,
 format_table,
 machine_info,
 machine_line,
 write_json,
)
from conductor.dag_engine import ExecutionEngine, Ticket
from conductor.dask_executor import DaskExecutor
from conductor.multi_agent_conductor import ConductorEngine
from conductor.transitions import Change, Transition
from conductor.workers import CallWork, WorkResult

REPO = Path(__file__).resolve().parent.parent
WAIT = 60.0  # seconds a cluster process may take to say it is ready
RATE_TARGET = 0.5  # conductor's rate / Dask's
LATENCY_TARGET = 1.5  # conductor's resume -> start / Dask's submit -> start, p50 and p99

# -- the remote functions (imported by the workers from this module) --------------------------

NOOP = f"{__name__}:noop"
STAMP = f"{__name__}:stamp"


def noop(*_: object) -> None:
 """A no-op ticket's `call` target, and a no-op Dask task."""


def stamp(*_: object) -> str:
 """When the function started on the worker: `time.monotonic_ns()`, as text (the output)."""
 return str(time.monotonic_ns())


# -- DAG shapes: the same edges for both -------------------------------------------------------


def wide(n: int) -> list[tuple[str, tuple[str, ...]]]:
 return [(f"t{i}", ()) for i in range(n)]


def chain(n: int) -> list[tuple[str, tuple[str, ...]]]:
 return [(f"t{i}", (f"t{i - 1}",) if i else ()) for i in range(n)]


def random_dag(n: int) -> list[tuple[str, tuple[str, ...]]]:
 rng = random.Random(n)
 nodes = []
 for i in range(n):
  window = range(max(0, i - 50), i)
  deps = rng.sample(window, k=min(len(window), rng.randrange(4)))
  nodes.append((f"t{i}", tuple(f"t{j}" for j in deps)))
 return nodes


SHAPES: dict[str, Callable[[int], list[tuple[str, tuple[str, ...]]]]] = {
 "wide": wide,
 "chain": chain,
 "random": random_dag,
}


def tickets_of(nodes: Sequence[tuple[str, tuple[str, ...]]], target: str = NOOP) -> list[Ticket]:
 return [Ticket(tid, deps, work=CallWork(target)) for tid, deps in nodes]


def graph_of(nodes: Sequence[tuple[str, tuple[str, ...]]]) -> dict[str, tuple[Any, ...]]:
 """The Dask graph of the same DAG: one task per ticket, taking its dependencies' results
 (all None), so that Dask orders them as conductor does."""
 return {tid: (noop, *deps) for tid, deps in nodes}


# -- a cluster of processes on this machine ----------------------------------------------------


class _Process:
 """A `dask scheduler` or `dask worker` child; its log read by a thread (no pipe ever fills)."""

 def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path) -> None:
  self.proc = subprocess.Popen(
   [sys.executable, "-m", *args],
   stdout=subprocess.PIPE,
   stderr=subprocess.STDOUT,
   stdin=subprocess.DEVNULL,
   text=True,
   env=env,
   cwd=cwd,
   start_new_session=True,
  )
  self._lines: queue.Queue[str | None] = queue.Queue()
  threading.Thread(target=self._read, daemon=True).start()

 def _read(self) -> None:
  assert self.proc.stdout is not None
  with self.proc.stdout:
   for line in self.proc.stdout:
    self._lines.put(line)
  self._lines.put(None)

 def wait_for(self, pattern: str) -> str:
  deadline = time.monotonic() + WAIT
  seen: list[str] = []
  while True:
   try:
    line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
   except queue.Empty:
    raise RuntimeError(f"no {pattern!r} within {WAIT} s: {''.join(seen[-10:])}") from None
   if line is None:
    raise RuntimeError(f"ended before {pattern!r}: {''.join(seen[-10:])}")
   seen.append(line)
   if m := re.search(pattern, line):
    return m.group(1) if m.groups() else line

 def stop(self) -> None:
  with contextlib.suppress(ProcessLookupError):
   self.proc.kill()
  self.proc.wait(WAIT)


@contextlib.contextmanager
def local_processes(workers: int) -> Iterator[str]:
 """A scheduler and `workers` single-threaded workers as processes on 127.0.0.1, without
 nannies (one process per worker, as counted); yields the scheduler's address."""
 env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
 procs: list[_Process] = []
 with tempfile.TemporaryDirectory(prefix="conductor-bench-dask-") as scratch:
  try:
   scheduler = _Process(
    [
     "distributed.cli.dask_scheduler",
     "--host=127.0.0.1",
     "--port=0",
     "--no-dashboard",
     "--dashboard-address=127.0.0.1:0",
    ],
    env,
    Path(scratch),
   )
   procs.append(scheduler)
   address = scheduler.wait_for(r"Scheduler at:\s+(tcp://\S+)")
   for i in range(workers):
    procs.append(
     _Process(
      [
       "distributed.cli.dask_worker",
       address,
       f"--name=w{i}",
       "--nthreads=1",
       "--no-nanny",
       "--host=127.0.0.1",
       "--no-dashboard",
       "--memory-limit=0",
       f"--local-directory={scratch}",
      ],
      env,
      Path(scratch),
     )
    )
   for proc in procs[1:]:
    proc.wait_for(r"(Registered to:)")
   yield address
  finally:
   for proc in reversed(procs):
    proc.stop()


def warm_up(address: str) -> None:
 """Import conductor's remote side and this module on every worker once, so that no timed
 run pays for imports (importing conductor takes a second or more)."""
 with distributed.Client(address, timeout=WAIT) as client:  # type: ignore[no-untyped-call]
  client.run(importlib.import_module, "conductor.dask_executor")
  client.run(importlib.import_module, __name__)


# -- 1. rate -----------------------------------------------------------------------------------


def dask_rate(address: str, nodes: Sequence[tuple[str, tuple[str, ...]]], repeat: int) -> float:
 """Best of `repeat`: tasks per second of Dask's own blocking `client.get` of the DAG."""
 graph = graph_of(nodes)
 keys = list(graph)
 best = float("inf")
 with distributed.Client(address, timeout=WAIT) as client:  # type: ignore[no-untyped-call]
  client.get({"warm": (noop,)}, "warm")
  for _ in range(repeat):
   start = time.perf_counter()
   client.get(graph, keys)
   best = min(best, time.perf_counter() - start)
 return len(nodes) / best


async def futures_rate(
 address: str, nodes: Sequence[tuple[str, tuple[str, ...]]], max_workers: int, repeat: int
) -> float:
 """Best of `repeat`: tasks per second of a hand-written driver of Dask futures, as conductor
 drives them: one `client.submit` per task once its dependencies are done, at most
 `max_workers` at once, each future released once read. No pause, no state: the floor of
 the one-future-per-ticket protocol (asyncio: Dask's asynchronous client)."""
 async with distributed.Client(address, asynchronous=True, timeout=WAIT) as client:  # type: ignore[no-untyped-call]
  best = min([await _futures_once(client, nodes, max_workers, f"r{i}") for i in range(repeat)])
 return len(nodes) / best


async def _futures_once(
 client: Any, nodes: Sequence[tuple[str, tuple[str, ...]]], max_workers: int, tag: str
) -> float:
 sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
 for tid, deps in nodes:
  sorter.add(tid, *deps)
 sorter.prepare()
 slots = asyncio.Semaphore(max_workers)
 wake = asyncio.Event()

 async def one(tid: str) -> None:
  future = client.submit(noop, key=f"bench-{tag}-{tid}-{time.time_ns()}", pure=False)
  try:
   await future
  finally:
   future.release()
  sorter.done(tid)
  slots.release()
  wake.set()

 start = time.perf_counter()
 async with asyncio.TaskGroup() as tg:
  while sorter.is_active():
   ready = sorter.get_ready()
   if not ready:
    await wake.wait()
    wake.clear()  # a set() it hides is harmless: get_ready() sees every done()
    continue
   for tid in ready:
    await slots.acquire()
    tg.create_task(one(tid))
 return time.perf_counter() - start


async def conductor_rate(
 address: str, nodes: Sequence[tuple[str, tuple[str, ...]]], max_workers: int, repeat: int
) -> float:
 """Best of `repeat`: no-op tickets per second through ConductorEngine + DaskExecutor."""
 best = float("inf")
 async with DaskExecutor(address, connect_timeout=WAIT) as executor:
  for _ in range(repeat):
   tickets = tickets_of(nodes)  # fresh: tickets carry run state
   start = time.perf_counter()
   run = ConductorEngine(ExecutionEngine(tickets), executor, max_workers=max_workers)
   final = await run.run()
   best = min(best, time.perf_counter() - start)
   assert final.counts.completed == len(nodes), final.counts
 return len(nodes) / best


# -- 2. resume -> first remote start --------------------------------------------------------


async def dask_submit_latency(address: str, trials: int, gap: float) -> list[int]:
 """Dask's own: `client.submit(stamp)` -> the function starts on a worker, ns, per trial;
 each trial after `gap` seconds of quiet, as in `resume_latency`."""
 samples = []
 async with distributed.Client(address, asynchronous=True, timeout=WAIT) as client:  # type: ignore[no-untyped-call]
  await client.submit(stamp, pure=False)  # warm: the first task pays the connection
  for _ in range(trials):
   await asyncio.sleep(gap)
   start = time.monotonic_ns()
   started = int(await client.submit(stamp, pure=False))
   samples.append(started - start)
 return samples


async def resume_latency(address: str, trials: int, gap: float) -> list[int]:
 """`resume()` -> the parked ticket's function starts on a worker, ns, per trial.

 One worker slot; each attempt pauses the run as it is admitted, so that after it completes
 the next ticket is parked at the gate; `gap` seconds later this task resumes, noting the
 time. The gap matters to Dask: a task submitted 1 ms after the previous one ended starts
 about twice as late as one submitted after 20 ms (measured on the development machine), so
 Dask's own baseline waits the same gap.
 """
 samples: list[int] = []
 async with DaskExecutor(address, connect_timeout=WAIT) as executor:
  tickets = tickets_of(wide(trials + 1), STAMP)
  run: ConductorEngine
  completed = anyio.Event()

  async def pausing(ticket: Ticket) -> WorkResult:
   run.pause()  # admitted already: the next one waits for the resume below
   return await executor(ticket)

  starts: list[int] = []

  def listen(t: Transition) -> None:
   nonlocal completed
   if t.change == Change.COMPLETED:
    assert t.output is not None
    starts.append(int(t.output))
    completed.set()

  run = ConductorEngine(ExecutionEngine(tickets), pausing, max_workers=1)
  run.add_listener(listen)
  async with anyio.create_task_group() as tg:
   tg.start_soon(run.run)
   await completed.wait()  # the first ticket (warm-up) ran; the next is parked
   for _ in range(trials):
    completed = anyio.Event()
    await anyio.sleep(gap)  # the next ticket reaches the gate meanwhile (not timed)
    resumed = time.monotonic_ns()
    run.resume()
    await completed.wait()
    samples.append(starts[-1] - resumed)
 return samples


# -- 3. submissions after pause() ---------------------------------------------------------


async def pause_safety(address: str, trials: int, max_workers: int) -> dict[str, int]:
 """Trials of a foreign thread pausing at random moments while no-op tickets stream; see
 the module docstring. Returns the counts."""
 submitted: list[str] = []  # ticket ids, in the order they were handed to the executor
 finished: set[str] = set()
 changed = threading.Condition()
 result = {"trials": trials, "violations": 0, "late": 0, "submitted": 0}

 async with DaskExecutor(address, connect_timeout=WAIT) as executor:

  async def counting(ticket: Ticket) -> WorkResult:
   # Appended in the same step as the executor counts it (no await in between).
   submitted.append(ticket.id)
   return await executor(ticket)

  def listen(t: Transition) -> None:
   if t.change == Change.COMPLETED and t.ticket is not None:
    with changed:
     finished.add(t.ticket)
     changed.notify_all()

  run = ConductorEngine(
   ExecutionEngine(tickets_of(wide(trials * 50))),
   counting,
   max_workers=max_workers,
   paused=True,
  )
  run.add_listener(listen)

  def drive() -> None:
   rng = random.Random(0)
   for _ in range(trials):
    run.resume()
    time.sleep(rng.uniform(0, 0.005))  # a random moment in the stream
    run.pause()
    mark = len(submitted)  # read right after pause() returned
    at_pause = set(run.running_at_pause)
    with changed:  # until every ticket running at the pause has finished
     if not changed.wait_for(partial(at_pause.issubset, finished), WAIT):
      raise RuntimeError(f"tickets running at the pause never finished: {at_pause - finished}")
    after = submitted[mark:]
    result["violations"] += any(tid not in at_pause for tid in after)
    result["late"] += len(after)
   run.stop()

  switch = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)
  try:
   async with anyio.create_task_group() as tg:
    tg.start_soon(run.run)
    await anyio.to_thread.run_sync(drive)
  finally:
   sys.setswitchinterval(switch)
 result["submitted"] = len(submitted)
 return result


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
 parser = argparse.ArgumentParser(
  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
 )
 parser.add_argument("--sizes", type=int, nargs="+", default=[1000])
 parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (1 thread each)")
 parser.add_argument("--max-workers", type=int, default=16, help="conductor's max_workers")
 parser.add_argument("--repeat", type=int, default=1, help="rate runs per variant (best counts)")
 parser.add_argument("--latency-trials", type=int, default=200)
 parser.add_argument(
  "--gap", type=float, default=0.02, help="seconds of quiet before each latency trial"
 )
 parser.add_argument("--safety-trials", type=int, default=1000)
 parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
 parser.add_argument("--address", help="a running scheduler (default: start one here)")
 parser.add_argument("--json", type=Path, default=default_json_path("dask"))
 args = parser.parse_args(argv)

 with contextlib.ExitStack() as stack:
  address = args.address or stack.enter_context(local_processes(args.workers))
  return measure_all(address, args)


def measure_all(address: str, args: argparse.Namespace) -> int:
 info = machine_info(["distributed", "anyio", "trio"])
 cluster = "given" if args.address else f"{args.workers} worker processes x 1 thread, here"
 print(f"conductor on Dask ({cluster}), max_workers {args.max_workers}\n{machine_line(info)}\n")
 warm_up(address)
 ok = True

 # 1. rate
 rates: list[dict[str, object]] = []
 dask_rates = {
  (shape, n): dask_rate(address, make(n), args.repeat)
  for shape, make in SHAPES.items()
  for n in args.sizes
 }
 futures_rates = {
  (shape, n): asyncio.run(futures_rate(address, make(n), args.max_workers, args.repeat))
  for shape, make in SHAPES.items()
  for n in args.sizes
 }
 rows = []
 for backend in args.backends:
  for shape, make in SHAPES.items():
   for n in args.sizes:
    ours = anyio.run(
     conductor_rate, address, make(n), args.max_workers, args.repeat, backend=backend
    )
    theirs, hand = dask_rates[shape, n], futures_rates[shape, n]
    ratio = ours / theirs
    ok &= ratio >= RATE_TARGET
    rates.append(
     {
      "backend": backend,
      "shape": shape,
      "tickets": n,
      "conductor_per_s": ours,
      "dask_get_per_s": theirs,
      "ratio": ratio,
     }
    )
    rows.append(
     [
      backend,
      shape,
      f"{n:,}",
      f"{ours:,.0f}",
      f"{theirs:,.0f}",
      f"{ratio:.0%}",
      f"{hand:,.0f}",
      f"{ours / hand:.0%}",
     ]
    )
    print(f"  rate {backend} {shape} {n}: {ours:,.0f}/s vs {theirs:,.0f}/s", flush=True)
 rate_table = format_table(
  [
   "backend",
   "shape",
   "tickets",
   "conductor /s",
   "Dask client.get /s",
   "ratio",
   "Dask futures /s",
   "ratio",
  ],
  rows,
  left=2,
 )

 # 2. latency
 theirs_lat = Summary.from_ns(
  asyncio.run(dask_submit_latency(address, args.latency_trials, args.gap))
 )
 latencies: list[dict[str, object]] = []
 rows = [["Dask", "submit -> start", theirs_lat.cell(), ""]]
 for backend in args.backends:
  ours_lat = Summary.from_ns(
   anyio.run(resume_latency, address, args.latency_trials, args.gap, backend=backend)
  )
  ratio50, ratio99 = ours_lat.p50_us / theirs_lat.p50_us, ours_lat.p99_us / theirs_lat.p99_us
  ok &= ratio50 <= LATENCY_TARGET and ratio99 <= LATENCY_TARGET
  latencies.append(
   {
    "backend": backend,
    "conductor_us": ours_lat.as_dict(),
    "dask_submit_us": theirs_lat.as_dict(),
    "ratio_p50": ratio50,
    "ratio_p99": ratio99,
   }
  )
  rows.append(
   [
    f"conductor, {backend}",
    "resume -> first remote start",
    ours_lat.cell(),
    f"{ratio50:.2f}x / {ratio99:.2f}x",
   ]
  )
  print(f"  latency {backend}: {ours_lat.cell()} us", flush=True)
 latency_table = format_table(
  ["who", "what", "µs p50 / p99 / max", "vs Dask p50 / p99"], rows, left=2
 )

 # 3. pause safety
 safety: list[dict[str, object]] = []
 rows = []
 for backend in args.backends:
  counts = anyio.run(pause_safety, address, args.safety_trials, args.max_workers, backend=backend)
  ok &= counts["violations"] == 0
  safety.append({"backend": backend, **counts})
  rows.append(
   [
    backend,
    f"{counts['violations']} of {counts['trials']:,}",
    f"{counts['late']:,}",
    f"{counts['submitted']:,}",
   ]
  )
  print(f"  safety {backend}: {counts}", flush=True)
 safety_table = format_table(
  [
   "backend",
   "submissions after pause() (not running at it)",
   "late (running at it)",
   "tickets submitted",
  ],
  rows,
 )

 print(f"\nno-op tickets, conductor vs Dask's own client.get (target >= {RATE_TARGET:.0%}):\n")
 print(rate_table)
 print(f"\nresume -> first remote start vs Dask's submit -> start (target <= {LATENCY_TARGET}x):\n")
 print(latency_table)
 print("\nsubmissions to the cluster after pause() returned (target 0):\n")
 print(safety_table)
 print(f"\ntargets: {'PASS' if ok else 'FAIL'}")
 write_json(
  args.json,
  {
   "machine": info,
   "cluster": cluster,
   "max_workers": args.max_workers,
   "rate": rates,
   "latency": latencies,
   "pause_safety": safety,
   "targets_met": ok,
  },
 )
 print(f"wrote {args.json}")
 return 0 if ok else 1


if __name__ == "__main__":
 # Run the copy imported by its name: the workers import `benchmarks.dask` (the call targets),
 # and Dask's tasks must be the same functions, not those of `__main__`.
 sys.exit(importlib.import_module("benchmarks.dask").main())
