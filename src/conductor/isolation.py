"""A `call` ticket in a process of its own, once a run died while it ran.

A `call` function runs inside the runner, so whatever it raises fails its ticket only
(`workers.run_call`). What it does not raise cannot be caught: `os._exit()`, a crash in
native code (a segfault, an abort), the kernel's OOM killer. Those end the runner, and each
re-run starts the same ticket again and dies again, taking the tickets beside it along.

So a run that finds tickets the last process died under (`StateStore.died_under`: they were
in progress when it ended without recording them) runs those that are calls here, each in a
child interpreter (`python -m conductor.isolation`), from then on in that state. There the
call behaves as in the runner (`run_call` runs it, on the same backend), and if the child
dies, its ticket fails with how it died, and the run goes on. The price, a new interpreter
per attempt (about 0.1 s), is paid only by tickets that were in flight when a run died.

The protocol, parent to child: the ticket as one line of JSON on the child's stdin, which
then stays open: its end (the runner gone, even by SIGKILL) ends the child at once. Child
to parent: the outcome as JSON on the child's stdout, written when the call is over, or, if
it crashes in native code, where (`faulthandler`), kept as the attempt's output; the
function's own prints on fd 1 go to stderr (the runner's), never into the outcome. No
pickle: nothing the child writes is ever executed by the runner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import anyio

from .dag_engine import Status, Ticket
from .workers import (
 OUTPUT_LIMIT,
 REAP_TIMEOUT,
 CallWork,
 Outcome,
 PausePipeline,
 Usage,
 Worker,
 WorkFailed,
 WorkInterrupted,
 WorkResult,
 run_call,
)
from .workers import _signal_group as signal_group  # killpg, an empty group is no error

__all__ = ["isolating", "run_call_isolated"]


def isolating(worker: Worker, ids: Collection[str], env: Mapping[str, str] | None = None) -> Worker:
 """`worker`, except that the `call` tickets among `ids` run in processes of their own
 (`run_call_isolated`, with `env` added to the child's environment)."""
 chosen = frozenset(ids)

 async def run(ticket: Ticket, /) -> WorkResult | None:
  work = ticket.work
  if ticket.id in chosen and isinstance(work, CallWork):
   return await run_call_isolated(work, ticket, env=env)
  return await worker(ticket)

 return run


async def run_call_isolated(
 spec: CallWork, ticket: Ticket, *, env: Mapping[str, str] | None = None
) -> WorkResult:
 """`workers.run_call(spec, ticket)` in a child interpreter; the same outcomes.

 The call's result, `WorkFailed` (exit code and output kept), `PausePipeline` and
 `WorkInterrupted` come back as they were raised; anything else it raises fails the attempt
 as `run_call` says. If the child dies first (`os._exit`, a signal), `WorkFailed` says how.
 Cancelled, the child's process group is killed (SIGKILL: a call has no clean stop either
 in the runner) and the cancellation propagates. The child sees `CONDUCTOR_TICKET` and
 `CONDUCTOR_ATTEMPT`, as a shell ticket does, and the runner's `sys.path`.
 """
 request = json.dumps(_ticket_json(ticket)).encode() + b"\n"
 child_env = {
  **os.environ,
  **(env or {}),
  "CONDUCTOR_TICKET": ticket.id,
  "CONDUCTOR_ATTEMPT": str(ticket.attempts),
  "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
 }
 command = [sys.executable, "-m", "conductor.isolation", _backend()]
 with anyio.CancelScope(shield=True):  # started whole, or not at all: no orphan
  process = await anyio.open_process(
   command,
   env=child_env,
   stdin=subprocess.PIPE,
   stdout=subprocess.PIPE,
   stderr=None,
   start_new_session=True,
  )
 assert process.stdin is not None and process.stdout is not None
 chunks: list[bytes] = []
 try:
  with contextlib.suppress(anyio.BrokenResourceError):  # it died before reading
   await process.stdin.send(request)
  async for chunk in process.stdout:
   chunks.append(chunk)
  code = await process.wait()
 except BaseException:
  with anyio.CancelScope(shield=True):
   signal_group(process.pid, signal.SIGKILL)  # the child leads its own group
   with anyio.move_on_after(REAP_TIMEOUT):
    await process.wait()
   await process.aclose()
  raise
 with anyio.CancelScope(shield=True):
  await process.aclose()
 data = b"".join(chunks)
 outcome = _parse(data)
 if outcome is None:  # what it wrote instead, if anything, is where it crashed
  raise WorkFailed(
   f"the call's process died ({_how(code)}); this call runs in a process of its own "
   "since a run died while it ran",
   output=data[-OUTPUT_LIMIT:].decode(errors="replace"),
  )
 return outcome.result()


def _backend() -> str:
 # The child runs the call on the runner's backend (anyio's two): asyncio has a running
 # loop here, trio none. (Imported here: every command imports this module, few use it.)
 import asyncio

 try:
  asyncio.get_running_loop()
 except RuntimeError:
  return "trio"
 return "asyncio"


def _how(code: int) -> str:
 if code < 0:
  try:
   return f"killed by {signal.Signals(-code).name}"
  except ValueError:
   return f"killed by signal {-code}"
 if code == 0:
  return "it exited without a result: os._exit(0)?"
 return f"exit code {code}"


# -- the two messages, as JSON ----------------------------------------------------------------


def _ticket_json(ticket: Ticket) -> dict[str, Any]:
 work = ticket.work
 assert isinstance(work, CallWork)
 return {
  "id": ticket.id,
  "depends_on": list(ticket.depends_on),
  "description": ticket.description,
  "target": work.target,
  "search_path": None if work.search_path is None else os.fspath(work.search_path),
  "retries": ticket.retries,
  "attempts": ticket.attempts,
  "inputs": None if ticket.inputs is None else dict(ticket.inputs),
 }


def _ticket(data: dict[str, Any]) -> tuple[CallWork, Ticket]:
 search = data["search_path"]
 spec = CallWork(data["target"], None if search is None else Path(search))
 ticket = Ticket(
  data["id"],
  tuple(data["depends_on"]),
  description=data["description"],
  work=spec,
  retries=data["retries"],
  status=Status.IN_PROGRESS,
  attempts=data["attempts"],
  inputs=data["inputs"],
 )
 return spec, ticket


def _outcome_json(outcome: Outcome) -> bytes:
 return json.dumps(dataclasses.asdict(outcome)).encode()


def _parse(data: bytes) -> Outcome | None:
 # None: no whole outcome (the child died before or while writing it, or crashed).
 try:
  fields = json.loads(data)
  usage = fields["usage"]
  return Outcome(**{**fields, "usage": None if usage is None else Usage(**usage)})
 except (ValueError, TypeError, KeyError):
  return None


# -- the child --------------------------------------------------------------------------------


def _end_with_parent(fd: int) -> None:
 # The runner keeps our stdin open while the call runs: EOF means it is gone (killed,
 # crashed) or gave up on us. Then nothing waits for the outcome: end now, as a call in the
 # runner would have ended with it.
 while os.read(fd, 4096):
  pass
 os._exit(70)


def main(backend: str) -> None:
 """The child: read the ticket, run the call, write the outcome. Not for direct use."""
 outcome_fd = os.dup(1)
 # A crash in native code (SIGSEGV, SIGABRT, ...) writes where it happened into the outcome
 # channel instead: not JSON, the runner keeps it as the failed attempt's output.
 crash = os.fdopen(outcome_fd, "wb", buffering=0, closefd=False)
 faulthandler.enable(crash, all_threads=True)
 os.dup2(2, 1)  # the call's prints (fd 1, sys.stdout) go to the runner's stderr
 request_fd = os.dup(0)
 devnull = os.open(os.devnull, os.O_RDONLY)
 os.dup2(devnull, 0)  # a call reading stdin reads nothing, as under the runner's terminal
 os.close(devnull)
 # Buffered (the inputs may be megabytes): nothing follows the line, so nothing is read
 # past it that `_end_with_parent` would miss.
 with os.fdopen(request_fd, "rb", closefd=False) as requests:
  line = requests.readline()
 spec, ticket = _ticket(json.loads(line))
 threading.Thread(target=_end_with_parent, args=(request_fd,), daemon=True).start()
 try:
  outcome = Outcome.of(anyio.run(run_call, spec, ticket, backend=backend))
 except (WorkFailed, PausePipeline, WorkInterrupted) as exc:
  outcome = Outcome.raised(exc)
 data = _outcome_json(outcome)
 view = memoryview(data)
 while view:
  view = view[os.write(outcome_fd, view) :]
 sys.stdout.flush()
 sys.stderr.flush()
 os._exit(0)  # not waiting for threads the call may have left running


if __name__ == "__main__":
 main(sys.argv[1])
