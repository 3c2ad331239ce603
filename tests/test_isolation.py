"""A `call` ticket in a process of its own (`conductor.isolation`): the same outcomes as in
the runner, and a call that ends its process fails its ticket instead of the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from procs import conductor

from conductor.dag_engine import Ticket
from conductor.isolation import isolating, run_call_isolated
from conductor.workers import (
 CallWork,
 PausePipeline,
 Usage,
 WorkFailed,
 WorkInterrupted,
 WorkResult,
 run_work,
)

pytestmark = pytest.mark.anyio

STEPS = """
import os, signal, sys, time
from conductor.workers import PausePipeline, Usage, WorkFailed, WorkInterrupted

def ok(ticket):
 print("a print of its own, on stdout")  # must not spoil the outcome
 return f"{ticket.id} {ticket.attempts} {os.environ['CONDUCTOR_TICKET']} {os.environ['CONDUCTOR_ATTEMPT']}"

async def async_ok(ticket):
 import anyio
 await anyio.sleep(0)
 return f"async {ticket.inputs}"

def pid(ticket):
 return str(os.getpid())

def sizes(ticket):
 return " ".join(f"{k}={len(v)}" for k, v in sorted(ticket.inputs.items()))

def fails(ticket):
 raise WorkFailed("nope", 4, "the tail")

def pauses(ticket):
 raise PausePipeline("rate limited", 2.5, usage=Usage(3, 4))

def interrupted(ticket):
 raise WorkInterrupted("the machine went away")

def raises(ticket):
 raise ValueError("bad value")

def exits(ticket):
 sys.exit(3)

def hard_exit(ticket):
 os._exit(7)

def crashes(ticket):
 import ctypes
 ctypes.string_at(0)  # a real segfault, in this very thread

def blocks(ticket):
 # Says its pid through the FIFO named by the description, then never returns.
 with open(ticket.description, "w") as fifo:
  fifo.write(str(os.getpid()))
 time.sleep(3600)
"""


@pytest.fixture
def steps(tmp_path: Path) -> Path:
 (tmp_path / "iso_steps.py").write_text(STEPS)
 return tmp_path


def call(
 steps: Path, name: str, description: str = "", inputs: dict[str, str] | None = None
) -> Ticket:
 spec = CallWork(f"iso_steps:{name}", steps)
 return Ticket(name, work=spec, description=description, attempts=2, inputs=inputs)


async def isolated(ticket: Ticket) -> WorkResult:
 assert isinstance(ticket.work, CallWork)
 with anyio.fail_after(60):
  return await run_call_isolated(ticket.work, ticket)


async def test_an_isolated_call_returns_what_the_function_returns(steps: Path) -> None:
 result = await isolated(call(steps, "ok"))
 assert result == WorkResult("ok 2 ok 2")
 ticket = call(steps, "async_ok", inputs={"up": "its output"})
 assert (await isolated(ticket)).output == "async {'up': 'its output'}"


async def test_an_isolated_call_gets_its_inputs_whole_however_large(steps: Path) -> None:
 # Megabytes through the request pipe (a dependency's whole output is an input).
 ticket = call(steps, "sizes", inputs={"a": "x" * 3_000_000, "b": "\u00e9" * 1_000_000})
 assert (await isolated(ticket)).output == "a=3000000 b=1000000"


async def test_an_isolated_call_runs_in_another_process(steps: Path) -> None:
 assert int((await isolated(call(steps, "pid"))).output) != os.getpid()


async def test_an_isolated_call_keeps_what_it_raised_to_say_its_outcome(steps: Path) -> None:
 with pytest.raises(WorkFailed) as failed:
  await isolated(call(steps, "fails"))
 assert (failed.value.error, failed.value.exit_code, failed.value.output) == (
  "nope",
  4,
  "the tail",
 )
 with pytest.raises(PausePipeline) as paused:
  await isolated(call(steps, "pauses"))
 assert (paused.value.reason, paused.value.resume_after, paused.value.usage) == (
  "rate limited",
  2.5,
  Usage(3, 4),
 )
 with pytest.raises(WorkInterrupted, match="the machine went away"):
  await isolated(call(steps, "interrupted"))


async def test_an_isolated_call_fails_with_anything_else_it_raises(steps: Path) -> None:
 with pytest.raises(WorkFailed) as failed:
  await isolated(call(steps, "raises"))
 assert failed.value.error == "ValueError: bad value"
 assert "Traceback" in failed.value.output and "raise ValueError" in failed.value.output
 with pytest.raises(WorkFailed, match=r"SystemExit: sys.exit\(3\) was called"):
  await isolated(call(steps, "exits"))


@pytest.mark.parametrize(
 ("name", "how"), [("hard_exit", "exit code 7"), ("crashes", "killed by SIGSEGV")]
)
async def test_an_isolated_call_that_ends_its_process_fails_its_ticket_only(
 steps: Path, name: str, how: str
) -> None:
 with pytest.raises(WorkFailed) as failed:
  await isolated(call(steps, name))
 assert failed.value.error == (
  f"the call's process died ({how}); this call runs in a process of its own since a run "
  "died while it ran"
 )
 if name == "crashes":  # where it crashed, as the attempt's output
  assert "Fatal Python error: Segmentation fault" in failed.value.output
  assert 'iso_steps.py", line' in failed.value.output and "in crashes" in failed.value.output
 else:
  assert failed.value.output == ""


def read_pid(fifo: Path) -> int:
 with open(fifo) as f:  # blocks until the child opens it to write
  return int(f.read())


async def test_a_cancelled_isolated_call_kills_its_process(steps: Path, tmp_path: Path) -> None:
 fifo = tmp_path / "pid.fifo"
 os.mkfifo(fifo)
 with anyio.fail_after(60):
  async with anyio.create_task_group() as tg:
   tg.start_soon(isolated, call(steps, "blocks", str(fifo)))
   pid = await anyio.to_thread.run_sync(read_pid, fifo, abandon_on_cancel=True)
   os.kill(pid, 0)  # alive, blocked in the call
   tg.cancel_scope.cancel()
 with pytest.raises(ProcessLookupError):  # killed and reaped before the cancellation ended
  os.kill(pid, 0)


RUNNER = """
import sys, anyio
from pathlib import Path
from conductor.dag_engine import Ticket
from procs import conductor
from conductor.isolation import run_call_isolated
from conductor.workers import CallWork
spec = CallWork("iso_steps:blocks", Path(sys.argv[1]))
anyio.run(run_call_isolated, spec, Ticket("blocks", work=spec, description=sys.argv[2]))
"""


async def test_an_isolated_call_ends_when_its_runner_is_killed(steps: Path, tmp_path: Path) -> None:
 # The runner SIGKILLed (nothing of it runs again): its child must not live on, orphaned.
 fifo = tmp_path / "pid.fifo"
 os.mkfifo(fifo)
 runner = await anyio.open_process(
  [sys.executable, "-c", RUNNER, str(steps), str(fifo)],
  env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
  stdin=None,
  stdout=None,
  stderr=None,
 )
 async with runner:
  with anyio.fail_after(60):
   pid = await anyio.to_thread.run_sync(read_pid, fifo, abandon_on_cancel=True)
   pidfd = os.pidfd_open(pid)  # readable once that process has exited: no polling
   try:
    runner.kill()
    await runner.wait()
    await anyio.wait_readable(pidfd)
   finally:
    os.close(pidfd)


async def test_isolating_runs_only_the_chosen_call_tickets_apart(steps: Path) -> None:
 worker = isolating(run_work, ["pid"])
 with anyio.fail_after(60):
  apart = await worker(call(steps, "pid"))
  assert apart is not None and int(apart.output) != os.getpid()
  other = call(steps, "pid")
  other.id = "not chosen"
  here = await worker(other)
  assert here is not None and int(here.output) == os.getpid()


def test_the_child_refuses_to_run_as_a_plain_command() -> None:
 # `python -m conductor.isolation` reads one ticket from stdin: nothing there, it fails
 # rather than hang, and prints nothing on stdout (the outcome channel).
 result = subprocess.run(
  [sys.executable, "-m", "conductor.isolation", "asyncio"],
  input=b"",
  capture_output=True,
  check=False,
  timeout=60,
 )
 assert result.returncode != 0 and result.stdout == b""


# -- through `conductor run`: the runner dies once, never again -------------------------------

DYING = """
[pipeline]
name = "dying"
max_workers = 2

[[tickets]]
id = "dies"
call = "dying_steps:dies"

[[tickets]]
id = "beside"
call = "dying_steps:beside"
"""

DYING_STEPS = """
import os
from pathlib import Path

async def dies(ticket):
 os._exit(7)  # in the runner: the runner is gone with it

async def beside(ticket):
 # In flight when `dies` ends the first run (it waits for nothing that comes); then done.
 if not (Path(__file__).parent / "second").exists():
  import anyio
  await anyio.sleep_forever()
 return "beside done"
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_call_that_ends_the_runner_fails_alone_once_it_has(tmp_path: Path, backend: str) -> None:
 (tmp_path / "dying_steps.py").write_text(DYING_STEPS)
 pipeline = tmp_path / "dying.toml"
 pipeline.write_text(DYING)
 first = conductor("run", str(pipeline), "--backend", backend)
 assert first.returncode == 7  # the call ended the runner itself: nothing could stop that
 (tmp_path / "second").touch()

 second = conductor("run", str(pipeline), "--backend", backend)
 assert second.returncode == 1, second
 assert (
  "the last run died while dies, beside ran: these calls run in processes of their own "
  "from now on, so one that ends its process fails alone" in second.stdout
 ), second.stdout
 died = (
  "failed dies: the call's process died (exit code 7); this call runs in a process of its own "
  "since a run died while it ran"
 )
 assert died in second.stdout.splitlines()
 assert "dying: beside completed (attempt 2)" in second.stdout

 # A re-run retries it, still apart: the runner never dies of it again.
 third = conductor("run", str(pipeline), "--backend", backend)
 assert third.returncode == 1, third
 assert died in third.stdout.splitlines()
 assert "the last run died" not in third.stdout
 assert conductor("output", "beside", str(pipeline)).stdout == "beside done"


def test_a_call_that_crashes_the_runner_says_where(tmp_path: Path) -> None:
 # The first time, in the runner: nothing can catch a segfault, but it says where it was.
 (tmp_path / "crashing_steps.py").write_text(
  "import ctypes\ndef crash(ticket):\n ctypes.string_at(0)\n"
 )
 pipeline = tmp_path / "crashing.toml"
 pipeline.write_text('[[tickets]]\nid = "crash"\ncall = "crashing_steps:crash"\n')
 result = conductor("run", str(pipeline))
 assert result.returncode == -11, result
 assert "Fatal Python error: Segmentation fault" in result.stderr
 assert 'crashing_steps.py", line 3 in crash' in result.stderr
