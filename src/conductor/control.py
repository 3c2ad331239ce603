"""Who holds a state file, and how another terminal talks to the process that does.

A running `conductor run` owns its state file `S` through three files beside it:

- `S-lock`: the owner lock, an `flock` held for the whole run; it holds the owner's pid.
  The kernel drops it when the process dies, however it dies, so a stale lock recovers by
  itself: the next run simply gets it.
- `S-ctl`: the control socket (a Unix socket, mode 0600, owner-only; peers of another uid
  are refused too). `conductor pause | resume | status | approve` connect to it; they check
  in turn that whoever serves it runs as their own user or as the state file's owner
  (SO_PEERCRED), so a socket another user planted is refused, never believed.
- `S-ctl.lock`: the handover lock. A run holds it EXCLUSIVELY from claiming the state until
  it serves its socket, and from before it closes the socket until it released the owner lock.
  A client holds it SHARED for its whole request, so any number of clients work at once.
  A client holding it sees exactly one of two worlds: an owner whose socket answers, or no
  live owner (the socket is missing or refuses: the client then takes the owner lock
  itself, waiting briefly for other such clients, and edits or reads the file). There is no
  moment where a live owner cannot be reached, so no client ever retries, polls or guesses.

None of these files is ever followed through a symlink: a lock file must be a regular file
of this user (or of the state's owner) with one link, opened with O_NOFOLLOW (and O_NONBLOCK,
so a planted FIFO cannot hang us); a socket path that is not a socket is refused.

The running process answers a request on the loop, at once: `pause` closes the scheduler's
gate (`ConductorEngine.pause`, linearizable admission) and commits the flag before it
replies, so when `conductor pause` returns no worker starts any more and the pause survives
a kill. A status report is built on a worker thread from an immutable snapshot, so the loop
is held up only for taking the snapshot. Nothing a client sends can stop the server or the
run: every connection is handled in a task of its own, bounded in time, and whatever it
raises is caught there. A socket path too long for the kernel (about 100 bytes) moves to a
private folder `$TMPDIR/conductor-<uid>/` under a name derived from the state's absolute path.
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
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import SocketListener, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from ._text import printable
from .dag_engine import Status
from .leftovers import STATE_VARIABLE, Leftover, find_leftovers, stop_leftovers
from .multi_agent_conductor import ConductorEngine, Snapshot
from .pipeline import Pipeline
from .store import (
 HistoryEntry,
 PauseState,
 Restored,
 StateError,
 StateStore,
 check_state_file,
 error_for,
)
from .workers import Worker, run_work

__all__ = [
 "CONTROL_TIMEOUT",
 "MAX_REASON",
 "OPS",
 "ControlError",
 "DurableRun",
 "StateLockedError",
 "StateOwner",
 "control_socket_path",
 "handover_lock_path",
 "live_report",
 "open_run",
 "owner_lock_path",
 "request",
 "status_report",
]

CONTROL_TIMEOUT = 5.0  # seconds a client waits for a lock and for the owner's answer
MAX_REASON = 1000  # characters of a pause reason
OPS = ("pause", "resume", "status", "approve")
_MAX_REQUEST = 64 * 1024  # bytes of one request line
_MAX_CONNECTIONS = 256  # connections served at once; more wait in the listen backlog
# After accept() fails for want of a resource (EMFILE, ENOBUFS...) nothing wakes us when it
# is back: wait for one of our own connections to end, or this long (asyncio's
# ACCEPT_RETRY_DELAY), rather than spin on a listener that stays readable.
_ACCEPT_RETRY = 1.0
_SLICE = 256  # list items a worker thread encodes in one go (~0.3 ms holding the GIL)
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
 """The state's owner could not be reached, did not answer in time, refused the request,
 or is not who it should be."""


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


def _trusted_uids(state: Path) -> frozenset[int]:
 """Who may own the files beside `state` and serve its socket: this user, or the state
 file's owner."""
 uids = {os.getuid()}
 with contextlib.suppress(OSError):
  uids.add(os.stat(state).st_uid)
 return frozenset(uids)


def _planted(path: Path) -> str:
 return (
  f"{path}: is a symbolic link; conductor never follows one beside a state (it could be "
  "made to overwrite another file): remove it"
 )


def _open_beside(path: Path, flags: int, trusted: frozenset[int]) -> int:
 """Open a file conductor keeps beside a state, never through a symlink, never blocking on
 a FIFO, and only if it is a regular file of a trusted user with no other hard link.
 Raises `StateError` (one line) for anything else."""
 flags |= os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
 try:
  fd = os.open(path, flags, 0o600)
 except OSError as exc:
  if exc.errno == errno.ELOOP:
   raise StateError(_planted(path)) from None
  if exc.errno == errno.EISDIR:
   raise StateError(f"{path}: is a folder, not a lock file; remove it") from None
  raise StateError(f"{path}: cannot open it ({exc.strerror})") from None
 try:
  info = os.fstat(fd)
  if not stat.S_ISREG(info.st_mode):
   raise StateError(
    f"{path}: is not a regular file (a FIFO, socket or device planted there?); remove it"
   )
  if info.st_uid not in trusted:
   raise StateError(
    f"{path}: belongs to uid {info.st_uid}, not to you or the state's owner; "
    "someone else may have planted it: remove it"
   )
  if info.st_nlink != 1:
   raise StateError(
    f"{path}: has {info.st_nlink} hard links (one may be another file of yours); remove it"
   )
 except BaseException:
  os.close(fd)
  raise
 return fd


# -- flock with a bounded wait ----------------------------------------------------------------


class _FileLock:
 """An `flock` on a file beside a state, created if missing (mode 0600). Not reentrant.

 Exclusive by default; `shared=True` lets any number of shared holders in at once while it
 excludes exclusive ones. flock is per open file, so two `_FileLock`s on one path exclude
 each other even in one process; the kernel releases it when the holder dies. The file is
 opened with `_open_beside`: never through a symlink, never a FIFO or another user's file.
 """

 def __init__(self, path: Path, trusted: frozenset[int] | None = None) -> None:
  self.path = path
  self._trusted = trusted if trusted is not None else frozenset({os.getuid()})
  self._fd: int | None = None

 @property
 def held(self) -> bool:
  return self._fd is not None

 def _open(self) -> int:
  return _open_beside(self.path, os.O_RDWR | os.O_CREAT, self._trusted)

 def try_acquire(self, *, shared: bool = False) -> bool:
  """Take the lock if it is free; never waits."""
  fd = self._open()
  try:
   fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
  except BlockingIOError:
   os.close(fd)
   return False
  except OSError as exc:
   os.close(fd)
   raise StateError(f"{self.path}: cannot lock it ({exc.strerror})") from None
  self._fd = fd
  return True

 def acquire(self, timeout: float, *, shared: bool = False) -> bool:
  """Take the lock, waiting up to `timeout` seconds; False if it stayed taken.

  flock has no timeout, so a helper thread blocks in the kernel (a wait, not a poll) on the
  file we opened and checked here; if we give up first, that thread owns the file and
  releases the lock the moment it gets it.
  """
  if self.try_acquire(shared=shared):
   return True
  fd = self._open()
  guard = threading.Lock()  # guards `outcome` and `abandoned` between the two threads
  outcome: list[OSError | None] = []  # [None] got it, [error] flock failed
  abandoned = False
  done = threading.Event()

  def wait() -> None:
   try:
    fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    error = None
   except OSError as exc:
    error = exc
   with guard:
    if abandoned:
     os.close(fd)
     return
    outcome.append(error)
   done.set()

  threading.Thread(target=wait, name=f"flock {self.path.name}", daemon=True).start()
  done.wait(timeout)
  with guard:
   if not outcome:
    abandoned = True
    return False
  if outcome[0] is not None:
   os.close(fd)
   raise StateError(f"{self.path}: cannot lock it ({outcome[0].strerror})")
  self._fd = fd
  return True

 def release(self) -> None:
  """Release the lock (closing the file releases it). Idempotent."""
  fd, self._fd = self._fd, None
  if fd is not None:
   os.close(fd)

 def write(self, text: str) -> None:
  fd = self._fd
  assert fd is not None
  try:
   os.ftruncate(fd, 0)
   os.pwrite(fd, text.encode(), 0)
  except OSError as exc:  # a full disk, a quota, a read-only remount: the user's to fix
   raise error_for(self.path, exc) from None


def _read_owner(state: Path) -> dict[str, Any]:
 """What the owner lock file says about its holder ({} if nothing usable). Never follows a
 symlink nor blocks on a FIFO planted in its place."""
 path = owner_lock_path(state)
 try:
  fd = _open_beside(path, os.O_RDONLY, _trusted_uids(state))
 except StateError:
  return {}
 try:
  data = json.loads(os.read(fd, 4096) or b"{}")
 except (OSError, ValueError, RecursionError):
  return {}
 finally:
  os.close(fd)
 return data if isinstance(data, dict) else {}


def _log_bug(what: str, exc: BaseException) -> None:
 # A bug in conductor, not the client's fault: one escaped line on stderr, and carry on.
 with contextlib.suppress(OSError, ValueError):
  sys.stderr.write(
   f"conductor: control server: {what} failed ({printable(f'{type(exc).__name__}: {exc}')});"
   " the run carries on\n"
  )
  sys.stderr.flush()


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
  self._socket: socket.socket | None = None  # bound and listening, not yet served
  # Status reports are built on a worker thread, one at a time (`_reporter`); the last one
  # is kept, keyed by what its snapshot shows (`_cached`, used only by that one thread), so
  # that many clients asking at once cost one report.
  self._reporter = anyio.CapacityLimiter(1)
  self._cached: tuple[tuple[object, ...], bytes] | None = None
  # Status requests that arrive while a report is being built share the next one (see
  # `_status`): a burst of N requests costs two reports, not N. Loop-side state.
  self._status_lock = anyio.Lock()
  self._status_arrived = 0  # status requests received so far, numbered from 1
  self._status_served = 0  # the last report answers every request up to this number
  self._status_data = b""

 @classmethod
 def claim(cls, state: Path, *, timeout: float = 2 * CONTROL_TIMEOUT) -> StateOwner:
  """Claim `state` for a run. Returns holding both locks; raises `StateLockedError`.

  Waits (up to `timeout`) only for the handover lock, which clients hold (shared) for one
  request each.
  """
  trusted = _trusted_uids(state)
  handover = _FileLock(handover_lock_path(state), trusted)
  if not handover.acquire(timeout):
   raise ControlError(
    f"{state}: other conductor commands (or a run starting) have held its control lock for "
    f"{timeout:g} s; is one suspended (Ctrl+Z)? try again"
   )
  owner = _FileLock(owner_lock_path(state), trusted)
  try:
   if not owner.try_acquire():
    raise StateLockedError(state, _read_owner(state).get("pid"))
   owner.write(json.dumps({"pid": os.getpid(), "since": time.time()}) + "\n")
  except BaseException:
   owner.release()
   handover.release()
   raise
  claimed = cls(state, owner, handover)
  try:
   # Listen now: a planted file at the socket path is refused before the run starts.
   # Clients wait for the handover lock until `serve()` answers.
   claimed._socket = claimed._listen()
  except BaseException:
   claimed.release()
   raise
  return claimed

 def _listen(self) -> socket.socket:
  path = self.socket_path
  # Only a dead owner can have left a socket here: we hold the owner lock.
  try:
   info = path.lstat()
  except FileNotFoundError:
   pass
  else:
   if stat.S_ISLNK(info.st_mode):
    raise StateError(_planted(path))
   if not stat.S_ISSOCK(info.st_mode):
    raise StateError(f"{path}: exists and is not a control socket; remove it")
   try:
    path.unlink()
   except FileNotFoundError:
    pass
   except OSError as exc:
    raise StateError(
     f"{path}: cannot remove the old control socket ({exc.strerror}); "
     "another user may have put it there: remove it"
    ) from None
  sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  try:
   old = os.umask(0o177)  # born 0600: no moment where others may connect
   try:
    sock.bind(os.fspath(path))  # bind never follows a symlink: it fails if the path exists
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
  it reports started once the socket listens, then releases the handover lock.

  Never raises once started (but for cancellation): each connection is served in a task of
  its own that catches whatever it raises, so no client can stop the server or the run
  beside it, and one slow client never holds up another."""
  sock, self._socket = self._socket, None
  listener = await SocketListener.from_socket(sock if sock is not None else self._listen())
  task_status.started()
  self._handover.release()
  try:
   await self._accept_loop(listener, conductor, store)
  except Exception as exc:  # a bug in the loop itself: stop serving, keep the run
   _log_bug("the accept loop", exc)

 async def _accept_loop(
  self, listener: SocketListener, conductor: ConductorEngine, store: StateStore
 ) -> None:
  slots = anyio.Semaphore(_MAX_CONNECTIONS)
  freed = anyio.Event()  # set when a connection ends; replaced after each accept failure

  async def connection(stream: SocketStream) -> None:
   try:
    async with stream:
     await self._handle(stream, conductor, store)
   except Exception as exc:  # a bug: never let it reach the listener or the run
    _log_bug("a control request", exc)
   finally:
    slots.release()
    freed.set()

  async with listener, anyio.create_task_group() as tg:
   while True:
    await slots.acquire()
    try:
     stream = await listener.accept()
    except (OSError, anyio.BrokenResourceError) as exc:
     slots.release()
     cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
     if getattr(cause, "errno", None) in (errno.ECONNABORTED, errno.EINTR, errno.EPROTO):
      continue  # that client gave up before we took it: take the next one
     _log_bug("accepting a connection", cause)
     freed = anyio.Event()
     with anyio.move_on_after(_ACCEPT_RETRY):
      await freed.wait()
     continue
    tg.start_soon(connection, stream)

 async def hand_over(self) -> None:
  """Take the handover lock back (exclusively) before the run ends, while the socket still
  answers: clients in the middle of a request get their answer first. Bounded by the
  clients' own timeout; proceeds without the lock after that (the clients' requests then
  fail loudly)."""
  try:
   await anyio.to_thread.run_sync(self._handover.acquire, 2 * CONTROL_TIMEOUT)
  except StateError as exc:  # e.g. out of file descriptors: as if it timed out
   _log_bug("taking the handover lock", exc)

 def release(self) -> None:
  """Remove our socket, then release the owner lock, then the handover lock. Idempotent."""
  if self._socket is not None:
   self._socket.close()
   self._socket = None
  if self._socket_ino is not None:
   with contextlib.suppress(OSError):
    if self.socket_path.lstat().st_ino == self._socket_ino:
     self.socket_path.unlink()
   self._socket_ino = None
  self._owner.release()
  self._handover.release()

 def _report(self, snap: Snapshot, history: Sequence[HistoryEntry] | None) -> bytes:
  # On a worker thread, one at a time (see __init__).
  key = _cache_key(snap)
  if history is None and self._cached is not None and self._cached[0] == key:
   return self._cached[1]
  report = live_report(snap, self.state, os.getpid(), history)
  data = _encode_yielding({"ok": True, "report": report})
  if history is None:
   self._cached = (key, data)
  return data

 async def _handle(
  self, stream: SocketStream, conductor: ConductorEngine, store: StateStore
 ) -> None:
  # Time is bounded where we wait on the client (its request; its reading our answer), not
  # while we work on the answer: under load that may take longer, and is ours to finish.
  uid = _peer_uid(stream)
  if uid is not None and uid != os.getuid():
   await _send(stream, {"ok": False, "error": f"this run answers only uid {os.getuid()}"})
   return
  line: bytes | None = None
  with anyio.move_on_after(CONTROL_TIMEOUT):
   try:
    line = await BufferedByteReceiveStream(stream).receive_until(b"\n", _MAX_REQUEST)
   except anyio.DelimiterNotFound:
    error = f"a request is one line of at most {_MAX_REQUEST} bytes"
    await _send(stream, {"ok": False, "error": error})
    return
   except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
    return  # closed or reset before a whole line: nobody to answer
  if line is None:
   error = f"no whole request line arrived within {CONTROL_TIMEOUT:g} s"
   await _send(stream, {"ok": False, "error": error})
   return
  message = _parse(line)
  if isinstance(message, str):
   await _send(stream, {"ok": False, "error": message})
   return
  if message["op"] == "status" and not message.get("history"):
   await _send_bytes(stream, await self._status(conductor))
   return
  try:
   reply = self._answer(message, conductor, store)
  except _Refused as exc:
   await _send(stream, {"ok": False, "error": str(exc)})
   return
  except Exception as exc:  # a bug: answer what we can, then log it
   await _send(stream, {"ok": False, "error": "the run could not answer (see its stderr)"})
   raise exc from None
  if callable(reply):  # a status with its history: its own report
   # The report lists every ticket: built and encoded on a thread from the immutable
   # snapshot taken on the loop, which meanwhile goes on starting workers. One thread at a
   # time: they would only take turns at the GIL, and the loop would wait in that queue.
   data = await anyio.to_thread.run_sync(reply, limiter=self._reporter)
  else:
   data = _encode(reply)
  await _send_bytes(stream, data)

 async def _status(self, conductor: ConductorEngine) -> bytes:
  # Each report is built from a snapshot taken after every request it answers arrived, so
  # none gets an answer older than its question. While one is being built, the requests
  # arriving queue on the (fair) lock; the first of them builds the next report for all.
  self._status_arrived += 1
  number = self._status_arrived
  async with self._status_lock:
   if self._status_served < number:
    served = self._status_arrived
    snap = conductor.snapshot()  # exact on the loop: ~4 ms at 20,000 tickets
    report = functools.partial(self._report, snap, None)
    self._status_data = await anyio.to_thread.run_sync(report, limiter=self._reporter)
    self._status_served = served
   return self._status_data

 def _answer(
  self, message: dict[str, Any], conductor: ConductorEngine, store: StateStore
 ) -> dict[str, Any] | Callable[[], bytes]:
  # On the loop, synchronously: a pause has taken effect (gate closed, flag committed)
  # before the reply is even built.
  op = message["op"]
  if op == "status":
   # Exact on the loop. O(tickets) even with its rows cached: ~4 ms at 20,000 tickets,
   # the only part of a status request that holds the loop up.
   snap = conductor.snapshot()
   # --history reads the store (O(history)) on the loop: the store is the loop's alone.
   events = store.history() if message.get("history") else None
   return functools.partial(self._report, snap, events)
  if op == "approve":
   return {"ok": True, "report": _approve(conductor, message["tickets"])}
  if op == "pause":
   conductor.pause(message.get("reason") or "paused from another terminal")
  else:
   conductor.resume()
  store.commit()
  snap = conductor.snapshot(rows=False)
  # A pause's answer stays small: the caller is waiting for the acknowledgement.
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


def _cache_key(snap: Snapshot) -> tuple[object, ...]:
 # `version` counts every change a snapshot shows but the phase (a lingering run settling)
 return (snap.version, snap.status, snap.paused, len(snap.rows))


def _approve(conductor: ConductorEngine, ids: list[str]) -> dict[str, Any]:
 # All or nothing for unknown ids: a typo approves nothing.
 tickets = conductor.engine.tickets
 unknown = [tid for tid in dict.fromkeys(ids) if tid not in tickets]
 if unknown:
  raise _Refused(
   f"no ticket {_listed(unknown)} in pipeline {printable(conductor.name)}; "
   "`conductor status` lists them"
  )
 waiting = set(conductor.snapshot(rows=False).awaiting_approval)
 approved: list[str] = []
 not_waiting: list[dict[str, str]] = []
 for tid in dict.fromkeys(ids):
  if tid in waiting:
   conductor.queue(tid)
   approved.append(tid)
  else:
   not_waiting.append({"id": tid, "status": str(tickets[tid].status)})
 return {
  "pipeline": conductor.name,
  "pid": os.getpid(),
  "approved": approved,
  "not_waiting": not_waiting,
 }


class _Refused(Exception):
 """A request the run will not carry out; its text is the answer's error."""


def _listed(ids: Sequence[str], limit: int = 8) -> str:
 shown = ", ".join(printable(repr(tid)) for tid in ids[:limit])
 return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _parse(line: bytes) -> dict[str, Any] | str:
 """The request in `line`, checked; or why it is refused (a str)."""
 try:
  message = json.loads(line.decode("utf-8"))
 except UnicodeDecodeError:
  return "a request is UTF-8 JSON"
 except RecursionError:
  return "a request is a flat JSON object (this one is nested too deeply)"
 except ValueError:
  return "a request is one JSON object on one line"
 if not isinstance(message, dict):
  return "a request is a JSON object"
 op = message.get("op")
 if op not in OPS:
  return f"unknown request {printable(repr(op))[:80]}; known: {', '.join(OPS)}"
 reason = message.get("reason")
 if reason is not None and not isinstance(reason, str):
  return "a reason is a string"
 if reason is not None and len(reason) > MAX_REASON:
  return f"a reason is at most {MAX_REASON} characters"
 if op == "approve":
  ids = message.get("tickets")
  if not isinstance(ids, list) or not ids or not all(isinstance(t, str) for t in ids):
   return "approve needs `tickets`, a non-empty list of ticket ids"
 return message


def _encode(reply: dict[str, Any]) -> bytes:
 return json.dumps(reply).encode() + b"\n"


def _encode_yielding(reply: dict[str, Any]) -> bytes:
 """`_encode` for a large reply, on a worker thread: `json.dumps` holds the GIL for a whole
 call (tens of ms for 20,000 tickets), which would stall the loop as surely as encoding
 there. Long lists are encoded in slices, letting the loop in between."""
 return _dumps_yielding(reply).encode() + b"\n"


def _dumps_yielding(value: object) -> str:
 if isinstance(value, dict):
  return (
   "{" + ", ".join(f"{json.dumps(str(k))}: {_dumps_yielding(v)}" for k, v in value.items()) + "}"
  )
 if isinstance(value, list) and len(value) > _SLICE:
  parts = []
  for i in range(0, len(value), _SLICE):
   parts.append(json.dumps(value[i : i + _SLICE])[1:-1])
   time.sleep(0)  # drops the GIL: the loop takes it now if it waits for it
  return "[" + ", ".join(parts) + "]"
 return json.dumps(value)


async def _send(stream: SocketStream, reply: dict[str, Any]) -> None:
 await _send_bytes(stream, _encode(reply))


async def _send_bytes(stream: SocketStream, data: bytes) -> None:
 # A client that went away, or does not read its answer in time, is simply dropped.
 with (
  anyio.move_on_after(CONTROL_TIMEOUT),
  contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
 ):
  await stream.send(data)


def _peer_uid(stream: SocketStream) -> int | None:
 # The socket is 0600 already; on Linux also check the peer, in case the folder's
 # permissions let someone else reach a socket created before a chmod or umask change.
 if not hasattr(socket, "SO_PEERCRED"):
  return None
 raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
 return _peer_credentials(raw)[1]


def _peer_credentials(sock: socket.socket) -> tuple[int, int]:
 """(pid, uid) of the process at the other end of a connected Unix socket (Linux)."""
 creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
 pid, uid, _gid = struct.unpack("3i", creds)
 return pid, uid


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
 written. On success the caller owns the result and must `close()` it. `state` is resolved
 first (symlinks followed once, here), so a run and its clients agree on the files beside it.
 """
 state = Path(os.path.realpath(state))
 check_state_file(state)  # refuse a foreign file before creating anything beside it
 try:
  state.parent.mkdir(parents=True, exist_ok=True)
 except OSError as exc:
  raise StateError(f"{state}: cannot create its folder ({exc.strerror})") from None
 owner = StateOwner.claim(state)
 try:
  # The deep check sees the file as SQLite will (WAL included); with `fresh`, a damaged
  # state is moved aside (`store.moved_aside`) and a new one started.
  store = StateStore.open(state, deep_check=True, fresh=fresh)
  try:
   source = str(pipeline.path) if pipeline.path else None
   restored = store.restore(pipeline.name, pipeline.tickets, fresh=fresh, source=source)
  except BaseException:
   store.close()
   raise
  # Before anything starts: no attempt may overlap the interrupted one it replaces.
  interrupted = set(restored.interrupted)
  attempts = {t.id: t.attempts for t in pipeline.tickets if t.id in interrupted}
  stopped = find_leftovers(state, attempts)
  unstoppable = stop_leftovers(stopped)
 except BaseException:
  owner.release()
  raise
 return DurableRun(state, store, owner, restored, tuple(stopped), tuple(unstoppable))


# -- the client's side ------------------------------------------------------------------------


def request(
 state: Path,
 op: str,
 *,
 reason: str | None = None,
 history: bool = False,
 tickets: Iterable[str] = (),
) -> dict[str, Any]:
 """Send `op` (one of `OPS`: "pause", "resume", "status", "approve") for `state`; return
 the answer, `{"ok": True, "live": bool, "report": {...}}`.

 With a live owner the request goes to its socket and returns once it was carried out
 (for pause: the gate is closed and the flag durable; for approve: `tickets` are queued,
 the report says which were `approved` and which were `not_waiting`). With none, pause and
 resume write the flag into the file and status reads it, under the owner lock (waiting up
 to `CONTROL_TIMEOUT` for another such command); approve needs a live run. Blocking; safe
 to call from many processes and threads at once. Raises `StateError` (one line) for every
 user-facing problem: no state, a foreign or damaged file, a reason over `MAX_REASON`
 characters, unknown ticket ids, an owner that does not answer in time or is not who it
 should be.
 """
 if op not in OPS:
  raise ValueError(f"unknown request {op!r}; known: {', '.join(OPS)}")
 if reason is not None and len(reason) > MAX_REASON:
  raise StateError(
   f"the reason is {len(reason)} characters long; the limit is {MAX_REASON}: shorten it"
  )
 ids = list(tickets)
 if op == "approve" and not ids:
  raise StateError("approve: which tickets? give at least one ticket id")
 state = Path(os.path.realpath(state))  # a symlink and its target share one run
 if not check_state_file(state):
  raise StateError(
   f"{state}: no such state file; a run makes it (`conductor run PIPELINE --state {state}`)"
  )
 message: dict[str, Any] = {"op": op, "reason": reason, "history": history}
 if op == "approve":
  message["tickets"] = ids
 data = _encode(message)
 if len(data) > _MAX_REQUEST:
  raise StateError(
   f"{state}: the request is {len(data)} bytes, over the limit of {_MAX_REQUEST}; "
   "approve fewer tickets at a time"
  )
 trusted = _trusted_uids(state)
 handover = _FileLock(handover_lock_path(state), trusted)
 if not handover.acquire(CONTROL_TIMEOUT, shared=True):
  pid = _read_owner(state).get("pid")
  who = f"conductor pid {pid}" if pid else "a conductor run"
  raise ControlError(
   f"{state}: {who} has been starting or ending a run of it for {CONTROL_TIMEOUT:g} s "
   "(is it suspended, Ctrl+Z?); try again"
  )
 try:
  answer = _ask(state, data, trusted)
  if answer is not None:
   answer["live"] = True
   return answer
  if op == "approve":
   raise ControlError(
    f"{state}: no run of it is live; approvals go to a running pipeline: start it with "
    "`conductor run`, then approve"
   )
  return _offline(state, op, reason, history, trusted)
 finally:
  handover.release()


def _offline(
 state: Path, op: str, reason: str | None, history: bool, trusted: frozenset[int]
) -> dict[str, Any]:
 # No live owner (we hold the handover lock shared, and the socket does not answer): the
 # owner lock is free, or held by another command like this one for a moment.
 owner = _FileLock(owner_lock_path(state), trusted)
 if not owner.acquire(CONTROL_TIMEOUT):
  holder = _read_owner(state)
  pid, command = holder.get("pid"), holder.get("command")
  if isinstance(command, str):
   raise ControlError(
    f"{state}: `conductor {printable(command)}` (pid {pid}) has held it for "
    f"{CONTROL_TIMEOUT:g} s; is it suspended (Ctrl+Z)? try again"
   )
  who = f"conductor pid {pid}" if pid else "a conductor run"
  raise ControlError(
   f"{state}: {who} holds it but its control socket {control_socket_path(state)} is gone; "
   "was the socket deleted? stop that run (Ctrl+C) and start it again"
  )
 try:
  owner.write(json.dumps({"pid": os.getpid(), "since": time.time(), "command": op}) + "\n")
  # deep_check: a damaged state is refused before anything is written to it.
  with StateStore.open(state, create=False, deep_check=True) as store:
   if op == "pause":
    store.set_paused(True, reason or "paused while not running")
   elif op == "resume":
    store.set_paused(False)
   return {"ok": True, "live": False, "report": status_report(store, history=history)}
 finally:
  owner.release()


def _ask(state: Path, data: bytes, trusted: frozenset[int]) -> dict[str, Any] | None:
 """Send `data` to the live owner and return its answer; None if there is no live owner
 (no socket, or a stale one nobody listens on)."""
 path = control_socket_path(state)
 try:
  info = path.lstat()
 except FileNotFoundError:
  return None
 except OSError as exc:
  raise ControlError(f"{path}: cannot look at the control socket ({exc.strerror})") from None
 if stat.S_ISLNK(info.st_mode):
  raise ControlError(_planted(path))
 if not stat.S_ISSOCK(info.st_mode):
  raise ControlError(f"{path}: is not a control socket (something else was put there); remove it")
 who = "the conductor that owns it"
 with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
  sock.settimeout(CONTROL_TIMEOUT)
  try:
   sock.connect(os.fspath(path))
  except (FileNotFoundError, ConnectionRefusedError):
   return None  # left by a run that was killed: nobody listens
  except TimeoutError:
   raise ControlError(
    f"{state}: {who} did not take the connection within {CONTROL_TIMEOUT:g} s; "
    "is it suspended (Ctrl+Z)?"
   ) from None
  except OSError as exc:
   raise ControlError(f"{state}: cannot reach {who} ({exc.strerror or exc})") from None
  if hasattr(socket, "SO_PEERCRED"):
   pid, uid = _peer_credentials(sock)
   if uid not in trusted:
    raise ControlError(
     f"{state}: its control socket {path} is served by uid {uid} (pid {pid}), not by you or "
     "the state's owner; refusing to talk to it: remove the socket, or stop that program"
    )
   who = f"conductor pid {pid}"
  try:
   sock.sendall(data)
   received = bytearray()
   while not received.endswith(b"\n"):
    chunk = sock.recv(1 << 16)
    if not chunk:
     break
    received += chunk
  except TimeoutError:
   raise ControlError(
    f"{state}: {who} did not answer within {CONTROL_TIMEOUT:g} s; is it suspended (Ctrl+Z)?"
   ) from None
  except OSError as exc:
   raise ControlError(f"{state}: lost {who} mid-request ({exc.strerror or exc})") from None
 try:
  answer = json.loads(received)
 except (ValueError, RecursionError):
  answer = None
 if not isinstance(answer, dict) or not answer.get("ok"):
  error = answer.get("error") if isinstance(answer, dict) else None
  if not isinstance(error, str):
   error = "no answer (did it end meanwhile?)"
  raise ControlError(f"{state}: {who} refused the request: {printable(error)}")
 return answer


# -- status -----------------------------------------------------------------------------------


def status_report(store: StateStore, *, history: bool = False) -> dict[str, Any]:
 """Everything `conductor status` shows of a state no run holds, as JSON-ready data.

 From the store: tickets (status, attempts, last error, exit code), counts, pending, the
 pause flag with reason and time, running-at-pause. Tickets stored `in_progress` were
 interrupted. The keys are those of `live_report`.
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
  "live": False,
  "pid": None,
  "mma_status": _offline_status(counts, total, pause),
  "paused": pause.paused,
  "pause_reason": pause.reason,
  "paused_since": pause.since,
  "running": [],
  "running_at_pause": list(pause.running_at_pause),
  "finishing": [],
  "interrupted": [row.id for row in tickets if row.status == Status.IN_PROGRESS],
  "pending": [row.id for row in tickets if row.status == Status.TODO],
  "awaiting_approval": [],
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
  report["history"] = _history(store.history())
 return report


def live_report(
 snap: Snapshot, state: Path, pid: int, history: Sequence[HistoryEntry] | None = None
) -> dict[str, Any]:
 """`status_report` of a live run, from its snapshot (with rows) alone: pure, so a worker
 thread builds it while the loop runs on. `updated_at` is the wall time of the ticket's
 latest start or end in this run; None if this run has not touched it yet."""
 wall = time.time() - time.monotonic()  # TicketRow times are time.monotonic()
 counts = snap.counts
 tickets = []
 for row in snap.rows:
  at = row.finished_at if row.finished_at is not None else row.started_at
  tickets.append(
   {
    "id": row.id,
    "status": row.status.value,
    "attempts": row.attempts,
    "error": row.error,
    "exit_code": row.exit_code,
    "updated_at": None if at is None else at + wall,
   }
  )
 report: dict[str, Any] = {
  "state": str(state),
  "pipeline": snap.name,
  "live": True,
  "pid": pid,
  "mma_status": snap.status.value,
  "paused": snap.paused,
  "pause_reason": snap.pause_reason,
  "paused_since": snap.paused_at,
  "running": [w.ticket for w in snap.running],
  "running_at_pause": list(snap.running_at_pause),
  "finishing": list(snap.finishing),
  "interrupted": [],
  "pending": list(snap.pending),
  "awaiting_approval": list(snap.awaiting_approval),
  "counts": {
   "todo": counts.todo,
   "in_progress": counts.in_progress,
   "completed": counts.completed,
   "failed": counts.failed,
   "blocked": counts.blocked,
   "total": counts.total,
  },
  "tickets": tickets,
 }
 if history is not None:
  report["history"] = _history(history)
 return report


def _history(entries: Iterable[HistoryEntry]) -> list[dict[str, Any]]:
 return [
  {
   "seq": h.seq,
   "at": h.at,
   "ticket": h.ticket,
   "status": h.status,
   "attempt": h.attempt,
   "detail": h.detail,
   "pid": h.pid,
  }
  for h in entries
 ]


def _offline_status(counts: dict[Status, int], total: int, pause: PauseState) -> str:
 if total and counts[Status.COMPLETED] == total:
  return "done"
 if pause.paused:
  return "paused"
 if counts[Status.FAILED] or counts[Status.BLOCKED]:
  return "error"
 return "idle"
