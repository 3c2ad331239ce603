"""The default worker with real subprocesses and real imports, on asyncio and trio."""

from __future__ import annotations

import graphlib
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from conductor import workers
from conductor.dag_engine import Ticket
from conductor.pipeline import load_pipeline
from conductor.workers import (
 OUTPUT_LIMIT,
 CallWork,
 PausePipeline,
 ShellWork,
 SleepWork,
 WorkFailed,
 WorkInterrupted,
 WorkResult,
 run_work,
)

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
linux_only = pytest.mark.skipif(
 not (hasattr(os, "pidfd_open") and Path("/proc/self/stat").exists()),
 reason="watching other processes' exit needs Linux pidfds and /proc",
)


def shell(command: str, cwd: Path, env: dict[str, str] | None = None) -> Ticket:
 return Ticket("sh", work=ShellWork(command, cwd, env))


# -- shell: results ---------------------------------------------------------------------------


async def test_a_successful_command_returns_its_stdout_and_stderr(tmp_path: Path) -> None:
 result = await run_work(shell("echo hello; echo careful >&2", tmp_path))
 assert result == WorkResult(output="hello\ncareful\n", exit_code=0)


async def test_a_failing_command_raises_with_its_exit_code_and_stderr_tail(
 tmp_path: Path,
) -> None:
 with pytest.raises(WorkFailed) as info:
  await run_work(shell("echo working; echo first >&2; echo 'disk full' >&2; exit 3", tmp_path))
 assert info.value.exit_code == 3
 assert info.value.error == "exit code 3: disk full"
 assert str(info.value) == "exit code 3: disk full"
 assert "working" in info.value.output and "first\ndisk full" in info.value.output


async def test_a_missing_command_says_it_was_not_found(tmp_path: Path) -> None:
 with pytest.raises(WorkFailed) as info:
  await run_work(shell("no-such-command-4711 --flag", tmp_path))
 assert info.value.exit_code == 127
 assert info.value.error.startswith("exit code 127 (command not found")
 assert "no-such-command-4711" in info.value.error
 assert "\n" not in info.value.error


async def test_a_command_runs_in_its_folder(tmp_path: Path) -> None:
 result = await run_work(shell("pwd -P; echo made > here.txt", tmp_path))
 assert result.output == f"{await anyio.Path(tmp_path).resolve()}\n"
 assert (tmp_path / "here.txt").read_text() == "made\n"


async def test_extra_environment_variables_keep_the_path(tmp_path: Path) -> None:
 result = await run_work(shell('echo "$GREETING"; command -v sh', tmp_path, {"GREETING": "hi"}))
 assert result.output.splitlines()[0] == "hi"
 assert result.output.splitlines()[1].endswith("/sh")


async def test_a_command_knows_its_ticket_and_attempt(tmp_path: Path) -> None:
 ticket = shell(
  'echo "$CONDUCTOR_TICKET $CONDUCTOR_ATTEMPT $GREETING"', tmp_path, {"GREETING": "hi"}
 )
 ticket.attempts = 3  # the engine counts the attempt before the worker runs
 result = await run_work(ticket)
 assert result.output.split() == ["sh", "3", "hi"]


async def test_a_command_reading_stdin_gets_end_of_file_instead_of_hanging(
 tmp_path: Path,
) -> None:
 with anyio.fail_after(10):
  result = await run_work(shell("cat; echo done", tmp_path))
 assert result.output == "done\n"


async def test_a_folder_that_does_not_exist_fails_the_ticket_with_its_name(
 tmp_path: Path,
) -> None:
 missing = tmp_path / "nowhere"
 with pytest.raises(WorkFailed) as info:
  await run_work(shell("echo hi", missing))
 assert str(missing) in info.value.error
 assert info.value.exit_code is None


async def test_a_huge_output_on_both_streams_is_bounded_to_its_tail(tmp_path: Path) -> None:
 # 5 MB on each stream at once (more than OUTPUT_LIMIT): reading only one of them would deadlock on a full pipe.
 command = "head -c 5000000 /dev/zero | tr '\\0' a; echo OUT-END; head -c 5000000 /dev/zero | tr '\\0' b >&2; echo ERR-END >&2"
 with anyio.fail_after(30):
  result = await run_work(shell(command, tmp_path))
 out, separator, err = result.output.partition("OUT-END\n")
 assert separator and err.endswith("ERR-END\n")
 assert len(result.output) < 2 * OUTPUT_LIMIT + 200
 assert "bytes dropped" in out and "bytes dropped" in err
 assert out.count("a") > OUTPUT_LIMIT - 100 and err.count("b") > OUTPUT_LIMIT - 100


async def test_the_error_of_a_huge_failing_command_is_one_line(tmp_path: Path) -> None:
 with pytest.raises(WorkFailed) as info:
  await run_work(shell("head -c 300000 /dev/zero | tr '\\0' x >&2; exit 2", tmp_path))
 assert info.value.exit_code == 2
 assert "\n" not in info.value.error and len(info.value.error) < 300


# -- shell: cancellation kills the whole process group ----------------------------------------


async def _read_fifo(path: Path) -> str:
 """Everything written into the FIFO at `path` by one writer, waiting on readiness."""
 fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
 chunks: list[bytes] = []
 try:
  while True:
   await anyio.wait_readable(fd)
   try:
    chunk = os.read(fd, 4096)
   except BlockingIOError:
    continue
   if not chunk:  # the writer closed it
    return b"".join(chunks).decode()
   chunks.append(chunk)
 finally:
  os.close(fd)


async def _wait_exited(pid: int) -> None:
 """Return once process `pid` has terminated (a pidfd turns readable; no polling)."""
 try:
  fd = os.pidfd_open(pid)
 except ProcessLookupError:
  return
 try:
  await anyio.wait_readable(fd)
 finally:
  os.close(fd)


def _live_members(pgid: int) -> list[int]:
 """Processes of group `pgid` that are not zombies (a zombie has exited; some containers'
 init never reaps orphans, so zombies can linger and must not count as alive)."""
 alive = []
 for entry in Path("/proc").iterdir():
  if not entry.name.isdigit():
   continue
  try:
   stat = (entry / "stat").read_text()
  except OSError:
   continue
  state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
  if int(pgrp) == pgid and state != "Z":
   alive.append(int(entry.name))
 return alive


async def _cancel_after_pids(command: str, tmp_path: Path) -> list[int]:
 """Run `command` (which writes pids into the FIFO `pids`), cancel it once they are known."""
 os.mkfifo(tmp_path / "pids")
 pids: list[int] = []
 with anyio.fail_after(20):
  async with anyio.create_task_group() as tg:
   tg.start_soon(run_work, shell(command, tmp_path))
   pids = [int(p) for p in (await _read_fifo(tmp_path / "pids")).split()]
   tg.cancel_scope.cancel()
  for pid in pids:
   await _wait_exited(pid)
 return pids


@linux_only
async def test_cancelling_a_command_kills_its_whole_process_group(tmp_path: Path) -> None:
 command = "sleep 30 & a=$!; sleep 30 & b=$!; echo $$ $a $b > pids; wait"
 shell_pid, *children = await _cancel_after_pids(command, tmp_path)
 assert len(children) == 2
 assert os.getpgid(os.getpid()) != shell_pid  # the command had a group of its own
 assert _live_members(shell_pid) == []


@linux_only
async def test_a_group_that_ignores_sigterm_is_killed_after_the_grace(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.setattr(workers, "TERM_GRACE", 0.2)
 # An ignored signal stays ignored in children, so only SIGKILL can end these.
 command = (
  "trap '' TERM; sleep 30 & a=$!; sleep 30 >/dev/null 2>&1 & b=$!; echo $$ $a $b > pids; wait"
 )
 shell_pid, *_ = await _cancel_after_pids(command, tmp_path)
 assert _live_members(shell_pid) == []


async def test_cancellation_propagates_out_of_a_running_command(tmp_path: Path) -> None:
 with anyio.fail_after(20), anyio.move_on_after(0.2) as scope:
  await run_work(shell("sleep 30", tmp_path))
 assert scope.cancelled_caught


# -- Python calls -----------------------------------------------------------------------------


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
 """A fresh, uniquely named module file in `tmp_path`; sys.path and sys.modules restored."""
 name = f"steps_{uuid.uuid4().hex}"
 monkeypatch.setattr(sys, "path", list(sys.path))
 yield name, tmp_path / f"{name}.py"
 sys.modules.pop(name, None)


def call(target: str, search_path: Path) -> Ticket:
 return Ticket("py", work=CallWork(target, search_path))


async def test_a_sync_function_runs_in_a_worker_thread_with_the_ticket(
 module: tuple[str, Path],
) -> None:
 name, path = module
 path.write_text(
  "import threading\n"
  "def step(ticket):\n"
  " return f'{ticket.id} on {threading.current_thread() is threading.main_thread()}'\n"
 )
 result = await run_work(call(f"{name}:step", path.parent))
 assert result == WorkResult(output="py on False")
 assert threading.current_thread() is threading.main_thread()


async def test_an_async_function_is_awaited_with_the_ticket(module: tuple[str, Path]) -> None:
 name, path = module
 path.write_text(
  "import anyio\nasync def step(ticket):\n await anyio.sleep(0)\n return 'async ' + ticket.id\n"
 )
 assert await run_work(call(f"{name}:step", path.parent)) == WorkResult(output="async py")


@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_a_function_can_pause_the_pipeline_or_report_its_attempt_lost(
 module: tuple[str, Path], kind: str
) -> None:
 # Its own word on the outcome, not a failure of the function: it reaches the engine as is.
 name, path = module
 path.write_text(
  "from conductor import PausePipeline, WorkInterrupted\n"
  f"{kind} pause(ticket):\n raise PausePipeline('quota', resume_after=3)\n"
  f"{kind} lost(ticket):\n raise WorkInterrupted('host gone')\n"
 )
 with pytest.raises(PausePipeline) as paused:
  await run_work(call(f"{name}:pause", path.parent))
 assert (paused.value.reason, paused.value.resume_after) == ("quota", 3)
 with pytest.raises(WorkInterrupted, match="host gone"):
  await run_work(call(f"{name}:lost", path.parent))


async def test_a_non_string_return_value_gives_an_empty_output(module: tuple[str, Path]) -> None:
 name, path = module
 path.write_text("def step(ticket):\n return 42\n")
 assert await run_work(call(f"{name}:step", path.parent)) == WorkResult()


async def test_an_exception_in_the_function_fails_the_ticket_with_its_type_and_message(
 module: tuple[str, Path],
) -> None:
 name, path = module
 path.write_text("def step(ticket):\n raise RuntimeError('model quota exceeded')\n")
 with pytest.raises(WorkFailed) as info:
  await run_work(call(f"{name}:step", path.parent))
 assert info.value.error == "RuntimeError: model quota exceeded"
 assert "Traceback" in info.value.output and info.value.exit_code is None


async def test_work_failed_raised_by_the_function_passes_through_unchanged(
 module: tuple[str, Path],
) -> None:
 name, path = module
 path.write_text(
  "from conductor.workers import WorkFailed\n"
  "async def step(ticket):\n raise WorkFailed('refused', exit_code=7, output='why')\n"
 )
 with pytest.raises(WorkFailed) as info:
  await run_work(call(f"{name}:step", path.parent))
 assert (info.value.error, info.value.exit_code, info.value.output) == ("refused", 7, "why")


async def test_an_error_while_importing_the_module_fails_the_ticket(
 module: tuple[str, Path],
) -> None:
 name, path = module
 path.write_text("import no_such_dependency_4711\ndef step(ticket):\n pass\n")
 with pytest.raises(WorkFailed) as info:
  await run_work(call(f"{name}:step", path.parent))
 assert info.value.error.startswith("ModuleNotFoundError: No module named 'no_such_dependency")
 assert f"while importing {name}:step" in info.value.error


@pytest.mark.parametrize(
 ("target", "expected"),
 [
  ("no_colon", "write it as 'package.module:function'"),
  ("two:colons:here", "write it as 'package.module:function'"),
  ("bad-name:step", "write it as 'package.module:function'"),
  ("no_such_module_4711:step", "no module named 'no_such_module_4711'"),
  ("{module}:missing", "has no attribute 'missing'"),
  ("{module}:VALUE", "is an int, not a function"),
  ("{module}:NAME", "is a str, not a function"),
 ],
)
async def test_a_bad_call_target_fails_the_ticket_naming_it_in_plain_words(
 module: tuple[str, Path], target: str, expected: str
) -> None:
 name, path = module
 path.write_text("VALUE = 3\nNAME = 'x'\ndef step(ticket):\n return 'ok'\n")
 target = target.format(module=name)
 with pytest.raises(WorkFailed) as info:
  await run_work(call(target, path.parent))
 # The error is the user's one line: no class name of ours (it was "_BadTarget: ...").
 assert info.value.error.startswith(f"bad call target {target!r}: "), info.value.error
 assert expected in info.value.error and "\n" not in info.value.error
 assert info.value.exit_code is None


async def test_the_search_path_is_added_to_sys_path_only_once(module: tuple[str, Path]) -> None:
 name, path = module
 path.write_text("def step(ticket):\n return 'ok'\n")
 for _ in range(2):
  await run_work(call(f"{name}:step", path.parent))
 assert sys.path.count(str(path.parent)) == 1


# -- sleeps and bugs --------------------------------------------------------------------------


async def test_a_sleep_ticket_succeeds() -> None:
 result = await run_work(Ticket("nap", work=SleepWork(0.01)))
 assert result.exit_code is None and result.output == ""


async def test_a_failing_sleep_ticket_raises_a_simulated_failure() -> None:
 with pytest.raises(WorkFailed, match=r"^simulated failure$"):
  await run_work(Ticket("nap", work=SleepWork(0, fail=True)))


@pytest.mark.parametrize("work", [None, "echo hi", 3])
async def test_a_ticket_without_a_known_work_spec_is_a_type_error(work: object) -> None:
 with pytest.raises(TypeError, match="ticket 'odd'"):
  await run_work(Ticket("odd", work=work))


# -- the example pipeline, end to end ---------------------------------------------------------


async def test_the_build_example_runs_to_completion_with_real_workers(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.setattr(sys, "path", list(sys.path))
 monkeypatch.delitem(sys.modules, "build_steps", raising=False)
 # A copy, so the test never writes into the repository.
 folder = tmp_path / "examples"
 shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("out", "__pycache__"))
 pipeline = load_pipeline(folder / "build.toml")
 sorter = graphlib.TopologicalSorter({t.id: t.depends_on for t in pipeline.tickets})
 sorter.prepare()
 by_id = {t.id: t for t in pipeline.tickets}
 outputs: dict[str, str] = {}

 async def one(ticket: Ticket) -> None:
  ticket.attempts += 1
  outputs[ticket.id] = (await run_work(ticket)).output

 with anyio.fail_after(60):
  while sorter.is_active():
   ready = sorter.get_ready()
   async with anyio.create_task_group() as tg:
    for tid in ready:
     tg.start_soon(one, by_id[tid])
   sorter.done(*ready)
 assert set(outputs) == set(by_id)
 assert outputs["manifest"] == "manifest: 2 settings"
 assert outputs["package"] == "packaged out/app.tar\n"
 assert (folder / "out" / "app.tar").stat().st_size > 0
 assert "written by ticket manifest" in (folder / "out" / "manifest.txt").read_text()


# -- call targets: resolving ------------------------------------------------------------------


def test_resolving_a_bad_target_raises_call_target_error_a_value_error(
 module: tuple[str, Path],
) -> None:
 name, path = module
 path.write_text("def step(ticket):\n return 'ok'\n")
 assert workers.resolve_call_target(f"{name}:step", path.parent).__name__ == "step"
 with pytest.raises(workers.CallTargetError, match="has no attribute 'nope'") as info:
  workers.resolve_call_target(f"{name}:nope", path.parent)
 assert isinstance(info.value, ValueError)


def test_a_value_error_raised_by_the_module_at_import_is_not_a_bad_target(
 module: tuple[str, Path],
) -> None:
 name, path = module
 path.write_text("raise ValueError('bad setting')\n")
 with pytest.raises(ValueError, match=r"^bad setting$") as info:
  workers.resolve_call_target(f"{name}:step", path.parent)
 assert not isinstance(info.value, workers.CallTargetError)


async def test_a_value_error_at_import_fails_the_ticket_as_the_module_s_own_error(
 module: tuple[str, Path],
) -> None:
 name, path = module
 path.write_text("raise ValueError('bad setting')\n")
 with pytest.raises(WorkFailed) as info:
  await run_work(call(f"{name}:step", path.parent))
 assert info.value.error == f"ValueError: bad setting (while importing {name}:step)"
 assert "Traceback" in info.value.output
