"""The status report: everything `conductor status` shows of a state, as JSON-ready data.

Two sources, one shape (the same keys): `status_report` reads a state no run holds, from the
store; `live_report` describes a live run from its immutable snapshot alone, so a worker
thread builds it while the run's loop goes on (the control server does: `conductor.server`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .dag_engine import Status
from .multi_agent_conductor import Snapshot
from .store import HistoryEntry, PauseState, StateStore

__all__ = ["live_report", "status_report"]


def status_report(store: StateStore, *, history: bool = False) -> dict[str, Any]:
 """Everything `conductor status` shows of a state no run holds, as JSON-ready data.

 From the store: tickets (status, attempts, last error, exit code), counts, pending, the
 pause flag with reason and time, running-at-pause. Tickets stored `in_progress` were
 interrupted. The keys are those of `live_report`.
 """
 tickets = store.tickets()
 pause = store.pause_state()
 counts = dict.fromkeys(Status, 0)
 for row in tickets:
  counts[Status(row.status)] += 1
 total = len(tickets)
 report: dict[str, Any] = {
  "state": str(store.path),
  "pipeline": store.meta().get("pipeline"),
  "live": False,
  "pid": None,
  "mma_status": _offline_status(counts, total, pause),
  "paused": pause.paused,
  "pause_reason": pause.reason,
  "paused_since": pause.since,
  "running": [],
  "running_at_pause": list(pause.running_at_pause),
  "finishing": [],
  "interrupted": [row.id for row in tickets if row.status == Status.IN_PROGRESS],
  "pending": [row.id for row in tickets if row.status == Status.TODO],
  "awaiting_approval": [],
  "counts": {**{str(k): v for k, v in counts.items()}, "total": total},
  "tickets": [
   {
    "id": row.id,
    "status": row.status,
    "attempts": row.attempts,
    "error": row.error,
    "exit_code": row.exit_code,
    "updated_at": row.updated_at,
   }
   for row in tickets
  ],
 }
 if history:
  report["history"] = _history(store.history())
 return report


def live_report(
 snap: Snapshot, state: Path, pid: int, history: Sequence[HistoryEntry] | None = None
) -> dict[str, Any]:
 """`status_report` of a live run, from its snapshot (with rows) alone: pure, so a worker
 thread builds it while the loop runs on. `updated_at` is the wall time of the ticket's
 latest start or end in this run; None if this run has not touched it yet."""
 wall = time.time() - time.monotonic()  # TicketRow times are time.monotonic()
 counts = snap.counts
 tickets = []
 for row in snap.rows:
  at = row.finished_at if row.finished_at is not None else row.started_at
  tickets.append(
   {
    "id": row.id,
    "status": row.status.value,
    "attempts": row.attempts,
    "error": row.error,
    "exit_code": row.exit_code,
    "updated_at": None if at is None else at + wall,
   }
  )
 report: dict[str, Any] = {
  "state": str(state),
  "pipeline": snap.name,
  "live": True,
  "pid": pid,
  "mma_status": snap.status.value,
  "paused": snap.paused,
  "pause_reason": snap.pause_reason,
  "paused_since": snap.paused_at,
  "running": [w.ticket for w in snap.running],
  "running_at_pause": list(snap.running_at_pause),
  "finishing": list(snap.finishing),
  "interrupted": [],
  "pending": list(snap.pending),
  "awaiting_approval": list(snap.awaiting_approval),
  "counts": {
   "todo": counts.todo,
   "in_progress": counts.in_progress,
   "completed": counts.completed,
   "failed": counts.failed,
   "blocked": counts.blocked,
   "total": counts.total,
  },
  "tickets": tickets,
 }
 if history is not None:
  report["history"] = _history(history)
 return report


def _history(entries: Iterable[HistoryEntry]) -> list[dict[str, Any]]:
 return [
  {
   "seq": h.seq,
   "at": h.at,
   "ticket": h.ticket,
   "status": h.status,
   "attempt": h.attempt,
   "detail": h.detail,
   "pid": h.pid,
  }
  for h in entries
 ]


def _offline_status(counts: dict[Status, int], total: int, pause: PauseState) -> str:
 if total and counts[Status.COMPLETED] == total:
  return "done"
 if pause.paused:
  return "paused"
 if counts[Status.FAILED] or counts[Status.BLOCKED]:
  return "error"
 return "idle"
