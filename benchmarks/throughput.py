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

DAG shapes: wide (no edges), chain (each ticket depends on the previous one) and random
(each ticket depends on up to 3 of the 50 tickets before it).

    python benchmarks/throughput.py [--sizes 1000 10000 100000] [--workers 8] [--no-gc] [--json PATH]

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


SHAPES: dict[str, Shape] = {"wide": wide, "chain": chain, "random": random_dag}


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


async def _timed(
 fn: Callable[[list[Ticket], int], Awaitable[None]], tickets: list[Ticket], workers: int
) -> float:
 start = time.perf_counter()
 await fn(tickets, workers)
 return time.perf_counter() - start


def measure(
 variant: str, shape: str, n: int, *, workers: int, backend: str, repeat: int, no_gc: bool = False
) -> float:
 """Best of `repeat` wall times, in seconds, for one run of `n` tickets."""
 best = float("inf")
 for _ in range(repeat):
  tickets = SHAPES[shape](n)  # fresh tickets each time: they carry run state
  if no_gc:
   gc.disable()
  try:
   best = min(best, anyio.run(_timed, VARIANTS[variant], tickets, workers, backend=backend))
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
 parser.add_argument("--repeat", type=int, default=3)
 parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
 parser.add_argument(
  "--json", type=Path, default=Path(__file__).parent / "results" / "throughput.json"
 )
 args = parser.parse_args(argv)

 machine = f"{platform.machine()} · {os.cpu_count()} cores · Python {platform.python_version()} · {platform.system()}"
 gc_note = " · cyclic GC off" if args.no_gc else ""
 print(
  f"throughput of no-op tickets, {args.workers} workers, best of {args.repeat}{gc_note} · "
  f"{machine}\n"
 )
 header = f"{'backend':8} {'shape':7} {'tickets':>8} {'raw/s':>10} {'graphlib/s':>11} {'hand/s':>9} {'conductor/s':>12} {'vs raw':>7} {'vs hand':>8} {'growth':>7}"
 print(header)
 print("-" * len(header))
 results = []
 ok = True
 for backend in args.backends:
  for shape in SHAPES:
   previous: float | None = None
   for n in args.sizes:
    times = {
     v: measure(
      v, shape, n, workers=args.workers, backend=backend, repeat=args.repeat, no_gc=args.no_gc
     )
     for v in VARIANTS
    }
    rates = {v: n / t for v, t in times.items()}
    ratio = rates["conductor"] / rates["raw"]
    to_hand = rates["conductor"] / rates["hand"]
    growth = times["conductor"] / previous if previous else None
    previous = times["conductor"]
    ok &= ratio >= 0.5 and (growth is None or growth <= 11)
    results.append(
     {
      "backend": backend,
      "shape": shape,
      "tickets": n,
      "seconds": times,
      "per_second": rates,
      "ratio_to_raw": ratio,
      "ratio_to_hand": to_hand,
      "growth_10x": growth,
     }
    )
    print(
     f"{backend:8} {shape:7} {n:>8} {rates['raw']:>10,.0f} {rates['graphlib']:>11,.0f} "
     f"{rates['hand']:>9,.0f} {rates['conductor']:>12,.0f} {ratio:>6.0%} {to_hand:>7.0%} {'' if growth is None else f'{growth:.1f}x':>7}",
     flush=True,
    )
 print(
  f"\ntargets: conductor >= 50% of raw; 10x tickets -> <= 11x time: {'PASS' if ok else 'FAIL'}"
 )
 args.json.parent.mkdir(parents=True, exist_ok=True)
 args.json.write_text(
  json.dumps(
   {
    "machine": machine,
    "workers": args.workers,
    "repeat": args.repeat,
    "gc": not args.no_gc,
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
