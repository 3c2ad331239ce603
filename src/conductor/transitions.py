"""What a run tells its listeners: `Transition`, one change of a ticket or of the pipeline.

`ConductorEngine` emits one for every change of a ticket's status (and for a pause and a
resume), through the write-ahead `journal.Journal`. A transition carries everything a
listener needs (the ticket's status, attempt and error after it, the exit code, who was
running at a pause), so no listener reads the engine's state back.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from .dag_engine import Status
from .workers import Usage

__all__ = ["Change", "Transition"]


class Change(enum.StrEnum):
 """What happened. The values are the event names a state's history stores (and the log
 shows), so they never change; only `UNBLOCKED` is stored as "todo", as it always was."""

 STARTED = "in_progress"  # an attempt began (attempts counted it)
 COMPLETED = "completed"
 FAILED = "failed"  # the attempt failed and no automatic retry is left
 BLOCKED = "blocked"  # a dependency failed (or, after a retry, another one still blocks it)
 RETRYING = "retrying"  # the attempt failed; an automatic retry follows: todo again
 INTERRUPTED = "interrupted"  # the attempt was cancelled; not a failure: todo again
 RETRIED = "todo"  # a person's retry() put the failed ticket back to todo
 UNBLOCKED = "unblocked"  # ... and this ticket, which it had blocked, is todo again
 PAUSED = "paused"  # the pipeline: no worker starts until resumed
 RESUMED = "resumed"


class Transition(NamedTuple):
 """One change: of a ticket (`ticket` is its id), or of the pipeline (`ticket` is None,
 `change` is PAUSED or RESUMED).

 A NamedTuple, not a frozen dataclass: two are built per ticket when a store listens, and a
 tuple builds in a third of the time.
 """

 ticket: str | None
 change: Change
 at: float  # time.time()
 status: Status | None = None  # the ticket's status after it; None for the pipeline
 attempt: int = 0  # the ticket's attempts after it (1 for the first attempt's events)
 detail: str | None = None  # what a log line adds: the error, the pause reason, ...
 error: str | None = None  # the ticket's last error after it (kept until it starts again)
 exit_code: int | None = None  # of the attempt that just ended (completed, failed, retrying)
 running_at_pause: tuple[str, ...] = ()  # PAUSED: the workers in flight as the gate closed
 # The attempt that just ended (completed, failed, retrying): its whole output (None: nothing
 # to keep) and the tokens it spent (agent tickets).
 output: str | None = None
 usage: Usage | None = None
 # PAUSED: when the pipeline resumes by itself (time.time(); None: only a person resumes it),
 # and whether a person paused it (a person's pause is never ended by an automatic resume).
 auto_resume_at: float | None = None
 by_person: bool = True
