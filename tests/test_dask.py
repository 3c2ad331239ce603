"""`conductor.dask_executor`: tickets run on a Dask cluster (a LocalCluster on loopback).

One cluster of two worker processes serves the module (starting one takes seconds); one test
starts its own `local:1`. A remote command tells the test it has started by writing to a
FIFO, which the test reads in a thread: no test sleeps, and every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import distributed
import pytest
from distributed.scheduler import key_split_group

from conductor.dag_engine import ExecutionEngine, Status, Ticket
from conductor.dask_executor import DaskError, DaskExecutor, key_prefix_for
from conductor.multi_agent_conductor import ConductorEngine, MmaStatus
from conductor.transitions import Change, Transition
from conductor.workers import (
 CallWork,
 ShellWork,
 SleepWork,
 Usage,
 WorkFailed,
 WorkInterrupted,
 WorkResult,
 run_work,
)

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
WAIT = 30.0  # seconds any one wait may take before the test fails (a loaded CI machine)


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
 with distributed.LocalCluster(
  n_workers=2,
  threads_per_worker=2,
  processes=True,
  dashboard_address=":0",
  silence_logs=50,
 ) as local:
  yield local


@pytest.fixture
def address(cluster: distributed.LocalCluster) -> str:
 return str(cluster.scheduler_address)


def worker_addresses(cluster: distributed.LocalCluster) -> set[str]:
 return {str(w.worker_address) for w in cluster.workers.values()}


def ticket(tid: str, work: object, attempt: int = 1) -> Ticket:
 return Ticket(tid, work=work, attempts=attempt)


def where_am_i(t: Ticket) -> str:
 """A call target the workers import (test_dask is on their path through search_path)."""
 return f"{t.id} ran in {os.getpid()}"


def in_which_thread(t: Ticket) -> str:
 return threading.current_thread().name


def gives_a_result(t: Ticket) -> WorkResult:
 return WorkResult(f"{t.id} done", 0, Usage(prompt_tokens=3, completion_tokens=4))


def gives_a_number(t: Ticket) -> int:
 return 7


def fails_on_purpose(t: Ticket) -> str:
 raise WorkFailed("no good", exit_code=4, output="why")


def breaks(t: Ticket) -> str:
 raise ValueError(f"{t.id} broke")


async def awaits(t: Ticket) -> str:
 await anyio.lowlevel.checkpoint()
 return f"{t.id} awaited"


async def read_fifo(path: Path) -> list[int]:
 """The whole-number words a remote command wrote to the FIFO at `path` (made here)."""

 def read() -> str:
  with open(path) as f:  # blocks until the command opens it for writing
   return f.read()

 with anyio.fail_after(WAIT):
  text = await anyio.to_thread.run_sync(read, abandon_on_cancel=True)
 return [int(word) for word in text.split()]


async def write_fifo(path: Path) -> None:
 def write() -> None:
  with open(path, "w") as f:  # blocks until the command opens it for reading
   f.write("go\n")

 with anyio.fail_after(WAIT):
  await anyio.to_thread.run_sync(write, abandon_on_cancel=True)


def alive(pid: int) -> bool:
 try:
  with open(f"/proc/{pid}/stat") as f:
   state = f.read().rsplit(")", 1)[1].split()[0]
 except (FileNotFoundError, ProcessLookupError):
  return False
 return state != "Z"  # a zombie has exited; its parent reaps it


# -- what runs where ---------------------------------------------------------------------------


async def test_remote_shell_sees_ticket_attempt_and_worker(
 address: str, cluster: distributed.LocalCluster, tmp_path: Path
) -> None:
 command = 'echo "$CONDUCTOR_TICKET|$CONDUCTOR_ATTEMPT|$CONDUCTOR_WORKER|$EXTRA"'
 with anyio.fail_after(WAIT):
  async with DaskExecutor(address, env={"EXTRA": "x"}) as executor:
   result = await executor(ticket("build", ShellWork(command, tmp_path), attempt=3))
 tid, attempt, worker, extra = result.output.strip().split("|")
 assert (tid, attempt, extra) == ("build", "3", "x")
 assert worker in worker_addresses(cluster)
 assert result.exit_code == 0
 assert executor.submitted == 1


async def test_call_and_sleep_tickets_run_on_a_worker(address: str) -> None:
 with anyio.fail_after(WAIT):
  async with DaskExecutor(address) as executor:
   called = await executor(ticket("c", CallWork("test_dask:where_am_i", HERE)))
   slept = await executor(ticket("s", SleepWork(0.01)))
   with pytest.raises(WorkFailed, match="simulated failure"):
    await executor(ticket("f", SleepWork(0, fail=True)))
 tid, _, pid = called.output.rpartition(" ")
 assert tid == "c ran in"
 assert int(pid) != os.getpid()  # another process: a Dask worker
 assert slept.output == ""


async def test_a_call_ticket_keeps_run_calls_contract_and_runs_in_the_tasks_own_thread(
 address: str,
) -> None:
 # Called in the Dask task's thread (no event loop and thread of its own: see
 # `_run_call_here`), with the same outcomes as `workers.run_call` gives locally.
 names = ["gives_a_result", "gives_a_number", "fails_on_purpose", "breaks", "awaits", "missing"]
 with anyio.fail_after(WAIT):
  async with DaskExecutor(address) as executor:
   thread = await executor(ticket("t", CallWork("test_dask:in_which_thread", HERE)))
   for name in names:
    work = CallWork(f"test_dask:{name}", HERE)
    outcomes = []
    for run in (run_work, executor):
     try:
      result = await run(ticket(name, work))
      outcomes.append(("ok", result.output, result.exit_code, result.usage))
     except WorkFailed as exc:
      outcomes.append(("failed", exc.error, exc.exit_code, exc.output if name != "breaks" else ""))
    assert outcomes[0] == outcomes[1], name
 assert "Dask-Default-Threads" in thread.output, thread.output


async def test_attempts_started_together_are_sent_together_and_each_gets_its_own_result(
 address: str, anyio_backend: str
) -> None:
 batches: list[int] = []
 results: dict[str, str] = {}
 with anyio.fail_after(WAIT):
  async with DaskExecutor(address) as executor:
   client = executor._client
   send = client.map

   def counting(*args: object, **kwargs: object) -> object:
    batches.append(len(kwargs["key"]))  # type: ignore[arg-type]
    return send(*args, **kwargs)

   client.map = counting

   async def one(tid: str) -> None:
    result = await executor(ticket(tid, CallWork("test_dask:where_am_i", HERE)))
    results[tid] = result.output

   async with anyio.create_task_group() as tg:
    for i in range(8):
     tg.start_soon(one, f"t{i}")
 assert sum(batches) == 8
 if anyio_backend == "asyncio":  # one loop turn: one graph (on trio they cross a thread)
  assert batches == [8]
 assert {tid: out.rpartition(" ran in")[0] for tid, out in results.items()} == {
  f"t{i}": f"t{i}" for i in range(8)
 }


async def test_a_failing_command_brings_back_its_exit_code_and_output(
 address: str, tmp_path: Path
) -> None:
 work = ShellWork("echo out; echo 'it broke' >&2; exit 3", tmp_path)
 with anyio.fail_after(WAIT):
  async with DaskExecutor(address) as executor:
   with pytest.raises(WorkFailed) as failed:
    await executor(ticket("bad", work))
 assert failed.value.exit_code == 3
 assert failed.value.error == "exit code 3: it broke"
 assert failed.value.output == "out\nit broke\n"


async def test_a_missing_folder_fails_the_ticket_on_the_worker(
 address: str, tmp_path: Path
) -> None:
 work = ShellWork("true", tmp_path / "nowhere")
 with anyio.fail_after(WAIT):
  async with DaskExecutor(address) as executor:
   with pytest.raises(WorkFailed, match="cannot start the command in"):
    await executor(ticket("bad", work))


async def test_local_n_starts_and_stops_its_own_cluster(tmp_path: Path) -> None:
 with anyio.fail_after(WAIT):
  async with DaskExecutor("local:1") as executor:
   assert executor.address.startswith("tcp://127.0.0.1:")
   result = await executor(ticket("t", ShellWork("echo $CONDUCTOR_WORKER", tmp_path)))
 assert result.output.startswith("tcp://127.0.0.1:")
 with anyio.fail_after(WAIT), pytest.raises(DaskError, match="cannot reach"):
  async with DaskExecutor(executor.address, connect_timeout=0.5):
   pass  # closed with the executor: nothing listens there any more


# -- errors a user can cause -------------------------------------------------------------------


async def test_an_unreachable_scheduler_is_one_line_within_the_timeout() -> None:
 with anyio.fail_after(WAIT), pytest.raises(DaskError) as refused:
  async with DaskExecutor("tcp://127.0.0.1:9", connect_timeout=0.5):
   pass
 message = str(refused.value)
 assert "\n" not in message
 assert message.startswith("cannot reach the Dask scheduler at tcp://127.0.0.1:9 within 0.5s")
 assert "dask scheduler" in message


@pytest.mark.parametrize("bad", ["", "local:0", "local:x", "127.0.0.1:8786", "tcp://"])
def test_a_bad_address_is_refused_before_connecting(bad: str) -> None:
 with pytest.raises(DaskError, match="bad Dask address"):
  DaskExecutor(bad)


def test_key_prefix_is_the_same_for_a_state_and_differs_between_states(tmp_path: Path) -> None:
 one = key_prefix_for(tmp_path / "a.state")
 assert one == key_prefix_for(str(tmp_path / "a.state"))
 assert one != key_prefix_for(tmp_path / "b.state")
 assert one.startswith("conductor_") and "-" not in one  # see DaskExecutor.key


@pytest.mark.parametrize("prefix", [None, "conductor_0123456789ab"])
def test_each_ticket_is_a_task_group_of_its_own_on_the_scheduler(prefix: str | None) -> None:
 # One group for every ticket makes Dask queue them on the scheduler ("root-ish"), and hand
 # them to the workers one completion at a time: about half the rate (see DaskExecutor.key).
 executor = DaskExecutor("local:1", key_prefix=prefix)
 keys = [
  executor.key(ticket(tid, None, attempt)) for tid in ("t1", "t2", "build") for attempt in (1, 2)
 ]
 assert len(set(keys)) == 6
 assert all(key.startswith(executor.key_prefix + "_") for key in keys)
 assert len({key_split_group(key) for key in keys}) == 3  # per ticket, whatever the attempt


def test_import_conductor_does_not_import_distributed() -> None:
 import subprocess
 import sys

 code = "import sys, conductor; print('distributed' in sys.modules)"
 done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
 assert done.stdout.strip() == "False"


# -- pause, cancel, faults ---------------------------------------------------------------------


async def test_nothing_is_submitted_after_pause_returned_and_in_flight_tickets_finish(
 address: str, tmp_path: Path
) -> None:
 for name in ("started_a", "started_b", "go_a", "go_b"):
  os.mkfifo(tmp_path / name)

 def blocked(name: str) -> ShellWork:
  return ShellWork(f"echo $$ > started_{name}; read line < go_{name}", tmp_path)

 tickets = [
  Ticket("a", work=blocked("a")),
  Ticket("b", work=blocked("b")),
  Ticket("c", depends_on=("a",), work=ShellWork("true", tmp_path)),
  Ticket("d", depends_on=("b",), work=ShellWork("true", tmp_path)),
 ]
 completed: list[str] = []
 both_done = anyio.Event()

 def on_transition(t: Transition) -> None:
  if t.change is Change.COMPLETED and t.ticket is not None:
   completed.append(t.ticket)
   if len(completed) == 2:
    both_done.set()

 with anyio.fail_after(WAIT):
  async with DaskExecutor(address) as executor:
   conductor = ConductorEngine(ExecutionEngine(tickets), executor, max_workers=2)
   conductor.add_listener(on_transition)
   async with anyio.create_task_group() as tg:
    tg.start_soon(conductor.run)
    await read_fifo(tmp_path / "started_a")
    await read_fifo(tmp_path / "started_b")
    conductor.pause("test")
    at_pause = executor.submitted
    await write_fifo(tmp_path / "go_a")
    await write_fifo(tmp_path / "go_b")
    await both_done.wait()
    # a and b finished while paused; c and d are ready, but nothing more was submitted.
    assert sorted(completed) == ["a", "b"]
    assert executor.submitted == at_pause == 2
    assert conductor.engine.tickets["c"].status is Status.TODO
    assert conductor.engine.tickets["d"].status is Status.TODO
    conductor.resume()
  final = conductor.published
 assert final.status is MmaStatus.DONE
 assert executor.submitted == 4


async def test_cancel_kills_the_remote_process_group(address: str, tmp_path: Path) -> None:
 fifo = tmp_path / "started"
 os.mkfifo(fifo)
 # The shell and a child of its group; both must be gone once the cancel returns.
 work = ShellWork(f"sleep 120 & echo $$ $! > {fifo}; wait", tmp_path)
 with anyio.fail_after(WAIT):
  async with DaskExecutor(address) as executor:
   async with anyio.create_task_group() as tg:
    tg.start_soon(executor, ticket("long", work))
    shell, child = await read_fifo(fifo)
    assert alive(shell) and alive(child)
    tg.cancel_scope.cancel()
   assert not alive(shell)
   assert not alive(child)


async def test_clear_leftovers_stops_a_previous_runs_remote_processes(
 address: str, tmp_path: Path
) -> None:
 fifo = tmp_path / "started"
 os.mkfifo(fifo)
 prefix = key_prefix_for(tmp_path / "p.state")
 work = ShellWork(f"sleep 120 & echo $$ $! > {fifo}; wait", tmp_path)

 async def attempt(killed_run: DaskExecutor) -> None:
  with pytest.raises(WorkInterrupted, match="cancelled on the Dask cluster"):
   await killed_run(ticket("long", work))

 with anyio.fail_after(WAIT):
  async with (
   DaskExecutor(address, key_prefix=prefix) as killed_run,
   anyio.create_task_group() as tg,
  ):
   tg.start_soon(attempt, killed_run)
   shell, child = await read_fifo(fifo)
   # The next run of the same state, before any of its tickets runs:
   async with DaskExecutor(address, key_prefix=prefix) as next_run:
    stopped = await next_run.clear_leftovers()
   assert stopped == 3  # its task on the scheduler, and the two processes of its key
   assert not alive(shell)
   assert not alive(child)


async def test_a_killed_worker_reruns_its_ticket_as_a_new_attempt(
 address: str, tmp_path: Path
) -> None:
 fifo = tmp_path / "started"
 os.mkfifo(fifo)
 log = tmp_path / "attempts"
 command = (
  f'echo "$CONDUCTOR_ATTEMPT" >> {log}; '
  f'if [ "$CONDUCTOR_ATTEMPT" = 1 ]; then echo $$ $PPID > {fifo}; exec sleep 120; fi; '
  "echo finished"
 )
 tickets = [
  Ticket("k", work=ShellWork(command, tmp_path)),
  Ticket("after", depends_on=("k",), work=ShellWork("true", tmp_path)),
 ]
 interrupted: list[Transition] = []
 with anyio.fail_after(WAIT):
  async with DaskExecutor(address) as executor:
   conductor = ConductorEngine(ExecutionEngine(tickets), executor, max_workers=2)
   conductor.add_listener(
    lambda t: interrupted.append(t) if t.change is Change.INTERRUPTED else None
   )
   async with anyio.create_task_group() as tg:
    tg.start_soon(conductor.run)
    shell, worker_pid = await read_fifo(fifo)
    os.kill(worker_pid, signal.SIGKILL)  # the Dask worker running attempt 1
   final = conductor.published
 assert final.status is MmaStatus.DONE
 assert log.read_text().split() == ["1", "2"]
 assert conductor.engine.tickets["k"].attempts == 2
 assert [t.ticket for t in interrupted] == ["k"]
 assert "the Dask worker tcp://" in (interrupted[0].detail or "")
 assert not alive(shell)  # attempt 1 died with its worker
