"""Workers: what runs a ticket. Work specs, results, the `Worker` protocol, the default worker.

A ticket's `work` field holds a *work spec*, a small frozen value that says what to do:

- `ShellWork`: a shell command (`/bin/sh -c`), run in its own process group;
- `CallWork`: a Python function named `"package.module:function"`, sync or async;
- `SleepWork`: a simulated job (the built-in demo uses it);
- any other `WorkSpec` that implements `run` (`agents.AgentWork`: a model call).

`run_work` is the default worker and understands all of them. Any other async callable taking a
`Ticket` can be plugged in instead (see `Worker`). The engine never looks inside `work`: to
show it, it asks a `WorkSpec` for its `describe()` and shows anything else by its type's name
(`describe_work`).

Everything here runs unchanged on asyncio and trio (only anyio APIs), and nothing polls.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import os
import re
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, cast

import anyio
from anyio import current_effective_deadline, get_cancelled_exc_class
from anyio.abc import ByteReceiveStream, Process

from ._text import first_line
from .dag_engine import Ticket

OUTPUT_LIMIT = 4 * 1024 * 1024
"""Bytes kept of each of a shell command's stdout and stderr: all of it up to this size
(kept whole in the state), else the last this many, after a line saying how much was
dropped. It bounds a runner's memory whatever a command prints."""

TERM_GRACE = 2.0
"""Seconds a cancelled shell command's process group gets between SIGTERM and SIGKILL."""

REAP_TIMEOUT = 5.0
"""Upper bound, in seconds, on waiting for a SIGKILLed process group to be gone. SIGKILL cannot
be caught, so this only matters for a process stuck in the kernel (uninterruptible I/O)."""

_IDENTIFIER_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


# -- work specs and results -------------------------------------------------------------------


class WorkSpec:
 """Base of the work specs: what a ticket runs, as a small frozen value.

 `describe()` is all the engine asks of one (for display). A custom worker's own specs may
 subclass it to be shown the same way.
 """

 __slots__ = ()

 def describe(self) -> str:
  """What it runs, in a few words on one line, for tables and logs."""
  return type(self).__name__

 @property
 def inputs(self) -> tuple[str, ...]:
  """Ids of the dependencies whose whole output this work reads (an agent's `{{ID}}`).

  The engine keeps those outputs and hands them to the attempt in `Ticket.inputs`.
  """
  return ()

 async def run(self, ticket: Ticket, /) -> WorkResult:
  """Run one attempt (what `run_work` calls for a spec it has no case of its own for).

  A spec that knows how to run itself overrides this; see `Worker` for the contract.
  """
  raise TypeError(
   f"ticket {ticket.id!r}: run_work cannot run work of type {type(self).__name__}; "
   "implement WorkSpec.run, or pass a custom worker"
  )


def describe_work(work: object) -> str:
 """A ticket's work for display: a `WorkSpec`'s `describe()`; anything else (a custom
 worker's own value) by its type's name; "" for None."""
 if isinstance(work, WorkSpec):
  return work.describe()
 return "" if work is None else type(work).__name__


@dataclass(frozen=True, slots=True)
class ShellWork(WorkSpec):
 """Run `command` with `/bin/sh -c` in the folder `cwd`.

 `env`, when given, holds variables set ON TOP of the runner's own environment (so `PATH`
 and `HOME` stay); `None` passes the runner's environment unchanged.
 """

 command: str
 cwd: Path
 env: Mapping[str, str] | None = None

 def describe(self) -> str:
  return self.command


@dataclass(frozen=True, slots=True)
class CallWork(WorkSpec):
 """Call the Python function `target`, written `"package.module:function"`.

 `search_path` is a folder made importable first (the pipeline file's folder), appended to
 the front of `sys.path` once if it is not already there, like a script's own folder.
 """

 target: str
 search_path: Path | None = None

 def describe(self) -> str:
  return self.target


@dataclass(frozen=True, slots=True)
class SleepWork(WorkSpec):
 """A simulated job: sleep `seconds`, then succeed, or fail when `fail` is true."""

 seconds: float
 fail: bool = False

 def describe(self) -> str:
  # The sign is part of the key: -0.0 equals 0.0, but is written apart ("sleep -0s").
  return _sleep_words(self.seconds, math.copysign(1.0, self.seconds), self.fail)


@functools.lru_cache(maxsize=64)
def _sleep_words(seconds: float, _sign: float, fail: bool) -> str:
 # One string for each distinct sleep, not one per ticket: the views keep every ticket's.
 return f"sleep {seconds:g}s" + (" then fail" if fail else "")


@dataclass(frozen=True, slots=True)
class Usage:
 """Tokens a model call spent, from its reply's `usage`."""

 prompt_tokens: int = 0
 completion_tokens: int = 0

 @property
 def total(self) -> int:
  return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class WorkResult:
 """What a successful attempt produced: its output, for commands the exit code, for model
 calls the tokens spent (`usage`, which counts towards the pipeline's token budget)."""

 output: str = ""
 exit_code: int | None = None
 usage: Usage | None = None


class WorkFailed(Exception):
 """An attempt failed in a way the user should read: `error` is one line for the table.

 `exit_code` is the command's exit code (None for non-commands); `output` holds the tail of
 what it printed, for the details view. Raise it from a custom worker to fail a ticket with a
 clean message; any other exception fails it too, shown as "ExceptionType: message".
 """

 def __init__(self, error: str, exit_code: int | None = None, output: str = "") -> None:
  super().__init__(error)
  self.error = error
  self.exit_code = exit_code
  self.output = output


class PausePipeline(Exception):
 """Raised by a worker: pause the WHOLE pipeline, and put this ticket back to wait.

 The attempt does not count as a failure and spends none of the ticket's `retries`; the
 workers in flight finish; nothing new starts. `reason` is what the banner, `status` and the
 log show. With `resume_after` (seconds), the pipeline resumes by itself after that long,
 unless a person paused it meanwhile (a person's pause always wins: only a person resumes
 it); without, it waits for a person's resume. `usage`: tokens the attempt spent anyway.
 """

 def __init__(
  self, reason: str, resume_after: float | None = None, *, usage: Usage | None = None
 ) -> None:
  super().__init__(reason)
  if resume_after is not None and not (resume_after >= 0 and math.isfinite(resume_after)):
   raise ValueError(f"resume_after must be a finite number of seconds >= 0, got {resume_after!r}")
  self.reason = reason
  self.resume_after = resume_after
  self.usage = usage


class WorkInterrupted(Exception):
 """Raised by a worker: the attempt was lost through no fault of the ticket (the machine
 running it went away). Not a failure: the ticket goes back to todo, shown as interrupted,
 and runs again as a new attempt, without spending a retry. `reason` is logged."""

 def __init__(self, reason: str) -> None:
  super().__init__(reason)
  self.reason = reason


@dataclass(frozen=True, slots=True)
class Outcome:
 """How an attempt ended, as plain fields, for where it ended in another process (a Dask
 task, an isolated call): exceptions do not all cross a process boundary whole.

 `kind`: "ok" (output, exit_code, usage), "failed" (error, exit_code, output), "pause"
 (error = reason, resume_after, usage), "interrupted" (error = reason); a caller may add
 kinds of its own (`dask_executor`'s lost worker), which `result` reads as interrupted.
 """

 kind: str
 output: str = ""
 exit_code: int | None = None
 usage: Usage | None = None
 error: str = ""
 resume_after: float | None = None

 @staticmethod
 def of(result: WorkResult | None) -> Outcome:
  """A worker's return value (None: nothing to show)."""
  if result is None:
   return Outcome("ok")
  return Outcome("ok", result.output, result.exit_code, result.usage)

 @staticmethod
 def raised(exc: WorkFailed | PausePipeline | WorkInterrupted) -> Outcome:
  """What a worker raised to say how its attempt ended."""
  if isinstance(exc, WorkFailed):
   return Outcome("failed", exc.output, exc.exit_code, error=exc.error)
  if isinstance(exc, PausePipeline):
   return Outcome("pause", usage=exc.usage, error=exc.reason, resume_after=exc.resume_after)
  return Outcome("interrupted", error=exc.reason)

 def result(self) -> WorkResult:
  """The attempt's `WorkResult`, or its exception raised, as the worker would have."""
  kind = self.kind
  if kind == "ok":
   return WorkResult(self.output, self.exit_code, self.usage)
  if kind == "failed":
   raise WorkFailed(self.error, self.exit_code, self.output)
  if kind == "pause":
   raise PausePipeline(self.error, self.resume_after, usage=self.usage)
  raise WorkInterrupted(self.error)


class Worker(Protocol):
 """The plug-in point: an async callable that performs one attempt of a ticket.

 Contract the engine relies on:

 - Return a `WorkResult` on success (or None: nothing to show). Raise `WorkFailed` (or any other `Exception`, which the
   engine reports as "ExceptionType: message") to fail the attempt; the engine then retries
   the ticket if it has retries left, or marks it failed and its dependents blocked.
 - Be cancellable: when the run is cancelled (a hard stop), the anyio cancellation arrives at
   an `await`; clean up (shielded, bounded) and let it propagate. Pausing never cancels:
   running workers always finish.
 - Use anyio (or only the running backend's) primitives, so it runs on asyncio and trio.
 - Read `ticket.work` for what to do; it is opaque to the engine, so a custom worker may put
   anything there. `ticket.attempts` is 1 on the first attempt.

 The typical custom worker is an agent calling a model API::

  async def agent(ticket: Ticket) -> WorkResult:
   reply = await client.complete(prompt=ticket.description)  # an async HTTP client
   if reply.refused:
    raise WorkFailed(f"model refused: {reply.reason}")
   return WorkResult(output=reply.text)

  ConductorEngine(engine, worker=agent)

 `run_work` is the default worker; a custom one can delegate to it for the specs it knows.
 """

 async def __call__(self, ticket: Ticket, /) -> WorkResult | None: ...


# -- the default worker -----------------------------------------------------------------------


async def run_work(ticket: Ticket, *, env: Mapping[str, str] | None = None) -> WorkResult:
 """Run one attempt of `ticket` according to its work spec; the default `Worker`.

 `env`: variables to add to a shell command's environment (a durable run adds
 `CONDUCTOR_STATE`; bind it with `functools.partial`).

 - `ShellWork`: see `run_shell`. Exit 0 returns the output tail; otherwise `WorkFailed`.
 - `CallWork`: see `run_call`. A bad target fails the attempt (`WorkFailed`).
 - `SleepWork`: sleeps; with `fail`, raises `WorkFailed("simulated failure")`.

 Raises `TypeError` when `ticket.work` is None or of a type this worker does not know: that is
 a bug in whoever built the ticket, not a ticket failure.
 """
 work = ticket.work
 if isinstance(work, ShellWork):
  return await run_shell(work, ticket, env=env)
 if isinstance(work, CallWork):
  return await run_call(work, ticket)
 if isinstance(work, SleepWork):
  await anyio.sleep(work.seconds)
  if work.fail:
   raise WorkFailed("simulated failure")
  return WorkResult()  # a simulated job prints nothing: nothing to keep in the state
 if isinstance(work, WorkSpec):
  return await work.run(ticket)
 raise TypeError(
  f"ticket {ticket.id!r}: run_work cannot run work of type {type(work).__name__}; "
  "use ShellWork, CallWork or SleepWork, or pass a custom worker"
 )


# -- shell commands ---------------------------------------------------------------------------


async def run_shell(
 spec: ShellWork, ticket: Ticket | None = None, *, env: Mapping[str, str] | None = None
) -> WorkResult:
 """Run `spec.command` through `/bin/sh -c` in `spec.cwd` and wait for it.

 With `ticket`, the command also sees `CONDUCTOR_TICKET` (its id) and `CONDUCTOR_ATTEMPT`
 (1 for the first attempt; interrupted attempts count too) in its environment; `env` adds
 more (after `spec.env`).

 Guarantees:

 - The command runs in a new session, hence its own process group, with stdin from
   /dev/null (it can never hang waiting for input).
 - stdout and stderr are read concurrently (no pipe-full deadlock); only the last
   `OUTPUT_LIMIT` bytes of each are kept, so memory is bounded whatever it prints.
 - It returns once the shell has exited AND both streams are closed, like
   `subprocess.run`: a background process that keeps the streams open keeps the ticket
   running (redirect its output to let the ticket finish without it).
 - On success (exit 0): `WorkResult(output=stdout tail + stderr tail, exit_code=0)`.
 - Otherwise `WorkFailed` with the exit code, a one-line error ("exit code 3: <last stderr
   line>"; 127 and 126 say the command was not found / not executable) and the output tail.
   A folder that does not exist or a shell that cannot start also gives `WorkFailed`.
 - Cancelled (the surrounding anyio cancel scope): SIGTERM to the whole process group, up to
   `TERM_GRACE` seconds for it to exit, then SIGKILL to whatever is left of the group; this
   cleanup is shielded and bounded, and then the cancellation propagates. No process of the
   group outlives the call, except one that left the group itself (`setsid`).
 """
 extra = {**(spec.env or {}), **(env or {})}
 if ticket is not None:
  extra |= {"CONDUCTOR_TICKET": ticket.id, "CONDUCTOR_ATTEMPT": str(ticket.attempts)}
 full_env = {**os.environ, **extra} if extra else None  # None: the runner's own, unchanged
 try:
  # Shielded: cancelled mid-start, asyncio would SIGKILL only the shell, orphaning whatever
  # it has already started. Starting is brief; a pending cancellation then arrives at the
  # first await below, where the whole group is taken down.
  with anyio.CancelScope(shield=True):
   process = await anyio.open_process(
    ["/bin/sh", "-c", spec.command],
    cwd=spec.cwd,
    env=full_env,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    start_new_session=True,
   )
 except OSError as exc:
  # Popen reports a missing cwd as FileNotFoundError too; /bin/sh itself always exists.
  reason = exc.strerror or type(exc).__name__
  raise WorkFailed(f"cannot start the command in {spec.cwd}: {reason}") from None

 out, err = _Tail(OUTPUT_LIMIT), _Tail(OUTPUT_LIMIT)
 try:
  code = await _collect(process, out, err)
 except BaseException:
  # Cancellation (or a bug while reading): take the whole group down before re-raising.
  with anyio.CancelScope(shield=True):
   await _stop_group(process, out, err)
  raise
 with anyio.CancelScope(shield=True):
  await process.aclose()  # the process has exited: this only closes the pipes

 output = _join(out.text(), err.text())
 if code == 0:
  return WorkResult(output=output, exit_code=0)
 raise WorkFailed(_failure_line(code, err, out), exit_code=code, output=output)


class _Tail:
 """The last `limit` bytes of a stream, plus how many bytes were dropped before them."""

 __slots__ = ("_buf", "_limit", "dropped")

 def __init__(self, limit: int) -> None:
  self._buf = bytearray()
  self._limit = limit
  self.dropped = 0

 def add(self, chunk: bytes) -> None:
  self._buf += chunk
  excess = len(self._buf) - self._limit
  if excess > 0:
   del self._buf[:excess]
   self.dropped += excess

 def text(self) -> str:
  data = bytes(self._buf)
  if not self.dropped:
   return data.decode("utf-8", "replace")
  # The cut may fall inside a UTF-8 sequence: skip its continuation bytes (at most 3).
  start = 0
  while start < min(3, len(data)) and data[start] & 0xC0 == 0x80:
   start += 1
  dropped = self.dropped + start
  return f"[... {dropped} bytes dropped ...]\n" + data[start:].decode("utf-8", "replace")

 def last_line(self) -> str:
  for raw in reversed(self.text().splitlines()):
   line = raw.strip()
   if line and not line.startswith("[... "):
    return line if len(line) <= 200 else line[:199] + "…"
  return ""


async def _drain(stream: ByteReceiveStream | None, tail: _Tail) -> None:
 if stream is None:
  return
 async for chunk in stream:
  tail.add(chunk)


async def _collect(process: Process, out: _Tail, err: _Tail) -> int:
 """Read both streams to EOF and wait for the shell; return its exit code. Re-entrant: after a
 cancelled call it continues where that one stopped (EOF is reported again, harmlessly)."""
 async with anyio.create_task_group() as tg:
  tg.start_soon(_drain, process.stdout, out)
  tg.start_soon(_drain, process.stderr, err)
  code = await process.wait()
 return code


async def _stop_group(process: Process, out: _Tail, err: _Tail) -> None:
 # Called shielded. The shell is the group leader (start_new_session), so pgid == pid. The
 # kernel keeps that id reserved while any member of the group (or the unreaped shell)
 # exists, so these signals reach our group and no other; an empty group gives ESRCH.
 _signal_group(process.pid, signal.SIGTERM)
 # Exit of the shell plus EOF on both pipes means every process still holding our pipes is
 # gone: an event to wait on instead of polling the group.
 with anyio.move_on_after(TERM_GRACE):
  await _collect(process, out, err)
 # Whatever is left (ignored SIGTERM, or closed its pipes and lingers) cannot ignore this.
 _signal_group(process.pid, signal.SIGKILL)
 with anyio.move_on_after(REAP_TIMEOUT):
  await _collect(process, out, err)
  await process.aclose()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
 with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is empty
  os.killpg(pgid, sig)


def _join(stdout: str, stderr: str) -> str:
 if stdout and stderr and not stdout.endswith("\n"):
  stdout += "\n"
 return stdout + stderr


def _failure_line(code: int, err: _Tail, out: _Tail) -> str:
 detail = err.last_line() or out.last_line()
 if code < 0:
  try:
   name = signal.Signals(-code).name
  except ValueError:
   name = f"signal {-code}"
  head = f"killed by {name}"
 elif code == 127:
  head = "exit code 127 (command not found: check the command and PATH)"
 elif code == 126:
  head = "exit code 126 (command not executable: check its permissions)"
 else:
  head = f"exit code {code}"
 return f"{head}: {detail}" if detail else head


# -- Python callables -------------------------------------------------------------------------

# Guards the check-then-insert of a folder into sys.path, so two tickets resolving targets in
# worker threads at once insert it only once.
_SYS_PATH_LOCK = threading.Lock()


class CallTargetError(ValueError):
 """A call target that cannot work: malformed, its module or attribute missing, not callable.

 `str(error)` is one line naming the target and the fix. A class of its own, so that a
 `ValueError` raised by the user's module while it is imported is never mistaken for one.
 """


def parse_call_target(target: str) -> tuple[str, str]:
 """Split `"package.module:function"` into `("package.module", "function")`.

 Pure syntax check, no import. The attribute part may be dotted (`"mod:Class.method"`).
 Raises `CallTargetError` (a `ValueError`) naming the target and the expected form.
 """
 module, sep, attr = target.partition(":")
 if not sep or not _IDENTIFIER_PATH.fullmatch(module) or not _IDENTIFIER_PATH.fullmatch(attr):
  raise CallTargetError(
   f"bad call target {target!r}: write it as 'package.module:function' "
   "(dotted Python names, one colon)"
  )
 return module, attr


def resolve_call_target(target: str, search_path: Path | None = None) -> Callable[[Ticket], object]:
 """Import the module of `target` and return its callable. Blocking (it imports).

 Raises `CallTargetError` when the target is malformed, its module does not exist, the
 attribute is missing, or it is not callable. Anything raised while the module itself runs
 its import (a bug in it, or a missing import of its own) is re-raised unchanged, whatever
 it is: telling the two apart is the caller's job (`run_call` at run time,
 `pipeline.load_pipeline` when a file is loaded). The module stays imported, and
 `search_path` stays on `sys.path`, so resolving again is cheap.
 """
 module_name, attr_path = parse_call_target(target)
 if search_path is not None:
  folder = os.fspath(search_path)
  with _SYS_PATH_LOCK:
   if folder not in sys.path:
    sys.path.insert(0, folder)
 if module_name not in sys.modules:
  # A module file created after this folder was first scanned would otherwise be missed.
  importlib.invalidate_caches()
 try:
  module = importlib.import_module(module_name)
 except ModuleNotFoundError as exc:
  # Only "the target's module (or a parent package) does not exist" is a bad target; a
  # missing import INSIDE that module is the module's own failure.
  if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
   raise
  where = f" in {search_path} or on sys.path" if search_path is not None else " on sys.path"
  raise CallTargetError(
   f"bad call target {target!r}: no module named {exc.name!r}{where}; "
   "check the module name or put the module next to the pipeline file"
  ) from None
 obj: object = module
 for part in attr_path.split("."):
  try:
   obj = getattr(obj, part)
  except AttributeError:
   raise CallTargetError(
    f"bad call target {target!r}: module {module_name!r} has no attribute {attr_path!r}; "
    "check the function name"
   ) from None
 if not callable(obj):
  kind = type(obj).__name__
  article = "an" if kind[:1].lower() in "aeiou" else "a"
  raise CallTargetError(
   f"bad call target {target!r}: {attr_path} is {article} {kind}, not a function; "
   "point the target at a function taking the ticket"
  )
 return obj


async def run_call(spec: CallWork, ticket: Ticket) -> WorkResult:
 """Call `spec.target` with `ticket` as its single argument.

 - The import happens in a worker thread, so a slow import never stalls the event loop.
 - A coroutine function is awaited in the event loop (it must use anyio or only the
   running backend's primitives). A plain function runs in a worker thread; a thread
   cannot be interrupted, so cancelling waits for it to return.
 - A `str` return value becomes the output; a `WorkResult` is returned as is; anything else
   gives an empty output.
 - `WorkFailed`, `PausePipeline` and `WorkInterrupted` raised by the function propagate
   unchanged (a call ticket may pause the whole pipeline); anything else it raises, at
   import or call time, `BaseException`s included (`sys.exit()`, `KeyboardInterrupt`, a
   `CancelledError` of its own making), becomes `WorkFailed(describe_exception(exc))` with the
   traceback as output: user code never stops the runner. Only a real cancellation of this
   call propagates (see `is_cancellation`).
 - A bad target (`CallTargetError`, see `resolve_call_target`) fails the attempt too, with
   its one-line message as the error. `load_pipeline` refuses such a file before any run,
   so this happens only when the module changed after loading, or for a hand-built ticket.
 """
 try:
  fn = _unwrap(
   await anyio.to_thread.run_sync(_caught, resolve_call_target, spec.target, spec.search_path)
  )
 except CallTargetError as exc:
  # Its own words are the whole message: the class name is ours, not the user's.
  raise WorkFailed(str(exc)) from None
 except BaseException as exc:
  if is_cancellation(exc):
   raise
  raise _failed_call(exc, f" (while importing {spec.target})") from None
 try:
  if _is_async(fn):
   value = await cast(Awaitable[object], fn(ticket))
  else:
   value = _unwrap(await anyio.to_thread.run_sync(_caught, fn, ticket))
 except (WorkFailed, PausePipeline, WorkInterrupted):
  raise  # the function's own word on its outcome (see `Worker`)
 except BaseException as exc:
  if is_cancellation(exc):
   raise
  raise _failed_call(exc) from None
 if isinstance(value, WorkResult):
  return value
 return WorkResult(output=value if isinstance(value, str) else "")


T = TypeVar("T")


def _caught(fn: Callable[..., T], *args: object) -> tuple[T | None, BaseException | None]:
 # Runs in the worker thread: whatever `fn` raises comes back as a value. Raised across the
 # thread boundary instead, a GeneratorExit escapes every `except` on asyncio (the future's
 # iterator lets it through) and would crash the run.
 try:
  return fn(*args), None
 except BaseException as exc:
  return None, exc


def _unwrap(outcome: tuple[T | None, BaseException | None]) -> T:
 value, exc = outcome
 if exc is not None:
  raise exc
 return cast(T, value)


def _is_async(fn: object) -> bool:
 return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
  type(fn).__call__  # an instance whose __call__ is async
 )


def is_cancellation(exc: BaseException) -> bool:
 """Whether `exc`, caught in the current task, is a real cancellation of it.

 A backend's cancellation exception is also an ordinary class that user code can raise
 (`raise asyncio.CancelledError()`); only when the current scope really was cancelled
 (its effective deadline is -inf) is it the runner's cancellation, to be let through.
 """
 return isinstance(exc, get_cancelled_exc_class()) and current_effective_deadline() == -math.inf


def describe_exception(exc: BaseException) -> str:
 """One line for the ticket table naming what `exc` is, whatever it is. Never raises.

 `sys.exit(3)` reads "SystemExit: sys.exit(3) was called; ..."; anything else "ExceptionType: first line". The
 text is untrusted: an `__str__` that raises or returns junk still gives a line.
 """
 name = type(exc).__name__
 if isinstance(exc, SystemExit):
  return f"SystemExit: sys.exit({_safe_repr(exc.code)}) was called; a ticket cannot exit the runner"
 try:
  first = first_line(str(exc), 300)
 except BaseException:  # a hostile __str__: name the type, say why there is no message
  return f"{name} (its message could not be read)"
 return f"{name}: {first}" if first else name


def _safe_repr(value: object) -> str:
 try:
  text = repr(value)
 except BaseException:
  return "?"
 return text if len(text) <= 100 else text[:99] + "…"


def _failed_call(exc: BaseException, context: str = "") -> WorkFailed:
 try:
  output = "".join(traceback.format_exception(exc))
 except BaseException:  # a hostile __str__ or __repr__ inside the chain
  output = f"{type(exc).__name__} (its traceback could not be formatted)"
 return WorkFailed(describe_exception(exc) + context, output=output[-OUTPUT_LIMIT:])


__all__ = [
 "OUTPUT_LIMIT",
 "REAP_TIMEOUT",
 "TERM_GRACE",
 "CallTargetError",
 "CallWork",
 "Outcome",
 "PausePipeline",
 "ShellWork",
 "SleepWork",
 "Usage",
 "WorkFailed",
 "WorkInterrupted",
 "WorkResult",
 "WorkSpec",
 "Worker",
 "describe_exception",
 "describe_work",
 "is_cancellation",
 "parse_call_target",
 "resolve_call_target",
 "run_call",
 "run_shell",
 "run_work",
]
