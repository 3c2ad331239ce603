"""Faults of a run on a real Dask cluster: `dask scheduler` and `dask worker` processes on
loopback (`dask_cluster.DaskCluster`), killed -9 mid-ticket.

- a worker killed mid-ticket: the ticket runs again as attempt 2 (interrupted, no retry
  spent), its first attempt's process is dead, no completed ticket runs twice, the run ends
  once a worker is back;
- an unreachable scheduler at start: one line, exit 2, within the connect timeout;
- the scheduler killed mid-run: the pipeline pauses itself saying why (status says so), keeps
  its state, and carries on once the scheduler is back on the same address (the lost attempt
  stopped before the new one starts), or stops when asked (and the next run carries on);
- the runner killed -9 mid-ticket: the next run stops the killed run's remote ticket before
  that ticket runs again, so two attempts never overlap.

The first two are also driven from Python (`ConductorEngine` + `DaskExecutor`, on asyncio and
trio through the `anyio_backend` fixture); the rest run the command, `conductor run --dask`,
with `--backend asyncio` and `--backend trio`. Without distributed installed this module
fails to import: it never skips on CI (only off Linux, which has no /proc).

Every ticket appends "ID ATTEMPT" to the file `log` as it ends, so counting lines says what ran
to its end how often. A long ticket tells the test it is running by writing its pid to the
FIFO `pids`, read with a bounded `select`: no test sleeps, every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from dask_cluster import WAIT, DaskCluster, reap_clusters
from procs import Child, conductor, one_line_error, pid_fifo, reap_children

from conductor.dag_engine import ExecutionEngine, Status, Ticket
from conductor.dask_executor import WORKER_LOSSES, DaskExecutor
from conductor.multi_agent_conductor import ConductorEngine
from conductor.snapshots import Snapshot
from conductor.transitions import Change, Transition
from conductor.workers import CallWork, ShellWork

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

BACKENDS = ["asyncio", "trio"]

# Every ticket ends by appending "ID ATTEMPT" to `log` (one write of one short line: atomic).
APPEND = 'echo "$CONDUCTOR_TICKET $CONDUCTOR_ATTEMPT" >> log'
# The first attempt reports "PID WORKER" on the FIFO `pids` and sleeps (its shell becomes the
# sleep: the pid is the process to look for); a later one just ends, as every ticket does.
LONG = f'if [ "$CONDUCTOR_ATTEMPT" = 1 ]; then echo "$$ $CONDUCTOR_WORKER" > pids; exec sleep 600; fi; {APPEND}'
# Every attempt reports "PID ATTEMPT"; the first then sleeps, a later one ends.
REPORTED = (
 'echo "$$ $CONDUCTOR_ATTEMPT" > pids; if [ "$CONDUCTOR_ATTEMPT" = 1 ]; then exec sleep 600; fi; '
 + APPEND
)


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
 yield
 reap_children()
 reap_clusters()
 while _PIDS:
  with contextlib.suppress(ProcessLookupError):
   os.kill(_PIDS.pop(), signal.SIGKILL)


_PIDS: list[int] = []  # ticket processes seen: killed after each test whatever happened


def read_reports(fd: int, count: int) -> list[list[str]]:
 """Wait for `count` lines on the FIFO (each written at once: a pipe write is atomic); each
 line's words. Their first word, a pid, is killed after the test whatever happens."""
 data = b""
 while data.count(b"\n") < count:
  readable, _, _ = select.select([fd], [], [], WAIT)
  assert readable, f"only {data!r} reported within {WAIT} s"
  data += os.read(fd, 4096)
 reports = [line.split() for line in data.decode().splitlines()]
 _PIDS.extend(int(words[0]) for words in reports)
 return reports


def alive(pid: int) -> bool:
 """Running (a zombie nobody reaps yet counts as ended)."""
 try:
  stat = Path(f"/proc/{pid}/stat").read_text()
 except FileNotFoundError:
  return False
 return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ran(folder: Path) -> list[str]:
 """The "ID ATTEMPT" lines of the tickets that ran to their end, sorted."""
 log = folder / "log"
 return sorted(log.read_text().splitlines()) if log.exists() else []


# -- a worker killed mid-ticket (through Python: ConductorEngine + DaskExecutor) -------------


@pytest.mark.anyio
async def test_a_worker_killed_mid_ticket_runs_it_again_as_attempt_2_once_a_worker_is_back(
 tmp_path: Path, anyio_backend: str
) -> None:
 # One worker: "a" and "b" complete on it (their results are on it when it dies), then
 # "victim" starts there and the worker is killed -9. With no worker left the new attempt
 # waits on the scheduler; a new worker runs it.
 tickets = [
  Ticket("a", work=ShellWork(APPEND, tmp_path)),
  Ticket("b", ("a",), work=ShellWork(APPEND, tmp_path)),
  Ticket("victim", ("b",), work=ShellWork(LONG, tmp_path)),
  Ticket("after", ("victim",), work=ShellWork(APPEND, tmp_path)),
 ]
 seen: list[Transition] = []
 interrupted = anyio.Event()

 def listen(t: Transition) -> None:
  seen.append(t)
  if t.change == Change.INTERRUPTED:
   interrupted.set()

 with DaskCluster(tmp_path / "cluster", workers=1) as cluster, pid_fifo(tmp_path) as fifo:
  async with DaskExecutor(cluster.address, connect_timeout=WAIT) as executor:
   run = ConductorEngine(ExecutionEngine(tickets), executor, max_workers=2)
   run.add_listener(listen)
   executor.attach(run)
   done: list[Snapshot] = []

   async def drive() -> None:
    done.append(await run.run())

   with anyio.fail_after(WAIT):
    async with anyio.create_task_group() as tg:
     tg.start_soon(drive)
     [[pid, worker]] = await anyio.to_thread.run_sync(read_reports, fifo, 1)
     assert alive(int(pid))
     await anyio.to_thread.run_sync(cluster.kill_worker, worker)
     await interrupted.wait()
     # Tied to its worker's life: the first attempt's process died with it.
     assert not alive(int(pid))
     assert not run.paused  # a lost worker is not a lost cluster: nothing pauses
     await anyio.to_thread.run_sync(cluster.add_worker)
  [final] = done
 assert final.counts.completed == 4, final.counts
 assert ran(tmp_path) == ["a 1", "after 1", "b 1", "victim 2"]
 victim = [(t.change, t.attempt) for t in seen if t.ticket == "victim"]
 assert victim == [
  (Change.STARTED, 1),
  (Change.INTERRUPTED, 1),
  (Change.STARTED, 2),
  (Change.COMPLETED, 2),
 ]
 assert tickets[2].status == Status.COMPLETED and tickets[2].retries == 0


@pytest.mark.anyio
async def test_a_ticket_that_ends_its_worker_fails_before_it_takes_down_the_whole_cluster(
 tmp_path: Path, anyio_backend: str
) -> None:
 # Its code ends the Dask worker's process each time (os._exit, as a crash or the OOM killer
 # would): after WORKER_LOSSES workers in a row it fails, instead of running again on the
 # next worker forever; the other tickets run.
 (tmp_path / "ender.py").write_text("import os\ndef end(ticket):\n os._exit(7)\n")
 tickets = [
  Ticket("first", work=ShellWork(APPEND, tmp_path)),
  Ticket("ender", ("first",), work=CallWork("ender:end", tmp_path)),
  Ticket("beside", ("first",), work=ShellWork(APPEND, tmp_path)),
 ]
 seen: list[Transition] = []
 with DaskCluster(tmp_path / "cluster", workers=WORKER_LOSSES + 1) as cluster:
  async with DaskExecutor(cluster.address, connect_timeout=WAIT) as executor:
   run = ConductorEngine(ExecutionEngine(tickets), executor, max_workers=1)
   run.add_listener(seen.append)
   executor.attach(run)
   with anyio.fail_after(6 * WAIT):
    final = await run.run()
 assert (final.counts.completed, final.counts.failed) == (2, 1), final.counts
 ender = [(t.change, t.attempt) for t in seen if t.ticket == "ender"]
 assert ender == [
  *(
   (change, n) for n in range(1, WORKER_LOSSES) for change in (Change.STARTED, Change.INTERRUPTED)
  ),
  (Change.STARTED, WORKER_LOSSES),
  (Change.FAILED, WORKER_LOSSES),
 ]
 error = tickets[1].error or ""
 assert error.startswith(f"{WORKER_LOSSES} Dask workers in a row died while it ran"), error
 assert ran(tmp_path) == ["beside 1", "first 1"]


# -- the scheduler killed mid-run (through Python) -------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("then", ["scheduler back", "stop"])
async def test_a_lost_scheduler_pauses_the_run_by_itself_which_carries_on_once_it_is_back_or_stops(
 tmp_path: Path, anyio_backend: str, then: str
) -> None:
 tickets = [
  Ticket("a", work=ShellWork(APPEND, tmp_path)),
  Ticket("long", ("a",), work=ShellWork(REPORTED, tmp_path)),
  Ticket("after", ("long",), work=ShellWork(APPEND, tmp_path)),
 ]
 seen: list[Transition] = []
 paused = anyio.Event()

 def listen(t: Transition) -> None:
  seen.append(t)
  if t.change == Change.PAUSED:
   paused.set()

 with DaskCluster(tmp_path / "cluster", workers=2) as cluster, pid_fifo(tmp_path) as fifo:
  async with DaskExecutor(cluster.address) as executor:
   run = ConductorEngine(ExecutionEngine(tickets), executor, max_workers=2)
   run.add_listener(listen)
   executor.attach(run)
   done: list[Snapshot] = []

   async def drive() -> None:
    done.append(await run.run())

   with anyio.fail_after(2 * WAIT):
    async with anyio.create_task_group() as tg:
     tg.start_soon(drive)
     [[first, _]] = await anyio.to_thread.run_sync(read_reports, fifo, 1)
     await anyio.to_thread.run_sync(cluster.kill_scheduler)
     await paused.wait()
     # Paused by itself, saying why; what completed stays completed.
     snap = run.snapshot(rows=False)
     assert snap.paused and not snap.paused_by_person, snap
     assert snap.pause_reason is not None
     assert f"lost the Dask scheduler at {cluster.address}" in snap.pause_reason
     assert snap.counts.completed == 1 and snap.counts.todo == 2, snap.counts
     if then == "stop":
      run.stop()
      # The workers that lost the scheduler end themselves, and stop the ticket they ran
      # first (without that, Dask waits for the task for its close timeout, 30 s).
      for orphan in cluster.orphans:
       await anyio.to_thread.run_sync(orphan.proc.wait, WAIT)
      assert not alive(int(first))
     else:
      await anyio.to_thread.run_sync(cluster.restart_scheduler)
      [[_, attempt]] = await anyio.to_thread.run_sync(read_reports, fifo, 1)
      # The lost attempt was stopped before the new one started: they never overlap.
      assert attempt == "2" and not alive(int(first))
  [final] = done
 pause = next(t for t in seen if t.change == Change.PAUSED)
 assert not pause.by_person and pause.auto_resume_at is None
 long = [(t.change, t.attempt) for t in seen if t.ticket == "long"]
 if then == "stop":
  assert final.counts.completed == 1 and final.counts.todo == 2, final.counts
  assert long == [(Change.STARTED, 1), (Change.INTERRUPTED, 1)]
  assert ran(tmp_path) == ["a 1"]
  assert tickets[1].status == Status.TODO and tickets[1].attempts == 1
 else:
  assert final.counts.completed == 3, final.counts
  resumed = [t for t in seen if t.change == Change.RESUMED]
  assert [t.detail for t in resumed] == ["resumed by itself"]
  assert long == [
   (Change.STARTED, 1),
   (Change.INTERRUPTED, 1),
   (Change.STARTED, 2),
   (Change.COMPLETED, 2),
  ]
  assert ran(tmp_path) == ["a 1", "after 1", "long 2"]


# -- through the `conductor` command ------------------------------------------------------------


def toml(*tickets: tuple[str, str, tuple[str, ...]], head: str = "") -> str:
 text = head
 for tid, command, deps in tickets:
  text += f"\n[[tickets]]\nid = {json.dumps(tid)}\nrun = {json.dumps(command)}\n"
  text += f"depends_on = {json.dumps(list(deps))}\n"
 return text


def read_state(state: Path) -> dict[str, tuple[str, int]]:
 conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
 try:
  return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, status, attempts FROM ticket_state")}
 finally:
  conn.close()


def events(state: Path, ticket: str) -> list[str]:
 conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
 try:
  rows = conn.execute("SELECT event FROM history WHERE ticket = ? ORDER BY seq", (ticket,))
  return [r[0] for r in rows]
 finally:
  conn.close()


def free_port() -> int:
 """A port nothing listens on (bound and released: nothing else on loopback takes it meanwhile
 in a test run)."""
 with socket.socket() as sock:
  sock.bind(("127.0.0.1", 0))
  return int(sock.getsockname()[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["--dask", "[pipeline] dask"])
def test_an_unreachable_scheduler_at_start_is_one_line_exit_2_and_nothing_runs(
 tmp_path: Path, backend: str, where: str
) -> None:
 address = f"tcp://127.0.0.1:{free_port()}"
 head = f"[pipeline]\ndask = {json.dumps(address)}\n" if where != "--dask" else ""
 (tmp_path / "p.toml").write_text(toml(("a", APPEND, ()), head=head))
 flag = ["--dask", address] if where == "--dask" else []
 # Bounded below Dask's own connect retry (30 s): the runner gives up after its own timeout.
 result = conductor("run", "p.toml", *flag, "--backend", backend, cwd=tmp_path, timeout=25)
 one_line_error(result, address, "dask scheduler")
 assert ran(tmp_path) == []


def test_dask_without_the_dask_extra_is_one_line_naming_the_extra(tmp_path: Path) -> None:
 # As if distributed were not installed: its import fails (sys.modules[name] = None).
 (tmp_path / "p.toml").write_text(toml(("a", APPEND, ())))
 blocked = (
  "import sys; sys.modules['distributed'] = None; from conductor.cli import main; sys.exit(main())"
 )
 result = subprocess.run(
  [sys.executable, "-c", blocked, "run", "p.toml", "--dask", "local:1"],
  cwd=tmp_path,
  capture_output=True,
  text=True,
  timeout=WAIT,
  check=False,
 )
 one_line_error(result, "pip install 'conductor[dask]'")
 assert ran(tmp_path) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_scheduler_pauses_the_run_saying_why_in_status_and_the_run_carries_on_when_it_is_back(
 tmp_path: Path, backend: str
) -> None:
 (tmp_path / "p.toml").write_text(
  toml(("a", APPEND, ()), ("long", REPORTED, ("a",)), ("after", APPEND, ("long",)))
 )
 with DaskCluster(tmp_path / "cluster", workers=2) as cluster, pid_fifo(tmp_path) as fifo:
  run = Child("run", "p.toml", "--dask", cluster.address, "--backend", backend, cwd=tmp_path)
  [[first, _]] = read_reports(fifo, 1)
  cluster.kill_scheduler()
  run.wait_for(r"pipeline paused: lost the Dask scheduler")
  status = conductor("status", "p.toml", "--json", cwd=tmp_path)
  assert status.returncode == 0, status.stderr
  report = json.loads(status.stdout)
  assert report["paused"] and report["paused_by"] == "pipeline", report
  assert f"lost the Dask scheduler at {cluster.address}" in report["pause_reason"]
  text = conductor("status", "p.toml", cwd=tmp_path).stdout
  assert "lost the Dask scheduler" in text, text
  cluster.restart_scheduler()
  [[_, attempt]] = read_reports(fifo, 1)
  assert attempt == "2" and not alive(int(first))  # never two attempts at once
  assert run.finish() == 0, run.output
 assert ran(tmp_path) == ["a 1", "after 1", "long 2"]
 assert read_state(tmp_path / "p.state.db")["long"] == ("completed", 2)
 assert events(tmp_path / "p.state.db", "long") == [
  "in_progress",
  "interrupted",
  "in_progress",
  "completed",
 ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_paused_by_a_lost_scheduler_stops_when_asked_and_the_next_run_carries_on(
 tmp_path: Path, backend: str
) -> None:
 (tmp_path / "p.toml").write_text(toml(("a", APPEND, ()), ("long", REPORTED, ("a",))))
 with DaskCluster(tmp_path / "cluster", workers=1) as cluster, pid_fifo(tmp_path) as fifo:
  run = Child("run", "p.toml", "--dask", cluster.address, "--backend", backend, cwd=tmp_path)
  [[first, _]] = read_reports(fifo, 1)
  cluster.kill_scheduler()
  run.wait_for(r"pipeline paused: lost the Dask scheduler")
  os.kill(run.proc.pid, signal.SIGINT)  # Ctrl+C: stop, nothing is running any more
  assert run.finish() == 130, run.output
  state = read_state(tmp_path / "p.state.db")
  assert state == {"a": ("completed", 1), "long": ("todo", 1)}, state
  cluster.restart_scheduler()
  # Connected again, the next run ends the pause the lost scheduler caused (it is no person's).
  again = Child("run", "p.toml", "--dask", cluster.address, "--backend", backend, cwd=tmp_path)
  again.wait_for(r"long in_progress \(attempt 2\)")  # fails showing the run's lines if not
  [[_, attempt]] = read_reports(fifo, 1)
  assert attempt == "2" and not alive(int(first))
  assert again.finish() == 0, again.output
 assert ran(tmp_path) == ["a 1", "long 2"]


# REPORTED, but the first attempt's process hides from the runner's own search for what a
# killed run left (`leftovers`: this machine's processes carrying CONDUCTOR_STATE), as if it
# ran on another host: only the cluster-side cleanup (`clear_leftovers`) can find it.
REMOTE = (
 'echo "$$ $CONDUCTOR_ATTEMPT" > pids; if [ "$CONDUCTOR_ATTEMPT" = 1 ]; then '
 f"unset CONDUCTOR_STATE; exec sleep 600; fi; {APPEND}"
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_the_runner_is_killed_the_next_run_stops_its_remote_ticket_before_running_it_again(
 tmp_path: Path, backend: str
) -> None:
 (tmp_path / "p.toml").write_text(toml(("long", REMOTE, ()), ("after", APPEND, ("long",))))
 with DaskCluster(tmp_path / "cluster", workers=2) as cluster, pid_fifo(tmp_path) as fifo:
  args = ("run", "p.toml", "--dask", cluster.address, "--backend", backend)
  first_run = Child(*args, cwd=tmp_path)
  [[first, attempt]] = read_reports(fifo, 1)
  assert attempt == "1"
  os.kill(first_run.proc.pid, signal.SIGKILL)
  first_run.finish()
  # The runner is gone; its ticket is not: Dask cannot stop a task that runs.
  assert alive(int(first))
  second_run = Child(*args, cwd=tmp_path)
  [[_, attempt]] = read_reports(fifo, 1)
  # Stopped before its ticket started again: the attempts never overlap.
  assert attempt == "2" and not alive(int(first))
  assert second_run.finish() == 0, second_run.output
 assert ran(tmp_path) == ["after 1", "long 2"]
 assert events(tmp_path / "p.state.db", "long") == [
  "in_progress",
  "interrupted",
  "in_progress",
  "completed",
 ]
