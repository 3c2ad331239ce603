"""How another terminal talks to a live run: the control protocol, and its client `request`.

A running `conductor run` owns its state file `S` through three files beside it:

- `S-lock`: the owner lock, held exclusively for the whole run; it holds the owner's pid.
  The kernel drops it when the process dies, however it dies, so a stale lock recovers by
  itself: the next run simply gets it.
- `S-ctl`: the control socket (a Unix socket, mode 0600, owner-only; peers of another uid
  are refused too). `conductor pause | resume | status | approve | output` connect to it; they check
  in turn that whoever serves it is a trusted owner (`conductor._files.trusted_owners`:
  their own user, root, or the state file's owner; SO_PEERCRED), so a socket another user
  planted is refused, never believed. A socket path too long for the kernel (about 100
  bytes) moves to a private folder `$TMPDIR/conductor-<uid>/` under a name derived from the
  state's absolute path.
- `S-ctl.lock`: the handover lock. A run holds it EXCLUSIVELY from claiming the state until
  it serves its socket, and from before it closes the socket until it released the owner lock
  (`conductor.server.StateOwner`). A client holds it SHARED for its whole request, so any
  number of clients work at once. A client holding it sees exactly one of two worlds: an
  owner whose socket answers, or no live owner (the socket is missing or refuses: the client
  then takes the owner lock itself, waiting briefly for other such clients, and edits or
  reads the file). There is no moment where a live owner cannot be reached, so no client
  ever retries, polls or guesses.

These files exist only while they are in use. A lock file is removed by its last holder as
it lets go, and re-checked by whoever locks it next (`conductor.locks`: the guarantee above
holds across the removal); the run removes its socket as it ends. So after a run, or a
`conductor pause | resume | status`, only the state itself is left. A run that was killed
(kill -9, a crash, a power cut) leaves its files behind. They are harmless: the kernel
dropped the locks with the process, and a socket nobody listens on reads as no live owner.
The next command on the state reuses the lock files and removes them; the next run also
replaces the socket.

None of these files is ever followed through a symlink, nor used if another user may have
planted it (`conductor.locks.open_beside`); a socket path that is not a socket is refused.
How a run answers is in `conductor.server`; what a status report holds, `conductor.report`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._files import trusted_owners
from ._text import printable, shell_path, shown_path
from .locks import FileLock, handover_lock_path, owner_lock_path, read_owner, symlink_refusal
from .multi_agent_conductor import TokenBudgetSpent, budget_reached
from .report import status_report
from .store import StateError, StateStore, check_state_file

__all__ = [
 "CONTROL_TIMEOUT",
 "MAX_REASON",
 "MAX_REQUEST",
 "OPS",
 "BudgetRefusedError",
 "ControlError",
 "control_socket_path",
 "encode",
 "peer_credentials",
 "request",
 "status_json",
]

CONTROL_TIMEOUT = 5.0  # seconds a client waits for a lock and for the owner's answer
MAX_REASON = 1000  # characters of a pause reason
MAX_REQUEST = 64 * 1024  # bytes of one request line
OPS = ("pause", "resume", "status", "approve", "output")
_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 104 (macOS) or 108 (Linux) bytes with the NUL


class ControlError(StateError):
 """The state's owner could not be reached, did not answer in time, refused the request,
 or is not who it should be."""


class BudgetRefusedError(StateError):
 """A resume the token budget refuses: `used` tokens of `budget` are spent, or the budget
 `asked` for (`resume --budget`) is not above `used`. Nothing was changed. The command's
 line, which says how to raise it, is `views.budget_words`."""

 def __init__(self, used: int, budget: int, asked: int | None = None) -> None:
  if asked is not None:
   text = f"a token budget of {asked:,} is not above the {used:,} tokens used; raise it"
  else:
   text = f"{budget_reached(used, budget)}; raise it (resume --budget)"
  super().__init__(text)
  self.used, self.budget, self.asked = used, budget, asked

 def as_dict(self) -> dict[str, int | None]:
  """What a refusal carries over the socket (`budget` beside the answer's `error`)."""
  return {"used": self.used, "budget": self.budget, "asked": self.asked}


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


def encode(message: dict[str, Any]) -> bytes:
 """A request or an answer on the wire: one line of JSON."""
 return json.dumps(message).encode() + b"\n"


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
 """(pid, uid) of the process at the other end of a connected Unix socket (Linux)."""
 creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
 pid, uid, _gid = struct.unpack("3i", creds)
 return pid, uid


def request(
 state: Path,
 op: str,
 *,
 reason: str | None = None,
 history: bool = False,
 tickets: Iterable[str] = (),
 summary: bool = False,
 ticket: str | None = None,
 token_budget: int | None = None,
) -> dict[str, Any]:
 """Send `op` (one of `OPS`: "pause", "resume", "status", "approve", "output") for
 `state`; return the answer, `{"ok": True, "live": bool, "report": {...}}`.

 With a live owner the request goes to its socket and returns once it was carried out
 (for pause: the gate is closed and the flag durable; for approve: `tickets` are queued,
 the report says which were `approved` and which were `not_waiting`). With none, pause and
 resume write the flag into the file and status and output read it, under the owner lock
 (waiting up to `CONTROL_TIMEOUT` for another such command); approve needs a live run.
 Blocking; safe to call from many processes and threads at once. Raises `StateError` (one
 line) for every user-facing problem: no state, a foreign or damaged file, a reason over
 `MAX_REASON` characters, unknown ticket ids, an owner that does not answer in time or is
 not who it should be.

 resume with `token_budget` first raises the budget to it. A resume while the budget is
 spent, or with a budget not above the tokens used, raises `BudgetRefusedError` and
 changes nothing. The report of a resume has `tokens_used` and `token_budget`.

 output: the whole output of `ticket`'s latest finished attempt. The report has
 `pipeline`, `ticket`, its `status` (None: no such ticket) and `output` (None: none yet,
 or it printed nothing). The answer of a live run may be megabytes: it comes in pieces
 (`server._output_pieces`), read here whole.

 `summary` (status without history): a live run may answer with what plain `conductor
 status` shows, O(tickets shown) rather than O(tickets) (`report.live_summary`: the same
 keys, the long lists cut short, and a `summary` key); a state no run holds, and a run
 of an older conductor, answer in full.
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
 if op == "output" and not ticket:
  raise StateError("output: which ticket? give its id")
 if token_budget is not None and (op != "resume" or token_budget < 1):
  raise ValueError(f"token_budget is for resume, a whole number >= 1; got {token_budget!r}")
 message: dict[str, Any] = {"op": op, "reason": reason, "history": history}
 if op == "approve":
  message["tickets"] = ids
 if op == "output":
  message["ticket"] = ticket
 if token_budget is not None:
  message["token_budget"] = token_budget
 if summary and op == "status" and not history:
  message["summary"] = True
 answer = _request(state, message)
 assert isinstance(answer, dict)  # only a `raw` request is answered in bytes
 return answer


def status_json(state: Path, *, history: bool = False) -> bytes:
 """What `conductor status --json` prints: the status report of `request(state, "status",
 history=history)`, `live` first, as one line of JSON and a newline.

 From a live run, the bytes it sent, not parsed here: the report of 100,000 tickets is
 ~12 MB, which takes ~100 ms to parse and as long again to encode. Raises what `request`
 raises; a live run that stops mid-answer raises `ControlError` (nothing half printed).
 """
 answer = _request(state, {"op": "status", "reason": None, "history": history, "raw": True})
 if isinstance(answer, bytes):
  return answer
 # A state no run holds, or a run of an older conductor (which answers `raw` as any status).
 return encode({"live": answer["live"], **answer["report"]})


def _request(state: Path, message: dict[str, Any]) -> dict[str, Any] | bytes:
 # `request`'s delivery: to the live owner, else done here on the file.
 state = Path(os.path.realpath(state))  # a symlink and its target share one run
 if not check_state_file(state):
  raise StateError(
   f"{shown_path(state)}: no such state file; a run makes it (`conductor run PIPELINE --state {shell_path(state)}`)"
  )
 op = message["op"]
 data = encode(message)
 if len(data) > MAX_REQUEST:
  raise StateError(
   f"{shown_path(state)}: the request is {len(data)} bytes, over the limit of {MAX_REQUEST}; "
   "approve fewer tickets at a time"
  )
 trusted = trusted_owners(state)
 handover = FileLock(handover_lock_path(state), trusted)
 if not handover.acquire(CONTROL_TIMEOUT, shared=True):
  pid = read_owner(state).get("pid")
  who = f"conductor pid {pid}" if pid else "a conductor run"
  raise ControlError(
   f"{shown_path(state)}: {who} has been starting or ending a run of it for {CONTROL_TIMEOUT:g} s "
   "(is it suspended, Ctrl+Z?); try again"
  )
 try:
  answer = _ask(state, data, trusted)
  if isinstance(answer, dict):
   answer["live"] = True
  if answer is not None:
   return answer
  if op == "approve":
   raise ControlError(
    f"{shown_path(state)}: no run of it is live; approvals go to a running pipeline: start it with "
    "`conductor run`, then approve"
   )
  return _offline(state, message, trusted)
 finally:
  handover.release()


def _offline(state: Path, message: dict[str, Any], trusted: frozenset[int]) -> dict[str, Any]:
 op = message["op"]
 # No live owner (we hold the handover lock shared, and the socket does not answer): the
 # owner lock is free, or held by another command like this one for a moment.
 owner = FileLock(owner_lock_path(state), trusted)
 if not owner.acquire(CONTROL_TIMEOUT):
  holder = read_owner(state)
  pid, command = holder.get("pid"), holder.get("command")
  if isinstance(command, str):
   raise ControlError(
    f"{shown_path(state)}: `conductor {printable(command)}` (pid {pid}) has held it for "
    f"{CONTROL_TIMEOUT:g} s; is it suspended (Ctrl+Z)? try again"
   )
  who = f"conductor pid {pid}" if pid else "a conductor run"
  raise ControlError(
   f"{shown_path(state)}: {who} holds it but its control socket {control_socket_path(state)} is gone; "
   "was the socket deleted? stop that run (Ctrl+C) and start it again"
  )
 try:
  owner.write(json.dumps({"pid": os.getpid(), "since": time.time(), "command": op}) + "\n")
  # deep_check: a damaged state is refused before anything is written to it.
  with StateStore.open(state, create=False, deep_check=True) as store:
   if op == "output":
    return {"ok": True, "live": False, "report": _stored_output(store, message["ticket"])}
   if op == "pause":
    store.set_paused(True, message["reason"] or "paused while not running")
   elif op == "resume":
    _resume_stored(store, message.get("token_budget"))
   report = status_report(store, history=message["history"])
   return {"ok": True, "live": False, "report": report}
 finally:
  owner.release()


def _resume_stored(store: StateStore, asked: int | None) -> None:
 # The store applies a live run's rule (`StateStore.set_paused`, as `ConductorEngine.resume`):
 # refused before anything is written. Said here as the command's refusal.
 try:
  store.set_paused(False, token_budget=asked)
 except TokenBudgetSpent as exc:
  budget = exc.budget if asked is None else store.token_budget() or asked
  raise BudgetRefusedError(exc.used, budget, asked) from None


def _stored_output(store: StateStore, ticket: str) -> dict[str, Any]:
 # The report of `output` from a state no run holds (the keys a live run answers with:
 # `server._Answers._output`).
 status = store.ticket_status(ticket)
 return {
  "pipeline": store.meta().get("pipeline"),
  "ticket": ticket,
  "status": status,
  "output": store.output(ticket) if status is not None else None,
 }


def _ask(state: Path, data: bytes, trusted: frozenset[int]) -> dict[str, Any] | bytes | None:
 """Send `data` to the live owner and return its answer; None if there is no live owner
 (no socket, or a stale one nobody listens on). The answer is one line of JSON, or, to a
 `raw` status request (`server._enveloped`), the header line `{"ok": true, "bytes": N}`
 and N bytes of the report's JSON, returned as they are."""
 path = control_socket_path(state)
 try:
  info = path.lstat()
 except FileNotFoundError:
  return None
 except OSError as exc:
  raise ControlError(
   f"{shown_path(path)}: cannot look at the control socket ({exc.strerror})"
  ) from None
 if stat.S_ISLNK(info.st_mode):
  raise ControlError(symlink_refusal(path))
 if not stat.S_ISSOCK(info.st_mode):
  raise ControlError(
   f"{shown_path(path)}: is not a control socket (something else was put there); remove it"
  )
 who = "the conductor that owns it"
 with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
  sock.settimeout(CONTROL_TIMEOUT)
  try:
   sock.connect(os.fspath(path))
  except (FileNotFoundError, ConnectionRefusedError):
   return None  # left by a run that was killed: nobody listens
  except TimeoutError:
   raise ControlError(
    f"{shown_path(state)}: {who} did not take the connection within {CONTROL_TIMEOUT:g} s; "
    "is it suspended (Ctrl+Z)?"
   ) from None
  except OSError as exc:
   raise ControlError(f"{shown_path(state)}: cannot reach {who} ({exc.strerror or exc})") from None
  if hasattr(socket, "SO_PEERCRED"):
   pid, uid = peer_credentials(sock)
   if uid not in trusted:
    raise ControlError(
     f"{shown_path(state)}: its control socket {path} is served by uid {uid} (pid {pid}), not by you or "
     "the state's owner; refusing to talk to it: remove the socket, or stop that program"
    )
   who = f"conductor pid {pid}"
  try:
   sock.sendall(data)
   line, rest = _receive_line(sock)
   answer = _loads(line)
   body = answer.get("bytes") if isinstance(answer, dict) and answer.get("ok") else None
   if type(body) is int and "report" not in answer:  # a `raw` answer's header
    return _receive_body(sock, rest, body, state, who)
  except TimeoutError:
   raise ControlError(
    f"{shown_path(state)}: {who} did not answer within {CONTROL_TIMEOUT:g} s; is it suspended (Ctrl+Z)?"
   ) from None
  except OSError as exc:
   raise ControlError(
    f"{shown_path(state)}: lost {who} mid-request ({exc.strerror or exc})"
   ) from None
 if not isinstance(answer, dict) or not answer.get("ok"):
  error = answer.get("error") if isinstance(answer, dict) else None
  budget = answer.get("budget") if isinstance(answer, dict) else None
  if isinstance(budget, dict) and isinstance(budget.get("used"), int):
   raise BudgetRefusedError(budget["used"], budget["budget"], budget.get("asked"))
  if not isinstance(error, str):
   error = "no answer (did it end meanwhile?)"
  raise ControlError(f"{shown_path(state)}: {who} refused the request: {printable(error)}")
 return answer


def _receive_line(sock: socket.socket) -> tuple[bytes, bytes]:
 # The first line (with its newline; all there is if the owner hung up first) and what
 # came after it. Each chunk is searched once: an answer may be megabytes on one line.
 received = bytearray()
 end = -1
 while end < 0:
  chunk = sock.recv(1 << 16)
  if not chunk:
   return bytes(received), b""
  start = len(received)
  received += chunk
  end = received.find(b"\n", start)
 return bytes(received[: end + 1]), bytes(received[end + 1 :])


def _loads(line: bytes) -> Any:
 try:
  return json.loads(line)
 except (ValueError, RecursionError):
  return None


def _receive_body(sock: socket.socket, rest: bytes, size: int, state: Path, who: str) -> bytes:
 # A `raw` answer's body: exactly `size` bytes ending in a newline, read straight into one
 # buffer. Short (the owner ended mid-answer) or malformed: an error, never half a report.
 got = len(rest)
 if size > 0 and got <= size:
  body = bytearray(size)
  view = memoryview(body)
  view[:got] = rest
  while got < size:
   n = sock.recv_into(view[got:])
   if not n:
    break
   got += n
  if got == size and body.endswith(b"\n"):
   return bytes(body)
 raise ControlError(
  f"{shown_path(state)}: {who} sent an incomplete or malformed answer ({got} of {size} bytes of a report); "
  "did it end meanwhile?"
 )


# -- status -----------------------------------------------------------------------------------
