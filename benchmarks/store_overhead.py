"""What durability costs: no-op tickets per second with the SQLite state store and without,
and how fast a pause from another process takes effect.

1. Ticket rate, on asyncio and trio: the same DAG of no-op tickets through ConductorEngine,
   - memory: no store at all (the engine's own in-memory state);
   - store:  the state opened as `conductor run` opens it (`session.open_run`), its store
             attached (every transition recorded; a worker runs only once its start and
             its dependencies' completion are committed; WAL, synchronous=NORMAL);
             the state file is on the same disk as the repo;
   - store FULL: the same with synchronous=FULL (an fsync per commit: power-loss safe).
   Shapes: wide (no edges: one commit per round of workers) and chain (each ticket waits
   for the previous one: the worst case, one commit per ticket). Setup (creating the
   state, recording the tickets) is timed apart from the run. Target: store >= 50% of the
   memory rate, on both shapes.

2. Cross-process pause: a real `conductor run` (a subprocess) of many short tickets; this
   process calls `conductor.control.request(state, "pause")` at random moments (what
   `conductor pause` does) and notes when it returned; afterwards the run's history shows
   whether any worker started after that. Reports the starts after a pause returned (the
   target: none, i.e. the run stops starting workers within 50 ms, in fact at once) and the
   pause round trip.

    python benchmarks/store_overhead.py [--tickets 10000] [--workers 8] [--trials 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from benchmarks._common import (
 Summary,
 default_json_path,
 format_table,
 machine_info,
 machine_line,
 write_json,
)
from conductor.control import request
from conductor.dag_engine import ExecutionEngine, Ticket
from conductor.multi_agent_conductor import ConductorEngine
from conductor.pipeline import Pipeline
from conductor.session import open_run
from conductor.store import StateStore

Shape = Callable[[int], list[Ticket]]


def wide(n: int) -> list[Ticket]:
 return [Ticket(f"t{i}") for i in range(n)]


def chain(n: int) -> list[Ticket]:
 return [Ticket(f"t{i}", (f"t{i - 1}",) if i else ()) for i in range(n)]


SHAPES: dict[str, Shape] = {"wide": wide, "chain": chain}


async def _noop(ticket: Ticket) -> None:
 pass


async def run_memory(tickets: list[Ticket], workers: int) -> tuple[float, float]:
 start = time.perf_counter()
 snap = await ConductorEngine(ExecutionEngine(tickets), _noop, max_workers=workers).run()
 assert snap.counts.completed == len(tickets), snap.counts
 return 0.0, time.perf_counter() - start


async def run_store(
 tickets: list[Ticket], workers: int, folder: Path, synchronous: str
) -> tuple[float, float]:
 # Opened as `conductor run` opens a state (session.open_run: claimed, checked, restored).
 path = folder / f"bench-{synchronous.lower()}-{time.perf_counter_ns()}.state.db"
 begin = time.perf_counter()
 pipeline = Pipeline("bench", None, workers, True, tuple(tickets))
 durable = open_run(path, pipeline, synchronous=synchronous)
 setup = time.perf_counter() - begin
 try:
  start = time.perf_counter()
  conductor = durable.conductor(workers, worker=_noop)
  snap = await conductor.run()
  durable.store.commit()
  elapsed = time.perf_counter() - start
 finally:
  durable.close()
 assert snap.counts.completed == len(tickets), snap.counts
 with StateStore.open(path, create=False) as check:  # really on disk
  assert sum(row.status == "completed" for row in check.tickets()) == len(tickets)
 return setup, elapsed


def measure_rates(args: argparse.Namespace, folder: Path) -> list[dict[str, object]]:
 results: list[dict[str, object]] = []
 for backend in args.backends:
  for shape, make in SHAPES.items():
   best: dict[str, tuple[float, float]] = {}
   for _ in range(args.repeat):
    for variant in ("memory", "store", "store FULL"):
     n = args.tickets if variant != "store FULL" else min(args.tickets, args.full_tickets)
     tickets = make(n)
     if variant == "memory":
      setup, elapsed = anyio.run(run_memory, tickets, args.workers, backend=backend)
     else:
      sync = "FULL" if variant == "store FULL" else "NORMAL"
      setup, elapsed = anyio.run(run_store, tickets, args.workers, folder, sync, backend=backend)
     rate = n / elapsed
     if variant not in best or rate > n / best[variant][1]:
      best[variant] = (setup, elapsed)
   for variant, (setup, elapsed) in best.items():
    n = args.tickets if variant != "store FULL" else min(args.tickets, args.full_tickets)
    results.append(
     {
      "backend": backend,
      "shape": shape,
      "variant": variant,
      "tickets": n,
      "setup_s": setup,
      "run_s": elapsed,
      "per_second": n / elapsed,
     }
    )
 return results


# -- cross-process pause ----------------------------------------------------------------------

PIPELINE_HEAD = """
[pipeline]
name = "pausebench"
max_workers = 4
"""


def measure_pause(args: argparse.Namespace, folder: Path) -> dict[str, object]:
 pipeline = folder / "pausebench.toml"
 n = 20_000
 pipeline.write_text(
  PIPELINE_HEAD + "".join(f'[[tickets]]\nid = "t{i}"\nsleep = 0.002\n' for i in range(n))
 )
 state = folder / "pausebench.state.db"
 env = {**os.environ, "PYTHONUNBUFFERED": "1"}
 child = subprocess.Popen(
  [sys.executable, "-m", "conductor", "run", str(pipeline), "--state", str(state), "--fresh"],
  stdout=subprocess.PIPE,
  stderr=subprocess.STDOUT,
  text=True,
  env=env,
 )
 stdout = child.stdout
 assert stdout is not None
 listening = threading.Event()

 def drain() -> None:
  # Read the run's output to the end, or its pipe fills and the run blocks on print().
  for line in stdout:
   if line.startswith("control it from another terminal"):  # its control socket listens
    listening.set()

 threading.Thread(target=drain, daemon=True).start()
 if not listening.wait(60):
  child.kill()
  raise RuntimeError("the run did not start")
 rng = random.Random(4)
 windows: list[tuple[float, float, float]] = []  # (asked, returned, resumed_at)
 round_trips: list[int] = []
 try:
  for _ in range(args.trials):
   # Let it run a random while: the pause lands at an arbitrary point of the admissions.
   # (A wait here is the benchmark choosing a moment, not a synchronisation.)
   time.sleep(rng.uniform(0.02, 0.12))
   asked_ns = time.perf_counter_ns()
   asked = time.time()
   request(state, "pause", reason="bench")
   returned = time.time()
   round_trips.append(time.perf_counter_ns() - asked_ns)
   time.sleep(0.05)  # paused long enough that a late start would show up
   resumed_at = time.time()
   request(state, "resume")
   windows.append((asked, returned, resumed_at))
  history = request(state, "status", history=True)["report"]["history"]
 finally:
  child.kill()
  child.wait()
 starts = sorted(h["at"] for h in history if h["status"] == "in_progress")
 late: list[float] = []  # seconds after a pause returned, for starts inside a pause window
 lead: list[float] = []  # how long before the pause returned the last start happened
 for _asked, returned, resumed_at in windows:
  late.extend(at - returned for at in starts if returned < at < resumed_at)
  before = [at for at in starts if at <= returned]
  if before:
   lead.append(returned - before[-1])
 return {
  "trials": args.trials,
  "tickets_started": len(starts),
  "starts_after_pause_returned": len(late),
  "max_start_after_pause_returned_ms": max(late) * 1000 if late else None,
  "last_start_before_return_ms": Summary.from_ns(int(x * 1e9) for x in lead).as_dict()
  if lead
  else None,
  "pause_round_trip": Summary.from_ns(round_trips).as_dict(),
 }


def main(argv: list[str] | None = None) -> int:
 parser = argparse.ArgumentParser(
  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
 )
 parser.add_argument("--tickets", type=int, default=10_000)
 parser.add_argument("--full-tickets", type=int, default=1_000, help="tickets for the FULL rows")
 parser.add_argument("--workers", type=int, default=8)
 parser.add_argument("--repeat", type=int, default=3)
 parser.add_argument("--trials", type=int, default=20, help="cross-process pause trials")
 parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
 parser.add_argument("--json", type=Path, default=default_json_path("store_overhead"))
 args = parser.parse_args(argv)
 info = machine_info(["anyio", "trio"])
 print(f"store overhead · {machine_line(info)} · SQLite {__import__('sqlite3').sqlite_version}")
 here = Path(__file__).resolve().parent
 with tempfile.TemporaryDirectory(prefix="store-bench-", dir=here) as tmp:
  folder = Path(tmp)
  rates = measure_rates(args, folder)
  pause = measure_pause(args, folder)

 rows = []
 ok = True
 for backend in args.backends:
  for shape in SHAPES:
   by = {r["variant"]: r for r in rates if r["backend"] == backend and r["shape"] == shape}
   memory = float(by["memory"]["per_second"])  # type: ignore[arg-type]
   for variant in ("memory", "store", "store FULL"):
    r = by[variant]
    rate = float(r["per_second"])  # type: ignore[arg-type]
    ratio = rate / memory
    r["ratio_to_memory"] = ratio
    if variant == "store":  # the default store, on both shapes
     ok &= ratio >= 0.5
    rows.append(
     [
      backend,
      shape,
      variant,
      f"{r['tickets']:,}",
      f"{rate:,.0f}",
      f"{ratio:.0%}",
      f"{float(r['setup_s']) * 1000:,.0f}",  # type: ignore[arg-type]
     ]
    )
 print()
 print(
  format_table(
   ["backend", "shape", "variant", "tickets", "tickets/s", "vs memory", "setup ms"], rows, left=3
  )
 )
 rt = pause["pause_round_trip"]
 assert isinstance(rt, dict)
 late = pause["starts_after_pause_returned"]
 print(
  f"\ncross-process pause, {pause['trials']} trials on a live `conductor run` "
  f"(4 workers, 2 ms tickets, {pause['tickets_started']} started):"
 )
 worst = pause["max_start_after_pause_returned_ms"]
 after = f"the latest {worst:.1f} ms after it" if late else "none: the gate closed before the reply"
 print(f" worker starts after `pause` returned: {late} ({after})")
 print(
  f" pause round trip (request -> acknowledged, gate closed, flag durable): "
  f"p50 {rt['p50_us'] / 1000:.2f} ms, max {rt['max_us'] / 1000:.2f} ms"
 )
 ok &= late == 0
 print(
  f"\ntargets: store >= 50% of the memory rate (wide and chain); no start after pause returned: "
  f"{'PASS' if ok else 'FAIL'}"
 )
 write_json(
  args.json,
  {
   "machine": info,
   "workers": args.workers,
   "repeat": args.repeat,
   "rates": rates,
   "cross_process_pause": pause,
   "targets_met": ok,
  },
 )
 print(
  f"wrote {args.json.relative_to(Path.cwd()) if args.json.is_relative_to(Path.cwd()) else args.json}"
 )
 return 0 if ok else 1


if __name__ == "__main__":
 sys.exit(main())
