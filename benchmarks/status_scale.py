"""What `conductor status` costs a live run at scale: the answer's latency, and the run's loop.

A run of `--tickets` sleeping tickets (task i depends on task i-100, `--workers` at once, so
it lasts) is opened as `conductor run` opens a state (`session.open_run`) and driven with its
control socket, in this process. Beside it, on the run's own loop, a probe sleeps 1 ms over
and over and notes how late it wakes up: that lateness is how long something held the loop.
Once the run is under way, a client process (another interpreter, as `conductor status`
would be) asks for the status many times in a row, each mode in turn:

- `json`: `--calls` times, the full report `conductor status --json` prints (every ticket),
  as that command gets it (`control.status_json`, written to /dev/null; a tree without it:
  `request`, the report parsed);
- `summary`: `--summary-calls` times, what plain `conductor status` asks for (counts and
  the notable tickets), when the tree has it (`request(..., summary=True)`).

Reported per mode: the request's round trip (median and best, in ms: connect, answer,
transfer, and for `summary` (and `json` of a tree without `status_json`) parse); the probe's p99 and worst lateness while those calls ran (the client's
start-up left out), next to its lateness with no status call at all; the run's peak RSS
after them; on asyncio, the CPU time of the longest loop step (callback or task step),
which the machine's other load does not inflate. Targets (issue #13): answered in at most 50 ms, the loop held at most 5 ms.
The machine's other load shows in the probe too: compare with the "no status call" row.

    python benchmarks/status_scale.py [--tickets 100000] [--workers 8] [--calls 10]
        [--summary-calls 100] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from benchmarks._common import (
 default_json_path,
 format_table,
 machine_info,
 machine_line,
 write_json,
)
from conductor.control import request
from conductor.dag_engine import Ticket
from conductor.pipeline import Pipeline
from conductor.session import open_run

# `json` gets what `conductor status --json` prints: `status_json` where the tree has it (the
# run's bytes as they are), else `request` (the report parsed; the command then encoded it
# again, not counted here).
_CLIENT = """
import json, os, sys, time
from pathlib import Path
from conductor import control
state, mode, calls = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
raw = mode == "json" and hasattr(control, "status_json")
kwargs = {"summary": True} if mode == "summary" else {}
out = open(os.devnull, "wb")
print("ready", flush=True)
sys.stdin.readline()  # go: the interpreter's start-up is not part of the measurement
times = []
for _ in range(calls):
 start = time.perf_counter()
 if raw:
  out.write(control.status_json(state))
 else:
  answer = control.request(state, "status", **kwargs)
 times.append(time.perf_counter() - start)
report = json.loads(control.status_json(state)) if raw else answer["report"]
print(json.dumps({"times": times, "tickets": len(report["tickets"])}))
"""

_PROBE = 0.001  # the probe's sleep, in seconds


async def _sleepy(ticket: Ticket) -> None:
 await anyio.sleep(0.05)


class _Probe:
 """Wakes up every `_PROBE` seconds on the run's loop and keeps how late it woke; notes
 the garbage collector's pauses too, which hold the loop as much as any code does."""

 def __init__(self) -> None:
  self.late: list[float] = []
  self.gc: list[float] = []
  self.gc_pauses: list[float] = []  # of the last window
  self._gc_start = 0.0
  gc.callbacks.append(self._collect)

 def _collect(self, phase: str, info: dict[str, int]) -> None:
  if phase == "start":
   self._gc_start = time.perf_counter()
  else:
   self.gc.append(time.perf_counter() - self._gc_start)

 async def run(self) -> None:
  while True:
   start = time.perf_counter()
   await anyio.sleep(_PROBE)
   self.late.append(time.perf_counter() - start - _PROBE)

 def window(self) -> list[float]:
  late, self.late = self.late, []
  self.gc_pauses, self.gc = self.gc, []
  return late


class _StepTimes:
 """asyncio only: the CPU time of each loop step (a callback, a task step), by wrapping
 `asyncio.Handle._run`. Unlike the probe's lateness, the machine's other load does not
 show in it: it is how long our own code held the loop."""

 def __init__(self) -> None:
  self.longest = 0.0
  original = asyncio.Handle._run
  steps = self

  def timed(handle: asyncio.Handle) -> None:
   start = time.thread_time()
   try:
    original(handle)
   finally:
    steps.longest = max(steps.longest, time.thread_time() - start)

  asyncio.Handle._run = timed  # type: ignore[method-assign, assignment]

 def window(self) -> float:
  longest, self.longest = self.longest, 0.0
  return longest


def _p99(values: list[float]) -> float:
 ordered = sorted(values)
 return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


async def _measure(args: argparse.Namespace, folder: Path) -> list[dict[str, object]]:
 n = args.tickets
 tickets = tuple(
  Ticket(f"t{i:06d}", (f"t{i - 100:06d}",) if i >= 100 else (), f"ticket {i}") for i in range(n)
 )
 state = folder / "status.state"
 durable = open_run(state, Pipeline("status-scale", None, args.workers, True, tickets))
 modes = ["json"]
 if "summary" in inspect.signature(request).parameters:
  modes.append("summary")
 results: list[dict[str, object]] = []
 env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
 try:
  conductor = durable.conductor(args.workers, worker=_sleepy)
  if args.gc_freeze:  # what is loaded now lives as long as the run: the collector skips it
   gc.freeze()
  probe = _Probe()
  steps = _StepTimes() if args.backend == "asyncio" else None

  async def body() -> None:
   async with anyio.create_task_group() as tg:
    tg.start_soon(probe.run)

    async def client() -> None:
     await anyio.sleep(1.0)  # under way: workers running, the rows partly built
     probe.window()
     if steps is not None:
      steps.window()
     await anyio.sleep(1.0)
     idle = probe.window()
     longest = steps.window() if steps is not None else None
     results.append(
      _row("no status call", [], late=idle, listed=n, gc_pauses=probe.gc_pauses, longest=longest)
     )
     for mode in modes:
      calls = args.calls if mode == "json" else args.summary_calls
      command = [sys.executable, "-c", _CLIENT, str(state), mode, str(calls)]
      async with await anyio.open_process(command, env=env) as proc:
       assert proc.stdin is not None and proc.stdout is not None
       lines = BufferedByteReceiveStream(proc.stdout)
       await lines.receive_until(b"\n", 100)  # ready
       probe.window()
       if steps is not None:
        steps.window()
       await proc.stdin.send(b"go\n")
       out = json.loads(await lines.receive_until(b"\n", 1 << 20))
       late = probe.window()
       longest = steps.window() if steps is not None else None
      results.append(
       _row(
        mode,
        out["times"],
        late=late,
        listed=out["tickets"],
        gc_pauses=probe.gc_pauses,
        longest=longest,
       )
      )
     conductor.cancel()

    tg.start_soon(client)
    await conductor.run()
    tg.cancel_scope.cancel()

  await durable.drive(conductor, body)
 finally:
  durable.close()
 return results


def _row(
 mode: str,
 times: list[float],
 *,
 late: list[float],
 listed: int,
 gc_pauses: list[float],
 longest: float | None,
) -> dict[str, object]:
 return {
  "mode": mode,
  "tickets_listed": listed,
  "median_ms": statistics.median(times) * 1e3 if times else None,
  "best_ms": min(times) * 1e3 if times else None,
  "loop_late_max_ms": max(late) * 1e3 if late else 0.0,
  "loop_late_p99_ms": _p99(late) * 1e3,
  "probes": len(late),
  "gc_max_ms": max(gc_pauses) * 1e3 if gc_pauses else 0.0,
  "longest_step_cpu_ms": None if longest is None else longest * 1e3,
  # This process is the run: its peak resident memory so far (Linux: KiB).
  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
 }


def main() -> None:
 parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
 parser.add_argument("--tickets", type=int, default=100_000)
 parser.add_argument("--workers", type=int, default=8)
 parser.add_argument("--calls", type=int, default=10, help="full (--json) status calls")
 parser.add_argument("--summary-calls", type=int, default=100, help="summary status calls")
 parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
 parser.add_argument(
  "--gc-freeze", action="store_true", help="gc.freeze() once the run is set up (not done today)"
 )
 parser.add_argument("--json", type=Path, default=default_json_path("status_scale"))
 args = parser.parse_args()
 with tempfile.TemporaryDirectory() as tmp:
  results = anyio.run(_measure, args, Path(tmp), backend=args.backend)
 info = machine_info()
 print(machine_line(info))
 print(
  f"{args.tickets} tickets, {args.workers} workers, {args.backend}: "
  f"{args.calls} full and {args.summary_calls} summary status calls"
 )

 def ms(value: object) -> str:
  return "-" if value is None else f"{value:.1f}"

 rows = [
  [
   str(r["mode"]),
   str(r["tickets_listed"]),
   ms(r["median_ms"]),
   ms(r["best_ms"]),
   ms(r["loop_late_p99_ms"]),
   ms(r["loop_late_max_ms"]),
   ms(r["gc_max_ms"]),
   ms(r["longest_step_cpu_ms"]),
   f"{r['peak_rss_mb']:.0f}",
  ]
  for r in results
 ]
 headers = [
  "status",
  "tickets listed",
  "median ms",
  "best ms",
  "loop late p99 ms",
  "max ms",
  "GC max ms",
  "longest step CPU ms",
  "run peak RSS MB",
 ]
 print(format_table(headers, rows))
 write_json(args.json, {"machine": info, "args": vars(args) | {"json": None}, "results": results})


if __name__ == "__main__":
 main()
