"""A real Dask cluster on loopback for tests: `dask scheduler` and `dask worker` processes.

`DaskCluster` starts a scheduler and workers as separate processes on 127.0.0.1, each on a free
port (run as `python -m distributed.cli.dask_scheduler` / `dask_worker`, what the `dask
scheduler` and `dask worker` commands run, with this interpreter: no PATH lookup), and waits for each to be ready by reading its log (the line where it says so), bounded
by `WAIT` seconds: never a sleep. A test can kill -9 a worker or the scheduler, start more
workers, and start the scheduler again on the same address. `close()` (or leaving the `with`)
kills every process it started, and whatever they started in turn, also when the test failed:
use it as a context manager or through a fixture's `yield`. `reap_clusters()` closes any
cluster a test left open (for an autouse fixture).

Workers run WITHOUT a nanny (`--no-nanny`): the pid a test kills is then the process that runs
the tasks, so kill -9 means "the worker is gone" and nothing restarts it behind the test's back
(a nanny would start a fresh worker by itself, and killing the nanny would orphan its worker).
A worker without a nanny also ends itself when it loses the scheduler (with a nanny too: the
nanny closes with it): `restart_scheduler()` therefore starts the same number of new workers,
unless told otherwise.

Not thread-safe: one test thread drives a cluster.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

WAIT = 30.0  # seconds any single wait for a process may take before the test fails
_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


class DaskProcess:
 """One `dask scheduler` or `dask worker` process, its log lines read by a thread.

 Its stdout and stderr (where Dask logs) are merged into `lines`; the last lines are in the
 message of every failed wait, so a test failure says what the process said.
 """

 def __init__(self, name: str, args: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> None:
  self.name = name
  self.proc = subprocess.Popen(
   [sys.executable, "-m", *args],
   stdout=subprocess.PIPE,
   stderr=subprocess.STDOUT,
   stdin=subprocess.DEVNULL,
   text=True,
   env=dict(env),
   cwd=cwd,
   # Its own process group: close() can take down whatever it left in its group too.
   start_new_session=True,
  )
  self.address = ""  # the tcp:// address it listens on, once it said so
  self.lines: list[str] = []  # every line read so far, in order (read by the test thread)
  self._queue: queue.Queue[str | None] = queue.Queue()  # None: the output has ended
  self._reader = threading.Thread(target=self._read, daemon=True)
  self._reader.start()

 @property
 def pid(self) -> int:
  return self.proc.pid

 def _read(self) -> None:
  stdout = self.proc.stdout
  assert stdout is not None
  with stdout:
   for line in stdout:
    self._queue.put(line.rstrip("\n"))
  self._queue.put(None)

 def wait_for(self, pattern: str, *, timeout: float = WAIT, count: int = 1) -> re.Match[str]:
  """Wait for the `count`-th line matching the regex `pattern` (counting the lines already
  read) and return its match. Fails the test if the process ends first or after `timeout`."""
  regex = re.compile(pattern)
  matches = [m for line in self.lines if (m := regex.search(line))]
  deadline = time.monotonic() + timeout
  while len(matches) < count:
   try:
    line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
   except queue.Empty:
    raise AssertionError(
     f"{self.name}: no line like {pattern!r} within {timeout} s:\n{self.tail()}"
    ) from None
   if line is None:
    self._queue.put(None)  # keep the end visible to the next wait
    raise AssertionError(f"{self.name} ended before a line like {pattern!r}:\n{self.tail()}")
   self.lines.append(line)
   if m := regex.search(line):
    matches.append(m)
  return matches[count - 1]

 def tail(self, n: int = 20) -> str:
  return "\n".join(self.lines[-n:])

 def kill_hard(self) -> None:
  """kill -9 this process alone (as a crash would), and wait for it. What it started is left
  to whatever ties it to this process's life: that is what the tests check."""
  with contextlib.suppress(ProcessLookupError):
   os.kill(self.pid, signal.SIGKILL)
  self.proc.wait(timeout=WAIT)

 def close(self) -> None:
  """Kill it, every process it started (found through /proc, whichever group or session
  they are in), and its process group; wait for it and its reader. Idempotent."""
  doomed = _descendants(self.pid) if self.proc.poll() is None else []
  with contextlib.suppress(ProcessLookupError):
   os.kill(self.pid, signal.SIGSTOP)  # frozen: it can start nothing more meanwhile
  doomed = [*doomed, *(p for p in _descendants(self.pid) if p not in doomed)]
  for pid in doomed:
   with contextlib.suppress(ProcessLookupError):
    os.kill(pid, signal.SIGKILL)
  with contextlib.suppress(ProcessLookupError, PermissionError):
   os.killpg(self.pid, signal.SIGKILL)
  with contextlib.suppress(ProcessLookupError):
   os.kill(self.pid, signal.SIGKILL)
  self.proc.wait(timeout=WAIT)
  self._reader.join(WAIT)


class DaskCluster:
 """A scheduler and `workers` workers (each `nthreads` threads) on 127.0.0.1.

 `address` is the scheduler's `tcp://127.0.0.1:PORT`; it stays the same across
 `restart_scheduler()`. `env` adds variables to every process (e.g. `PYTHONPATH` for the
 modules of `call` targets, or `DASK_...` configuration); `folder` holds the workers' scratch
 space and is their working folder.
 """

 def __init__(
  self,
  folder: Path,
  *,
  workers: int = 2,
  nthreads: int = 1,
  env: Mapping[str, str] | None = None,
 ) -> None:
  self.folder = folder
  folder.mkdir(parents=True, exist_ok=True)
  self.nthreads = nthreads
  self.env = {**_ENV, **(env or {})}
  self._initial_workers = workers
  self.scheduler: DaskProcess | None = None
  self.workers: list[DaskProcess] = []  # the live ones, in start order
  self.orphans: list[DaskProcess] = []  # workers whose scheduler was killed (ending themselves)
  self._started: list[DaskProcess] = []  # every process ever started: close() closes them all
  self._port = 0  # 0 until the first scheduler chose one
  self._count = 0  # workers started so far: names them
  self.address = ""
  _CLUSTERS.append(self)  # so that reap_clusters() finds it however it is used

 def __enter__(self) -> DaskCluster:
  try:
   self.start_scheduler()
   self.add_workers(self._initial_workers)
  except BaseException:
   self.close()
   raise
  return self

 def __exit__(
  self,
  exc_type: type[BaseException] | None,
  exc: BaseException | None,
  tb: TracebackType | None,
 ) -> None:
  self.close()

 # -- the scheduler --------------------------------------------------------------------------

 def start_scheduler(self) -> str:
  """Start the scheduler (on the same port as before, if there was one); its address, once it
  listens."""
  assert self.scheduler is None, "the scheduler runs already"
  self.scheduler = DaskProcess(
   "scheduler",
   [
    "distributed.cli.dask_scheduler",
    "--host",
    "127.0.0.1",
    "--port",
    str(self._port),
    "--no-dashboard",
    # The HTTP server (health, metrics) runs even without the dashboard: a free port, so
    # that clusters of tests running at the same time never fight over 8787.
    "--dashboard-address",
    "127.0.0.1:0",
    "--no-jupyter",
   ],
   env=self.env,
   cwd=self.folder,
  )
  self._started.append(self.scheduler)
  address = self.scheduler.wait_for(r"Scheduler at:\s+(tcp://\S+)").group(1)
  self.scheduler.address = self.address = address
  self._port = int(address.rsplit(":", 1)[1])
  return address

 def kill_scheduler(self) -> None:
  """kill -9 the scheduler. Its workers (no nanny) stop themselves once they notice, but one
  with a task running stays until the task ends or Dask's close timeout (about 30 s) passes,
  and its task runs on meanwhile: that is Dask's behaviour, which the tests face. They leave
  `workers` at once (see `orphans`); `close()` still kills them."""
  assert self.scheduler is not None, "no scheduler runs"
  self.scheduler.kill_hard()
  self.scheduler = None
  self.orphans.extend(self.workers)
  self.workers = []

 def restart_scheduler(self, *, workers: int | None = None) -> str:
  """Start the scheduler again on the same address, then `workers` workers (by default as
  many as the cluster started with). Returns the address (unchanged)."""
  address = self.start_scheduler()
  self.add_workers(self._initial_workers if workers is None else workers)
  return address

 # -- workers --------------------------------------------------------------------------------

 def add_worker(self) -> DaskProcess:
  """Start one more worker; returns it once the scheduler has it registered."""
  return self.add_workers(1)[0]

 def add_workers(self, count: int) -> list[DaskProcess]:
  """Start `count` more workers at once; returns them once each is registered."""
  assert self.scheduler is not None, "start the scheduler first"
  started = [self._spawn_worker() for _ in range(count)]
  for worker in started:
   worker.address = worker.wait_for(r"Start worker at:\s+(tcp://\S+)").group(1)
   worker.wait_for(r"Registered to:")
   self.workers.append(worker)
  return started

 def _spawn_worker(self) -> DaskProcess:
  self._count += 1
  name = f"w{self._count}"
  worker = DaskProcess(
   f"worker {name}",
   [
    "distributed.cli.dask_worker",
    self.address,
    "--name",
    name,
    "--nthreads",
    str(self.nthreads),
    "--no-nanny",
    "--host",
    "127.0.0.1",
    "--no-dashboard",
    "--memory-limit",
    "0",  # no memory manager: it would pause or restart workers on its own
    "--local-directory",
    str(self.folder / "dask-scratch"),
   ],
   env=self.env,
   cwd=self.folder,
  )
  self._started.append(worker)
  return worker

 def kill_worker(self, which: int | str | DaskProcess = 0) -> DaskProcess:
  """kill -9 one worker, by index in `workers`, address or itself; returns it once the
  scheduler has noticed it is gone (its "Remove worker" line)."""
  worker = self.worker(which)
  assert self.scheduler is not None
  worker.kill_hard()
  self.workers.remove(worker)
  self.scheduler.wait_for(rf"Remove worker addr: {re.escape(worker.address)}\b")
  return worker

 def worker(self, which: int | str | DaskProcess) -> DaskProcess:
  """A live worker by index in `workers`, its address (`tcp://...`) or itself."""
  if isinstance(which, DaskProcess):
   return which
  if isinstance(which, int):
   return self.workers[which]
  for worker in self.workers:
   if worker.address == which:
    return worker
  raise LookupError(f"no live worker at {which}: {[w.address for w in self.workers]}")

 def pids(self) -> list[int]:
  """Pids of the live processes of this cluster (scheduler and workers)."""
  return [p.pid for p in [*([self.scheduler] if self.scheduler else []), *self.workers]]

 # -- the end --------------------------------------------------------------------------------

 def close(self) -> None:
  """Kill every process of the cluster and all they started; idempotent, never raises for a
  process already gone."""
  # Workers first: a worker outliving its scheduler for a moment would only log about it.
  procs = sorted(self._started, key=lambda p: p is self.scheduler)
  self.workers, self.orphans, self.scheduler, self._started = [], [], None, []
  for proc in procs:
   proc.close()
  with contextlib.suppress(ValueError):
   _CLUSTERS.remove(self)


_CLUSTERS: list[DaskCluster] = []  # clusters not closed yet


def reap_clusters() -> None:
 """Close every cluster a test left running. Call it from an autouse fixture."""
 while _CLUSTERS:
  _CLUSTERS[-1].close()


def _descendants(pid: int) -> list[int]:
 """Every process below `pid` (children, grandchildren...), from Linux /proc."""
 parents: dict[int, list[int]] = {}
 for entry in Path("/proc").iterdir():
  if entry.name.isdigit():
   try:
    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
   except OSError:
    continue
   parents.setdefault(int(fields[1]), []).append(int(entry.name))
 found: list[int] = []
 todo = [pid]
 while todo:
  children = parents.get(todo.pop(), [])
  found.extend(children)
  todo.extend(children)
 return found
