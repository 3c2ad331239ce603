"""No-op tickets per second through ConductorEngine, next to the floor and hand loops.

Four ways to run N no-op units of work with at most W at once, on asyncio and trio:

- raw:      the floor. An anyio task group and a Semaphore(W): take a slot, `start_soon` a
            no-op task that frees it. No DAG, no pause, no bookkeeping.
- graphlib: a hand-written DAG loop: `graphlib.TopologicalSorter` + the same semaphore and
            task group, woken by completions.
- hand:     the same DAG loop written for the backend alone, no anyio: on asyncio a
            `TaskGroup` + `asyncio.Semaphore` + `graphlib` with `create_task` per ticket; on
            trio a nursery + `trio.Semaphore` + `graphlib` with `start_soon` per ticket.
- conductor: `ExecutionEngine` + `ConductorEngine` (pausable scheduler, snapshots, status
            bookkeeping). Validation of the DAG is included in its time.
- dask:     Dask's threaded scheduler (`dask.threaded.get`, `num_workers` = W) on the same
            DAG as a Dask graph of no-op tasks, building the graph included; shown when dask
            is installed (the `dask` extra). It runs no event loop, so it is measured once
            per shape and size and shown on both backends' rows.

DAG shapes: wide (no edges), chain (each ticket depends on the previous one), random (each
ticket depends on up to 3 of the 50 tickets before it) and issue, the shape issue #13 was
measured on: 20,000 tickets, ticket i depends on ticket i-100, 16 workers (its own size
and workers, whatever `--sizes` and `--workers` say).

    python benchmarks/throughput.py [--sizes 1000 10000 100000] [--workers 8] [--shapes ...]
                                    [--no-gc] [--cpu] [--no-dask] [--json PATH]

`--cpu` times each run in this process's CPU time (`time.process_time`) instead of wall time:
less sensitive to the other load of a shared machine (a run is one thread's work, and waits
for nothing), for the 10x growth, whose wall-clock figure moves by more than its target here.

`--no-gc` turns CPython's cyclic garbage collector off while each run is timed: the gap to a
normal run is what the collector costs at each size.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import graphlib
import json
import os
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import trio

from conductor.dag_engine import ExecutionEngine, Ticket
from conductor.multi_agent_conductor import ConductorEngine

Shape = Callable[[int], list[Ticket]]


def wide(n: int) -> list[Ticket]:
 return [Ticket(f"t{i}") for i in range(n)]


def chain(n: int) -> list[Ticket]:
 return [Ticket(f"t{i}", (f"t{i - 1}",) if i else ()) for i in range(n)]


def random_dag(n: int) -> list[Ticket]:
 rng = random.Random(n)
 tickets = []
 for i in range(n):
  window = range(max(0, i - 50), i)
  deps = rng.sample(window, k=min(len(window), rng.randrange(4)))
  tickets.append(Ticket(f"t{i}", tuple(f"t{j}" for j in deps)))
 return tickets


def lag100(n: int) -> list[Ticket]:
 return [Ticket(f"t{i}", (f"t{i - 100}",) if i >= 100 else ()) for i in range(n)]


SHAPES: dict[str, Shape] = {"wide": wide, "chain": chain, "random": random_dag, "issue": lag100}
FIXED: dict[str, tuple[int, int]] = {"issue": (20_000, 16)}
"""Shapes measured at their own (tickets, workers) only."""


async def raw(tickets: list[Ticket], workers: int) -> None:
 slots = anyio.Semaphore(workers, fast_acquire=True)

 async def noop() -> None:
  slots.release()

 async with anyio.create_task_group() as tg:
  for _ in tickets:
   await slots.acquire()
   tg.start_soon(noop)


def _sorter(tickets: list[Ticket]) -> graphlib.TopologicalSorter[str]:
 sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
 for t in tickets:
  sorter.add(t.id, *t.depends_on)
 sorter.prepare()
 return sorter


async def with_graphlib(tickets: list[Ticket], workers: int) -> None:
 sorter = _sorter(tickets)
 slots = anyio.Semaphore(workers, fast_acquire=True)
 wake = anyio.Event()

 async def work(node: str) -> None:
  nonlocal wake
  sorter.done(node)
  slots.release()
  wake.set()

 async with anyio.create_task_group() as tg:
  while sorter.is_active():
   ready = sorter.get_ready()
   if not ready:
    await wake.wait()
    wake = anyio.Event()
    continue
   for node in ready:
    await slots.acquire()
    tg.start_soon(work, node)


async def hand_asyncio(tickets: list[Ticket], workers: int) -> None:
 sorter = _sorter(tickets)
 slots = asyncio.Semaphore(workers)
 wake = asyncio.Event()

 async def work(node: str) -> None:
  sorter.done(node)
  slots.release()
  wake.set()

 async with asyncio.TaskGroup() as tg:
  while sorter.is_active():
   ready = sorter.get_ready()
   if not ready:
    await wake.wait()
    wake.clear()  # a set() it hides is harmless: get_ready() sees every done()
    continue
   for node in ready:
    await slots.acquire()
    tg.create_task(work(node))


async def hand_trio(tickets: list[Ticket], workers: int) -> None:
 sorter = _sorter(tickets)
 slots = trio.Semaphore(workers)
 wake = trio.Event()

 async def work(node: str) -> None:
  sorter.done(node)
  slots.release()
  wake.set()

 async with trio.open_nursery() as nursery:
  while sorter.is_active():
   ready = sorter.get_ready()
   if not ready:
    await wake.wait()
    wake = trio.Event()
    continue
   for node in ready:
    await slots.acquire()
    nursery.start_soon(work, node)


async def hand(tickets: list[Ticket], workers: int) -> None:
 try:
  asyncio.get_running_loop()
 except RuntimeError:  # not asyncio: anyio runs us on trio
  await hand_trio(tickets, workers)
 else:
  await hand_asyncio(tickets, workers)


async def with_conductor(tickets: list[Ticket], workers: int) -> None:
 async def noop(ticket: Ticket) -> None:
  pass

 snap = await ConductorEngine(ExecutionEngine(tickets), noop, max_workers=workers).run()
 assert snap.counts.completed == len(tickets), snap.counts


VARIANTS: dict[str, Callable[[list[Ticket], int], Awaitable[None]]] = {
 "raw": raw,
 "graphlib": with_graphlib,
 "hand": hand,
 "conductor": with_conductor,
}


def _dask_noop(*deps: object) -> None:
 pass


Clock = Callable[[], float]


def with_dask(tickets: list[Ticket], workers: int, clock: Clock = time.perf_counter) -> float:
 """Seconds for Dask's threaded scheduler to run the DAG, building its graph included."""
 threaded = _dask_threaded()
 assert threaded is not None
 start = clock()
 graph = {t.id: (_dask_noop, *t.depends_on) for t in tickets}
 threaded.get(graph, list(graph), num_workers=workers)
 return clock() - start


def _dask_threaded() -> ModuleType | None:
 # Run as a script, this folder comes first on sys.path, where benchmarks/dask.py would hide
 # the real package: import it without that entry.
 here = os.path.dirname(os.path.abspath(__file__))
 saved = sys.path[:]
 sys.path[:] = [p for p in saved if os.path.abspath(p or os.curdir) != here]
 try:
  import dask.threaded
 except ImportError:
  return None
 finally:
  sys.path[:] = saved
 return dask.threaded


async def _timed(
 fn: Callable[[list[Ticket], int], Awaitable[None]],
 tickets: list[Ticket],
 workers: int,
 clock: Clock,
) -> float:
 start = clock()
 await fn(tickets, workers)
 return clock() - start


def measure(
 variant: str,
 shape: str,
 n: int,
 *,
 workers: int,
 backend: str,
 repeat: int,
 no_gc: bool = False,
 clock: Clock = time.perf_counter,
) -> float:
 """Best of `repeat` times (wall, or `clock`'s), in seconds, for one run of `n` tickets."""
 best = float("inf")
 for _ in range(repeat):
  tickets = SHAPES[shape](n)  # fresh tickets each time: they carry run state
  if no_gc:
   gc.disable()
  try:
   if variant == "dask":
    best = min(best, with_dask(tickets, workers, clock))
   else:
    timed = anyio.run(_timed, VARIANTS[variant], tickets, workers, clock, backend=backend)
    best = min(best, timed)
  finally:
   gc.enable()
 return best


def main(argv: list[str] | None = None) -> int:
 parser = argparse.ArgumentParser(
  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
 )
 parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
 parser.add_argument("--workers", type=int, default=8)
 parser.add_argument("--no-gc", action="store_true", help="cyclic GC off while timing")
 parser.add_argument("--cpu", action="store_true", help="time in CPU time, not wall time")
 parser.add_argument("--repeat", type=int, default=3)
 parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
 parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
 parser.add_argument("--no-dask", action="store_true", help="leave Dask's row out")
 parser.add_argument(
  "--json", type=Path, default=Path(__file__).parent / "results" / "throughput.json"
 )
 args = parser.parse_args(argv)

 machine = f"{platform.machine()} · {os.cpu_count()} cores · Python {platform.python_version()} · {platform.system()}"
 gc_note = " · cyclic GC off" if args.no_gc else ""
 gc_note += " · CPU time" if args.cpu else ""
 print(
  f"throughput of no-op tickets, {args.workers} workers, best of {args.repeat}{gc_note} · "
  f"{machine}\n"
 )
 dask = not args.no_dask and _dask_threaded() is not None
 header = f"{'backend':8} {'shape':7} {'tickets':>8} {'raw/s':>10} {'graphlib/s':>11} {'hand/s':>9} {'conductor/s':>12} {'vs raw':>7} {'vs hand':>8} {'growth':>7}"
 if dask:
  header += f" {'dask/s':>9} {'vs dask':>8}"
 print(header)
 print("-" * len(header))
 results = []
 ok = True
 dask_times: dict[tuple[str, int, int], float] = {}  # no event loop: the same on every backend
 for backend in args.backends:
  for shape in args.shapes:
   previous: float | None = None
   sizes, workers = (
    ([FIXED[shape][0]], FIXED[shape][1]) if shape in FIXED else (args.sizes, args.workers)
   )
   how: dict[str, Any] = {
    "backend": backend,
    "workers": workers,
    "repeat": args.repeat,
    "no_gc": args.no_gc,
    "clock": time.process_time if args.cpu else time.perf_counter,
   }
   for n in sizes:
    times = {v: measure(v, shape, n, **how) for v in VARIANTS}
    if dask:
     key = (shape, n, workers)
     if key not in dask_times:
      dask_times[key] = measure("dask", shape, n, **how)
     times["dask"] = dask_times[key]
    rates = {v: n / t for v, t in times.items()}
    ratio = rates["conductor"] / rates["raw"]
    to_hand = rates["conductor"] / rates["hand"]
    to_dask = rates["conductor"] / rates["dask"] if dask else None
    growth = times["conductor"] / previous if previous else None
    previous = times["conductor"]
    ok &= ratio >= 0.5 and (growth is None or growth <= 11) and (to_dask is None or to_dask >= 2)
    results.append(
     {
      "backend": backend,
      "shape": shape,
      "tickets": n,
      "workers": workers,
      "seconds": times,
      "per_second": rates,
      "ratio_to_raw": ratio,
      "ratio_to_hand": to_hand,
      "ratio_to_dask": to_dask,
      "growth_10x": growth,
     }
    )
    line = (
     f"{backend:8} {shape:7} {n:>8} {rates['raw']:>10,.0f} {rates['graphlib']:>11,.0f} "
     f"{rates['hand']:>9,.0f} {rates['conductor']:>12,.0f} {ratio:>6.0%} {to_hand:>7.0%} {'' if growth is None else f'{growth:.1f}x':>7}"
    )
    if to_dask is not None:
     line += f" {rates['dask']:>9,.0f} {to_dask:>7.1f}x"
    print(line, flush=True)
 dask_target = "; conductor >= 2x Dask's threaded scheduler" if dask else ""
 print(
  f"\ntargets: conductor >= 50% of raw; 10x tickets -> <= 11x time{dask_target}: "
  f"{'PASS' if ok else 'FAIL'}"
 )
 args.json.parent.mkdir(parents=True, exist_ok=True)
 args.json.write_text(
  json.dumps(
   {
    "machine": machine,
    "workers": args.workers,
    "repeat": args.repeat,
    "gc": not args.no_gc,
    "clock": "cpu" if args.cpu else "wall",
    "results": results,
    "targets_met": ok,
   },
   indent=1,
  )
 )
 print(f"wrote {args.json}")
 return 0


if __name__ == "__main__":
 sys.exit(main())
