"""Who holds a state file, and how another terminal talks to the process that does.

A running `conductor run` owns its state file `S` through three files beside it:

- `S-lock`: the owner lock, an `flock` held for the whole run; it holds the owner's pid.
  The kernel drops it when the process dies, however it dies, so a stale lock recovers by
  itself: the next run simply gets it.
- `S-ctl`: the control socket (a Unix socket, mode 0600, owner-only; peers of another uid
  are refused too). `conductor pause | resume | status` connect to it.
- `S-ctl.lock`: the handover lock. Held briefly by a run from claiming the state until its
  socket listens, and from closing the socket until it released the owner lock; held by a
  client for its whole request. So a client holding it sees exactly one of two worlds: no
  owner (it then takes the owner lock itself and edits the file, e.g. writes the pause
  flag), or an owner whose socket answers. There is no moment where a live owner cannot be
  reached, so no client ever retries, polls or guesses.

The running process answers a request on the loop, at once: `pause` closes the scheduler's
gate (`ConductorEngine.pause`, linearizable admission) and commits the flag before it
replies, so when `conductor pause` returns no worker starts any more and the pause survives
a kill. A socket path too long for the kernel (about 100 bytes) moves to a private folder
`$TMPDIR/conductor-<uid>/` under a name derived from the state's absolute path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import SocketListener, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from .dag_engine import Status
from .leftovers import STATE_VARIABLE, Leftover, find_leftovers, stop_leftovers
from .multi_agent_conductor import ConductorEngine, Snapshot
from .pipeline import Pipeline
from .store import PauseState, Restored, StateError, StateStore, check_state_file
from .workers import Worker, run_work

__all__ = [
 "CONTROL_TIMEOUT",
 "ControlError",
 "DurableRun",
 "StateLockedError",
 "StateOwner",
 "control_socket_path",
 "handover_lock_path",
 "open_run",
 "owner_lock_path",
 "request",
 "status_report",
]

CONTROL_TIMEOUT = 5.0  # seconds a client waits for the lock and for the owner's answer
_MAX_REQUEST = 64 * 1024
_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 104 (macOS) or 108 (Linux) bytes with the NUL

T = TypeVar("T")


class StateLockedError(StateError):
 """Another live process runs this state. `pid` is its process id, when known."""

 def __init__(self, state: Path, pid: int | None) -> None:
  who = f"conductor pid {pid}" if pid else "another conductor"
  super().__init__(
   f"{state} is in use by {who}; control that run with "
   f"`conductor pause|resume|status --state {state}`, or wait until it ends"
  )
  self.pid = pid


class ControlError(StateError):
 """The state's owner could not be reached or did not answer in time."""


# -- the files beside a state -----------------------------------------------------------------


def owner_lock_path(state: Path) -> Path:
 return state.with_name(state.name + "-lock")


def handover_lock_path(state: Path) -> Path:
 return state.with_name(state.name + "-ctl.lock")


def control_socket_path(state: Path) -> Path:
 """`<state>-ctl`, or a short private path when that is too long for a Unix socket.

 Both sides compute it from the state's absolute path, so they always agree.
 """
 absolute = Path(os.path.abspath(state))
 beside = absolute.with_name(absolute.name + "-ctl")
 if len(os.fsencode(beside)) <= _SUN_PATH_MAX:
  return beside
 digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:24]
 return _private_dir() / f"{digest}.sock"


def _private_dir() -> Path:
 folder = Path(tempfile.gettempdir()) / f"conductor-{os.getuid()}"
 with contextlib.suppress(FileExistsError):
  folder.mkdir(mode=0o700)
 info = folder.lstat()
 if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
  raise ControlError(
   f"{folder} is not a private folder of this user; remove it (it holds control sockets)"
  )
 return folder


# -- flock with a bounded wait ----------------------------------------------------------------


class _FileLock:
 """An exclusive `flock` on a file, created if missing (mode 0600). Not reentrant.

 flock is per open file, so two `_FileLock`s on one path exclude each other even in one
 process; the kernel releases it when the holder dies.
 """

 def __init__(self, path: Path) -> None:
  self.path = path
  self._fd: int | None = None

 @property
 def held(self) -> bool:
  return self._fd is not None

 def _open(self) -> int:
  try:
   return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
  except OSError as exc:
   raise StateError(f"{self.path}: cannot create the lock file ({exc.strerror})") from None

 def try_acquire(self) -> bool:
  """Take the lock if it is free; never waits."""
  fd = self._open()
  try:
   fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
   os.close(fd)
   return False
  self._fd = fd
  return True

 def acquire(self, timeout: float) -> bool:
  """Take the lock, waiting up to `timeout` seconds; False if it stayed taken.

  flock has no timeout, so a helper thread blocks in the kernel (a wait, not a poll); if
  we give up first, that thread releases the lock the moment it gets it.
  """
  if self.try_acquire():
   return True
  guard = threading.Lock()  # guards `got` and `abandoned` between the two threads
  got: list[int] = []
  abandoned = False
  done = threading.Event()

  def wait() -> None:
   fd = self._open()
   fcntl.flock(fd, fcntl.LOCK_EX)
   with guard:
    if abandoned:
     os.close(fd)
     return
    got.append(fd)
   done.set()

  threading.Thread(target=wait, name=f"flock {self.path.name}", daemon=True).start()
  done.wait(timeout)
  with guard:
   if got:
    self._fd = got[0]
    return True
   abandoned = True
   return False

 def release(self) -> None:
  """Release the lock (closing the file releases it). Idempotent."""
  fd, self._fd = self._fd, None
  if fd is not None:
   os.close(fd)

 def write(self, text: str) -> None:
  fd = self._fd
  assert fd is not None
  os.ftruncate(fd, 0)
  os.pwrite(fd, text.encode(), 0)


def _read_owner(state: Path) -> dict[str, Any]:
 try:
  data = json.loads(owner_lock_path(state).read_text() or "{}")
 except (OSError, ValueError):
  return {}
 return data if isinstance(data, dict) else {}


# -- the owner's side -------------------------------------------------------------------------


class StateOwner:
 """A live run's claim on its state file, and its control socket.

 `claim()` takes the handover lock and the owner lock (refusing with `StateLockedError` if
 another process owns the state); `serve()` listens and then releases the handover lock;
 `hand_over()` takes it back before the run ends; `release()` drops everything. Use from the
 run's main thread and loop.
 """

 def __init__(self, state: Path, owner: _FileLock, handover: _FileLock) -> None:
  self.state = state
  self.socket_path = control_socket_path(state)
  self._owner = owner
  self._handover = handover
  self._socket_ino: int | None = None  # the socket file we bound, to remove only ours

 @classmethod
 def claim(cls, state: Path, *, timeout: float = 2 * CONTROL_TIMEOUT) -> StateOwner:
  """Claim `state` for a run. Returns holding both locks; raises `StateLockedError`.

  Waits (up to `timeout`) only for the handover lock, which clients hold for one request.
  """
  handover = _FileLock(handover_lock_path(state))
  if not handover.acquire(timeout):
   raise ControlError(
    f"{state}: another conductor command has held its control lock for {timeout:g} s; "
    "is one suspended (Ctrl+Z)? try again"
   )
  owner = _FileLock(owner_lock_path(state))
  try:
   if not owner.try_acquire():
    raise StateLockedError(state, _read_owner(state).get("pid"))
   owner.write(json.dumps({"pid": os.getpid(), "since": time.time()}) + "\n")
  except BaseException:
   owner.release()
   handover.release()
   raise
  return cls(state, owner, handover)

 def _listen(self) -> socket.socket:
  path = self.socket_path
  # Only a dead owner can have left a socket here: we hold the owner lock.
  with contextlib.suppress(FileNotFoundError):
   if not stat.S_ISSOCK(path.lstat().st_mode):
    raise StateError(f"{path} exists and is not a control socket; remove it")
   path.unlink()
  sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  try:
   old = os.umask(0o177)  # born 0600: no moment where others may connect
   try:
    sock.bind(os.fspath(path))
   finally:
    os.umask(old)
   sock.listen(64)
  except OSError as exc:
   sock.close()
   raise StateError(f"{path}: cannot create the control socket ({exc.strerror})") from None
  self._socket_ino = path.lstat().st_ino
  return sock

 async def serve(
  self,
  conductor: ConductorEngine,
  store: StateStore,
  *,
  task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
 ) -> None:
  """Answer control requests until cancelled. Start with `await task_group.start(...)`:
  it reports started once the socket listens, then releases the handover lock."""
  listener = await SocketListener.from_socket(self._listen())
  task_status.started()
  self._handover.release()
  async with listener:
   await listener.serve(lambda stream: self._handle(stream, conductor, store))

 async def hand_over(self) -> None:
  """Take the handover lock back before the run ends, while the socket still answers: a
  client in the middle of a request gets its answer first. Bounded by the clients' own
  timeout; proceeds without the lock after that (the clients' requests then fail loudly)."""
  await anyio.to_thread.run_sync(self._handover.acquire, 2 * CONTROL_TIMEOUT)

 def release(self) -> None:
  """Remove our socket, then release the owner lock, then the handover lock. Idempotent."""
  if self._socket_ino is not None:
   with contextlib.suppress(FileNotFoundError):
    if self.socket_path.lstat().st_ino == self._socket_ino:
     self.socket_path.unlink()
   self._socket_ino = None
  self._owner.release()
  self._handover.release()

 async def _handle(
  self, stream: SocketStream, conductor: ConductorEngine, store: StateStore
 ) -> None:
  async with stream:
   if not _same_user(stream):
    return
   with anyio.move_on_after(CONTROL_TIMEOUT):
    try:
     line = await BufferedByteReceiveStream(stream).receive_until(b"\n", _MAX_REQUEST)
     message = json.loads(line)
    except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound, ValueError):
     return
    reply = _answer(message, conductor, store)
    encode = functools.partial(json.dumps, reply)
    # A status report lists every ticket (tens of ms of JSON for 20,000): encode it on a
    # thread, so the loop goes on starting workers meanwhile. The reply is ours alone.
    is_status = isinstance(message, dict) and message.get("op") == "status"
    data = await anyio.to_thread.run_sync(encode) if is_status else encode()
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
     await stream.send(data.encode() + b"\n")


def _same_user(stream: SocketStream) -> bool:
 # The socket is 0600 already; on Linux also check the peer, in case the folder's
 # permissions let someone else reach a socket created before a chmod or umask change.
 if not hasattr(socket, "SO_PEERCRED"):
  return True
 raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
 creds = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
 _pid, uid, _gid = struct.unpack("3i", creds)
 return bool(uid == os.getuid())


def _answer(message: object, conductor: ConductorEngine, store: StateStore) -> dict[str, Any]:
 # On the loop, synchronously: the pause has taken effect (gate closed, flag committed)
 # before the reply is even built.
 if not isinstance(message, dict):
  return {"ok": False, "error": "a request is a JSON object"}
 op = message.get("op")
 if op == "pause":
  reason = message.get("reason")
  conductor.pause(reason if isinstance(reason, str) else "paused from another terminal")
 elif op == "resume":
  conductor.resume()
 elif op != "status":
  return {"ok": False, "error": f"unknown request {op!r}"}
 store.commit()
 snap = conductor.snapshot(rows=False)  # the report reads the tickets from the store
 if op == "status":
  return {"ok": True, "report": status_report(store, snap, history=bool(message.get("history")))}
 # A pause's answer stays small: building the full report is O(tickets + history), and the
 # caller is waiting for the acknowledgement.
 return {
  "ok": True,
  "report": {
   "pipeline": conductor.name,
   "pid": os.getpid(),
   "mma_status": snap.status.value,
   "paused": snap.paused,
   "running_at_pause": list(snap.running_at_pause),
   "finishing": list(snap.finishing),
  },
 }


# -- a durable run, for the CLI ---------------------------------------------------------------


@dataclass
class DurableRun:
 """A claimed, opened and restored state, ready for a `ConductorEngine` run."""

 state: Path
 store: StateStore
 owner: StateOwner
 restored: Restored
 # Processes of interrupted attempts that the killed run left running, found and stopped
 # before this run (conductor.leftovers); `unstoppable` survived even SIGKILL.
 stopped: tuple[Leftover, ...] = ()
 unstoppable: tuple[Leftover, ...] = ()

 @property
 def worker(self) -> Worker:
  """The default worker for this run: its shell tickets carry `CONDUCTOR_STATE`, by which
  a later run finds what they left running if this one is killed."""
  return functools.partial(run_work, env={STATE_VARIABLE: str(self.state.resolve())})

 async def drive(self, conductor: ConductorEngine, body: Callable[[], Awaitable[T]]) -> T:
  """Run `body()` (which runs `conductor`) with the control socket beside it; hand over
  and stop serving once it returns. Call inside the event loop."""
  async with anyio.create_task_group() as tg:
   await tg.start(self.owner.serve, conductor, self.store)
   result = await body()
   await self.owner.hand_over()
   tg.cancel_scope.cancel()
  self.store.commit()
  return result

 def close(self) -> None:
  """Commit and close the store, then release the claim. Idempotent."""
  try:
   self.store.close()
  finally:
   self.owner.release()


def open_run(state: Path, pipeline: Pipeline, *, fresh: bool = False) -> DurableRun:
 """Check, claim, open and restore `state` for a run of `pipeline`.

 Raises `StateError` (one line, nothing written to the file) for a foreign or damaged
 file, a state another live process runs, or a pipeline changed since the state was
 written. On success the caller owns the result and must `close()` it.
 """
 check_state_file(state)  # refuse a foreign file before creating anything beside it
 try:
  state.parent.mkdir(parents=True, exist_ok=True)
 except OSError as exc:
  raise StateError(f"{state}: cannot create its folder ({exc.strerror})") from None
 owner = StateOwner.claim(state)
 try:
  check_state_file(state, deep=True)
  store = StateStore.open(state)
  try:
   source = str(pipeline.path) if pipeline.path else None
   restored = store.restore(pipeline.name, pipeline.tickets, fresh=fresh, source=source)
  except BaseException:
   store.close()
   raise
  # Before anything starts: no attempt may overlap the interrupted one it replaces.
  interrupted = set(restored.interrupted)
  attempts = {t.id: t.attempts for t in pipeline.tickets if t.id in interrupted}
  stopped = find_leftovers(state.resolve(), attempts)
  unstoppable = stop_leftovers(stopped)
 except BaseException:
  owner.release()
  raise
 return DurableRun(state, store, owner, restored, tuple(stopped), tuple(unstoppable))


# -- the client's side ------------------------------------------------------------------------


def request(
 state: Path, op: str, *, reason: str | None = None, history: bool = False
) -> dict[str, Any]:
 """Send `op` ("pause", "resume" or "status") for `state`; return the answer.

 With a live owner the request goes to its socket and returns once it was carried out
 (for pause: the gate is closed and the flag durable). With none, the flag is written to
 the file directly, under the owner lock. The answer is `{"ok": True, "live": bool,
 "report": status_report(...)}`. Raises `StateError` (one line) for every user-facing
 problem: no state, a foreign file, an owner that does not answer in time.
 """
 if not check_state_file(state):
  raise StateError(
   f"{state}: no such state file; a run makes it (`conductor run PIPELINE --state {state}`)"
  )
 handover = _FileLock(handover_lock_path(state))
 if not handover.acquire(CONTROL_TIMEOUT):
  raise ControlError(
   f"{state}: its control lock stayed taken for {CONTROL_TIMEOUT:g} s "
   "(a run starting or ending, or a suspended command); try again"
  )
 try:
  owner = _FileLock(owner_lock_path(state))
  if owner.try_acquire():
   try:
    with StateStore.open(state, create=False) as store:
     if op == "pause":
      store.set_paused(True, reason or "paused while not running")
     elif op == "resume":
      store.set_paused(False)
     elif op != "status":
      raise ValueError(f"unknown request {op!r}")
     return {"ok": True, "live": False, "report": status_report(store, None, history=history)}
   finally:
    owner.release()
  pid = _read_owner(state).get("pid")
  answer = _ask(state, {"op": op, "reason": reason, "history": history}, pid)
  answer["live"] = True
  return answer
 finally:
  handover.release()


def _ask(state: Path, message: dict[str, Any], pid: object) -> dict[str, Any]:
 path = control_socket_path(state)
 who = f"conductor pid {pid}" if pid else "the conductor that owns it"
 with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
  sock.settimeout(CONTROL_TIMEOUT)
  try:
   sock.connect(os.fspath(path))
   sock.sendall(json.dumps(message).encode() + b"\n")
   data = b""
   while not data.endswith(b"\n"):
    chunk = sock.recv(1 << 16)
    if not chunk:
     break
    data += chunk
  except TimeoutError:
   raise ControlError(
    f"{state}: {who} did not answer within {CONTROL_TIMEOUT:g} s; is it suspended (Ctrl+Z)?"
   ) from None
  except OSError as exc:
   if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
    raise ControlError(
     f"{state}: {who} holds it but its control socket {path} is gone; "
     "was the socket deleted? stop that run (Ctrl+C) and start it again"
    ) from None
   raise ControlError(f"{state}: cannot reach {who} ({exc.strerror or exc})") from None
 try:
  answer = json.loads(data)
 except ValueError:
  answer = None
 if not isinstance(answer, dict) or not answer.get("ok"):
  error = answer.get("error") if isinstance(answer, dict) else "no answer"
  raise ControlError(f"{state}: {who} refused the request: {error}")
 return answer


# -- status -----------------------------------------------------------------------------------


def status_report(
 store: StateStore, live: Snapshot | None, *, history: bool = False
) -> dict[str, Any]:
 """Everything `conductor status` shows, as JSON-ready data.

 From the store: tickets (status, attempts, last error, exit code), counts, pending, the
 pause flag with reason and time, running-at-pause. From `live` (the owner's snapshot, when
 a run is live): `mma_status`, the workers running now and those of them still finishing
 since the pause. Without a live run, tickets stored `in_progress` were interrupted.
 """
 tickets = store.tickets()
 pause = store.pause_state()
 counts = dict.fromkeys(Status, 0)
 for row in tickets:
  counts[Status(row.status)] += 1
 total = len(tickets)
 report: dict[str, Any] = {
  "state": str(store.path),
  "pipeline": store.meta().get("pipeline"),
  "live": live is not None,
  "pid": os.getpid() if live is not None else None,
  "mma_status": live.status.value if live is not None else _offline_status(counts, total, pause),
  "paused": live.paused if live is not None else pause.paused,
  "pause_reason": pause.reason,
  "paused_since": pause.since,
  "running": [w.ticket for w in live.running] if live is not None else [],
  "running_at_pause": list(live.running_at_pause)
  if live is not None
  else list(pause.running_at_pause),
  "finishing": list(live.finishing) if live is not None else [],
  "interrupted": []
  if live is not None
  else [row.id for row in tickets if row.status == Status.IN_PROGRESS],
  "pending": [row.id for row in tickets if row.status == Status.TODO],
  "counts": {**{str(k): v for k, v in counts.items()}, "total": total},
  "tickets": [
   {
    "id": row.id,
    "status": row.status,
    "attempts": row.attempts,
    "error": row.error,
    "exit_code": row.exit_code,
    "updated_at": row.updated_at,
   }
   for row in tickets
  ],
 }
 if history:
  report["history"] = [
   {
    "seq": h.seq,
    "at": h.at,
    "ticket": h.ticket,
    "status": h.status,
    "attempt": h.attempt,
    "detail": h.detail,
    "pid": h.pid,
   }
   for h in store.history()
  ]
 return report


def _offline_status(counts: dict[Status, int], total: int, pause: PauseState) -> str:
 if total and counts[Status.COMPLETED] == total:
  return "done"
 if pause.paused:
  return "paused"
 if counts[Status.FAILED] or counts[Status.BLOCKED]:
  return "error"
 return "idle"
