"""The run's side of the control socket: claiming a state, serving it, answering requests.

`StateOwner` is a live run's claim on its state: it takes the owner lock, listens on the
control socket, and keeps the run's half of the handover protocol (the protocol, its files
and its guarantee are in `conductor.control`). `_Answers` answers one run's requests.

A request is answered on the loop, at once: `pause` closes the scheduler's gate
(`ConductorEngine.pause`, linearizable admission) and commits the flag before it replies, so
when `conductor pause` returns no worker starts any more and the pause survives a kill. A
full status report is fixed at one moment on the loop (`conductor.report`): a snapshot
without rows, and each ticket's item of the report already encoded, which the run keeps up
to date per changed ticket, joined in blocks (`snapshots.SnapshotCache`). So the loop is
held up for the tickets changed since the last report and their blocks, never for every
ticket (the first report encodes them all, a slice per loop turn); the report is then put
together from those blocks, the run going on between slices. `conductor status --json` asks
for it `raw` (`_enveloped`): a header line, then the report's JSON, which the client prints
as it is. A summary (plain `conductor status`) is answered on the loop, O(tickets shown). A
ticket's output (`conductor output`) is read from the store on the loop and sent in pieces:
it may be megabytes (`_output_pieces`). Nothing a client sends can stop the server or the
run: every connection is handled in a task of its own, bounded in time, and whatever it
raises is caught there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketListener, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from ._files import trusted_owners
from ._text import printable, shell_path, shown_path
from .control import (
 CONTROL_TIMEOUT,
 MAX_REASON,
 MAX_REQUEST,
 OPS,
 BudgetRefusedError,
 ControlError,
 control_socket_path,
 encode,
 peer_credentials,
)
from .locks import FileLock, handover_lock_path, owner_lock_path, read_owner, symlink_refusal
from .multi_agent_conductor import ConductorEngine, Snapshot, TokenBudgetSpent
from .report import history_items, live_head, live_summary
from .snapshots import SUMMARY_ROWS, Ids, SnapshotCache
from .store import StateError, StateStore

__all__ = ["StateLockedError", "StateOwner"]

_MAX_CONNECTIONS = 256  # connections served at once; more wait in the listen backlog
# After accept() fails for want of a resource (EMFILE, ENOBUFS...) nothing wakes us when it
# is back: wait for one of our own connections to end, or this long (asyncio's
# ACCEPT_RETRY_DELAY), rather than spin on a listener that stays readable.
_ACCEPT_RETRY = 1.0
# A full status report is assembled in slices, the run going on between them:
_SLICE = 4096  # list items encoded in one go (json.dumps of 4096 ids: ~0.4 ms)
_TURN = 0.001  # seconds of slices in one loop turn at most (but for the last slice)
_CHUNK = 1 << 16  # pieces smaller than this are sent together, not each by itself
# Tickets encoded in one go (`SnapshotCache.fill_entries`): ~1.5 ms. Only the first report
# encodes every ticket; later ones, those changed since.
_FILL = 1000
# An output is JSON-encoded this many characters at a time (~0.5 ms each), the run going
# on between them.
_OUTPUT_SLICE = 1 << 18


class StateLockedError(StateError):
 """Another live process runs this state. `pid` is its process id, when known."""

 def __init__(self, state: Path, pid: int | None) -> None:
  who = f"conductor pid {pid}" if pid else "another conductor"
  super().__init__(
   f"{shown_path(state)} is in use by {who}; control that run with "
   f"`conductor pause|resume|status --state {shell_path(state)}`, or wait until it ends"
  )
  self.pid = pid


def _log_bug(what: str, exc: BaseException) -> None:
 # A bug in conductor, not the client's fault: one escaped line on stderr, and carry on.
 with contextlib.suppress(OSError, ValueError):
  sys.stderr.write(
   f"conductor: control server: {what} failed ({printable(f'{type(exc).__name__}: {exc}')});"
   " the run carries on\n"
  )
  sys.stderr.flush()


class StateOwner:
 """A live run's claim on its state file, and its control socket.

 `claim()` takes the handover lock and the owner lock (refusing with `StateLockedError` if
 another process owns the state); `serve()` listens and then releases the handover lock;
 `hand_over()` takes it back before the run ends; `release()` drops everything. These are
 the run's steps of the handover protocol in `conductor.control`. `serve()` and
 `hand_over()` may follow each other more than once (one run at a time). Use from the run's
 main thread and loop.
 """

 def __init__(self, state: Path, owner: FileLock, handover: FileLock) -> None:
  self.state = state
  self.socket_path = control_socket_path(state)
  self._owner = owner
  self._handover = handover
  self._socket_ino: int | None = None  # the socket file we bound, to remove only ours
  self._socket: socket.socket | None = None  # bound and listening, not yet served

 @classmethod
 def claim(cls, state: Path, *, timeout: float = 2 * CONTROL_TIMEOUT) -> StateOwner:
  """Claim `state` for a run. Returns holding both locks; raises `StateLockedError`.

  Waits (up to `timeout`) only for the handover lock, which clients hold (shared) for one
  request each.
  """
  trusted = trusted_owners(state)
  handover = FileLock(handover_lock_path(state), trusted)
  if not handover.acquire(timeout):
   raise ControlError(
    f"{shown_path(state)}: other conductor commands (or a run starting) have held its control lock for "
    f"{timeout:g} s; is one suspended (Ctrl+Z)? try again"
   )
  owner = FileLock(owner_lock_path(state), trusted)
  try:
   if not owner.try_acquire():
    raise StateLockedError(state, read_owner(state).get("pid"))
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
    raise StateError(symlink_refusal(path))
   if not stat.S_ISSOCK(info.st_mode):
    raise StateError(f"{shown_path(path)}: exists and is not a control socket; remove it")
   try:
    path.unlink()
   except FileNotFoundError:
    pass
   except OSError as exc:
    raise StateError(
     f"{shown_path(path)}: cannot remove the old control socket ({exc.strerror}); "
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
   raise StateError(
    f"{shown_path(path)}: cannot create the control socket ({exc.strerror})"
   ) from None
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
  answers = _Answers(self.state, conductor, store)
  task_status.started()
  self._handover.release()
  try:
   await self._accept_loop(listener, answers)
  except Exception as exc:  # a bug in the loop itself: stop serving, keep the run
   _log_bug("the accept loop", exc)

 async def _accept_loop(self, listener: SocketListener, answers: _Answers) -> None:
  slots = anyio.Semaphore(_MAX_CONNECTIONS)
  freed = anyio.Event()  # set when a connection ends; replaced after each accept failure

  async def connection(stream: SocketStream) -> None:
   try:
    async with stream:
     await answers.handle(stream)
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
  """Remove our socket, then release the owner lock, then the handover lock (each lock
  file goes with its lock: `conductor.locks`). Idempotent."""
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


class _Answers:
 """The answers to one run's control requests, from its engine and store, on its loop.

 A full status report is assembled on the loop, in slices (`_report_pieces`), one at a
 time (`_status_lock`); the last one is kept, keyed by what its snapshot shows (`_cached`),
 so that many clients asking at once cost one report. One with its history (O(history)
 dicts from the store) is assembled on a worker thread, one at a time (`_reporter`).
 """

 def __init__(self, state: Path, conductor: ConductorEngine, store: StateStore) -> None:
  self._state = state
  self._conductor = conductor
  self._store = store
  self._reporter = anyio.CapacityLimiter(1)
  self._cached: tuple[tuple[object, ...], list[bytes]] | None = None  # the report's body
  # Status requests that arrive while a report is being built share the next one (see
  # `_status`): a burst of N requests costs two reports, not N. Loop-side state.
  self._status_lock = anyio.Lock()
  self._status_arrived = 0  # status requests received so far, numbered from 1
  self._status_served = 0  # the last report answers every request up to this number
  self._status_data: list[bytes] = []
  # Each block of `pending` (`snapshots.Ids.blocks`: the same tuple while unchanged)
  # encoded, by id(): a report encodes only the blocks changed since the last. Loop-side.
  self._pending_json: dict[int, tuple[tuple[str, ...], bytes]] = {}

 @property
 def _table(self) -> SnapshotCache:
  return self._conductor.table

 async def handle(self, stream: SocketStream) -> None:
  """Read one request from `stream` and answer it. Raises only for a bug (after
  answering what it can); the caller logs it."""
  # Time is bounded where we wait on the client (its request; its reading our answer), not
  # while we work on the answer: under load that may take longer, and is ours to finish.
  uid = _peer_uid(stream)
  if uid is not None and uid != os.geteuid():
   await _send(stream, {"ok": False, "error": f"this run answers only uid {os.geteuid()}"})
   return
  line: bytes | None = None
  with anyio.move_on_after(CONTROL_TIMEOUT):
   try:
    line = await BufferedByteReceiveStream(stream).receive_until(b"\n", MAX_REQUEST)
   except anyio.DelimiterNotFound:
    error = f"a request is one line of at most {MAX_REQUEST} bytes"
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
  try:
   if message["op"] == "output":
    reply = await self._output(message["ticket"])
   elif message["op"] != "status":
    reply = [encode(self._answer(message))]
   else:
    if message.get("history"):
     body = await self._status_with_history()
    elif message.get("summary"):
     body = [json.dumps(self._summary()).encode()]
    else:
     body = await self._status()
    reply = _enveloped(body, raw=bool(message.get("raw")))
  except _Refused as exc:
   await _send(stream, {"ok": False, "error": str(exc)})
   return
  except BudgetRefusedError as exc:
   await _send(stream, {"ok": False, "error": str(exc), "budget": exc.as_dict()})
   return
  except Exception as exc:  # a bug: answer what we can, then log it
   await _send(stream, {"ok": False, "error": "the run could not answer (see its stderr)"})
   raise exc from None
  await _send_chunks(stream, reply)

 async def _status(self) -> list[bytes]:
  # Each report is built from a snapshot taken after every request it answers arrived, so
  # none gets an answer older than its question. While one is being built, the requests
  # arriving queue on the (fair) lock; the first of them builds the next report for all.
  self._status_arrived += 1
  number = self._status_arrived
  async with self._status_lock:
   if self._status_served < number:
    snap, items = await self._take()
    served = self._status_arrived  # all of them arrived before `_take` returned
    key = _cache_key(snap)
    if self._cached is None or self._cached[0] != key:
     await anyio.lowlevel.checkpoint()  # `_take` held the loop for a few list copies
     head = live_head(snap, self._state, os.getpid(), pending=False)
     known, self._pending_json = self._pending_json, {}

     def pending_json(block: tuple[str, ...]) -> bytes:
      seen = known.get(id(block))
      data = seen[1] if seen is not None and seen[0] is block else _ids_json(block)
      self._pending_json[id(block)] = (block, data)
      return data

     parts = []
     turn = time.perf_counter()
     for part in _coalesced(_report_pieces(head, items, None, pending_json)):
      parts.append(part)
      if time.perf_counter() - turn > _TURN:
       await anyio.lowlevel.checkpoint()  # the run goes on between slices
       turn = time.perf_counter()
     self._cached = (key, parts)
    self._status_data = self._cached[1]
    self._status_served = served
   return self._status_data

 async def _status_with_history(self) -> list[bytes]:
  snap, items = await self._take()
  # --history reads the store (O(history)) on the loop: the store is the loop's alone.
  history = self._store.history()
  head = live_head(snap, self._state, os.getpid(), pending=False)

  def report() -> list[bytes]:  # on a worker thread: history_items is one go, O(history)
   parts = []
   for part in _coalesced(_report_pieces(head, items, history_items(history))):
    parts.append(part)
    time.sleep(0)  # drops the GIL: the loop takes it now if it waits for it
   return parts

  return await anyio.to_thread.run_sync(report, limiter=self._reporter)

 async def _take(self) -> tuple[Snapshot, tuple[bytes, ...]]:
  # What a full report shows, exact at one moment on the loop (after the last await):
  # O(blocks), plus the tickets changed since the last fill and their blocks.
  table = self._table
  while not table.fill_entries(_FILL):
   await anyio.lowlevel.checkpoint()
  return self._conductor.snapshot(rows=False), table.status_blocks()

 def _summary(self) -> dict[str, Any]:
  # On the loop: small, O(tickets shown), and exact.
  snap = self._conductor.snapshot(rows=False)
  table = self._table
  if snap.counts.total <= SUMMARY_ROWS:
   listed = table.status_items()
   notable = len(listed)
  else:
   listed, notable = table.notable(SUMMARY_ROWS)
  return live_summary(snap, self._state, os.getpid(), listed=listed, notable=notable)

 def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
  # On the loop, synchronously: a pause has taken effect (gate closed, flag committed)
  # before the reply is even built.
  conductor = self._conductor
  op = message["op"]
  if op == "approve":
   return {"ok": True, "report": _approve(conductor, message["tickets"])}
  if op == "pause":
   conductor.pause(message.get("reason") or "paused from another terminal")
  else:
   _resume(conductor, message.get("token_budget"))
  self._store.commit()
  if message.get("token_budget") is not None:
   # Durable now, not only with the next pause or at the end of the run (the store
   # records the engine's budget then): a kill -9 must not undo a raised budget.
   self._store.set_token_budget(message["token_budget"])
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
    "tokens_used": snap.tokens_used,
    "token_budget": snap.token_budget,
   },
  }

 async def _output(self, ticket_id: str) -> list[bytes]:
  # On the loop: the store is the loop's alone (`StateStore.output` commits what is
  # pending first, so an attempt that just ended is there).
  conductor = self._conductor
  ticket = conductor.engine.tickets.get(ticket_id)
  output = None if ticket is None else self._store.output(ticket_id)
  head = {
   "pipeline": conductor.name,
   "pid": os.getpid(),
   "ticket": ticket_id,
   "status": None if ticket is None else str(ticket.status),
  }
  parts = []
  for part in _output_pieces(head, output):
   parts.append(part)
   await anyio.lowlevel.checkpoint()  # the run goes on between slices
  return parts


def _resume(conductor: ConductorEngine, budget: int | None) -> None:
 # A budget not above the tokens used is refused before it is set: a refused resume changes
 # nothing. On the loop, where tokens are counted: exact.
 used = conductor.tokens_used
 if budget is not None and budget <= used:
  raise BudgetRefusedError(used, conductor.token_budget or budget, budget)
 try:
  conductor.resume(token_budget=budget)
 except TokenBudgetSpent:
  raise BudgetRefusedError(conductor.tokens_used, conductor.token_budget or 0) from None


def _cache_key(snap: Snapshot) -> tuple[object, ...]:
 # `version` counts every change a snapshot shows but the phase (a lingering run settling)
 return (snap.version, snap.status, snap.paused)


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
 if op == "output" and not isinstance(message.get("ticket"), str):
  return "output needs `ticket`, a ticket id"
 if not isinstance(message.get("raw", False), bool):
  return "`raw` is true or false"
 budget = message.get("token_budget")
 if budget is not None and (
  op != "resume" or type(budget) is not int or budget < 1  # not a bool
 ):
  return "`token_budget` goes with resume: a whole number >= 1"
 return message


def _enveloped(body: list[bytes], *, raw: bool) -> list[bytes]:
 """The answer carrying the report whose JSON is `body` (in pieces): `{"ok": true,
 "report": ...}` on one line, as `encode` would write it; or, `raw` (`control.status_json`),
 the header line `{"ok": true, "bytes": N}` and then the report's N bytes, its JSON and a
 newline, which the client prints as they are rather than parse 10 MB and write them again.
 O(pieces): the report is not copied."""
 if raw:
  return [encode({"ok": True, "bytes": sum(map(len, body)) + 1}), *body, b"\n"]
 return [b'{"ok": true, "report": ', *body, b"}\n"]


def _report_pieces(
 head: dict[str, Any],
 tickets: Sequence[bytes],
 history: list[dict[str, Any]] | None,
 pending_json: Callable[[tuple[str, ...]], bytes] | None = None,
) -> Iterator[bytes]:
 """The report `{**head, "tickets": [...], "history": ...}` (history only if given), encoded
 as `json.dumps` would, in slices of at most `_SLICE` list items or a block of `Ids`: a
 caller yields to the loop between them (`json.dumps` holds the GIL for a whole call, tens
 of ms for 100,000 ids). `tickets` are already encoded (`SnapshotCache.status_blocks`);
 an `Ids` in `head` is encoded a block at a time by `pending_json` (`_ids_json`)."""
 encode_ids = pending_json or _ids_json
 yield b"{"
 for key, value in head.items():
  yield f"{json.dumps(key)}: ".encode()
  if isinstance(value, list):
   yield from _list_pieces(value)
  elif isinstance(value, Ids):
   yield b"["
   for k, block in enumerate(value.blocks):
    data = encode_ids(block)
    yield b", " + data if k else data
   yield b"]"
  else:
   yield json.dumps(value).encode()
  yield b", "
 yield b'"tickets": ['
 yield from tickets
 yield b"]"
 if history is not None:
  yield b', "history": '
  yield from _list_pieces(history)
 yield b"}"


def _output_pieces(head: dict[str, Any], output: str | None) -> Iterator[bytes]:
 """The answer `{"ok": true, "report": {**head, "output": output}}`, encoded as `encode`
 would, the output in slices of `_OUTPUT_SLICE` characters: one `json.dumps` of megabytes
 would hold the GIL, and the loop, for milliseconds. (Slicing a str between any two
 characters is safe: JSON escapes each character alone.)"""
 yield b'{"ok": true, "report": {'
 for key, value in head.items():
  yield f"{json.dumps(key)}: {json.dumps(value)}, ".encode()
 if output is None:
  yield b'"output": null}}\n'
  return
 yield b'"output": "'
 for i in range(0, len(output), _OUTPUT_SLICE):
  yield json.dumps(output[i : i + _OUTPUT_SLICE])[1:-1].encode()
 yield b'"}}\n'


def _ids_json(ids: tuple[str, ...]) -> bytes:
 # The items of a JSON list of `ids`, as `json.dumps` writes them, without the brackets.
 return json.dumps(ids)[1:-1].encode()


def _coalesced(pieces: Iterator[bytes]) -> Iterator[bytes]:
 # Small pieces joined up to `_CHUNK` bytes, big ones passed on as they are (not copied):
 # each piece is a send, a loop turn, of its own.
 small: list[bytes] = []
 size = 0
 for piece in pieces:
  if len(piece) >= _CHUNK:
   if small:
    yield b"".join(small)
    small, size = [], 0
   yield piece
   continue
  small.append(piece)
  size += len(piece)
  if size >= _CHUNK:
   yield b"".join(small)
   small, size = [], 0
 if small:
  yield b"".join(small)


def _list_pieces(value: list[Any]) -> Iterator[bytes]:
 yield b"["
 for i in range(0, len(value), _SLICE):
  yield ((", " if i else "") + json.dumps(value[i : i + _SLICE])[1:-1]).encode()
 yield b"]"


async def _send(stream: SocketStream, reply: dict[str, Any]) -> None:
 await _send_chunks(stream, [encode(reply)])


async def _send_chunks(stream: SocketStream, chunks: Sequence[bytes]) -> None:
 # A client that went away, or does not read its answer in time, is simply dropped.
 with (
  anyio.move_on_after(CONTROL_TIMEOUT),
  contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
 ):
  for chunk in chunks:
   await stream.send(chunk)


def _peer_uid(stream: SocketStream) -> int | None:
 # The socket is 0600 already; on Linux also check the peer, in case the folder's
 # permissions let someone else reach a socket created before a chmod or umask change.
 if not hasattr(socket, "SO_PEERCRED"):
  return None
 raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
 return peer_credentials(raw)[1]
