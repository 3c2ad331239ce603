"""Finding and stopping what a killed run left running, with real processes (Linux /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conductor.leftovers import STATE_VARIABLE, find_leftovers, stop_leftovers


def _pidfds() -> bool:
 try:
  os.close(os.pidfd_open(os.getpid()))
 except (AttributeError, OSError):
  return False
 return True


pytestmark = pytest.mark.skipif(
 not Path("/proc/self/environ").exists() or not _pidfds(), reason="needs Linux /proc and pidfds"
)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
 started: list[subprocess.Popen[bytes]] = []

 def start(state: Path, ticket: str, attempt: int, command: str) -> subprocess.Popen[bytes]:
  """Run `command` as a ticket's shell would; return once it printed its first line."""
  env = {
   **os.environ,
   STATE_VARIABLE: str(state),
   "CONDUCTOR_TICKET": ticket,
   "CONDUCTOR_ATTEMPT": str(attempt),
  }
  proc = subprocess.Popen(
   ["/bin/sh", "-c", command], env=env, stdout=subprocess.PIPE, start_new_session=True
  )
  started.append(proc)
  assert proc.stdout is not None
  assert proc.stdout.readline() == b"ready\n"  # set up (traps, children) before we look
  return proc

 yield start
 for proc in started:
  if proc.poll() is None:
   os.killpg(proc.pid, signal.SIGKILL)
  proc.wait(10)
  if proc.stdout is not None:
   proc.stdout.close()


Spawn = Callable[[Path, str, int, str], "subprocess.Popen[bytes]"]


def test_only_the_interrupted_attempts_of_this_state_are_found(
 tmp_path: Path, spawn: Spawn
) -> None:
 state = tmp_path / "p.state.db"
 mine = spawn(state, "a", 2, "echo ready; exec sleep 30")
 spawn(state, "a", 1, "echo ready; exec sleep 30")  # an earlier attempt: not this one
 spawn(state, "b", 2, "echo ready; exec sleep 30")  # b completed: its daemon stays
 spawn(tmp_path / "q.state.db", "a", 2, "echo ready; exec sleep 30")  # another state
 found = find_leftovers(state, {"a": 2})
 assert [(x.pid, x.ticket, x.attempt) for x in found] == [(mine.pid, "a", 2)]
 assert find_leftovers(state, {}) == []


def test_stopping_ends_the_whole_group_and_escalates_to_sigkill(
 tmp_path: Path, spawn: Spawn
) -> None:
 state = tmp_path / "p.state.db"
 # The shell leads its group and waits for a child of its own; SIGTERM to the group ends both.
 polite = spawn(state, "a", 1, "sleep 30 & echo ready; wait")
 # This one ignores SIGTERM (an ignored signal stays ignored across exec): SIGKILL it is.
 stubborn = spawn(state, "b", 3, "trap '' TERM; echo ready; exec sleep 30")
 found = find_leftovers(state, {"a": 1, "b": 3})
 assert {x.pid for x in found} >= {polite.pid, stubborn.pid}
 assert stop_leftovers(found, grace=0.3, timeout=5) == []
 assert polite.wait(5) == -signal.SIGTERM
 assert stubborn.wait(5) == -signal.SIGKILL
 assert find_leftovers(state, {"a": 1, "b": 3}) == []
