"""Where a durable run is assembled: the one path from a pipeline to a running, recorded engine.

`conductor run`, `conductor demo`, the dashboard and the benchmarks all open a run here, in
this order (`open_session`):

1. the pipeline is checked (`check_pipeline`: the DAG validates; `check_api_keys`: its agent
   tickets' API key is in the environment) before any state is touched;
2. its state file is chosen (`state_path`: `--state`, else beside the pipeline file, else
   the demo's under `$XDG_STATE_HOME`) and resolved once, so a run and its clients agree on
   the files beside it;
3. the state is claimed (one live run per state: `server.StateOwner`), opened (a damaged
   one is refused, or with `fresh` moved aside), and restored onto the tickets: statuses,
   attempts, the pause (`StateStore.restore`);
4. the processes a killed run left running for its interrupted attempts are stopped, so an
   attempt never overlaps its re-run (`leftovers`); the `call` tickets a run ever died under
   run in processes of their own from now on (`isolation`: one that ends its process, by
   `os._exit` or a crash, then fails alone instead of ending every re-run);
5. the built-in demo, found finished, starts over (it is for watching).

Then `DurableRun.conductor()` builds the `ConductorEngine` from the restored statuses (on a
fresh state, the first one reuses the DAG engine step 1 built: `DurableRun.checked`), with
what the state kept of the last run (the pause: reason, since when, who, until when; the
tokens spent; a raised budget; the outputs that other tickets read), and attaches the store
to it (every transition recorded, write-ahead: see `journal`); `DurableRun.drive()` serves
the control socket around a run; `DurableRun.close()` commits and releases the claim.
`DurableRun.notes()` says what was found, for people: the CLI prints it, the dashboard
shows it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio

from ._text import listed, plural, printable, shown_path
from .agents import AgentWork
from .dag_engine import ExecutionEngine, PipelineError, Status
from .exits import UsageError
from .isolation import isolating
from .leftovers import STATE_VARIABLE, Leftover, find_leftovers, stop_leftovers
from .multi_agent_conductor import ConductorEngine
from .pipeline import Pipeline
from .server import StateOwner
from .store import (
 Restored,
 StateError,
 StateStore,
 check_state_file,
 default_state_path,
 demo_state_path,
)
from .workers import CallWork, Worker, run_work

if TYPE_CHECKING:
 from .dask_executor import DaskExecutor

__all__ = [
 "DurableRun",
 "Note",
 "check_api_keys",
 "check_pipeline",
 "on_cluster",
 "open_run",
 "open_session",
 "state_path",
]

T = TypeVar("T")


# -- paths and words -----------------------------------------------------------------------


def state_path(pipeline: Pipeline, given: str | Path | None = None) -> Path:
 """Where `pipeline`'s state lives: `given` (`--state`), else beside its file, else the demo's."""
 if given:
  return Path(given)
 return default_state_path(pipeline.path) if pipeline.path else demo_state_path()


# -- checking a pipeline ---------------------------------------------------------------------


def check_pipeline(pipeline: Pipeline) -> ExecutionEngine:
 """The pipeline's DAG engine; a pipeline that cannot run raises `UsageError` (one line)."""
 try:
  return ExecutionEngine(pipeline.tickets, auto_queue=pipeline.auto_queue)
 except PipelineError as exc:
  raise UsageError(f"{_where(pipeline)}: {exc}") from None


def _where(pipeline: Pipeline) -> str:
 return shown_path(pipeline.path) if pipeline.path else printable(pipeline.name)


def check_api_keys(pipeline: Pipeline) -> None:
 """Raise `UsageError` (one line: the file, the ticket, the variable, the fix) if an agent
 ticket's `[pipeline.agent] api_key_env` variable is not set (or empty). O(tickets).

 For a run only (`open_session`): each attempt would fail, after the tickets before it had
 run and spent; `validate` checks the file, not the environment.
 """
 where = _where(pipeline)
 for ticket in pipeline.tickets:
  work = ticket.work
  if not isinstance(work, AgentWork):
   continue
  variable = work.agent.api_key_env
  if variable and not os.environ.get(variable):
   raise UsageError(
    f"{where}: agent ticket {printable(ticket.id)!r} reads its API key from ${printable(variable)} "
    f"([pipeline.agent] api_key_env), which is not set; export {printable(variable)}=<your key> "
    "and run again, or remove api_key_env if the server needs no key"
   )


# -- a durable run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Note:
 """One thing a person should know about the state a run opened (already escaped text)."""

 text: str
 warning: bool = False


@dataclass
class DurableRun:
 """A claimed, opened and restored state, ready for `ConductorEngine` runs (one at a time).

 Owned by the thread that opened it (its SQLite connection is): build, drive and close it
 there. `close()` must be called; it is idempotent.
 """

 pipeline: Pipeline
 state: Path  # resolved
 store: StateStore
 owner: StateOwner
 restored: Restored
 # Processes of interrupted attempts that the killed run left running, found and stopped
 # before this run (conductor.leftovers); `unstoppable` survived even SIGKILL.
 stopped: tuple[Leftover, ...] = ()
 unstoppable: tuple[Leftover, ...] = ()
 restarted_demo: bool = False  # the demo was found finished and starts over
 # The engine `check_pipeline` built, kept only while it matches the tickets (every one
 # todo, never started, before and after the restore: a fresh state): the first
 # `conductor()` takes it instead of building the same O(tickets) graph again.
 checked: ExecutionEngine | None = field(default=None, repr=False)
 # The `call` tickets a run of this state died under (`StateStore.died_under`): the default
 # worker runs them in processes of their own (`isolation`).
 isolated: frozenset[str] = frozenset()

 @property
 def worker(self) -> Worker:
  """The default worker for this run: its shell tickets carry `CONDUCTOR_STATE`, by which
  a later run finds what they left running if this one is killed; the `isolated` call
  tickets run in processes of their own."""
  env = {STATE_VARIABLE: str(self.state)}
  worker = functools.partial(run_work, env=env)
  return isolating(worker, self.isolated, env) if self.isolated else worker

 def conductor(
  self, max_workers: int | None = None, *, worker: Worker | None = None, linger: bool = False
 ) -> ConductorEngine:
  """A `ConductorEngine` for the next run: the tickets' current statuses (as restored, or
  as the last run on this state left them), the pause as stored (a paused pipeline starts
  paused and keeps the time its pause began, who paused it and when an automatic pause
  ends), the tokens spent so far, the token budget (`token_budget`), the kept outputs of
  the tickets whose outputs others read, and the store attached to record every
  transition. Call it again for each run."""
  pipeline, store = self.pipeline, self.store
  pause = store.pause_state()
  used = store.tokens_used()
  engine, self.checked = self.checked, None
  conductor = ConductorEngine(
   engine or ExecutionEngine(pipeline.tickets, auto_queue=pipeline.auto_queue),
   worker or self.worker,
   max_workers=max_workers or pipeline.max_workers,
   name=pipeline.name,
   paused=pause.paused,
   pause_reason=pause.reason,
   paused_at=pause.since,
   linger=linger,
   paused_by_person=pause.by_person,
   auto_resume_at=pause.auto_resume_at,
   token_budget=self.token_budget,
   tokens_used=used,
  )
  if used:  # each ticket's tokens of earlier runs, for its row (agent pipelines only)
   conductor.table.restore_tokens({t.id: t.tokens for t in store.tickets() if t.tokens})
  if conductor.needed_outputs:
   conductor.restore_outputs(store.outputs(conductor.needed_outputs))
  store.attach(conductor)
  return conductor

 @property
 def token_budget(self) -> int | None:
  """The run's token budget: the larger of the pipeline file's `token_budget` and the one
  a person raised (`conductor resume --budget`); None: no budget. The state knows both
  (`restore` recorded the file's): `StateStore.token_budget` says it."""
  return self.store.token_budget()

 async def drive(self, conductor: ConductorEngine, body: Callable[[], Awaitable[T]]) -> T:
  """Run `body()` (which runs `conductor`) with the control socket beside it; hand over
  and stop serving once it returns. Call inside the event loop."""
  async with anyio.create_task_group() as tg:
   await tg.start(self.owner.serve, conductor, self.store)
   result = await body()
   await self.owner.hand_over()
   tg.cancel_scope.cancel()
  self.store.commit()
  return result

 def notes(self) -> list[Note]:
  """What a person should know about the state this run opened, in order, one line each."""
  restored, where = self.restored, shown_path(self.state)
  notes: list[Note] = []
  moved = self.store.moved_aside
  if moved is not None:
   notes.append(Note(f"the damaged state was moved aside to {shown_path(moved)}", True))
  if self.restarted_demo:
   notes.append(Note("the last demo run had completed; starting a fresh one"))
  if restored.fresh:
   notes.append(Note(f"state: {where} (new)"))
  else:
   found = [f"{restored.completed}/{restored.total} completed"]
   if restored.interrupted:
    found.append(
     f"{len(restored.interrupted)} interrupted, running again: {listed(restored.interrupted)}"
    )
   if restored.retried:
    found.append(f"{len(restored.retried)} failed, retrying: {listed(restored.retried)}")
   notes.append(Note(f"state: {where} (resuming: {'; '.join(found)})"))
  newly = [tid for tid in restored.died_under if tid in self.isolated]
  if newly:
   these = (
    "these calls run in processes of their own"
    if len(newly) > 1
    else "this call runs in a process of its own"
   )
   notes.append(
    Note(
     f"the last run died while {listed(newly)} ran: {these} from now on, so one that ends "
     "its process fails alone",
     True,
    )
   )
  if self.stopped:
   notes.append(
    Note(
     f"stopped {plural(len(self.stopped), 'process', 'processes')} that the killed run had "
     f"left running ({_who(self.stopped)}), so no attempt overlaps its re-run"
    )
   )
  if self.unstoppable:
   pids = ", ".join(str(x.pid) for x in self.unstoppable)
   notes.append(
    Note(
     f"warning: {plural(len(self.unstoppable), 'process', 'processes')} of the killed run "
     f"outlived SIGKILL ({_who(self.unstoppable)}; pids {pids}): stuck in the kernel?",
     True,
    )
   )
  return notes

 def executor(self, address: str) -> DaskExecutor:
  """A Dask executor for this run's tickets (`--dask`, `[pipeline] dask`), not connected yet:
  pass it as `conductor(worker=...)`, `attach` it to the engine, and run inside
  `on_cluster(executor)`. Its task keys are derived from this state, so that the next run
  finds what a killed one left on the cluster. Without the dask extra, or with a malformed
  address: `UsageError` (one line)."""
  try:
   from .dask_executor import DaskError, DaskExecutor
   from .dask_executor import key_prefix_for as prefix
  except ImportError as exc:  # DaskMissing: its message says what to install
   raise UsageError(str(exc)) from None
  try:
   return DaskExecutor(
    address, key_prefix=prefix(self.state), env={STATE_VARIABLE: str(self.state)}
   )
  except DaskError as exc:
   raise UsageError(str(exc)) from None

 def close(self) -> None:
  """Commit and close the store, then release the claim. Idempotent."""
  try:
   self.store.close()
  finally:
   self.owner.release()


@contextlib.asynccontextmanager
async def on_cluster(executor: DaskExecutor) -> AsyncIterator[int]:
 """Connect `executor` (in the loop that runs the engine), stop what a killed run of this
 state left on the cluster, and yield how many tasks and processes that was; close the
 connection (and a `local:N` cluster) on the way out. An unreachable scheduler raises
 `UsageError` (one line), before any ticket runs."""
 from .dask_executor import DaskError

 try:
  await executor.__aenter__()
 except DaskError as exc:
  raise UsageError(str(exc)) from None
 try:
  # Before any ticket runs again: an attempt never overlaps its killed predecessor.
  yield await executor.clear_leftovers()
 finally:
  await executor.__aexit__(None, None, None)


def _who(leftovers: Sequence[Leftover]) -> str:
 tickets = list(dict.fromkeys(x.ticket for x in leftovers))
 return f"{'ticket' if len(tickets) == 1 else 'tickets'} {listed(tickets)}"


def open_run(
 state: Path, pipeline: Pipeline, *, fresh: bool = False, synchronous: str = "NORMAL"
) -> DurableRun:
 """Check, claim, open and restore `state` for a run of `pipeline` (steps 3-4 above).

 Raises `StateError` (one line, nothing written to the file) for a foreign or damaged
 file, a state another live process runs, or a pipeline changed since the state was
 written. On success the caller owns the result and must `close()` it. `state` is resolved
 first (symlinks followed once, here), so a run and its clients agree on the files beside it.
 `synchronous` is SQLite's (`StateStore.open`): "FULL" survives a power cut, at a cost.
 """
 state = Path(os.path.realpath(state))
 check_state_file(state)  # refuse a foreign file before creating anything beside it
 try:
  state.parent.mkdir(parents=True, exist_ok=True)
 except OSError as exc:
  raise StateError(f"{state}: cannot create its folder ({exc.strerror})") from None
 owner = StateOwner.claim(state)
 try:
  # The deep check sees the file as SQLite will (WAL included); with `fresh`, a damaged
  # state is moved aside (`store.moved_aside`) and a new one started.
  store = StateStore.open(state, deep_check=True, fresh=fresh, synchronous=synchronous)
  try:
   source = str(pipeline.path) if pipeline.path else None
   restored = store.restore(
    pipeline.name,
    pipeline.tickets,
    fresh=fresh,
    source=source,
    token_budget=pipeline.token_budget,
   )
  except BaseException:
   store.close()
   raise
  # Before anything starts: no attempt may overlap the interrupted one it replaces.
  interrupted = set(restored.interrupted)
  attempts = (
   {t.id: t.attempts for t in pipeline.tickets if t.id in interrupted} if interrupted else {}
  )
  stopped = find_leftovers(state, attempts)
  unstoppable = stop_leftovers(stopped)
  died = store.died_under()
  isolated = (
   frozenset(t.id for t in pipeline.tickets if t.id in died and isinstance(t.work, CallWork))
   if died
   else frozenset()
  )
 except BaseException:
  owner.release()
  raise
 return DurableRun(
  pipeline,
  state,
  store,
  owner,
  restored,
  tuple(stopped),
  tuple(unstoppable),
  isolated=isolated,
 )


def open_session(
 pipeline: Pipeline, *, state: str | Path | None = None, fresh: bool = False
) -> DurableRun:
 """Steps 1-5 above: a checked pipeline's state, claimed, restored, its leftovers stopped.

 Raises `UsageError` (one line, exit 2) for a pipeline that cannot run or a state that
 cannot be used; nothing is written then. The caller must `close()` the result.
 """
 engine = check_pipeline(pipeline)
 check_api_keys(pipeline)
 pristine = engine.counts()[Status.TODO] == len(pipeline.tickets) and not any(
  t.attempts for t in pipeline.tickets
 )
 try:
  durable = open_run(state_path(pipeline, state), pipeline, fresh=fresh)
  if durable.restored.done and not fresh and pipeline.path is None:
   # The built-in demo is for watching: a finished one starts over instead of doing nothing.
   try:
    durable.restored = durable.store.restore(
     pipeline.name, pipeline.tickets, fresh=True, token_budget=pipeline.token_budget
    )
   except BaseException:
    durable.close()
    raise
   durable.restarted_demo = True
 except StateError as exc:
  raise UsageError(str(exc)) from None
 if pristine and durable.restored.fresh:  # the restore left every ticket as it was checked
  durable.checked = engine
 return durable
