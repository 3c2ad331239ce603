"""The status report: everything `conductor status` shows of a state, as JSON-ready data.

Two sources, one shape (the same keys): `status_report` reads a state no run holds, from the
store; `live_report` describes a live run from its immutable snapshot alone, so a worker
thread builds it while the run's loop goes on. The control server (`conductor.server`)
assembles the same report from `live_head` and each ticket's `snapshots.ticket_json`, and
answers plain `conductor status` with `live_summary`: the same keys, long lists cut short.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .dag_engine import Status
from .multi_agent_conductor import Snapshot
from .snapshots import SUMMARY_IDS
from .store import HistoryEntry, PauseState, StateStore

__all__ = [
 "history_items",
 "live_head",
 "live_report",
 "live_summary",
 "status_report",
]


def status_report(store: StateStore, *, history: bool = False) -> dict[str, Any]:
 """Everything `conductor status` shows of a state no run holds, as JSON-ready data.

 From the store: tickets (status, attempts, last error, exit code, tokens), counts,
 pending, the pause (reason, since when, who paused it: `paused_by` "person" or
 "pipeline", and when an automatic one ends by itself: `auto_resume_at`, time.time() like
 `paused_since`), running-at-pause, the tokens used and the budget. Tickets stored
 `in_progress` were interrupted. The keys are those of `live_report`, in the same order,
 `live` first: `conductor status --json` prints a report as it is (`control.status_json`).
 """
 tickets = store.tickets()
 pause = store.pause_state()
 counts = dict.fromkeys(Status, 0)
 for row in tickets:
  counts[Status(row.status)] += 1
 total = len(tickets)
 report: dict[str, Any] = {
  "live": False,
  "state": str(store.path),
  "pipeline": store.meta().get("pipeline"),
  "pid": None,
  "mma_status": _offline_status(counts, total, pause),
  "paused": pause.paused,
  "pause_reason": pause.reason,
  "paused_since": pause.since,
  "auto_resume_at": pause.auto_resume_at if pause.paused else None,
  "paused_by": _paused_by(pause.paused, pause.by_person),
  "tokens_used": store.tokens_used(),
  "token_budget": store.token_budget(),
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
    "tokens": row.tokens,
   }
   for row in tickets
  ],
 }
 if history:
  report["history"] = history_items(store.history())
 return report


def live_report(
 snap: Snapshot, state: Path, pid: int, history: Sequence[HistoryEntry] | None = None
) -> dict[str, Any]:
 """`status_report` of a live run, from its snapshot (with rows) alone: pure, so a worker
 thread builds it while the loop runs on. `updated_at` is the wall time of the ticket's
 latest start or end in this run; None if this run has not touched it yet."""
 wall = time.time() - time.monotonic()  # TicketRow times are time.monotonic()
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
    "tokens": row.tokens,
   }
  )
 report = live_head(snap, state, pid)
 report["tickets"] = tickets
 if history is not None:
  report["history"] = history_items(history)
 return report


def live_head(
 snap: Snapshot, state: Path, pid: int, ids: int | None = None, *, pending: bool = True
) -> dict[str, Any]:
 """The keys of `live_report` but `tickets` and `history`, in order: O(pending), or with
 `ids`, `pending` and `awaiting_approval` cut to their first `ids` and O(ids). With
 `pending` False, `pending` is `snap.pending` as it is (an `Ids`, not JSON-ready), for a
 caller that encodes it block by block (`server`)."""
 counts = snap.counts
 return {
  "live": True,
  "state": str(state),
  "pipeline": snap.name,
  "pid": pid,
  "mma_status": snap.status.value,
  "paused": snap.paused,
  "pause_reason": snap.pause_reason,
  "paused_since": snap.paused_at,
  "auto_resume_at": snap.auto_resume_at if snap.paused else None,
  "paused_by": _paused_by(snap.paused, snap.paused_by_person),
  "tokens_used": snap.tokens_used,
  "token_budget": snap.token_budget,
  "running": [w.ticket for w in snap.running],
  "running_at_pause": list(snap.running_at_pause),
  "finishing": list(snap.finishing),
  "interrupted": [],
  "pending": list(itertools.islice(snap.pending, ids)) if pending else snap.pending,
  "awaiting_approval": list(snap.awaiting_approval[:ids]),
  "counts": {
   "todo": counts.todo,
   "in_progress": counts.in_progress,
   "completed": counts.completed,
   "failed": counts.failed,
   "blocked": counts.blocked,
   "total": counts.total,
  },
 }


def live_summary(
 snap: Snapshot,
 state: Path,
 pid: int,
 *,
 listed: Sequence[str],
 notable: int,
) -> dict[str, Any]:
 """What plain `conductor status` shows of a live run (`views.render_status`): the keys of
 `live_report`, but `tickets` lists only `listed` (encoded by `snapshots.ticket_json`:
 every ticket of a pipeline of at most `snapshots.SUMMARY_ROWS`, else the first notable
 ones, `snapshots.is_notable`), and `pending` and `awaiting_approval` only their first
 `snapshots.SUMMARY_IDS`. The extra key `summary` has the full lengths: `{"notable": ...,
 "pending": ..., "awaiting_approval": ...}` (`notable` counts every ticket when all are
 listed). O(listed + SUMMARY_IDS)."""
 report = live_head(snap, state, pid, SUMMARY_IDS)
 report["tickets"] = [json.loads(item) for item in listed]
 report["summary"] = {
  "notable": notable,
  "pending": len(snap.pending),
  "awaiting_approval": len(snap.awaiting_approval),
 }
 return report


def history_items(entries: Iterable[HistoryEntry]) -> list[dict[str, Any]]:
 """The report's `history`: the transitions, oldest first, as JSON-ready dicts."""
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


def _paused_by(paused: bool, by_person: bool) -> str | None:
 # "person": only a person resumes it; "pipeline": an automatic pause (`auto_resume_at`
 # says when it ends by itself, if it does). None when not paused.
 if not paused:
  return None
 return "person" if by_person else "pipeline"


def _offline_status(counts: dict[Status, int], total: int, pause: PauseState) -> str:
 if total and counts[Status.COMPLETED] == total:
  return "done"
 if pause.paused:
  return "paused"
 if counts[Status.FAILED] or counts[Status.BLOCKED]:
  return "error"
 return "idle"
