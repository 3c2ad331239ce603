"""Processes a killed run left behind, found and stopped before their tickets run again.

A shell ticket runs in a session of its own, so a `kill -9` of `conductor run` (or a crash)
leaves it running: nothing tells it. Its ticket was in flight, so the next run starts it
again, and the two attempts would overlap. Every shell ticket of a durable run carries in
its environment `CONDUCTOR_STATE` (the state file), `CONDUCTOR_TICKET` and
`CONDUCTOR_ATTEMPT`, and so do the processes it starts. The next run, which holds the state
and knows which attempts were interrupted, finds their processes by those variables and
stops them before anything starts: SIGTERM to each and to its process group, up to
`TERM_GRACE` seconds to exit, then SIGKILL.

Only processes of interrupted attempts are touched: a daemon that a completed ticket
started on purpose stays. Linux only (it reads `/proc/PID/environ` and waits on pidfds);
elsewhere `find_leftovers` finds nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .workers import REAP_TIMEOUT, TERM_GRACE
from .workers import _signal_group as signal_group  # killpg, an empty group is no error

__all__ = ["STATE_VARIABLE", "Leftover", "find_leftovers", "processes_with", "stop_leftovers"]

STATE_VARIABLE = "CONDUCTOR_STATE"
"""The environment variable that ties a ticket's processes to their state file."""


@dataclass(frozen=True, slots=True)
class Leftover:
 pid: int
 ticket: str
 attempt: int


def find_leftovers(state: Path, attempts: Mapping[str, int]) -> list[Leftover]:
 """The live processes of the given ticket attempts (`ticket -> attempt`) of `state`.

 `state` is compared as given: pass the absolute path the run exported. O(processes).
 """
 if not attempts:
  return []
 found: list[Leftover] = []
 exact = os.fsencode(str(state))
 for pid, env in processes_with(f"{STATE_VARIABLE}={state}"):
  if env.get(os.fsencode(STATE_VARIABLE)) != exact:
   continue
  ticket = env.get(b"CONDUCTOR_TICKET", b"").decode(errors="replace")
  attempt = attempts.get(ticket)
  if attempt is not None and env.get(b"CONDUCTOR_ATTEMPT") == str(attempt).encode():
   found.append(Leftover(pid, ticket, attempt))
 return found


def processes_with(marker: str) -> Iterator[tuple[int, dict[bytes, bytes]]]:
 """(pid, environment) of each process of this user, other than this one, whose
 environment contains `marker` (e.g. "NAME=value" or "NAME="). O(processes); Linux only
 (`/proc`): elsewhere nothing. Processes that end meanwhile, or belong to another user
 (their environment cannot be read), are skipped."""
 if not os.path.isdir("/proc"):
  return
 needle = os.fsencode(marker)
 me = os.getpid()
 for entry in os.scandir("/proc"):
  if not entry.name.isdigit() or int(entry.name) == me:
   continue
  try:
   with open(f"/proc/{entry.name}/environ", "rb") as f:
    data = f.read()
  except OSError:  # gone meanwhile, or another user's
   continue
  if needle in data:
   yield int(entry.name), dict(item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)


def stop_leftovers(
 leftovers: Sequence[Leftover], *, grace: float = TERM_GRACE, timeout: float = REAP_TIMEOUT
) -> list[Leftover]:
 """SIGTERM each leftover and its process group; SIGKILL what is left after `grace` s.

 Blocks until they have exited (waiting on pidfds, no polling), at most `grace + timeout`
 seconds. Returns those still alive after that (normally none: only a process stuck in
 the kernel outlives SIGKILL). Our own process group is never signalled.
 """
 fds: dict[int, Leftover] = {}
 for leftover in leftovers:
  try:
   fds[os.pidfd_open(leftover.pid)] = leftover
  except ProcessLookupError:  # exited already
   pass
  except OSError:  # no pidfds (a kernel before 5.3): kill outright, nothing to wait on
   _signal_pid(leftover.pid, signal.SIGKILL)
 try:
  for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, timeout)):
   if not fds:
    break
   for fd, leftover in fds.items():
    _signal(fd, leftover.pid, sig)
   _wait_exited(fds, wait)
  return list(fds.values())
 finally:
  for fd in fds:
   os.close(fd)


def _signal(fd: int, pid: int, sig: signal.Signals) -> None:
 _signal_group(pid, sig)
 with contextlib.suppress(ProcessLookupError):
  signal.pidfd_send_signal(fd, sig)  # by pidfd: never a recycled pid


def _signal_pid(pid: int, sig: signal.Signals) -> None:
 _signal_group(pid, sig)
 with contextlib.suppress(ProcessLookupError):
  os.kill(pid, sig)


def _signal_group(pid: int, sig: signal.Signals) -> None:
 with contextlib.suppress(ProcessLookupError):
  group = os.getpgid(pid)
  if group != os.getpgrp():
   signal_group(group, sig)


def _wait_exited(fds: dict[int, Leftover], seconds: float) -> None:
 # A pidfd becomes readable when its process exits: wait on all of them at once, and drop
 # (and close) each as it exits.
 poller = select.poll()
 for fd in fds:
  poller.register(fd, select.POLLIN)
 deadline = time.monotonic() + seconds
 while fds:
  left = deadline - time.monotonic()
  if left <= 0:
   return
  for fd, _event in poller.poll(left * 1000):
   poller.unregister(fd)
   os.close(fd)
   del fds[fd]
