"""`SnapshotCache` at scale: a snapshot's `pending` shares the blocks that did not change, and
what `conductor status` is assembled from matches the engine after every kind of change."""

from __future__ import annotations

import json

import anyio
import pytest
from snapshot_kit import build

from conductor.dag_engine import ExecutionEngine, Status, Ticket
from conductor.multi_agent_conductor import ConductorEngine
from conductor.snapshots import (
 Ids,
 Rows,
 SnapshotCache,
 TicketIds,
 TicketRow,
)

N = 3000  # three blocks of 2**10 tickets, the last one partly filled


def _chain() -> tuple[ExecutionEngine, SnapshotCache]:
 engine = ExecutionEngine(
  [Ticket(f"t{i:04d}", (f"t{i - 1:04d}",) if i else (), f"ticket {i}") for i in range(N)]
 )
 return engine, SnapshotCache(engine)


def _run(engine: ExecutionEngine, cache: SnapshotCache) -> Ticket:
 (ticket,) = engine.tick()
 engine.start(ticket.id)
 cache.started(ticket)
 cache.finished(ticket, 0, "")
 engine.complete(ticket.id)
 return ticket


def test_ids_is_a_sequence_equal_to_the_tuple_of_its_ids() -> None:
 ids = Ids([("a", "b"), (), ("c",), ("d", "e", "f")])
 flat = ("a", "b", "c", "d", "e", "f")
 assert len(ids) == 6 and tuple(ids) == flat and list(ids) == list(flat)
 assert ids == flat and flat == ids and ids == Ids([flat]) and ids != flat[:-1]
 assert [ids[i] for i in range(-6, 6)] == [*flat, *flat]
 assert ids[1:4] == flat[1:4] and ids[:2] == ("a", "b") and ids[::2] == flat[::2]
 assert ids[4:1] == () and "e" in ids and "z" not in ids
 with pytest.raises(IndexError):
  ids[6]
 with pytest.raises(IndexError):
  ids[-7]
 assert len(Ids()) == 0 and not Ids() and Ids() == () and ids.blocks[1] == ("c",)
 assert hash(ids) == hash(Ids([flat])) and ids != list(flat)


def test_ticket_ids_read_the_ids_of_the_tickets_it_holds() -> None:
 tickets = [Ticket(f"t{i}") for i in range(5)]
 ids = TicketIds(tickets)
 assert ids == ("t0", "t1", "t2", "t3", "t4") and ids == Ids([("t0", "t1"), ("t2", "t3", "t4")])
 assert ids != ("t0", "t1") and len(ids) == 5 and ids[-1] == "t4" and ids[1:3] == ("t1", "t2")
 assert list(ids) == [t.id for t in tickets] and "t3" in ids and "x" not in ids
 assert hash(ids) == hash(tuple(ids))
 tickets.pop()  # the snapshot's copy of the queue does not move with it
 assert len(ids) == 5 and TicketIds() == ()


def test_a_snapshots_ready_is_the_ids_of_the_queue_given() -> None:
 engine, cache = _chain()
 snap = build(cache, ready=(engine.tickets["t0000"],))
 assert snap.ready == ("t0000",) and isinstance(snap.ready, TicketIds)


def test_a_snapshot_shares_the_blocks_of_pending_that_did_not_change() -> None:
 engine, cache = _chain()
 first = build(cache).pending
 assert first == tuple(engine.pending()) and len(first.blocks) == 3
 _run(engine, cache)  # t0000 done: only the first block changes
 second = build(cache).pending
 assert second == tuple(engine.pending()) and len(second) == N - 1
 assert second.blocks[0] is not first.blocks[0]
 assert second.blocks[1] is first.blocks[1] and second.blocks[2] is first.blocks[2]


def test_pending_stays_in_ticket_order_across_retries_and_blocks() -> None:
 engine, cache = _chain()
 build(cache)
 for _ in range(1100):  # into the second block
  _run(engine, cache)
 (failing,) = engine.tick()
 engine.start(failing.id)
 cache.started(failing)
 assert failing.id not in build(cache).pending  # running: out of its block
 cache.finished(failing, 1, "")
 engine.requeue(failing.id, "broke")  # a retry: todo again, before the todo of its block
 snap = build(cache)
 assert snap.pending == tuple(engine.pending()) and snap.pending[0] == failing.id
 assert snap.counts.todo == len(snap.pending) == N - 1100
 assert all(engine.tickets[tid].status is Status.TODO for tid in snap.pending)


def test_status_blocks_join_every_tickets_item_and_rejoin_only_changed_blocks() -> None:
 engine, cache = _chain()
 while not cache.fill_entries(500):  # the first fill, spread over calls
  pass
 before = cache.status_blocks()
 assert b"".join(before) == ", ".join(cache.status_items()).encode()
 ticket = _run(engine, cache)
 after = cache.status_blocks()
 assert after[1] is before[1] and after[2] is before[2] and after[0] != before[0]
 items = json.loads(b"[" + b"".join(after) + b"]")
 assert [t["id"] for t in items] == list(engine.tickets)
 assert items[0]["id"] == ticket.id and items[0]["status"] == "completed"
 assert items[0]["exit_code"] == 0 and items[1]["status"] == "todo"


def test_rows_are_rebuilt_for_the_changed_tickets_only() -> None:
 engine, cache = _chain()
 first = build(cache, rows=True)
 assert [r.id for r in first.rows] == list(engine.tickets)
 engine.tick()
 engine.start("t0000")
 cache.changed(engine.tickets["t0000"])
 second = build(cache, rows=True)
 assert second.rows[0].status == Status.IN_PROGRESS and first.rows[0].status == Status.TODO
 assert all(a is b for a, b in zip(first.rows[1:], second.rows[1:], strict=True))


def test_a_finished_attempts_exit_code_and_output_show_until_the_next_one_ends() -> None:
 engine, cache = _chain()
 t = engine.tickets["t0000"]
 engine.tick()
 engine.start("t0000")
 cache.started(t)
 engine.fail("t0000", "exit 3")
 cache.finished(t, 3, "boom\n")
 row = build(cache, rows=True).rows[0]
 assert (row.exit_code, row.output) == (3, "boom\n") and row.started_at is not None
 assert row.finished_at is not None and row.started_at <= row.finished_at
 engine.retry("t0000")
 engine.tick()
 engine.start("t0000")
 cache.started(t)
 running = build(cache, rows=True).rows[0]
 assert running.finished_at is None and running.started_at is not None
 engine.complete("t0000")
 cache.finished(t, None, "")
 row = build(cache, rows=True).rows[0]
 assert (row.exit_code, row.output, row.status) == (None, "", Status.COMPLETED)
 untouched = build(cache, rows=True).rows[1]
 assert (untouched.started_at, untouched.finished_at, untouched.exit_code) == (None, None, None)


def test_final_rows_are_built_once_when_first_read() -> None:
 calls = []

 def make() -> tuple[TicketRow, ...]:
  calls.append(1)
  return tuple(build(cache, rows=True).rows)

 _engine, cache = _chain()
 rows = Rows(make)
 assert not calls
 assert len(rows) == N and rows[0].id == "t0000" and rows == tuple(rows) and calls == [1]
 assert [r.id for r in rows[:2]] == ["t0000", "t0001"] and calls == [1]


@pytest.mark.anyio
async def test_a_runs_final_snapshot_has_every_row() -> None:
 engine = ExecutionEngine([Ticket("a"), Ticket("b", ("a",))])

 async def work(ticket: Ticket) -> None:
  pass

 with anyio.fail_after(10):
  final = await ConductorEngine(engine, work, max_workers=2).run()
 assert isinstance(final.rows, Rows)
 assert [(r.id, r.status) for r in final.rows] == [("a", Status.COMPLETED), ("b", Status.COMPLETED)]
