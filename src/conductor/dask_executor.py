"""`DaskExecutor`: a `workers.Worker` that runs each ticket's attempt on a Dask distributed cluster.

The only module that imports `distributed` (and `dask`); `import conductor` never imports it,
so conductor works without the `dask` extra. Imported without distributed installed, it raises
`DaskMissing`, an ImportError whose message is the one line to show.

Where it plugs in: `ConductorEngine` awaits `worker(ticket)` inside a slot its scheduler has
admitted, and this worker submits to the cluster only then. So the pause guarantee is the
engine's own: once `pause()` has returned nothing more is submitted (`submitted` counts the
calls, synchronously, before anything is awaited), and the attempts in flight finish.

What runs where:
- The runner (this process) keeps the DAG, the state and the control. For each attempt it
  submits one Dask task under the key `key(ticket)`, "<key_prefix>_<ticket>-<attempt>": a key
  never repeats, and a later run finds a killed run's tasks by the prefix (`clear_leftovers`).
  No "-" before the ticket's id: Dask groups tasks by the key's words up to the first "-"
  followed by a non-letter, so each ticket is a group of its own, as in a graph of distinct
  names. One group for all tickets (a "conductor-..." key) would make them "root-ish" once
  more than twice the cluster's threads are in flight, and Dask would then hand them to the
  workers one completion at a time (its queuing): about half the rate.
- The Dask worker runs `_remote_attempt`: a shell command in a session of its own (its own
  process group), with `PR_SET_PDEATHSIG` so that it dies with the worker (a killed worker
  must not leave its ticket running: Dask, or the runner, starts it again elsewhere), and
  CONDUCTOR_TICKET, CONDUCTOR_ATTEMPT, CONDUCTOR_WORKER and CONDUCTOR_DASK_KEY in its
  environment; anything else through `workers.run_work`, on an event loop of its own in the
  task's thread. Its outcome comes back as a value, and becomes the same WorkResult /
  WorkFailed / PausePipeline / WorkInterrupted as a local attempt.
- Stopping remote processes (`_stop_here`, run on every worker by `client.run`) finds them by
  CONDUCTOR_DASK_KEY in /proc, as `leftovers` does for local ones, and stops them the same way
  (SIGTERM, `TERM_GRACE`, SIGKILL). So a cancel, a lost worker and a killed runner's leftovers
  take one path, and it also reaches what a command started in a session of its own. A
  worker that closes (it lost its scheduler, or was stopped) takes that path for its own
  commands first (`_StopOnClose`, a worker plugin): they end as interrupted, not failed.

Dask would re-run the task of a worker that died, as the same attempt. Connecting therefore
sets the scheduler's `allowed-failures` to 0 (a shared scheduler's other clients see that
too): the task fails with `KilledWorker` instead, and the runner requeues the ticket as a new
attempt (`WorkInterrupted`). Every future is released as soon as its result is read, so a
worker lost later never makes Dask compute a completed ticket again. Two windows remain, both
Dask's: a worker RETIRED on purpose (`retire_workers`, adaptive scaling) hands its running
task to another worker as the same attempt; and a worker lost between finishing an attempt
and the runner reading its result makes Dask compute it again.

The two backends (the seam is `_SameLoop` / `_OwnLoop`, nothing else differs):
- asyncio: the asynchronous `Client` lives on the runner's own loop and its futures are
  awaited directly: no thread, no hop.
- trio: distributed needs asyncio, so the client lives on an asyncio loop in a thread of its
  own. Each call is scheduled there (`run_coroutine_threadsafe`: one wake-up of that loop) and
  its completion wakes the trio task (`scheduler.LoopHandle`: one wake-up of trio); two
  thread hops per attempt, tens of microseconds, against Dask's own milliseconds per task.

Per-ticket cost (the rate against Dask's own `client.get`): the attempts that reach the
client's loop in one turn are sent as one graph (`_send_queued`: one update-graph message and
one scheduler pass instead of one per attempt); those that finish in one turn, or while the
previous fetch is in flight, are fetched with one gather (`_fetch`); the client's stream to
the scheduler batches every 2 ms, not Dask's 10 ms (`SEND_INTERVAL`); and a plain `call`
target runs right in the Dask task's thread (`_run_call_here`), not in an event loop of its
own. Batching only delays a submission to the end of the loop turn of the attempt that asked
for it: an attempt is still submitted only by its own admitted `__call__`, and one cancelled
before the end of that turn is not sent at all.

A lost scheduler: the attempts in flight are interrupted, the attached conductor pauses
itself (`attach`), and the executor reconnects in the background, retrying with a backoff (a
remote host coming back has nothing to wait on); once connected it stops what the lost
attempts left running, then resumes the conductor. A person's pause is never ended by that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import gc
import hashlib
import logging
import math
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn, Protocol, TypeVar

import anyio
import anyio.abc

from scheduler import LoopHandle

from ._text import first_line
from .dag_engine import Ticket
from .leftovers import Leftover, processes_with, stop_leftovers
from .workers import (
 OUTPUT_LIMIT,
 REAP_TIMEOUT,
 TERM_GRACE,
 CallTargetError,
 CallWork,
 Outcome,
 PausePipeline,
 ShellWork,
 SleepWork,
 WorkFailed,
 WorkInterrupted,
 WorkResult,
 _failed_call,
 _failure_line,
 _is_async,
 _join,
 _Tail,
 describe_exception,
 is_cancellation,
 resolve_call_target,
 run_work,
)


class DaskMissing(ImportError):
 """`distributed` is not installed: `str(error)` is the one line to show (exit 2)."""


try:
 import distributed
 from distributed.client import FutureCancelledError
except ImportError:
 raise DaskMissing(
  "running on a Dask cluster (--dask) needs the dask extra: pip install 'conductor[dask]'"
 ) from None

__all__ = ["DaskError", "DaskExecutor", "DaskMissing", "key_prefix_for"]

KEY_VARIABLE = "CONDUCTOR_DASK_KEY"
"""The environment variable that ties a remote shell ticket's processes to its Dask key."""

RECONNECT_FIRST, RECONNECT_MAX = 0.2, 5.0
"""Seconds between attempts to reach a lost scheduler again: doubling from the first to the max."""

SEND_INTERVAL = 0.002
"""Seconds between two batches of messages from the client to the scheduler (see `_new_client`)."""

WORKER_LOSSES = 3
"""Workers lost in a row while running one ticket after which it fails instead of running
again: a ticket whose own code ends its worker's process (`os._exit`, a crash, the OOM
killer) would otherwise take down every worker of the cluster, one after the other. A
worker lost for another reason under the same ticket three times in a row is unlikely."""

CLEANUP_TIMEOUT = TERM_GRACE + REAP_TIMEOUT + 5.0
"""Upper bound, in seconds, on stopping a cancelled attempt's remote processes (the workers'
own stop takes at most TERM_GRACE + REAP_TIMEOUT; the rest is the round trip)."""

_log = logging.getLogger(__name__)
T = TypeVar("T")


class DaskError(Exception):
 """The cluster cannot be used (unreachable scheduler, bad address): one line, exit 2."""


def key_prefix_for(state: str | os.PathLike[str]) -> str:
 """The key prefix of the runs of one state file: the same in every run of it (so a run
 finds what a killed one left on the cluster), different for two state files."""
 digest = hashlib.sha1(os.fsencode(os.path.realpath(state))).hexdigest()
 return f"conductor_{digest[:12]}"


LOST_SCHEDULER = "lost the Dask scheduler at "
"""How the reason of the automatic pause of a lost scheduler begins."""


class _Pausable(Protocol):
 """What `attach` needs of a conductor (`ConductorEngine`)."""

 @property
 def paused(self) -> bool: ...
 @property
 def paused_by_person(self) -> bool: ...
 @property
 def pause_reason(self) -> str | None: ...
 def auto_pause(self, reason: str, resume_after: float | None = None) -> None: ...
 def auto_resume(self) -> None: ...


# -- on the Dask worker ------------------------------------------------------------------------


# `_START_LOCK` guards both. `_DOOMED`: keys whose attempt was stopped (a cancel) before it
# started its command on this worker: it must not start it any more. The lock makes "not
# doomed, start the command" one step against `_stop_here`'s "doom it, then look for its
# processes": a command started before the doom has exec'd (Popen returns after exec), so its
# environment names its key. `_RUNNING`: the keys whose command runs, by worker address
# (for `_StopOnClose`).
_DOOMED: set[str] = set()
_RUNNING: dict[str, str] = {}
_START_LOCK = threading.Lock()


def _remote_attempt(ticket: Ticket, key: str, env: Mapping[str, str]) -> Outcome:
 """The Dask task: one attempt of `ticket`, in a thread of the Dask worker. Never raises."""
 try:
  work = ticket.work
  if isinstance(work, ShellWork):
   return _run_shell_here(work, ticket, key, env)
  if isinstance(work, CallWork):
   return _run_call_here(work, ticket)
  if isinstance(work, SleepWork):  # no event loop needed to sleep
   time.sleep(work.seconds)
   if work.fail:
    raise WorkFailed("simulated failure")
   return Outcome("ok")  # as run_work: a simulated job prints nothing
  return Outcome.of(anyio.run(run_work, ticket))
 except (WorkFailed, PausePipeline, WorkInterrupted) as exc:
  return Outcome.raised(exc)
 except BaseException as exc:  # whatever user code raises is the ticket's failure
  try:
   output = "".join(traceback.format_exception(exc))[-OUTPUT_LIMIT:]
  except BaseException:
   output = ""
  return Outcome("failed", output, error=describe_exception(exc))


def _run_call_here(spec: CallWork, ticket: Ticket) -> Outcome:
 """`workers.run_call`'s contract, in the task's thread: a plain function is called right
 here (the task's thread is already off the Dask worker's loop), not through an event loop
 and a thread of its own (about 0.7 ms a ticket, on a worker that runs one at a time)."""
 try:
  fn = resolve_call_target(spec.target, spec.search_path)
 except CallTargetError as exc:
  raise WorkFailed(str(exc)) from None
 except BaseException as exc:
  raise _failed_call(exc, f" (while importing {spec.target})") from None
 if _is_async(fn):  # it needs an event loop: run_call's, as locally
  return Outcome.of(anyio.run(run_work, ticket))
 try:
  value = fn(ticket)
 except (WorkFailed, PausePipeline, WorkInterrupted):
  raise  # the function's own word on its outcome (see `workers.Worker`)
 except BaseException as exc:
  raise _failed_call(exc) from None
 if isinstance(value, WorkResult):
  return Outcome.of(value)
 return Outcome("ok", output=value if isinstance(value, str) else "")


def _die_with_parent() -> None:
 # In the child, between fork and exec. PR_SET_PDEATHSIG (1) fires when the THREAD that
 # forked us ends: a Dask worker's task threads live as long as the worker. If the worker is
 # already gone (it died during the fork), exit now instead of waiting for a signal that
 # will never come.
 parent = os.getppid()
 _libc().prctl(1, signal.SIGKILL, 0, 0, 0)
 if os.getppid() != parent:
  os._exit(1)


_LIBC: Any = None


def _libc() -> Any:
 global _LIBC
 if _LIBC is None:
  _LIBC = ctypes.CDLL(None, use_errno=True)
 return _LIBC


def _worker_address() -> str:
 try:
  return str(distributed.get_worker().address)
 except ValueError:  # not in a Dask worker (called directly)
  return ""


def _run_shell_here(spec: ShellWork, ticket: Ticket, key: str, env: Mapping[str, str]) -> Outcome:
 """`workers.run_shell`'s contract, blocking, in the task's thread: the same output, exit
 code and failure line; plus the death signal and the key in the environment."""
 full_env = {
  **os.environ,
  **(spec.env or {}),
  **env,
  "CONDUCTOR_TICKET": ticket.id,
  "CONDUCTOR_ATTEMPT": str(ticket.attempts),
  "CONDUCTOR_WORKER": _worker_address(),
  KEY_VARIABLE: key,
 }
 _libc()  # loaded here: the child must not load a library between fork and exec
 with _START_LOCK:
  if key in _DOOMED:
   return Outcome("interrupted", error="cancelled before it started")
  try:
   process = subprocess.Popen(
    ["/bin/sh", "-c", spec.command],
    cwd=spec.cwd,
    env=full_env,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    start_new_session=True,
    # Safe here despite the threads: it only calls prctl, through a library loaded above.
    preexec_fn=_die_with_parent,  # noqa: PLW1509
   )
  except OSError as exc:
   reason = exc.strerror or type(exc).__name__
   raise WorkFailed(
    f"cannot start the command in {spec.cwd} on {_worker_address()}: {reason}"
   ) from None
  _RUNNING[key] = full_env["CONDUCTOR_WORKER"]
 try:
  outcome = _collect_here(process)
 finally:
  with _START_LOCK:
   _RUNNING.pop(key, None)
   stopped = key in _DOOMED
 if stopped:  # by `_stop_here` (its worker closing, a cancel): not the command's failure
  return Outcome("interrupted", error=f"the Dask worker {full_env['CONDUCTOR_WORKER']} stopped it")
 return outcome


def _collect_here(process: subprocess.Popen[bytes]) -> Outcome:
 out, err = _Tail(OUTPUT_LIMIT), _Tail(OUTPUT_LIMIT)
 with process, selectors.DefaultSelector() as selector:
  # Both streams read to EOF at once (no pipe-full deadlock), then the exit code.
  tails = {}
  for stream, tail in ((process.stdout, out), (process.stderr, err)):
   assert stream is not None
   selector.register(stream, selectors.EVENT_READ)
   tails[stream.fileno()] = tail
  while tails:
   for ready, _ in selector.select():
    chunk = os.read(ready.fd, 65536)
    if chunk:
     tails[ready.fd].add(chunk)
    else:
     selector.unregister(ready.fileobj)
     del tails[ready.fd]
  code = process.wait()
 output = _join(out.text(), err.text())
 if code == 0:
  return Outcome("ok", output, 0)
 return Outcome("failed", output, code, error=_failure_line(code, err, out))


async def _stop_here(keys: Sequence[str] = (), prefix: str | None = None) -> list[str]:
 """On a Dask worker (`client.run`): stop every process on this host whose key is one of
 `keys` or starts with `prefix`: SIGTERM to it and its group, `TERM_GRACE`, then SIGKILL.
 `keys` are also doomed on this worker (their command never starts here any more); a prefix
 is not (the next run's keys share it). Returns the processes found, as "host:pid" (two
 workers on one host find the same ones)."""
 with _START_LOCK:
  _DOOMED.update(keys)
 found = _find_processes(set(keys), prefix)
 if found:
  loop = asyncio.get_running_loop()
  await loop.run_in_executor(None, stop_leftovers, found)  # blocking: not on the worker's loop
 host = socket.gethostname()
 return [f"{host}:{p.pid}" for p in found]


class _StopOnClose(distributed.WorkerPlugin):
 """On each Dask worker: as it closes (it lost its scheduler, or was told to), stop the
 commands of the attempts it runs. A closing worker waits for its task threads, and those
 wait for their commands: without this it would hang, and the commands outlive it."""

 name = "conductor-stop-on-close"
 # Registered again by every run that connects: that must not tear down (stop) the
 # commands of a run in progress, so the first registration stays.
 idempotent = True

 async def teardown(self, worker: Any) -> None:
  with _START_LOCK:
   keys = [key for key, where in _RUNNING.items() if where == worker.address]
  if keys:
   await _stop_here(keys)


def _find_processes(keys: set[str], prefix: str | None) -> list[Leftover]:
 # O(processes on this host); Linux only (reads /proc).
 found: list[Leftover] = []
 for pid, env in processes_with(KEY_VARIABLE + "="):
  key = env.get(os.fsencode(KEY_VARIABLE), b"").decode(errors="replace")
  if key in keys or (prefix is not None and key.startswith(prefix)):
   ticket = env.get(b"CONDUCTOR_TICKET", b"").decode(errors="replace")
   attempt = env.get(b"CONDUCTOR_ATTEMPT", b"0")
   found.append(Leftover(pid, ticket, int(attempt) if attempt.isdigit() else 0))
 return found


# -- on the scheduler (pickled by value: the scheduler need not have conductor installed) ------


def _scheduler_functions() -> tuple[Callable[..., int], Callable[..., int]]:
 # Defined inside a function so that cloudpickle ships them by value, not by reference.
 def no_automatic_rerun(dask_scheduler: Any) -> int:
  before = int(dask_scheduler.allowed_failures)
  dask_scheduler.allowed_failures = 0
  return before

 def cancel_prefix(prefix: str, client: str, dask_scheduler: Any) -> int:
  keys = [k for k in dask_scheduler.tasks if isinstance(k, str) and k.startswith(prefix)]
  if keys and client in dask_scheduler.clients:
   dask_scheduler.stimulus_cancel(
    keys, client, force=True, reason="conductor: a killed run's attempt", msg=None
   )
  return len(keys)

 return no_automatic_rerun, cancel_prefix


class _FetchAlone(Exception):
 """A batched gather failed: each attempt of the batch fetches its own result."""


class _NotSent(Exception):
 """An attempt that `_send_queued` could not send; `outcome` says why."""

 def __init__(self, outcome: Outcome) -> None:
  super().__init__(outcome.error)
  self.outcome = outcome


# -- the seam between the runner's loop and the client's --------------------------------------


class _SameLoop:
 """asyncio: the client lives on the runner's own loop; a call is a plain await."""

 async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
  return await fn(*args)

 async def aclose(self) -> None:
  pass


class _OwnLoop:
 """trio: an asyncio loop on a thread of its own runs the client; calls cross to it.

 A call schedules the coroutine on that loop and parks the trio task on an anyio Event that
 the coroutine's completion sets in the trio loop (no polling, no blocked trio thread).
 Cancelling the trio task cancels the coroutine (natively, on its loop) and returns at once.

 Crossings are coalesced both ways: calls made while an earlier one is still waiting to
 cross go over with it (one wake-up of the asyncio loop for all), and completions likewise
 come back in one wake-up of trio. Tickets start and end in bursts (a round of workers, a
 batched gather), so this saves most of the two thread hops a ticket would cost.
 """

 def __init__(self) -> None:
  self._loop: asyncio.AbstractEventLoop | None = None
  self._stop: asyncio.Event | None = None
  self._thread: threading.Thread | None = None
  self._lock = threading.Lock()  # guards the two queues and their "wake-up sent" flags
  self._inbox: list[tuple[Awaitable[Any], concurrent.futures.Future[Any]]] = []
  self._outbox: list[anyio.Event] = []
  self._handle: LoopHandle | None = None  # the trio loop's

 async def start(self) -> None:
  started = anyio.Event()
  self._handle = handle = LoopHandle()

  async def serve() -> None:
   self._loop = asyncio.get_running_loop()
   self._stop = asyncio.Event()
   handle.call_soon(started.set)
   await self._stop.wait()

  self._thread = threading.Thread(
   target=asyncio.run, args=(serve(),), name="conductor-dask-client", daemon=True
  )
  self._thread.start()
  await started.wait()

 async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
  loop = self._loop
  assert loop is not None, "start() first"
  future: concurrent.futures.Future[T] = concurrent.futures.Future()
  done = anyio.Event()
  future.add_done_callback(lambda _: self._back(done))
  with self._lock:
   self._inbox.append((fn(*args), future))
   first = len(self._inbox) == 1
  if first:
   loop.call_soon_threadsafe(self._cross)
  try:
   await done.wait()
  except BaseException:
   future.cancel()  # the task's callback below cancels the coroutine on its loop
   raise
  return future.result()

 def _cross(self) -> None:
  # On the asyncio loop: start every call that came over in this wake-up.
  loop = self._loop
  assert loop is not None
  with self._lock:
   calls, self._inbox = self._inbox, []
  for awaitable, future in calls:
   if future.cancelled():  # (kept pending while it runs, so that a cancel still works)
    _close_unawaited(awaitable)
    continue
   task = loop.create_task(_as_coroutine(awaitable))
   task.add_done_callback(functools.partial(_settle, future))
   future.add_done_callback(functools.partial(_cancel_task, loop, task))

 def _back(self, done: anyio.Event) -> None:
  # Any thread (the asyncio loop's, or trio's when cancelled): wake the trio task.
  with self._lock:
   self._outbox.append(done)
   first = len(self._outbox) == 1
  if first and self._handle is not None:
   self._handle.call_soon(self._arrive)

 def _arrive(self) -> None:
  # In trio: every completion that came back in this wake-up.
  with self._lock:
   events, self._outbox = self._outbox, []
  for done in events:
   done.set()

 async def aclose(self) -> None:
  loop, stop, thread = self._loop, self._stop, self._thread
  self._loop = None
  if loop is None or stop is None or thread is None:
   return
  # A client dropped unclosed (a reconnection that failed half-way) closes itself in its
  # finalizer, through this loop: collect it while the loop still runs, or its finalizer
  # meets a closed loop later ("IOLoop is closed", at any later moment of the process).
  await anyio.to_thread.run_sync(gc.collect)
  loop.call_soon_threadsafe(stop.set)
  await anyio.to_thread.run_sync(thread.join)


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
 return await awaitable


def _settle(future: concurrent.futures.Future[Any], task: asyncio.Task[Any]) -> None:
 # As asyncio.run_coroutine_threadsafe does: the future stays pending while the task runs.
 if task.cancelled():
  future.cancel()
 elif future.set_running_or_notify_cancel():  # False: cancelled from trio meanwhile
  exc = task.exception()
  if exc is not None:
   future.set_exception(exc)
  else:
   future.set_result(task.result())


def _cancel_task(
 loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], future: concurrent.futures.Future[Any]
) -> None:
 if future.cancelled() and not task.done():
  with contextlib.suppress(RuntimeError):  # the loop has ended
   loop.call_soon_threadsafe(task.cancel)


def _close_unawaited(awaitable: Awaitable[Any]) -> None:
 close = getattr(awaitable, "close", None)
 if close is not None:
  close()  # a coroutine never started: no "never awaited" warning


# -- the executor ------------------------------------------------------------------------------


class DaskExecutor:
 """Runs each ticket's attempt on a Dask cluster: a `workers.Worker` for `ConductorEngine`.

 `address`: "tcp://HOST:PORT" (any distributed address) of a running scheduler, or "local:N"
 for a `LocalCluster` of N worker processes (`threads_per_worker` threads each) that this
 executor starts and stops. Use it as an async context manager, entered in the event loop
 that runs the conductor (asyncio or trio); `attach` the conductor so that a lost scheduler
 pauses it. `key_prefix` must be the same in every run of one state (`key_prefix_for`), for
 `clear_leftovers`; by default it is random; without a "-" in it, each ticket is a task group
 of its own on the scheduler (see the module's docstring). `env`: variables added to remote
 shell tickets' environments.

 `__call__` runs on the runner's loop only. `submitted` is read by any thread (an int).
 """

 def __init__(
  self,
  address: str,
  *,
  connect_timeout: float = 5.0,
  key_prefix: str | None = None,
  env: Mapping[str, str] | None = None,
  threads_per_worker: int = 1,
 ) -> None:
  self._local_workers = _parse_address(address)
  if not (connect_timeout > 0 and math.isfinite(connect_timeout)):
   raise DaskError(
    f"the Dask connect timeout must be a number of seconds > 0, got {connect_timeout!r}"
   )
  self.address = address
  self._given = address
  self._timeout = connect_timeout
  self.key_prefix = key_prefix or f"conductor_{uuid.uuid4().hex[:12]}"
  self._env = dict(env or {})
  self._threads = threads_per_worker
  self.submitted = 0  # attempts handed to the cluster (counted before any await)
  self._loop: _SameLoop | _OwnLoop | None = None
  self._tg: anyio.abc.TaskGroup | None = None
  self._conductor: _Pausable | None = None
  # While the scheduler is lost: the pause reason, and the keys of the attempts it took.
  self._lost: str | None = None
  self._lost_keys: list[str] = []
  self._back: anyio.Event | None = None  # while lost: set once the scheduler is back
  # Workers lost in a row while running each ticket (`WORKER_LOSSES`); on the runner's loop.
  self._losses: dict[str, int] = {}
  # On the client's loop only:
  self._client: Any = None
  self._cluster: Any = None
  # Attempts waiting for the end of the loop turn to be sent together (`_send_queued`).
  self._queued: list[tuple[Ticket, str, asyncio.Future[Any]]] = []
  # Finished attempts waiting for the end of the loop turn to be fetched together (`_fetch`).
  self._to_fetch: list[tuple[Any, asyncio.Future[Any]]] = []
  self._fetching: asyncio.Future[None] | None = None  # the gather in flight

 def key(self, ticket: Ticket) -> str:
  """The Dask key of the ticket's current attempt: "<key_prefix>_<ticket>-<attempt>" (see
  the module's docstring for the "_")."""
  return f"{self.key_prefix}_{ticket.id}-{ticket.attempts}"

 def attach(self, conductor: _Pausable) -> None:
  """Pause `conductor` automatically while the scheduler is lost, resume it once it is
  back (`auto_pause` / `auto_resume`: a person's pause wins). Call before the run.

  A run stopped or killed while the scheduler was lost leaves that pause in its state; once
  connected, the next run ends it (only that one: a person's pause, a spent budget or a
  rate limit stay)."""
  self._conductor = conductor
  self._end_stale_pause()

 def _end_stale_pause(self) -> None:
  conductor = self._conductor
  if (
   conductor is not None
   and self._client is not None  # connected
   and self._lost is None
   and conductor.paused
   and not conductor.paused_by_person
   and (conductor.pause_reason or "").startswith(LOST_SCHEDULER)
  ):
   conductor.auto_resume()

 # -- lifetime ----------------------------------------------------------------------------

 async def __aenter__(self) -> DaskExecutor:
  if _on_asyncio():
   self._loop = _SameLoop()
  else:
   own = _OwnLoop()
   await own.start()
   self._loop = own
  try:
   await self._loop.call(self._connect)
   self._tg = anyio.create_task_group()
   await self._tg.__aenter__()
  except BaseException:
   with anyio.CancelScope(shield=True):
    await self._close()
   raise
  self._end_stale_pause()  # when attached before connecting (see attach)
  return self

 async def __aexit__(
  self,
  exc_type: type[BaseException] | None,
  exc: BaseException | None,
  tb: TracebackType | None,
 ) -> None:
  tg, self._tg = self._tg, None
  try:
   if tg is not None:
    tg.cancel_scope.cancel()  # a reconnection in progress: the run is over
    # Not handed the body's exception: that one propagates as it is, never in a group.
    await tg.__aexit__(None, None, None)
  finally:
   with anyio.CancelScope(shield=True):
    await self._close()

 async def _close(self) -> None:
  loop, self._loop = self._loop, None
  if loop is None:
   return
  with anyio.move_on_after(CLEANUP_TIMEOUT):
   await loop.call(self._disconnect)
  await loop.aclose()

 # -- the Worker ----------------------------------------------------------------------------

 async def __call__(self, ticket: Ticket) -> WorkResult:
  """Run one attempt of `ticket` on the cluster; the `workers.Worker` contract.

  Cancelled, it releases the attempt's future and stops its remote processes before the
  cancellation propagates (bounded by `CLEANUP_TIMEOUT`)."""
  key = self.key(ticket)
  self.submitted += 1
  loop = self._loop
  if loop is None:
   raise RuntimeError("DaskExecutor: use it inside `async with`")
  if self._lost is not None:  # admitted just before the automatic pause (or a person resumed)
   await self._interrupted(self._lost, key)
  try:
   outcome = await loop.call(self._attempt, ticket, key)
  except BaseException as exc:
   if is_cancellation(exc):
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
     await loop.call(self._stop_remote, [key], None)
   raise
  if outcome.kind == "scheduler-lost":
   why = outcome.error
   await self._interrupted(f"{LOST_SCHEDULER}{self.address}: {why}; resumes when it is back", key)
  if outcome.kind != "worker-lost":
   self._losses.pop(ticket.id, None)
  else:
   lost = self._losses[ticket.id] = self._losses.get(ticket.id, 0) + 1
   if lost >= WORKER_LOSSES:
    del self._losses[ticket.id]
    raise WorkFailed(
     f"{lost} Dask workers in a row died while it ran (the last: {outcome.error}); its code "
     "may end its process (os._exit, a crash, memory): fix it, then run again"
    )
  return self._result(outcome)

 def _result(self, outcome: Outcome) -> WorkResult:
  # Besides the kinds of `workers.Outcome`, made on the runner: "worker-lost" (error = the
  # worker's address) and "scheduler-lost" (error = why; `__call__` pauses first).
  if outcome.kind == "worker-lost":
   raise WorkInterrupted(f"the Dask worker {outcome.error} running it went away")
  return outcome.result()

 async def clear_leftovers(self) -> int:
  """Cancel the scheduler's tasks under this executor's `key_prefix` and stop, on every
  worker host, the processes of those keys: what a killed run of the same state left. Call
  it before the run starts, so no attempt overlaps the one it replaces. Returns how many
  tasks and processes it stopped."""
  loop = self._loop
  if loop is None:
   raise RuntimeError("DaskExecutor: use it inside `async with`")
  return await loop.call(self._clear)

 # -- on the reconnection -------------------------------------------------------------------

 def _scheduler_lost(self, reason: str, key: str) -> None:
  self._lost_keys.append(key)
  if self._conductor is not None:
   self._conductor.auto_pause(reason, None)
  if self._lost is None:
   self._lost = reason
   self._back = anyio.Event()
   if self._tg is not None:
    self._tg.start_soon(self._reconnect)

 async def _interrupted(self, reason: str, key: str) -> NoReturn:
  """The attempt of `key` was lost with the scheduler: pause the attached conductor, and
  interrupt the attempt (the engine requeues it as a new one)."""
  self._scheduler_lost(reason, key)
  if self._conductor is None and self._back is not None:
   # Nothing pauses the run: without this wait every ready ticket would start and be
   # interrupted at once, again and again, until the scheduler is back.
   await self._back.wait()
  raise WorkInterrupted(reason)

 async def _reconnect(self) -> None:
  loop = self._loop
  assert loop is not None
  delay = RECONNECT_FIRST
  while True:
   try:
    await loop.call(self._connect_again)
    break
   except Exception as exc:  # DaskError, or the scheduler went away again meanwhile
    _log.info("the Dask scheduler at %s is still unreachable: %s", self.address, exc)
    # Nothing tells us that a remote host is back: try again, less and less often.
    await anyio.sleep(delay)
    delay = min(delay * 2, RECONNECT_MAX)
  keys, self._lost_keys = self._lost_keys, []
  try:
   await loop.call(self._stop_remote, keys, None)  # before anything runs again
  except Exception as exc:  # a worker that cannot be asked: its death signal did the job
   _log.warning("could not stop the lost attempts on the Dask workers: %s", exc)
  self._lost = None
  if self._back is not None:
   self._back.set()
  if self._conductor is not None:
   self._conductor.auto_resume()

 # -- on the client's loop ------------------------------------------------------------------

 async def _connect(self) -> None:
  if self._local_workers:
   self._cluster = await distributed.LocalCluster(  # type: ignore[no-untyped-call]
    n_workers=self._local_workers,
    threads_per_worker=self._threads,
    processes=True,
    asynchronous=True,
    dashboard_address=":0",
    scheduler_port=0,
    silence_logs=logging.ERROR,
   )
   self.address = str(self._cluster.scheduler_address)
  self._client = await self._new_client()

 async def _connect_again(self) -> None:
  old, self._client = self._client, None
  if old is not None:
   await self._forget(old)
  self._client = await self._new_client()

 async def _forget(self, client: Any) -> None:
  """Close `client` (on its loop), and make sure its finalizer will not try again: one
  that did not close (its scheduler is gone) would otherwise close itself whenever it is
  collected, through a loop that may be closed by then ("IOLoop is closed")."""
  with contextlib.suppress(Exception):
   await asyncio.wait_for(client.close(), self._timeout)
  if client.status != "closed":
   client.status = "closed"  # what Client.__del__ checks; nothing else is left to close

 async def _new_client(self) -> Any:
  # Made first, awaited second: a client that fails to connect is closed here, not left to
  # its finalizer (which needs its loop, maybe closed by then).
  client: Any = distributed.Client(  # type: ignore[no-untyped-call]
   self.address,
   asynchronous=True,
   timeout=self._timeout,
   set_as_default=False,
  )
  try:
   try:
    await client
   except BaseException:
    client.status = "closed"  # whatever stopped it (see _forget): no finalizer afterwards
    raise
  except (OSError, TimeoutError, ValueError) as exc:
   raise DaskError(
    f"cannot reach the Dask scheduler at {self.address} within {self._timeout:g}s "
    f"({first_line(str(exc)) or type(exc).__name__}): start one with `dask scheduler` and workers with "
    f"`dask worker {self.address}`, or fix the address (--dask)"
   ) from None
  try:
   no_rerun, _ = _scheduler_functions()
   await client.run_on_scheduler(no_rerun)
   await client.register_plugin(_StopOnClose(), name=_StopOnClose.name)
  except Exception as exc:
   await self._forget(client)
   raise DaskError(
    f"the Dask cluster at {self.address} refused conductor's setup ({first_line(str(exc)) or type(exc).__name__}): "
    "install conductor on every worker, and let the scheduler run functions "
    "(distributed.scheduler.pickle: true)"
   ) from None
  # A client sends to the scheduler at most one batch of messages per 10 ms (Dask's
  # default): the next ticket's submit, right after the previous one's release, would wait
  # for that. The scheduler's own streams batch every 2 ms; so does this one.
  comm = getattr(client, "scheduler_comm", None)
  if comm is not None and isinstance(getattr(comm, "interval", None), float):
   comm.interval = SEND_INTERVAL
  return client

 async def _disconnect(self) -> None:
  client, self._client = self._client, None
  cluster, self._cluster = self._cluster, None
  if client is not None:
   await self._forget(client)
  if cluster is not None:
   await cluster.close()

 async def _attempt(self, ticket: Ticket, key: str) -> Outcome:
  client = self._client
  if client is None or client.status != "running":
   return Outcome("scheduler-lost", error="the connection is down")
  waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
  if not self._queued:
   asyncio.get_running_loop().call_soon(self._send_queued)
  self._queued.append((ticket, key, waiter))
  try:
   future = await waiter  # cancelled before the send: `_send_queued` skips it
  except _NotSent as exc:
   return exc.outcome
  except asyncio.CancelledError:
   if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
    waiter.result().release()  # sent just before the cancel: released like any other
   raise
  try:
   await future.exception()  # until it ends, without fetching its result
   if future.status == "finished":
    result = await self._fetch(future)
   else:
    result = await future  # raises why it did not finish, handled below
  except FutureCancelledError as exc:
   if exc.reason == "scheduler-connection-lost":
    return Outcome("scheduler-lost", error="the connection closed")
   return Outcome("interrupted", error=f"cancelled on the Dask cluster ({exc.reason})")
  except distributed.KilledWorker as exc:
   worker = getattr(getattr(exc, "last_worker", None), "address", "?")
   await self._stop_remote([key], None)  # what the dead worker's command left behind
   return Outcome("worker-lost", error=str(worker))
  except Exception as exc:  # the cluster could not run it (conductor missing on a worker...)
   return Outcome("failed", error=f"on the Dask cluster: {describe_exception(exc)}")
  finally:
   future.release()  # read once: a worker lost later must not make Dask compute it again
  if not isinstance(result, Outcome):
   return Outcome("failed", error=f"the Dask task returned {type(result).__name__}")
  return result

 async def _fetch(self, future: Any) -> Any:
  """`future`'s result, fetched with those of the other attempts that finished in the same
  loop turn: one gather (a round trip to the scheduler, and from it to the workers) for
  them all. Dask's own gathers coalesce only while one waits for a free slot."""
  waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
  if not self._to_fetch and self._fetching is None:
   asyncio.get_running_loop().call_soon(self._fetch_queued)
  self._to_fetch.append((future, waiter))
  try:
   return await waiter
  except _FetchAlone:  # the batch's gather failed: each fetches its own, as Dask reports it
   return await future

 def _fetch_queued(self, _: object = None) -> None:
  # One gather at a time: what finishes meanwhile goes into the next one, so the batches
  # grow with the load (fewer round trips for the scheduler and the workers to serve).
  self._fetching = None
  batch = [entry for entry in self._to_fetch if not entry[1].done()]  # done: cancelled
  self._to_fetch = []
  if batch:
   # Referenced until it ends (asyncio keeps only weak references to tasks).
   self._fetching = asyncio.ensure_future(self._gather(batch))
   self._fetching.add_done_callback(self._fetch_queued)

 async def _gather(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
  futures = [future for future, _ in batch]
  client = futures[0].client
  try:
   if any(future.client is not client for future in futures):  # across a reconnection
    raise _FetchAlone
   results = await client.gather(futures)
  except BaseException as exc:
   for _, waiter in batch:
    if not waiter.done():
     waiter.set_exception(_FetchAlone())
   if not isinstance(exc, Exception):
    raise
   return
  for (_, waiter), result in zip(batch, results, strict=True):
   if not waiter.done():
    waiter.set_result(result)

 def _send_queued(self) -> None:
  """Send the attempts queued since the last loop turn as one graph: one update-graph
  message, one scheduler transition batch, instead of one of each per attempt. Each queued
  attempt was admitted and is awaiting its own future (`_attempt`): batching only delays
  a submission to the end of the loop turn, never adds one."""
  batch = [entry for entry in self._queued if not entry[2].done()]  # done: cancelled
  self._queued = []
  if not batch:
   return
  client = self._client
  if client is None or client.status != "running":
   for _, _, waiter in batch:
    waiter.set_exception(_NotSent(Outcome("scheduler-lost", error="the connection is down")))
   return
  keys = [key for _, key, _ in batch]
  try:
   futures = client.map(
    _remote_attempt,
    [ticket for ticket, _, _ in batch],
    keys,
    [self._env] * len(batch),
    key=keys,
    pure=False,
    retries=0,
   )
  except Exception:  # one of them does not pickle: send them one by one, only it fails
   futures = []
   for ticket, key, _ in batch:
    try:
     futures.append(client.submit(_remote_attempt, ticket, key, self._env, key=key, retries=0))
    except Exception as exc:
     why = f"cannot send it to the Dask cluster: {describe_exception(exc)}"
     futures.append(_NotSent(Outcome("failed", error=why)))
  for (_, _, waiter), future in zip(batch, futures, strict=True):
   if isinstance(future, _NotSent):
    waiter.set_exception(future)
   else:
    waiter.set_result(future)

 async def _stop_remote(self, keys: Sequence[str], prefix: str | None) -> int:
  client = self._client
  if client is None or (not keys and prefix is None):
   return 0
  results = await client.run(_stop_here, list(keys), prefix, on_error="return")
  return len({p for found in results.values() if isinstance(found, list) for p in found})

 async def _clear(self) -> int:
  client = self._client
  prefix = self.key_prefix + "_"
  _, cancel_prefix = _scheduler_functions()
  cancelled = int(await client.run_on_scheduler(cancel_prefix, prefix, client.id))
  return cancelled + await self._stop_remote((), prefix)


def _parse_address(address: str) -> int:
 """The N of "local:N" (0 for a scheduler address); a bad address raises DaskError."""
 if address.startswith("local:"):
  count = address.removeprefix("local:")
  if not count.isdigit() or int(count) < 1:
   raise DaskError(
    f"bad Dask address {address!r}: write local:N with N worker processes >= 1, "
    "or tcp://HOST:PORT of a running scheduler"
   )
  return int(count)
 if "://" not in address or address.endswith("://"):
  raise DaskError(
   f"bad Dask address {address!r}: write tcp://HOST:PORT of a running scheduler, "
   "or local:N to start N worker processes here"
  )
 return 0


def _on_asyncio() -> bool:
 try:
  asyncio.get_running_loop()
 except RuntimeError:  # trio (or any loop that is not asyncio)
  return False
 return True
