"""Agent tickets against a loopback chat-completions server, through a real ConductorEngine.

The server is tests/chat_server.py (real HTTP on 127.0.0.1, the official `openai` SDK as the
client, every reply held `--delay` seconds, 50 ms by default), in a process of its own like
a real provider: it does not compete with the runner for the GIL. Both read the same clock
(`time.monotonic()`, system-wide on Linux). Three measurements, on asyncio and trio:

1. Request rate: `20 * N` independent prompt tickets with N workers (N = 1, 4, 16), median of
   `--repeat` runs, against the ideal N / delay. The gap is the CPU a request costs the
   runner (the SDK, about 2 ms a request; the engine) on top of the reply's delay, on a
   machine shared with other work (the load average is printed).
2. Requests after a 429: 16 workers at full speed; after a random number of replies one
   request is answered 429 (Retry-After 60 s: the trial ends before it). Per trial, counted
   until every worker in flight has finished: attempts STARTED after the pause took effect
   (the PAUSED transition), and requests that reached the server from such attempts
   (target: 0 for both, over all trials). Also shown: requests that arrived after the 429
   was written, from attempts already in flight (allowed: the pipeline was not paused yet,
   or their request was on its way).
3. Resume latency: 4 workers; the first request is answered 429 with Retry-After 0.2 s; the
   time from the end of Retry-After (the 429 written + 0.2 s, by the server's clock) to the
   next request reaching the server (target: p99 under 50 ms).

    python benchmarks/agents.py [--delay 0.05] [--repeat 3] [--trials 50] [--resume-trials 30]
                                [--backends asyncio trio] [--json PATH]

Exits 1 when a target is missed (the tables say which), else 0.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType

import anyio

from benchmarks._common import (
 Summary,
 default_json_path,
 format_table,
 format_us,
 machine_info,
 machine_line,
 write_json,
)
from conductor.agents import AgentConfig, AgentWork
from conductor.dag_engine import ExecutionEngine, Ticket
from conductor.multi_agent_conductor import ConductorEngine
from conductor.transitions import Change, Transition
from tests.chat_server import Answer, Behaviour, ChatServer, RateLimited, Reply, Request

BACKENDS = ("asyncio", "trio")
WORKERS = (1, 4, 16)
TICKETS_PER_WORKER = 20
PAUSE_WORKERS = 16
RESUME_WORKERS = 4
RESUME_AFTER = 0.2  # seconds of Retry-After in the resume trials
LONG_RETRY_AFTER = 60.0  # seconds: longer than a trial of the 429 measurement
RESUME_TARGET_MS = 50.0
WAIT = 60.0  # seconds any trial may take before the benchmark gives up on it


# -- the server, in its own process -----------------------------------------------------------


def _serve(conn: Connection, delay: float) -> None:
 """The server process: a ChatServer answering the parent's commands until it goes away."""
 with ChatServer(default=Reply(delay=delay)) as server:
  conn.send(server.base_url)
  while True:
   try:
    command, arg = conn.recv()
   except EOFError:
    return
   if command == "queue":
    server.queue(*arg)
    conn.send(None)
   elif command == "count":
    conn.send(len(server.requests))
   elif command == "since":
    requests = server.requests[arg:]
    server.wait_for_answers(arg + len(requests), WAIT)  # each ends: wait for the record
    conn.send((requests, [a for a in server.answers if a.request >= arg]))


class RemoteServer:
 """The parent's side: `base_url`, `queue(...)`, and what arrived since a request count."""

 def __init__(self, delay: float) -> None:
  self.delay = delay
  context = multiprocessing.get_context("spawn")
  self._conn, child = context.Pipe()
  self._process = context.Process(target=_serve, args=(child, delay), daemon=True)
  self._process.start()
  child.close()
  self.base_url: str = self._conn.recv()

 def __enter__(self) -> RemoteServer:
  return self

 def __exit__(
  self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
 ) -> None:
  self._conn.close()
  self._process.join(10)

 def _ask(self, command: str, arg: object) -> object:
  self._conn.send((command, arg))
  return self._conn.recv()

 def queue(self, *behaviours: Behaviour) -> None:
  self._ask("queue", behaviours)

 def count(self) -> int:
  n = self._ask("count", None)
  assert isinstance(n, int)
  return n

 def since(self, n: int) -> tuple[list[Request], list[Answer]]:
  """The requests from the n-th on, and how they ended (once all have)."""
  result = self._ask("since", n)
  assert isinstance(result, tuple)
  return result


def _tickets(server: RemoteServer, n: int, tag: str) -> list[Ticket]:
 config = AgentConfig(base_url=server.base_url, model="bench")
 return [Ticket(f"{tag}{i}", work=AgentWork(prompt=f"{tag}{i}", agent=config)) for i in range(n)]


# -- 1. request rate --------------------------------------------------------------------------


async def _rate_once(server: RemoteServer, workers: int) -> float:
 n = TICKETS_PER_WORKER * workers
 conductor = ConductorEngine(ExecutionEngine(_tickets(server, n, "r")), max_workers=workers)
 start = time.perf_counter()
 with anyio.fail_after(WAIT):
  await conductor.run()
 return n / (time.perf_counter() - start)


def measure_rate(backend: str, server: RemoteServer, workers: int, repeat: int) -> float:
 rates = [anyio.run(_rate_once, server, workers, backend=backend) for _ in range(repeat)]
 return statistics.median(rates)


# -- 2. requests after a 429 ------------------------------------------------------------------


@dataclass
class PauseTrial:
 started_after_pause: int  # attempts STARTED after the PAUSED transition (target 0)
 requests_after_pause: int  # requests that reached the server from those (target 0)
 in_flight_arrivals: int  # requests after the 429 was written, from attempts started before
 pause_lag_us: float  # the 429 written -> the PAUSED transition


class _Watch:
 """Listens to the engine (on its loop): the pause, who started after it, who is running."""

 def __init__(self) -> None:
  self.started_after_pause: list[str] = []
  self.paused_at: float | None = None
  self.running: set[str] = set()
  self.drained = anyio.Event()

 def __call__(self, t: Transition) -> None:
  if t.change is Change.PAUSED and self.paused_at is None:
   self.paused_at = time.monotonic()
  elif t.ticket is not None and t.change is Change.STARTED:
   self.running.add(t.ticket)
   if self.paused_at is not None:
    self.started_after_pause.append(t.ticket)
  elif t.ticket is not None and t.change in (
   Change.COMPLETED,
   Change.FAILED,
   Change.RETRYING,
   Change.INTERRUPTED,
  ):
   self.running.discard(t.ticket)
  if self.paused_at is not None and not self.running:
   self.drained.set()


async def _pause_trial(server: RemoteServer, rng: random.Random) -> PauseTrial:
 before = server.count()
 replies = rng.randint(PAUSE_WORKERS, 3 * PAUSE_WORKERS)
 server.queue(*[Reply(delay=server.delay)] * replies, RateLimited(retry_after=LONG_RETRY_AFTER))
 tickets = _tickets(server, 4 * PAUSE_WORKERS + replies, "p")
 conductor = ConductorEngine(ExecutionEngine(tickets), max_workers=PAUSE_WORKERS)
 watch = _Watch()
 conductor.add_listener(watch)
 async with anyio.create_task_group() as tg:
  tg.start_soon(conductor.run)
  with anyio.fail_after(WAIT):
   await watch.drained.wait()
  conductor.cancel()
 assert watch.paused_at is not None
 requests, answers = server.since(before)
 (limited_at,) = [a.at for a in answers if a.status == 429]
 late_starters = set(watch.started_after_pause)
 after_pause = [r for r in requests if r.arrived > watch.paused_at]
 from_late = [r for r in after_pause if r.last_user_message in late_starters]
 in_flight = [
  r for r in requests if r.arrived > limited_at and r.last_user_message not in late_starters
 ]
 return PauseTrial(
  started_after_pause=len(late_starters),
  requests_after_pause=len(from_late),
  in_flight_arrivals=len(in_flight),
  pause_lag_us=(watch.paused_at - limited_at) * 1e6,
 )


def measure_pause(backend: str, server: RemoteServer, trials: int, seed: int) -> list[PauseTrial]:
 rng = random.Random(seed)
 return [anyio.run(_pause_trial, server, rng, backend=backend) for _ in range(trials)]


# -- 3. Retry-After's end to the next request -------------------------------------------------


async def _resume_trial(server: RemoteServer) -> float:
 before = server.count()
 server.queue(RateLimited(retry_after=RESUME_AFTER))
 tickets = _tickets(server, 2 * RESUME_WORKERS, "a")
 conductor = ConductorEngine(ExecutionEngine(tickets), max_workers=RESUME_WORKERS)
 with anyio.fail_after(WAIT):
  await conductor.run()
 requests, answers = server.since(before)
 (limited_at,) = [a.at for a in answers if a.status == 429]
 # The first request after the pause began: later than half of Retry-After, well after
 # the requests already on their way when the 429 was written.
 later = [r.arrived for r in requests if r.arrived > limited_at + RESUME_AFTER / 2]
 return min(later) - (limited_at + RESUME_AFTER)


def measure_resume(backend: str, server: RemoteServer, trials: int) -> list[float]:
 return [anyio.run(_resume_trial, server, backend=backend) for _ in range(trials)]


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
 parser = argparse.ArgumentParser(
  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
 )
 parser.add_argument("--delay", type=float, default=0.05, help="seconds each reply is held")
 parser.add_argument("--repeat", type=int, default=3, help="runs per rate, the median kept")
 parser.add_argument("--trials", type=int, default=50, help="429 trials per backend")
 parser.add_argument("--resume-trials", type=int, default=30, help="resume trials per backend")
 parser.add_argument("--seed", type=int, default=0)
 parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
 parser.add_argument("--json", type=Path, default=default_json_path("agents"))
 args = parser.parse_args(argv)

 machine = machine_info(["anyio", "trio", "openai"])
 print(f"agent tickets against a loopback server · {machine_line(machine)}")
 print(f"every reply held {args.delay * 1000:g} ms · the real openai SDK over HTTP/1.1\n")
 began = time.monotonic()
 results: dict[str, object] = {}
 rate_rows: list[list[str]] = []
 pause_rows: list[list[str]] = []
 resume_rows: list[list[str]] = []
 met = True
 load = os.getloadavg()[0]
 print(f"load average before: {load:.1f} (the machine is shared: compare runs at a like load)\n")
 with RemoteServer(args.delay) as server:
  anyio.run(_rate_once, server, 1)  # warm up: imports, the TLS context
  for backend in args.backends:
   rates = {n: measure_rate(backend, server, n, args.repeat) for n in WORKERS}
   for n, rate in rates.items():
    ideal = n / args.delay
    rate_rows.append([backend, str(n), f"{rate:,.1f}", f"{ideal:,.0f}", f"{rate / ideal:.0%}"])

   pauses = measure_pause(backend, server, args.trials, args.seed)
   started = sum(p.started_after_pause for p in pauses)
   after = sum(p.requests_after_pause for p in pauses)
   in_flight = [p.in_flight_arrivals for p in pauses]
   lag = Summary.from_ns(int(p.pause_lag_us * 1000) for p in pauses)
   ok_pause = started == 0 and after == 0
   met &= ok_pause
   pause_rows.append(
    [
     backend,
     str(len(pauses)),
     str(started),
     str(after),
     f"{statistics.mean(in_flight):.1f} / {max(in_flight)}",
     lag.cell(),
     "PASS" if ok_pause else "FAIL",
    ]
   )

   resumes = measure_resume(backend, server, args.resume_trials)
   latency = Summary.from_ns(int(s * 1e9) for s in resumes)
   ok_resume = latency.p99_us < RESUME_TARGET_MS * 1000
   met &= ok_resume
   resume_rows.append(
    [
     backend,
     str(latency.n),
     format_us(latency.p50_us),
     format_us(latency.p99_us),
     format_us(latency.max_us),
     "PASS" if ok_resume else "FAIL",
    ]
   )
   results[backend] = {
    "rate": {
     str(n): {"per_second": r, "ideal": n / args.delay, "ratio": r * args.delay / n}
     for n, r in rates.items()
    },
    "after_429": {
     "trials": len(pauses),
     "started_after_pause": started,
     "requests_after_pause": after,
     "in_flight_arrivals": in_flight,
     "pause_lag": lag.as_dict(),
    },
    "resume_latency": latency.as_dict(),
   }

 print("1. request rate: 20 x N independent prompt tickets, N workers (median of runs)\n")
 print(
  format_table(["backend", "workers", "requests/s", "ideal N/delay", "of ideal"], rate_rows, left=2)
 )
 print("\n2. after a 429 (16 workers; counted until the workers in flight finished)\n")
 print(
  format_table(
   [
    "backend",
    "trials",
    "started after pause",
    "requests after pause",
    "in-flight arrivals mean / max",
    "429 -> paused µs p50 / p99 / max",
    "target 0",
   ],
   pause_rows,
  )
 )
 print(
  f"\n3. Retry-After's end to the next request (ms is µs/1000; target p99 < {RESUME_TARGET_MS:g} ms)\n"
 )
 print(format_table(["backend", "trials", "p50 µs", "p99 µs", "max µs", "target"], resume_rows))
 elapsed = time.monotonic() - began
 print(f"\nall targets: {'PASS' if met else 'FAIL'} · measured in {elapsed:.0f} s")
 write_json(
  args.json,
  {
   "machine": machine,
   "delay": args.delay,
   "tickets_per_worker": TICKETS_PER_WORKER,
   "repeat": args.repeat,
   "load_average_before": load,
   "results": results,
   "targets_met": met,
  },
 )
 print(f"wrote {_shown(args.json)}")
 return 0 if met else 1


def _shown(path: Path) -> str:
 try:
  return str(path.resolve().relative_to(Path.cwd()))
 except ValueError:
  return str(path)


if __name__ == "__main__":
 sys.exit(main())
