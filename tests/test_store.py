"""StateStore: what a run records, what a later run restores, and what is refused untouched.

In-process tests on asyncio and trio. A "crash image" (the state file and its WAL copied
while a run is in flight) stands for the file a `kill -9` would leave behind; the real kills
are in test_durability.py.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from conductor import store as store_module
from conductor.dag_engine import ExecutionEngine, Status, Ticket
from conductor.exits import UsageError
from conductor.multi_agent_conductor import ConductorEngine, Snapshot, TokenBudgetSpent, Transition
from conductor.pipeline import Pipeline, fingerprint, pipeline_from_dict
from conductor.server import StateLockedError
from conductor.session import DurableRun, open_run, open_session
from conductor.store import (
 APPLICATION_ID,
 PipelineChangedError,
 StateError,
 StateFileError,
 StateStore,
 check_state_file,
)
from conductor.transitions import Change
from conductor.workers import PausePipeline, Usage, WorkFailed, WorkResult

pytestmark = pytest.mark.anyio


def diamond() -> list[Ticket]:
 return [
  Ticket("a"),
  Ticket("b", ("a",)),
  Ticket("c", ("a",)),
  Ticket("d", ("b", "c")),
  Ticket("e"),
 ]


def current(path: Path) -> dict[str, tuple[str, int]]:
 """Ticket states in what a `kill -9` right now would leave (the file and its WAL, copied),
 as a new connection recovers them: only what is committed. (The owner's connection holds
 the file exclusively: no second connection can read it in place.)"""
 with tempfile.TemporaryDirectory() as folder:
  conn = sqlite3.connect(crash_image(path, Path(folder)))
  try:
   rows = conn.execute("SELECT id, status, attempts FROM ticket_state").fetchall()
  finally:
   conn.close()
 return {tid: (status, attempts) for tid, status, attempts in rows}


async def run_with_store(
 store: StateStore, tickets: list[Ticket], worker: object, max_workers: int = 3
) -> Snapshot:
 conductor = ConductorEngine(ExecutionEngine(tickets), worker, max_workers)  # type: ignore[arg-type]
 store.attach(conductor)
 snap = await conductor.run()
 store.commit()
 return snap


def crash_image(state: Path, into: Path) -> Path:
 """Copy the state file and its WAL as they are: what `kill -9` at this moment would leave."""
 image = into / state.name
 for suffix in ("", "-wal"):
  source = Path(f"{state}{suffix}")
  if source.exists():
   shutil.copyfile(source, f"{image}{suffix}")
 return image


async def test_a_new_state_carries_the_marker_and_records_a_whole_run(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 assert not check_state_file(path)
 with StateStore.open(path) as store:
  tickets = diamond()
  restored = store.restore("p", tickets)
  assert restored.fresh and restored.total == 5

  async def ok(ticket: Ticket) -> WorkResult:
   return WorkResult(output="", exit_code=7 if ticket.id == "e" else 0)

  snap = await run_with_store(store, tickets, ok)
  assert snap.counts.completed == 5
 assert check_state_file(path, deep=True)
 assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID
 with StateStore.open(path, create=False) as store:
  rows = {row.id: row for row in store.tickets()}
  assert {row.status for row in rows.values()} == {"completed"}
  assert rows["e"].exit_code == 7 and rows["a"].attempts == 1
  events = [(h.ticket, h.status) for h in store.history() if h.ticket == "d"]
  assert events == [("d", "in_progress"), ("d", "completed")]
  # The closed store brought the tickets table itself up to date.
  table = dict(store._conn.execute("SELECT id, status FROM tickets").fetchall())
  assert set(table.values()) == {"completed"}


@pytest.mark.parametrize("statement", ["_COMPACT_UPDATE", "_COMPACT_REPLACE"])
@pytest.mark.parametrize("entries", [25_000, 2])  # history entries a slice of it
async def test_closing_brings_the_tickets_table_to_what_the_history_says(
 tmp_path: Path, statement: str, entries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
 # Both forms of the compaction (UPDATE ... FROM where SQLite has it) leave the table
 # equal to the always-current `ticket_state` view: statuses, errors, exit codes, times;
 # also through the history in slices, a ticket's entries in different slices.
 monkeypatch.setattr(store_module, "_COMPACT", getattr(store_module, statement))
 monkeypatch.setattr(store_module, "_COMPACT_SLICE", entries)
 path = tmp_path / "p.state.db"
 columns = "id, position, fingerprint, status, attempts, error, exit_code, updated_at"
 with StateStore.open(path) as store:
  tickets = diamond()
  store.restore("p", tickets)

  async def worker(ticket: Ticket) -> WorkResult:
   if ticket.id == "b":
    raise WorkFailed("b broke", exit_code=3)
   return WorkResult(output="", exit_code=7 if ticket.id == "e" else 0)

  await run_with_store(store, tickets, worker)
  view = store._conn.execute(f"SELECT {columns} FROM ticket_state ORDER BY id").fetchall()
  assert (store.ticket_status("b"), store.ticket_status("a")) == ("failed", "completed")
  assert store.ticket_status("nope") is None
 conn = sqlite3.connect(path)
 try:
  table = conn.execute(f"SELECT {columns} FROM tickets ORDER BY id").fetchall()
  synced = conn.execute("SELECT value FROM meta WHERE key = 'synced_seq'").fetchone()[0]
  last = conn.execute("SELECT max(seq) FROM history").fetchone()[0]
 finally:
  conn.close()
 assert table == view and int(synced) == last
 assert {row[0]: row[3:7] for row in table} == {
  "a": ("completed", 1, None, 0),
  "b": ("failed", 1, "b broke", 3),
  "c": ("completed", 1, None, 0),
  "d": ("blocked", 0, "dependency 'b' failed; retry 'b' to unblock", None),
  "e": ("completed", 1, None, 7),
 }


async def test_a_ticket_starts_only_after_its_dependencies_completion_is_committed(
 tmp_path: Path,
) -> None:
 # The worker looks at what a kill at that moment would leave, i.e. only committed data:
 # its dependencies must be completed there, and its own attempt already counted.
 path = tmp_path / "p.state.db"
 tickets = [Ticket(f"r{i}") for i in range(4)]
 tickets += [Ticket(f"m{i}", (f"r{i}", f"r{(i + 1) % 4}")) for i in range(4)]
 tickets += [Ticket("join", tuple(f"m{i}" for i in range(4)))]
 seen: list[str] = []
 with StateStore.open(path) as store:
  store.restore("p", tickets)
  deps = {t.id: t.depends_on for t in tickets}

  async def check(ticket: Ticket) -> None:
   visible = current(path)
   for dep in deps[ticket.id]:
    assert visible[dep][0] == "completed", (ticket.id, dep, visible[dep])
   assert visible[ticket.id] == ("in_progress", ticket.attempts)
   seen.append(ticket.id)
   await anyio.lowlevel.checkpoint()

  snap = await run_with_store(store, tickets, check, max_workers=3)
 assert snap.counts.completed == len(tickets) == len(seen)


async def test_no_worker_runs_once_the_state_cannot_be_written(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 chain = [Ticket(f"c{i}", (f"c{i - 1}",) if i else ()) for i in range(5)]
 ran: list[str] = []
 with StateStore.open(path) as store:
  store.restore("p", chain)

  async def worker(ticket: Ticket) -> None:
   ran.append(ticket.id)
   if ticket.id == "c2":  # the disk goes away: every later write fails in SQLite
    store._conn.execute("PRAGMA query_only = ON")
   await anyio.lowlevel.checkpoint()

  conductor = ConductorEngine(ExecutionEngine(chain), worker, 2)
  store.attach(conductor)
  with anyio.fail_after(10):
   snap = await conductor.run()  # the store cancelled it
  # c2's completion and c3's start could not be committed: c3's worker never ran.
  assert ran == ["c0", "c1", "c2"]
  assert snap.counts.completed == 3 and snap.stopping
  assert store.failure is not None and str(path) in store.failure
  store._conn.execute("PRAGMA query_only = OFF")
 assert {tid: status for tid, (status, _) in current(path).items()} == {
  "c0": "completed",
  "c1": "completed",
  "c2": "in_progress",  # a re-run runs it again (interrupted)
  "c3": "todo",
  "c4": "todo",
 }


async def test_every_watched_transition_is_already_committed(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 lines: list[tuple[str | None, Change]] = []
 with StateStore.open(path) as store:
  tickets = diamond()
  store.restore("p", tickets)

  def watch(t: Transition) -> None:
   if t.ticket is not None:
    assert current(path)[t.ticket][0] == t.status
   lines.append((t.ticket, t.change))

  store.watch(watch)

  async def ok(ticket: Ticket) -> None:
   await anyio.lowlevel.checkpoint()

  await run_with_store(store, tickets, ok)
 assert len(lines) == 10


async def test_a_crash_image_resumes_with_the_interrupted_attempt_counted(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 crashed = tmp_path / "crashed"
 crashed.mkdir()
 with StateStore.open(path) as store:
  tickets = diamond()
  store.restore("p", tickets)

  async def copy_at_d(ticket: Ticket) -> None:
   if ticket.id == "d":  # a, b, c, e done; d's attempt is committed: "kill -9" now
    crash_image(path, crashed)
   await anyio.lowlevel.checkpoint()

  await run_with_store(store, tickets, copy_at_d)

 again = diamond()
 with StateStore.open(crashed / path.name) as store:
  restored = store.restore("p", again)
  assert restored.interrupted == ("d",) and restored.completed == 4
  by_id = {t.id: t for t in again}
  assert by_id["d"].status is Status.TODO and by_id["d"].attempts == 1
  assert by_id["a"].status is Status.COMPLETED
  started: list[str] = []

  async def record(ticket: Ticket) -> None:
   started.append(ticket.id)

  await run_with_store(store, again, record)
  assert started == ["d"]  # completed tickets never run again
  assert by_id["d"].attempts == 2
  events = [h.status for h in store.history() if h.ticket == "d"]
  assert events == ["in_progress", "interrupted", "in_progress", "completed"]
  # The process died under d: that stays known (its call would run apart), until --fresh.
  assert restored.died_under == ("d",) and store.died_under() == {"d"}
  assert store.restore("p", diamond()).died_under == ()
  assert store.died_under() == {"d"}
  store.restore("p", diamond(), fresh=True)
  assert store.died_under() == frozenset()


async def test_a_re_run_names_the_tickets_a_cancelled_run_interrupted(tmp_path: Path) -> None:
 # A second Ctrl+C (or Cancel, SIGTERM) cancels the running workers: the run records them
 # "interrupted" and todo, and ends cleanly. The next run must say so, as after a kill -9.
 path = tmp_path / "p.state.db"
 with StateStore.open(path) as store:
  tickets = diamond()
  store.restore("p", tickets)
  started = anyio.Event()

  async def hang_in_d(ticket: Ticket) -> None:
   if ticket.id == "d":
    started.set()
    await anyio.sleep_forever()

  conductor = ConductorEngine(ExecutionEngine(tickets), hang_in_d, 3)
  store.attach(conductor)
  with anyio.fail_after(10):
   async with anyio.create_task_group() as tg:
    tg.start_soon(conductor.run)
    await started.wait()
    conductor.cancel()
  store.commit()

 with StateStore.open(path) as store:
  again = diamond()
  restored = store.restore("p", again)
  assert restored.interrupted == ("d",) and restored.completed == 4
  # Cancelled and recorded by its own run: the process did not die under it.
  assert restored.died_under == () and store.died_under() == frozenset()
  await run_with_store(store, again, lambda ticket: anyio.lowlevel.checkpoint())

 with StateStore.open(path) as store:  # d completed since: nothing is interrupted any more
  assert store.restore("p", diamond()).interrupted == ()


@pytest.mark.parametrize("seed", range(4))
async def test_random_runs_are_written_ahead_and_the_state_matches_the_engine(
 tmp_path: Path, seed: int
) -> None:
 # Random DAGs with failures, automatic retries, exit codes and pauses from the workers:
 # at every start the state a kill would leave has this start and its dependencies'
 # completions; at the end the stored tickets equal the engine's and every attempt logged.
 rng = random.Random(seed)
 tickets = []
 for i in range(24):
  deps = tuple(sorted({f"t{j}" for j in rng.sample(range(i), min(i, rng.randint(0, 3)))}))
  tickets.append(Ticket(f"t{i}", deps, retries=rng.choice((0, 0, 1, 2))))
 fail_first = {t.id: rng.randint(0, 3) for t in tickets}  # failures before a success
 path = tmp_path / "p.state.db"
 with StateStore.open(path) as store:
  store.restore("p", tickets)

  async def worker(ticket: Ticket) -> WorkResult:
   visible = current(path)
   assert visible[ticket.id] == ("in_progress", ticket.attempts), ticket.id
   for dep in ticket.depends_on:
    assert visible[dep][0] == "completed", (ticket.id, dep)
   if rng.random() < 0.1:
    conductor.pause("seed pause")
    conductor.resume()
   await anyio.lowlevel.checkpoint()
   if ticket.attempts <= fail_first[ticket.id]:
    raise WorkFailed(f"attempt {ticket.attempts} broke", exit_code=ticket.attempts)
   return WorkResult(output="ok", exit_code=0)

  conductor = ConductorEngine(ExecutionEngine(tickets), worker, max_workers=rng.randint(1, 5))
  store.attach(conductor)
  with anyio.fail_after(20):
   await conductor.run()
  engine_view = {t.id: (str(t.status), t.attempts, t.error) for t in tickets}
  rows = store.tickets()
  assert {row.id: (row.status, row.attempts, row.error) for row in rows} == engine_view
  assert all(row.exit_code == 0 for row in rows if row.status == "completed")
  starts = Counter(h.ticket for h in store.history() if h.status == "in_progress")
  assert starts == Counter({t.id: t.attempts for t in tickets if t.attempts})
  exits = store._conn.execute(
   "SELECT ticket, attempt, exit_code FROM history WHERE event IN ('failed', 'retrying')"
  ).fetchall()
  assert all(code == attempt for _ticket, attempt, code in exits)


async def test_failed_tickets_are_retried_by_a_re_run_and_blocked_ones_follow(
 tmp_path: Path,
) -> None:
 path = tmp_path / "p.state.db"
 fail = {"b"}

 async def worker(ticket: Ticket) -> WorkResult:
  if ticket.id in fail:
   raise WorkFailed("broken", exit_code=3)
  return WorkResult(exit_code=0)

 with StateStore.open(path) as store:
  first = diamond()
  store.restore("p", first)
  snap = await run_with_store(store, first, worker)
  assert snap.counts.failed == 1 and snap.counts.blocked == 1
  rows = {row.id: row for row in store.tickets()}
  assert rows["b"].error == "broken" and rows["b"].exit_code == 3
  assert rows["d"].status == "blocked"
 fail.clear()
 again = diamond()
 with StateStore.open(path) as store:
  restored = store.restore("p", again)
  assert restored.retried == ("b",)
  snap = await run_with_store(store, again, worker)
  assert snap.counts.completed == 5
  assert {t.id: t.attempts for t in again} == {"a": 1, "b": 2, "c": 1, "d": 1, "e": 1}


async def test_a_retry_during_the_run_records_what_it_unblocked(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 tickets = diamond()
 failed_once: set[str] = set()
 with StateStore.open(path) as store:
  store.restore("p", tickets)
  conductor: ConductorEngine

  async def worker(ticket: Ticket) -> None:
   if ticket.id == "b" and not failed_once:
    failed_once.add("b")
    raise WorkFailed("flaky")

  b_failed = anyio.Event()

  def on_transition(t: Transition) -> None:
   if t.ticket == "b" and t.change is Change.FAILED:
    b_failed.set()
   if t.ticket == "d" and t.change is Change.COMPLETED:
    conductor.stop()

  async def retry_b() -> None:
   await b_failed.wait()
   conductor.retry("b")  # like a click on Retry: from outside the engine's own step

  conductor = ConductorEngine(ExecutionEngine(tickets), worker, 3, linger=True)
  store.attach(conductor)
  conductor.add_listener(on_transition)
  async with anyio.create_task_group() as tg:
   tg.start_soon(retry_b)
   with anyio.fail_after(10):
    snap = await conductor.run()
   tg.cancel_scope.cancel()
  assert snap.counts.completed == 5
  history = [(h.ticket, h.status) for h in store.history()]
  assert ("d", "blocked") in history and ("d", "todo") in history
  assert {row.status for row in store.tickets()} == {"completed"}


async def test_a_re_run_gives_a_failed_ticket_its_full_retries_and_attempts_count_on(
 tmp_path: Path,
) -> None:
 path = tmp_path / "p.state.db"
 succeed_at = 99  # the attempt that succeeds

 async def worker(ticket: Ticket) -> WorkResult:
  if ticket.id == "b" and ticket.attempts < succeed_at:
   raise WorkFailed(f"attempt {ticket.attempts} broke")
  return WorkResult(exit_code=0)

 def tickets() -> list[Ticket]:
  return [Ticket("a"), Ticket("b", ("a",), retries=2), Ticket("c", ("b",))]

 with StateStore.open(path) as store:
  first = tickets()
  store.restore("p", first)
  snap = await run_with_store(store, first, worker)
  assert (snap.counts.failed, snap.counts.blocked) == (1, 1)
  assert first[1].attempts == 3  # the first attempt and its two retries
 succeed_at = 6  # the re-run needs all three of its attempts
 with StateStore.open(path) as store:
  again = tickets()
  assert store.restore("p", again).retried == ("b",)
  snap = await run_with_store(store, again, worker)
  assert snap.counts.completed == 3
  starts = [h.attempt for h in store.history() if h.ticket == "b" and h.status == "in_progress"]
  assert starts == [1, 2, 3, 4, 5, 6]  # CONDUCTOR_ATTEMPT never repeats


async def test_the_store_records_a_retry_and_a_pause_from_the_transitions_alone(
 tmp_path: Path,
) -> None:
 # After a retry of x, `both` is blocked by y instead: its stored error says so. A pause
 # records who was running at it, as the transition says (not as the engine says later).
 path = tmp_path / "p.state.db"
 tickets = [Ticket("x"), Ticket("y"), Ticket("both", ("x", "y")), Ticket("slow")]
 release = anyio.Event()
 x_failed = anyio.Event()
 y_failed = anyio.Event()

 async def worker(ticket: Ticket) -> None:
  if ticket.id == "slow":
   await release.wait()
  elif ticket.id == "x" and not x_failed.is_set():
   x_failed.set()
   raise WorkFailed("x broke")  # first: `both` is blocked by x
  elif ticket.id == "y":
   await x_failed.wait()
   y_failed.set()
   raise WorkFailed("y broke")

 with StateStore.open(path) as store:
  store.restore("p", tickets)
  conductor = ConductorEngine(ExecutionEngine(tickets), worker, 4, linger=True)
  store.attach(conductor)
  async with anyio.create_task_group() as tg:
   tg.start_soon(conductor.run)
   with anyio.fail_after(10):
    await y_failed.wait()
    await anyio.wait_all_tasks_blocked()
    conductor.retry("x")
    conductor.pause("check")
    store.commit()
    assert store.pause_state().running_at_pause == ("slow",)
    rows = {row.id: row for row in store.tickets()}
    assert rows["both"].status == "blocked"
    assert rows["both"].error == "dependency 'y' failed; retry 'y' to unblock"
    conductor.resume()
    release.set()
    conductor.stop()
  events = [(h.ticket, h.status) for h in store.history() if h.ticket == "both"]
  assert events == [("both", "blocked"), ("both", "blocked")]


@pytest.mark.parametrize("details", [True, False])
@pytest.mark.parametrize("rows", [3, 200])  # one INSERT statement, and several
def test_buffered_rows_with_and_without_details_are_written_in_order(
 tmp_path: Path, rows: int, details: bool
) -> None:
 # Plain rows are buffered narrow (NULL details in the statement); the first row with
 # details widens what is buffered. Everything lands in order with its own values.
 with StateStore.open(tmp_path / "p.state.db") as store:
  store.restore("p", [Ticket("a")])
  expected = []
  for i in range(rows):
   detail = f"d{i}" if details and i % 7 == 5 else None
   code = i if details and i % 11 == 3 else None
   store._log(
    float(i), "a", "completed", status="completed", attempt=i, detail=detail, exit_code=code
   )
   expected.append((float(i), i, detail, code))
  store.commit()
  got = store._conn.execute(
   "SELECT at, attempt, detail, exit_code FROM history WHERE ticket = 'a' ORDER BY seq"
  ).fetchall()
  assert got == expected
  assert {pid for (pid,) in store._conn.execute("SELECT pid FROM history")} == {os.getpid()}


def pipeline(tickets: list[dict[str, object]], name: str = "p") -> Pipeline:
 return pipeline_from_dict({"tickets": tickets}, name=name)


def test_a_changed_pipeline_is_named_ticket_by_ticket_and_nothing_written(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 base = [
  {"id": "keep", "sleep": 0},
  {"id": "edit", "sleep": 1},
  {"id": "drop", "sleep": 0},
 ]
 with StateStore.open(path) as store:
  store.restore("p", pipeline(base).tickets)
 before = path.read_bytes()
 edited = [{"id": "keep", "sleep": 0}, {"id": "edit", "sleep": 2}, {"id": "new", "sleep": 0}]
 with StateStore.open(path) as store, pytest.raises(PipelineChangedError) as caught:
  store.restore("p", pipeline(edited).tickets)
 error = caught.value
 assert (error.added, error.removed, error.changed) == (("new",), ("drop",), ("edit",))
 assert "--fresh" in str(error) and "\n" not in str(error)
 assert path.read_bytes() == before
 # Reordering and a new description are not changes.
 reordered = [{"id": "drop", "sleep": 0}, {"id": "keep", "sleep": 0, "description": "x"}]
 reordered.append({"id": "edit", "sleep": 1})
 with StateStore.open(path) as store:
  assert not store.restore("p", pipeline(reordered).tickets).fresh


def test_fresh_forgets_progress_and_the_pause_flag(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 tickets = pipeline([{"id": "a", "sleep": 0}]).tickets
 with StateStore.open(path) as store:
  store.restore("p", tickets)
  store.set_paused(True, "lunch")
 with StateStore.open(path) as store:
  restored = store.restore("p", pipeline([{"id": "b", "sleep": 0}]).tickets, fresh=True)
  assert restored.fresh and not restored.pause.paused
  assert [row.id for row in store.tickets()] == ["b"]


def test_the_pause_flag_survives_and_keeps_when_it_began(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 with StateStore.open(path) as store:
  store.restore("p", pipeline([{"id": "a", "sleep": 0}]).tickets)
  first = store.set_paused(True, "rate limit")
  again = store.set_paused(True)  # idempotent: same since, same reason
  assert again.since == first.since and again.reason == "rate limit"
 with StateStore.open(path, create=False) as store:
  restored = store.restore("p", pipeline([{"id": "a", "sleep": 0}]).tickets)
  assert restored.pause.paused and restored.pause.reason == "rate limit"
  assert not store.set_paused(False).paused
  assert [h.status for h in store.history()][-2:] == ["paused", "resumed"]


def foreign_files(tmp_path: Path) -> dict[str, Path]:
 files: dict[str, Path] = {}
 files["empty"] = tmp_path / "empty.db"
 files["empty"].write_bytes(b"")
 files["text"] = tmp_path / "notes.db"
 files["text"].write_text("my notes, not a database\n" * 20)
 files["sqlite"] = tmp_path / "other.db"
 conn = sqlite3.connect(files["sqlite"])
 conn.execute("CREATE TABLE mine (x)")
 conn.commit()
 conn.close()
 files["newer"] = tmp_path / "newer.state.db"
 with StateStore.open(files["newer"]) as store:
  store.restore("p", pipeline([{"id": "a", "sleep": 0}]).tickets)
 data = bytearray(files["newer"].read_bytes())
 data[60:64] = (99).to_bytes(4, "big")  # user_version: a future format
 files["newer"].write_bytes(bytes(data))
 files["damaged"] = tmp_path / "damaged.state.db"
 with StateStore.open(files["damaged"]) as store:
  store.restore("p", pipeline([{"id": f"t{i}", "sleep": 0} for i in range(300)]).tickets)
 data = bytearray(files["damaged"].read_bytes())
 data[2048:6144] = b"\xa5" * 4096  # trash pages behind an intact header
 files["damaged"].write_bytes(bytes(data))
 files["truncated"] = tmp_path / "truncated.state.db"
 shutil.copyfile(files["damaged"], files["truncated"])
 files["truncated"].write_bytes(files["damaged"].read_bytes()[:50])
 return files


def test_foreign_damaged_and_newer_files_are_refused_and_left_untouched(tmp_path: Path) -> None:
 for kind, path in foreign_files(tmp_path).items():
  before = path.read_bytes()
  siblings = sorted(p.name for p in tmp_path.iterdir())
  with pytest.raises(StateFileError) as caught, StateStore.open(path, deep_check=True):
   pass
  message = str(caught.value)
  assert "\n" not in message and str(path) in message, (kind, message)
  assert path.read_bytes() == before, kind
  assert sorted(p.name for p in tmp_path.iterdir()) == siblings, kind


def test_the_open_store_holds_the_file_and_another_program_holding_it_is_named(
 tmp_path: Path,
) -> None:
 path = tmp_path / "p.state.db"
 with StateStore.open(path) as store:
  store.restore("p", pipeline([{"id": "a", "sleep": 0}]).tickets)
  other = sqlite3.connect(path, timeout=0.1)
  with pytest.raises(sqlite3.OperationalError, match="locked"):
   other.execute("SELECT count(*) FROM history").fetchone()
  other.close()
 other = sqlite3.connect(path)  # closed: anyone may read it, e.g. a sqlite3 shell
 assert other.execute("SELECT status FROM ticket_state").fetchall() == [("todo",)]
 with pytest.raises(StateError) as caught:  # ... and while it holds the file, we wait
  StateStore.open(path)
 other.close()
 assert "another program has the state file open" in str(caught.value)
 assert "\n" not in str(caught.value)
 StateStore.open(path).close()


async def test_open_run_refuses_a_second_claim_and_a_released_claim_recovers(
 tmp_path: Path,
) -> None:
 p = pipeline([{"id": "a", "sleep": 0}])
 first: DurableRun = open_run(tmp_path / "p.state.db", p)
 try:
  conductor = ConductorEngine(ExecutionEngine(p.tickets), max_workers=1)
  async with anyio.create_task_group() as tg:
   await tg.start(first.owner.serve, conductor, first.store)  # listening: claim complete
   with pytest.raises(StateLockedError) as caught:
    open_run(tmp_path / "p.state.db", pipeline([{"id": "a", "sleep": 0}]))
   assert caught.value.pid == os.getpid() and "in use by conductor pid" in str(caught.value)
   tg.cancel_scope.cancel()
 finally:
  first.close()
 second = open_run(tmp_path / "p.state.db", pipeline([{"id": "a", "sleep": 0}]))
 second.close()


async def _noop(ticket: Ticket) -> None:
 pass


async def test_a_fresh_session_runs_first_on_the_engine_it_checked(tmp_path: Path) -> None:
 p = pipeline([{"id": "a", "sleep": 0}, {"id": "b", "sleep": 0, "depends_on": ["a"]}])
 durable = open_session(p, state=tmp_path / "p.state.db")
 try:
  checked = durable.checked
  assert checked is not None and durable.restored.fresh
  first = durable.conductor(worker=_noop)
  assert first.engine is checked and durable.checked is None
  with anyio.fail_after(5):
   assert (await first.run()).counts.completed == 2
  again = durable.conductor(worker=_noop)  # each later run builds its own
  assert again.engine is not checked and again.engine.is_done
 finally:
  durable.close()


async def test_a_session_rebuilds_the_engine_when_its_tickets_had_moved_on(tmp_path: Path) -> None:
 # The same Pipeline object run to the end, then run --fresh: its tickets were completed
 # when checked, so that check's engine does not describe the fresh state.
 p = pipeline([{"id": "a", "sleep": 0}, {"id": "b", "sleep": 0, "depends_on": ["a"]}])
 durable = open_session(p, state=tmp_path / "p.state.db")
 try:
  with anyio.fail_after(5):
   await durable.conductor(worker=_noop).run()
 finally:
  durable.close()
 durable = open_session(p, state=tmp_path / "p.state.db", fresh=True)
 try:
  assert durable.restored.fresh and durable.checked is None
  engine = durable.conductor(worker=_noop).engine
  assert engine.counts()[Status.TODO] == 2 and not engine.is_done
 finally:
  durable.close()


# -- #12: outputs, tokens, automatic pauses, the budget, format 1 -----------------------------


def outputs_in(image: Path) -> dict[str, tuple[int, int | None, str | None]]:
 """The `outputs` rows of a crash image (or a closed state): ticket -> (attempt, tokens,
 output) of each ticket's latest row."""
 conn = sqlite3.connect(image)
 try:
  rows = conn.execute(
   "SELECT ticket, attempt, prompt_tokens + completion_tokens, output FROM outputs "
   "ORDER BY ticket, attempt"
  ).fetchall()
 finally:
  conn.close()
 return {tid: (attempt, tokens, output) for tid, attempt, tokens, output in rows}


BIG = "".join(f"line {i}: {'x' * 60}\n" for i in range(2000))  # 140 KB, several pages


async def test_an_output_and_its_usage_are_committed_with_the_completion_that_made_them(
 tmp_path: Path,
) -> None:
 path = tmp_path / "p.state.db"
 tickets = [Ticket("a"), Ticket("b", ("a",)), Ticket("plain", ("b",))]
 seen_in_image: dict[str, object] = {}

 async def worker(ticket: Ticket) -> WorkResult | None:
  if ticket.id == "a":
   return WorkResult(BIG, usage=Usage(prompt_tokens=30, completion_tokens=12))
  if ticket.id == "b":
   return WorkResult("", usage=Usage(1, 2))  # spent tokens, printed nothing
  return None  # a plain ticket: no output, no usage, no row

 def watch(t: Transition) -> None:
  # Watchers see committed transitions only: the completion's row must be in the file too.
  if t.change is Change.COMPLETED and t.ticket == "a":
   with tempfile.TemporaryDirectory() as folder:
    seen_in_image.update(outputs_in(crash_image(path, Path(folder))))

 with StateStore.open(path) as store:
  store.restore("p", tickets)
  store.watch(watch)
  snap = await run_with_store(store, tickets, worker)
  assert snap.counts.completed == 3
  assert seen_in_image == {"a": (1, 42, BIG)}
  assert store.output("a") == BIG and store.output("b") is None
  assert store.output("plain") is None and store.output("nope") is None
  assert store.outputs(["a", "b", "plain", "nope"]) == {"a": BIG}
  assert store.tokens_used() == 45
  assert {row.id: row.tokens for row in store.tickets()} == {"a": 42, "b": 3, "plain": None}
 assert outputs_in(path) == {"a": (1, 42, BIG), "b": (1, 3, None)}  # nothing for "plain"
 with StateStore.open(path, create=False) as store:
  restored = store.restore("p", tickets)
  assert restored.tokens_used == 45 and store.output("a") == BIG


async def test_only_the_latest_finished_attempt_keeps_its_output(tmp_path: Path) -> None:
 # Attempt 1 fails printing something, attempt 2 completes printing nothing: the ticket's
 # output is attempt 2's (none), never the failed attempt's. Usage counts for every attempt.
 path = tmp_path / "p.state.db"
 tickets = [Ticket("a", retries=2)]

 async def worker(ticket: Ticket) -> WorkResult:
  if ticket.attempts == 1:
   raise WorkFailed("broke", output="first attempt's words")
  if ticket.attempts == 2:
   raise WorkFailed("broke again", output="second attempt's words")
  return WorkResult("", usage=Usage(5, 5))

 ended: list[tuple[Change, str | None]] = []  # as each attempt ended: the ticket's output
 with StateStore.open(path) as store:
  store.restore("p", tickets)
  store.watch(lambda t: ended.append((t.change, store.output("a"))))
  snap = await run_with_store(store, tickets, worker)
  assert snap.counts.completed == 1
  assert store.output("a") is None
  assert store.tokens_used() == 10
 assert [e for e in ended if e[0] is not Change.STARTED] == [
  (Change.RETRYING, "first attempt's words"),
  (Change.RETRYING, "second attempt's words"),
  (Change.COMPLETED, None),
 ]
 conn = sqlite3.connect(path)
 try:
  kept = conn.execute("SELECT attempt FROM outputs WHERE output IS NOT NULL").fetchall()
 finally:
  conn.close()
 assert kept == []  # older attempts' copies are not kept


async def test_an_automatic_pause_keeps_its_resume_time_until_a_person_takes_it_over(
 tmp_path: Path,
) -> None:
 path = tmp_path / "p.state.db"
 tickets = [Ticket("a"), Ticket("b")]
 pauses: list[tuple[bool, float | None]] = []
 paused = anyio.Event()
 before = time.time()

 async def worker(ticket: Ticket) -> None:
  if ticket.id == "a":
   raise PausePipeline("provider rate limit", resume_after=3600)

 def watch(t: Transition) -> None:
  if t.change is Change.PAUSED:
   with tempfile.TemporaryDirectory() as folder:  # what a kill -9 now would leave
    conn = sqlite3.connect(crash_image(path, Path(folder)))
    try:
     row = conn.execute("SELECT paused, by_person, auto_resume_at FROM pause").fetchone()
    finally:
     conn.close()
   assert row[0] == 1
   pauses.append((bool(row[1]), row[2]))
   paused.set()

 with StateStore.open(path) as store:
  store.restore("p", tickets)
  store.watch(watch)
  conductor = ConductorEngine(ExecutionEngine(tickets), worker, 1)
  store.attach(conductor)
  async with anyio.create_task_group() as tg:
   tg.start_soon(conductor.run)
   with anyio.fail_after(10):
    await paused.wait()
    by_person, resume_at = pauses[0]
    assert not by_person and resume_at is not None
    assert before + 3600 <= resume_at <= time.time() + 3600
    state = store.pause_state()
    assert (state.by_person, state.auto_resume_at, state.reason) == (
     False,
     resume_at,
     "provider rate limit",
    )
    paused = anyio.Event()
    conductor.pause("mine now")
    await paused.wait()
    assert pauses[1] == (True, None)
    conductor.stop()
 with StateStore.open(path, create=False) as store:
  pause = store.restore("p", tickets).pause
  assert pause.paused and pause.by_person and pause.auto_resume_at is None


async def test_an_automatic_pause_with_a_resume_time_is_restored_as_it_was(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 tickets = [Ticket("a")]

 async def worker(ticket: Ticket) -> None:
  raise PausePipeline("slow down", resume_after=600)

 with StateStore.open(path) as store:
  store.restore("p", tickets)
  conductor = ConductorEngine(ExecutionEngine(tickets), worker, 1)
  store.attach(conductor)
  async with anyio.create_task_group() as tg:
   tg.start_soon(conductor.run)
   with anyio.fail_after(10):
    while not conductor.snapshot().paused:
     await anyio.wait_all_tasks_blocked()
    resume_at = conductor.auto_resume_at
    conductor.cancel()
 assert resume_at is not None
 with StateStore.open(path, create=False) as store:
  pause = store.restore("p", tickets).pause
  assert (pause.paused, pause.by_person, pause.auto_resume_at) == (True, False, resume_at)
  assert pause.reason == "slow down"


async def spend(path: Path, tickets: list[Ticket], used: int, budget: int) -> ConductorEngine:
 """Run `tickets` on the state at `path`, each spending `used` tokens, against `budget`."""

 async def worker(ticket: Ticket) -> WorkResult:
  return WorkResult("out", usage=Usage(used, 0))

 with StateStore.open(path) as store:
  store.restore("p", tickets, token_budget=budget)
  conductor = ConductorEngine(ExecutionEngine(tickets), worker, 1, token_budget=budget)
  store.attach(conductor)
  async with anyio.create_task_group() as tg:
   tg.start_soon(conductor.run)
   with anyio.fail_after(10):
    while not conductor.snapshot().paused:
     await anyio.wait_all_tasks_blocked()
    conductor.stop()
 return conductor


async def test_with_no_run_a_spent_budget_refuses_resume_until_raised_above_the_tokens_used(
 tmp_path: Path,
) -> None:
 path = tmp_path / "p.state.db"
 tickets = [Ticket("a"), Ticket("b", ("a",))]
 await spend(path, tickets, 12, 10)  # a spends 12 of 10: the run pauses itself
 with StateStore.open(path, create=False) as store:
  pause = store.pause_state()
  assert pause.paused and not pause.by_person and "token budget reached" in (pause.reason or "")
  assert (store.tokens_used(), store.token_budget(), store.raised_token_budget()) == (12, 10, None)
  for budget in (None, 12):
   with pytest.raises(TokenBudgetSpent) as caught:
    store.set_paused(False, token_budget=budget)
   assert "\n" not in str(caught.value) and "12 of" in str(caught.value)
  assert store.pause_state() == pause and store.raised_token_budget() is None  # untouched
  assert not store.set_paused(False, token_budget=20).paused
  assert (store.raised_token_budget(), store.token_budget()) == (20, 20)
 with StateStore.open(path, create=False) as store:
  restored = store.restore("p", tickets, token_budget=10)
  assert (restored.tokens_used, restored.token_budget) == (12, 20)
  assert not restored.pause.paused


def test_with_no_run_a_persons_pause_wins_over_an_automatic_one(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 with StateStore.open(path) as store:
  store.restore("p", [Ticket("a")])
  auto = store.set_paused(True, "rate limit", by_person=False, auto_resume_at=123.0)
  assert (auto.by_person, auto.auto_resume_at) == (False, 123.0)
  mine = store.set_paused(True, "mine")  # the person takes it over: no automatic resume
  assert (mine.by_person, mine.auto_resume_at, mine.reason, mine.since) == (
   True,
   None,
   "mine",
   auto.since,
  )
  assert store.set_paused(True, "again", by_person=False, auto_resume_at=1.0) == mine
  assert [h.status for h in store.history()][-2:] == ["paused", "paused"]
  store.set_token_budget(500)
  assert store.raised_token_budget() == 500
  store.set_token_budget(None)
  assert store.raised_token_budget() is None


async def test_a_budget_a_person_raises_during_a_run_is_kept_in_the_state(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 tickets = [Ticket("a"), Ticket("b", ("a",))]
 resumed = anyio.Event()

 async def worker(ticket: Ticket) -> WorkResult:
  return WorkResult("out", usage=Usage(12, 0))

 def watch(t: Transition) -> None:
  if t.change is Change.RESUMED:
   with tempfile.TemporaryDirectory() as folder:  # durable with the resume itself
    conn = sqlite3.connect(crash_image(path, Path(folder)))
    try:
     row = conn.execute("SELECT value FROM meta WHERE key = 'token_budget'").fetchone()
    finally:
     conn.close()
   assert row == ("100",)
   resumed.set()

 with StateStore.open(path) as store:
  store.restore("p", tickets, token_budget=10)
  store.watch(watch)
  conductor = ConductorEngine(ExecutionEngine(tickets), worker, 1, token_budget=10)
  store.attach(conductor)
  async with anyio.create_task_group() as tg:
   tg.start_soon(conductor.run)
   with anyio.fail_after(10):
    while not conductor.snapshot().paused:
     await anyio.wait_all_tasks_blocked()
    conductor.resume(token_budget=100)
    await resumed.wait()
  conductor.set_token_budget(300)  # no pause, no resume: kept as the store closes
 with StateStore.open(path, create=False) as store:
  assert (store.raised_token_budget(), store.tokens_used()) == (300, 24)


# The schema of format 1, as the first conductor wrote it (tests build such states).
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE tickets (
 id TEXT PRIMARY KEY, position INTEGER NOT NULL, fingerprint TEXT NOT NULL,
 status TEXT NOT NULL, attempts INTEGER NOT NULL, error TEXT, exit_code INTEGER,
 updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE history (
 seq INTEGER PRIMARY KEY, at REAL NOT NULL, ticket TEXT, event TEXT NOT NULL, status TEXT,
 attempt INTEGER NOT NULL, detail TEXT, error TEXT, exit_code INTEGER, pid INTEGER NOT NULL
);
CREATE TABLE pause (
 one INTEGER PRIMARY KEY CHECK (one = 1), paused INTEGER NOT NULL, reason TEXT, since REAL,
 running_at_pause TEXT NOT NULL
);
INSERT INTO pause VALUES (1, 0, NULL, NULL, '[]');
CREATE VIEW ticket_state AS
SELECT
 t.id, t.position, t.fingerprint,
 CASE WHEN h.seq IS NULL THEN t.status ELSE h.status END AS status,
 CASE WHEN h.seq IS NULL THEN t.attempts ELSE h.attempt END AS attempts,
 CASE WHEN h.seq IS NULL THEN t.error ELSE h.error END AS error,
 CASE WHEN h.seq IS NULL THEN t.exit_code ELSE h.exit_code END AS exit_code,
 CASE WHEN h.seq IS NULL THEN t.updated_at ELSE h.at END AS updated_at
FROM tickets AS t
LEFT JOIN (
 SELECT ticket, max(seq) AS seq FROM history
 WHERE seq > (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'synced_seq')
  AND ticket IS NOT NULL
 GROUP BY ticket
) AS last ON last.ticket = t.id
LEFT JOIN history AS h ON h.seq = last.seq;
"""


def make_v1_state(
 path: Path, tickets: Sequence[Ticket], statuses: dict[str, str], *, paused: bool = True
) -> None:
 """A state as conductor 1 left it: `statuses` by id (others todo), `paused` by a person."""
 conn = sqlite3.connect(path, isolation_level=None)
 try:
  conn.execute("PRAGMA page_size = 1024")
  conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
  conn.execute("PRAGMA user_version = 1")
  conn.executescript(V1_SCHEMA)
  conn.execute(
   "INSERT INTO meta VALUES ('format', 'conductor-state'), ('schema', '1'), "
   "('created_at', '1'), ('synced_seq', '0'), ('pipeline', 'p')"
  )
  for position, t in enumerate(tickets):
   status = statuses.get(t.id, "todo")
   conn.execute(
    "INSERT INTO tickets VALUES (?, ?, ?, ?, ?, NULL, NULL, 1.0)",
    (t.id, position, fingerprint(t), status, int(status != "todo")),
   )
  conn.execute("INSERT INTO history VALUES (1, 1.0, NULL, 'fresh', NULL, 0, NULL, NULL, NULL, 1)")
  if paused:
   conn.execute("UPDATE pause SET paused = 1, reason = 'lunch', since = 5.0")
  conn.execute("PRAGMA journal_mode = WAL")
 finally:
  conn.close()


def schema_of(path: Path) -> tuple[int, list[str]]:
 conn = sqlite3.connect(path)
 try:
  version = conn.execute("PRAGMA user_version").fetchone()[0]
  columns = [row[1] for row in conn.execute("PRAGMA table_info(pause)")]
  tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name = 'outputs'")]
 finally:
  conn.close()
 return version, columns + tables


async def test_a_format_1_state_reads_unchanged_and_is_upgraded_in_one_transaction_by_a_run(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 path = tmp_path / "old.state.db"
 tickets = [Ticket("a"), Ticket("b", ("a",)), Ticket("c", ("b",))]
 make_v1_state(path, tickets, {"a": "completed", "b": "failed"})
 v1 = schema_of(path)
 assert v1 == (1, ["one", "paused", "reason", "since", "running_at_pause"])
 # Read as `conductor status` does: as format 2 with nothing new in it; nothing written.
 with StateStore.open(path, create=False, deep_check=True) as store:
  assert [(r.id, r.status, r.tokens) for r in store.tickets()] == [
   ("a", "completed", None),
   ("b", "failed", None),
   ("c", "todo", None),
  ]
  pause = store.pause_state()
  assert (pause.paused, pause.reason, pause.by_person, pause.auto_resume_at) == (
   True,
   "lunch",
   True,
   None,
  )
  assert (store.output("a"), store.outputs(["a"]), store.tokens_used()) == (None, {}, 0)
  assert store.token_budget() is None
 assert schema_of(path) == v1
 # An upgrade that fails half-way leaves format 1 as it was.
 broken = {1: (*store_module._UPGRADES[1], "SELECT no_such_column FROM meta")}
 monkeypatch.setattr(store_module, "_UPGRADES", broken)
 with StateStore.open(path, create=False) as store, pytest.raises(StateError):
  store.restore("p", tickets)
 assert schema_of(path) == v1
 monkeypatch.undo()
 # A run upgrades it, keeping every ticket's progress and the pause, then records outputs.
 with StateStore.open(path, create=False) as store:
  restored = store.restore("p", tickets)
  assert (restored.completed, restored.retried, restored.pause.reason) == (1, ("b",), "lunch")
  store.set_paused(False)

  async def worker(ticket: Ticket) -> WorkResult:
   return WorkResult(f"{ticket.id} done", usage=Usage(1, 1))

  snap = await run_with_store(store, tickets, worker)
  assert snap.counts.completed == 3 and store.tokens_used() == 4
  assert store.output("c") == "c done"
  assert store.history()[0].status == "fresh"  # the old history is kept
 version, columns = schema_of(path)
 assert version == store_module.SCHEMA_VERSION == 2
 assert columns == [*v1[1], "auto_resume_at", "by_person", "outputs"]


def agent_pipeline(tmp_path: Path, budget: int = 1000) -> Pipeline:
 return pipeline_from_dict(
  {
   "pipeline": {
    "name": "agents",
    "token_budget": budget,
    "agent": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "H3A_TEST_KEY"},
   },
   "tickets": [
    {"id": "plan", "prompt": "plan it"},
    {"id": "do", "prompt": "do {{ plan }}", "depends_on": ["plan"]},
   ],
  },
  path=tmp_path / "agents.toml",
 )


async def test_a_session_hands_the_engine_the_stored_pause_tokens_budget_and_outputs(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.setenv("H3A_TEST_KEY", "k")
 state = tmp_path / "agents.state.db"

 async def first(ticket: Ticket) -> WorkResult:
  if ticket.id == "plan":
   return WorkResult(BIG, usage=Usage(20, 30))
  raise PausePipeline("rate limited", resume_after=3600)

 durable = open_session(agent_pipeline(tmp_path), state=state)
 try:
  conductor = durable.conductor(worker=first)
  async with anyio.create_task_group() as tg:
   tg.start_soon(conductor.run)
   with anyio.fail_after(10):
    while not conductor.snapshot().paused:
     await anyio.wait_all_tasks_blocked()
    conductor.resume(token_budget=2000)  # a person raises the budget ...
    conductor.auto_pause("rate limited again", 3600)  # ... and the provider pauses again
    conductor.stop()
  resume_at = conductor.auto_resume_at
 finally:
  durable.close()
 assert resume_at is not None

 seen: dict[str, object] = {}

 async def second(ticket: Ticket) -> WorkResult:
  seen["inputs"] = dict(ticket.inputs or {})
  return WorkResult("done", usage=Usage(1, 1))

 durable = open_session(agent_pipeline(tmp_path), state=state)
 try:
  conductor = durable.conductor(worker=second)
  assert (conductor.snapshot().paused, conductor.paused_by_person) == (True, False)
  assert durable.store.pause_state().auto_resume_at == resume_at
  assert conductor.auto_resume_at == pytest.approx(resume_at, abs=1e-3)  # float arithmetic
  assert (conductor.tokens_used, conductor.token_budget) == (50, 2000)
  assert conductor.output("plan") == BIG
  conductor.resume()
  with anyio.fail_after(10):
   snap = await conductor.run()
  assert snap.counts.completed == 2 and seen["inputs"] == {"plan": BIG}
  assert conductor.tokens_used == 52
 finally:
  durable.close()
 # The file's budget, when larger than the raised one, is the run's.
 durable = open_session(agent_pipeline(tmp_path, budget=5000), state=state)
 try:
  assert durable.token_budget == 5000
 finally:
  durable.close()


def test_a_run_of_agent_tickets_without_their_api_key_is_refused_before_the_state(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.delenv("H3A_TEST_KEY", raising=False)
 state = tmp_path / "agents.state.db"
 with pytest.raises(UsageError) as caught:
  open_session(agent_pipeline(tmp_path), state=state)
 message = str(caught.value)
 assert "\n" not in message and "agents.toml" in message and "H3A_TEST_KEY" in message
 assert "export H3A_TEST_KEY=" in message and "'plan'" in message
 assert not state.exists()


def test_an_interrupted_attempt_keeps_its_usage_but_not_its_output(tmp_path: Path) -> None:
 # PausePipeline(usage=...) spends tokens without ending the attempt: they count, and the
 # ticket's output stays its last finished attempt's.
 path = tmp_path / "p.state.db"
 tickets = [Ticket("a")]
 with StateStore.open(path) as store:
  store.restore("p", tickets)
  store.attach(ConductorEngine(ExecutionEngine(tickets), None, 1))
  record = store._record  # what the engine calls, fed by hand here
  record(Transition("a", Change.STARTED, 1.0, Status.IN_PROGRESS, 1))
  record(Transition("a", Change.RETRYING, 2.0, Status.TODO, 1, output="kept", usage=Usage(1, 1)))
  record(Transition("a", Change.STARTED, 3.0, Status.IN_PROGRESS, 2))
  record(
   Transition("a", Change.INTERRUPTED, 4.0, Status.TODO, 2, "paused", output="x", usage=Usage(3, 4))
  )
  store.commit()
  assert (store.tokens_used(), store.output("a")) == (9, "kept")
  assert [row.tokens for row in store.tickets()] == [7]


@pytest.mark.parametrize("rows", [5, 200])  # one INSERT statement, and several
def test_buffered_rows_of_every_kind_are_written_in_order(tmp_path: Path, rows: int) -> None:
 # Starts and plain completions (as the journal hands them over), plain rows and rows with
 # details, mixed: each is buffered as its own kind, and lands in order with its values.
 draw = random.Random(rows)
 with StateStore.open(tmp_path / "p.state.db") as store:
  store.restore("p", [Ticket("a")])
  expected: list[tuple[object, ...]] = []
  for i in range(rows):
   at, tid = float(i), f"t{i}"
   kind = draw.choice("SCpg")
   if kind == "S":
    store._started(tid, at, i)
    expected.append((at, tid, "in_progress", "in_progress", i, None, None, None))
   elif kind == "C":
    store._completed(tid, at, i)
    expected.append((at, tid, "completed", "completed", i, None, None, None))
   else:
    detail, code = ("why", i) if kind == "g" else (None, None)
    store._log(at, tid, "failed", status="failed", attempt=i, detail=detail, exit_code=code)
    expected.append((at, tid, "failed", "failed", i, detail, None, code))
  store.commit()
  got = store._conn.execute(
   "SELECT at, ticket, event, status, attempt, detail, error, exit_code FROM history "
   "WHERE ticket LIKE 't%' ORDER BY seq"
  ).fetchall()
  assert got == expected
  assert {pid for (pid,) in store._conn.execute("SELECT pid FROM history")} == {os.getpid()}


def test_the_history_statements_kept_are_bounded(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.setattr(store_module, "_STATEMENTS", 4)
 with StateStore.open(tmp_path / "p.state.db") as store:
  store.restore("p", [Ticket("a")])
  for i in range(10):  # ten commits, each of its own kinds
   for j in range(i + 1):
    store._started(f"t{i}", float(i), j)
   store._completed(f"t{i}", float(i), i)
   store.commit()
   assert len(store._inserts) <= 4
  count = store._conn.execute("SELECT count(*) FROM history WHERE ticket LIKE 't%'").fetchone()
  assert count == (sum(range(1, 11)) + 10,)


async def test_a_plain_completion_clears_the_output_of_a_failed_attempt(tmp_path: Path) -> None:
 # The journal hands a completion with no output over as values (journal.Recorder); the
 # ticket's stored output, from its failed attempt, must still go.
 path = tmp_path / "p.state.db"
 tickets = [Ticket("a", retries=1)]

 async def worker(ticket: Ticket) -> WorkResult | None:
  if ticket.attempts == 1:
   raise WorkFailed("broke", output="first attempt's words")
  return None

 with StateStore.open(path) as store:
  store.restore("p", tickets)
  snap = await run_with_store(store, tickets, worker)
  assert snap.counts.completed == 1 and store.output("a") is None
 with StateStore.open(path) as store:
  assert store.output("a") is None


async def test_watchers_see_every_transition_a_listener_sees(tmp_path: Path) -> None:
 # Starts and plain completions reach the store as values, not Transitions: what it hands
 # its watchers is still the Transitions, field for field.
 tickets = [
  Ticket("a"),
  Ticket("b", ("a",), retries=1),
  Ticket("c", ("b",)),
  Ticket("d"),
  Ticket("e", ("d",)),
 ]

 async def worker(ticket: Ticket) -> WorkResult | None:
  if ticket.id == "b" and ticket.attempts == 1:
   raise WorkFailed("once", exit_code=3)
  if ticket.id == "d":
   raise WorkFailed("always")
  return WorkResult("said") if ticket.id == "c" else None

 watched: list[Transition] = []
 heard: list[Transition] = []
 with StateStore.open(tmp_path / "p.state.db") as store:
  store.restore("p", tickets)
  store.watch(watched.append)
  conductor = ConductorEngine(ExecutionEngine(tickets), worker, 2)
  store.attach(conductor)
  conductor.add_listener(heard.append)
  await conductor.run()
  store.commit()
 assert watched == heard
 assert {t.change for t in heard} >= {Change.STARTED, Change.COMPLETED, Change.RETRYING}
