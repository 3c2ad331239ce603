"""`StateStore`: a pipeline's durable state in one SQLite file (stdlib `sqlite3`, WAL).

What is kept: every ticket's status, attempts, last error and exit code, the transition log
(`history`), the pause flag with its reason and time, who paused (a person, or the pipeline
itself until `auto_resume_at`), the whole output of each ticket's latest finished attempt,
the tokens every attempt spent, and a token budget a person raised. A later run of the same
pipeline restores it: completed tickets stay done (their outputs too: the tickets that read
them get them), tickets that were running when the process died run again (their interrupted
attempt stays counted, the history says "interrupted").

Formats. `SCHEMA_VERSION` is the file's `user_version`. An older state is read as it is (what
it lacks reads as empty) and upgraded, in one transaction, by the first write (a run,
`conductor pause`): see `_UPGRADES`. A newer one is refused.

Cost. A transition is one row appended to `history` (the `tickets` table is brought up to
date when a run starts and when it ends cleanly; the `ticket_state` view is always current).
Rows are buffered and written on commit, many to an INSERT statement; and a commit is made
where the run's journal flushes (`journal.Journal` says when, and how few that makes).
An attempt that ends with an output or a usage also writes its `outputs` row, in the commit
of its transition; the others cost nothing more. benchmarks/store_overhead.py measures it.

Durability. The file is in WAL mode with `synchronous=NORMAL`: a committed transaction is in
the operating system's hands the moment `commit()` returns, so it survives the process being
killed (`kill -9`, a crash, closing the terminal). Only a power loss or kernel crash can drop
the last few transactions (the file stays consistent, just older); `synchronous="FULL"` (an
fsync per commit, a few ms on a laptop SSD) closes that window too, at a large cost in rate.

What a run relies on: committing in the journal's flush keeps its write-ahead rule
(`journal.Journal`), and what is committed is always a prefix of the transitions, in the
order they happened (rows are buffered in order and a commit writes them all).

Files that are not conductor states (another program's SQLite database, anything else, a
damaged file, a newer format) are refused with a one-line `StateFileError` and never written:
they are recognised from the SQLite header (`application_id`) read as plain bytes, and
checked (`deep`) with `PRAGMA quick_check` on a read-only connection that sees the file the way
SQLite does, WAL included (see `check_state_file`). "Damaged" is said only when that check
fails; `open(..., fresh=True)` then moves the file aside and starts a new state.

Errors. Every SQLite or OS error that reaches a user through the public methods is raised as a
one-line `StateError` subclass naming the file and the fix (`StateDiskFullError`,
`StateReadOnlyError`, `StateIOError`, `StateDamagedError`, ...): `_translating` is the one
place that does it. During a run a write error does not raise: `failure` holds the same line
and the run is cancelled. Errors that are bugs (`sqlite3.ProgrammingError`, ...) still raise.

Side files. SQLite's `-wal`, `-shm` and `-journal` beside a state, and the `<name>.new-<pid>`
a new state is built in, are never followed if they are symbolic links (another local user
who can write the folder may have planted one to make us write over their victim's file), nor
used if another user owns them: refused with a one-line `StateSideFileError` before SQLite
opens anything (SQLite itself opens them with O_NOFOLLOW, which closes the race after the
check).

Locking: an open `StateStore` holds its file exclusively (SQLite's EXCLUSIVE locking mode):
one process owns a state at a time anyway (server.StateOwner), and it saves six fcntl()
calls per commit. Another process, the sqlite3 shell included, can read the file once the
store is closed or its process is gone; a live run answers `conductor status` instead.

Threads: a `StateStore` is used from one thread, the one that opened it (the event loop's).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

from ._files import trusted_owners
from ._text import printable, shell_path, shown_path
from .dag_engine import Status, Ticket
from .multi_agent_conductor import ConductorEngine, TokenBudgetSpent
from .pipeline import fingerprints
from .transitions import Change, Transition

__all__ = [
 "APPLICATION_ID",
 "SCHEMA_VERSION",
 "HistoryEntry",
 "PauseState",
 "PipelineChangedError",
 "Restored",
 "StateDamagedError",
 "StateDiskFullError",
 "StateError",
 "StateFileError",
 "StateIOError",
 "StateReadOnlyError",
 "StateSideFileError",
 "StateStore",
 "TicketState",
 "check_state_file",
 "default_state_path",
 "demo_state_path",
 "error_for",
]

APPLICATION_ID = 0x434E4454  # "CNDT" in the SQLite header: this file is a conductor state
SCHEMA_VERSION = 2  # PRAGMA user_version; bump with a migration in `_UPGRADES`
FORMAT = "conductor-state"  # meta.format, a second, readable marker

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100

_OUTPUTS = """
-- (v2) What finished attempts produced: one row per attempt that ended with an output or a
-- usage (an attempt with neither costs nothing here). Usage stays on every row, so the
-- token total is exact across retries and runs; the output only on each ticket's latest
-- finished attempt (older ones are set to NULL as a newer one ends, even with no output),
-- so retries do not pile up copies. Output last: reading the tokens never reads it.
CREATE TABLE outputs (
 ticket TEXT NOT NULL,
 attempt INTEGER NOT NULL,
 at REAL NOT NULL,
 prompt_tokens INTEGER,         -- NULL: the attempt reported no usage
 completion_tokens INTEGER,
 output TEXT,                   -- whole; NULL: none, or not the latest finished attempt
 PRIMARY KEY (ticket, attempt)
);
"""
_SCHEMA = (
 """
CREATE TABLE meta (
 key TEXT PRIMARY KEY,
 value TEXT NOT NULL
) WITHOUT ROWID;
-- Every ticket as of history entry `synced_seq` (in meta); the history after it holds the
-- rest. A run only appends to `history` (one small INSERT per transition, on sequential
-- pages: what keeps the store cheap); the tickets are brought up to date when a run starts
-- and when it ends cleanly. `ticket_state` below is always current.
CREATE TABLE tickets (
 id TEXT PRIMARY KEY,
 position INTEGER NOT NULL,     -- order in the pipeline file, for listings
 fingerprint TEXT NOT NULL,     -- pipeline.fingerprint(): tells an edited ticket apart
 status TEXT NOT NULL,          -- a dag_engine.Status value
 attempts INTEGER NOT NULL,     -- starts so far, interrupted ones included
 error TEXT,                    -- last failure, or why it is blocked
 exit_code INTEGER,             -- of the last finished attempt, for commands
 updated_at REAL NOT NULL       -- time.time() of the last change
) WITHOUT ROWID;
CREATE TABLE history (
 seq INTEGER PRIMARY KEY,       -- order of the transitions
 at REAL NOT NULL,              -- time.time()
 ticket TEXT,                   -- NULL for pipeline events
 event TEXT NOT NULL,           -- in_progress, completed, failed, blocked, todo, retrying,
                                -- interrupted; for the pipeline: fresh, paused, resumed
 status TEXT,                   -- the ticket's status after it (NULL: pipeline event)
 attempt INTEGER NOT NULL,      -- the ticket's attempts after it
 detail TEXT,                   -- what the log shows: error, pause reason, ...
 error TEXT,                    -- the ticket's last error after it
 exit_code INTEGER,             -- the ticket's exit code after it
 pid INTEGER NOT NULL           -- the process that recorded it
);
CREATE TABLE pause (
 one INTEGER PRIMARY KEY CHECK (one = 1),
 paused INTEGER NOT NULL,
 reason TEXT,
 since REAL,                    -- time.time() when the pause began
 running_at_pause TEXT NOT NULL, -- JSON list of the tickets in flight at that moment
 auto_resume_at REAL,           -- (v2) an automatic pause ends by itself then (time.time())
 by_person INTEGER NOT NULL DEFAULT 1 -- (v2) 0: the pipeline paused itself (rate limit, ...)
);
INSERT INTO pause (one, paused, running_at_pause) VALUES (1, 0, '[]');
-- The current state of every ticket: its row in `tickets`, overridden by its latest history
-- entry after `synced_seq`. Read it from any connection (the sqlite3 shell too) while no
-- run holds the file; during a run, `conductor status --json` asks the run.
CREATE VIEW ticket_state AS
SELECT
 t.id,
 t.position,
 t.fingerprint,
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
 + _OUTPUTS
)
# What turns a state of format N into N + 1, in one transaction with the new user_version
# (`StateStore._upgrade`). Only added columns and tables: a run of an older conductor is
# refused by the version anyway, and nothing is rewritten.
_UPGRADES: dict[int, tuple[str, ...]] = {
 1: (
  "ALTER TABLE pause ADD COLUMN auto_resume_at REAL",
  "ALTER TABLE pause ADD COLUMN by_person INTEGER NOT NULL DEFAULT 1",
  _OUTPUTS,
 ),
}


# -- errors a user can meet -------------------------------------------------------------------


class StateError(Exception):
 """A state file problem the user can fix. `str(error)` is one line naming the file and fix."""


class StateFileError(StateError):
 """The file is missing, not a conductor state, damaged, or from a newer conductor.

 Raised before anything is written: the file is left exactly as it was.
 """


class StateDamagedError(StateFileError):
 """SQLite's own integrity check fails on the file (WAL included): it is really damaged.

 The message says what `--fresh` would lose; `StateStore.open(..., fresh=True)` moves the
 file (and its -wal/-shm) aside as `<name>.damaged-<UTC time>` and starts a new state.
 """


class StateDiskFullError(StateError):
 """The disk holding the state is full. Everything committed before is kept."""


class StateReadOnlyError(StateError):
 """The state file, its folder or its file system cannot be written."""


class StateIOError(StateError):
 """The operating system reported an I/O error on the state."""


class StateSideFileError(StateError):
 """A file beside the state (-wal, -shm, -journal, .new-<pid>) is a symbolic link, not a
 regular file, or belongs to another user: refused before anything opens it."""


class PipelineChangedError(StateError):
 """The pipeline file changed since its state was written (tickets added, removed, edited)."""

 def __init__(
  self,
  state: Path,
  pipeline: str,
  added: Sequence[str],
  removed: Sequence[str],
  changed: Sequence[str],
 ) -> None:
  parts = [
   f"{label}: {_ids(ids)}"
   for label, ids in (("added", added), ("removed", removed), ("changed", changed))
   if ids
  ]
  super().__init__(
   f"{pipeline} changed since its state {shown_path(state)} was written ({'; '.join(parts)}); "
   "run it with --fresh to start over, or undo the edit to resume"
  )
  self.added = tuple(added)
  self.removed = tuple(removed)
  self.changed = tuple(changed)


def _ids(ids: Sequence[str], limit: int = 8) -> str:
 shown = ", ".join(map(printable, ids[:limit]))  # ids read back from a file: untrusted
 return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# -- turning SQLite and OS errors into one line -----------------------------------------------

# The sqlite3 exceptions that mean a bug in our SQL or in the caller, never the environment:
# they are raised as they are.
_BUGS = (
 sqlite3.IntegrityError,
 sqlite3.ProgrammingError,
 sqlite3.InterfaceError,
 sqlite3.DataError,
 sqlite3.NotSupportedError,
)
_FRESH_HINT = (
 "`conductor run PIPELINE --fresh` moves it aside (as {name}.damaged-<UTC time>) and starts over"
)


@contextlib.contextmanager
def _translating(path: Path) -> Iterator[None]:
 """Raise every SQLite or OS error from the body as the one-line `StateError` for `path`.

 The one place where that happens (used by `StateStore`'s public methods through
 `_user_errors`, and by `check_state_file`). `StateError`s and bugs pass through unchanged.
 """
 try:
  yield
 except (sqlite3.DatabaseError, OSError) as exc:
  if isinstance(exc, _BUGS):
   raise
  raise error_for(path, exc) from exc


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _user_errors(
 method: Callable[Concatenate[StateStore, _P], _R],
) -> Callable[Concatenate[StateStore, _P], _R]:
 """A public `StateStore` method whose SQLite and OS errors reach the user as one line."""

 @functools.wraps(method)
 def wrapper(self: StateStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
  with _translating(self.path):
   return method(self, *args, **kwargs)

 return wrapper


def error_for(path: Path, exc: sqlite3.Error | OSError) -> StateError:
 """The one-line `StateError` a user should see for `exc`, met on `path` (the state or a file
 beside it): disk full, read-only, I/O error, damaged, busy, a planted side file."""
 # Decide by the SQLite result code or errno first; where SQLite only says "cannot open" or
 # "disk I/O error" (it does for a read-only file system), ask the file system why.
 if isinstance(exc, sqlite3.Error):
  code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
  detail, err = str(exc), None
 else:
  code, detail, err = 0, exc.strerror or str(exc), exc.errno
 if code == sqlite3.SQLITE_FULL or err in (errno.ENOSPC, errno.EDQUOT):
  return _disk_full(path)
 if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
  return StateDamagedError(
   f"{shown_path(path)}: the conductor state is damaged ({detail}); {_FRESH_HINT.format(name=path.name)} "
   "without the progress recorded in it, or choose another --state"
  )
 if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
  # Our own runs exclude each other before they get here (server.StateOwner): this is
  # another program holding the file open.
  return StateError(
   f"{shown_path(path)}: another program has the state file open (a sqlite3 shell?); close it and try again"
  )
 side = _planted_side_file(path)
 if side is not None:
  return side
 read_only = _why_read_only(path)
 if read_only is not None and (
  code
  in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_PERM)
  or err in (errno.EROFS, errno.EACCES, errno.EPERM)
 ):
  return StateReadOnlyError(
   f"{read_only}; conductor must write its state there: make it writable or choose another "
   "--state; everything recorded so far is kept"
  )
 if code == sqlite3.SQLITE_READONLY or err == errno.EROFS:
  return StateReadOnlyError(
   f"{shown_path(path)}: cannot write the state, it is read-only ({detail}); make it writable or choose "
   "another --state; everything recorded so far is kept"
  )
 if code == sqlite3.SQLITE_IOERR or err == errno.EIO:
  if _free_bytes(path) == 0:  # some full-disk paths surface as a plain I/O error
   return _disk_full(path)
  return StateIOError(
   f"{shown_path(path)}: I/O error on the state file ({detail}): the disk failed or a disk quota is "
   "exceeded; check `dmesg` and `quota`, then run again: everything committed so far is kept"
  )
 return StateError(f"{shown_path(path)}: cannot use the state file ({detail})")


def _disk_full(path: Path) -> StateDiskFullError:
 return StateDiskFullError(
  f"the disk holding {shown_path(path)} is full: free some space and run again; "
  "everything recorded so far is kept"
 )


def _why_read_only(path: Path) -> str | None:
 """Why `path` (or the files SQLite makes beside it) cannot be written, or None."""
 folder = os.path.dirname(os.path.abspath(path))
 try:
  if os.statvfs(folder).f_flag & os.ST_RDONLY:
   return f"{shown_path(path)}: its file system is mounted read-only"
 except OSError:
  return None
 if os.path.exists(path) and not os.access(path, os.W_OK):
  return f"{shown_path(path)}: the file is read-only"
 if not os.access(folder, os.W_OK):
  return (
   f"{shown_path(path)}: its folder is read-only (SQLite makes {path.name}-wal beside the state)"
  )
 return None


def _free_bytes(path: Path) -> int | None:
 try:
  vfs = os.statvfs(os.path.dirname(os.path.abspath(path)))
 except OSError:
  return None
 return vfs.f_bavail * vfs.f_frsize


# -- files beside a state ---------------------------------------------------------------------

_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")  # SQLite's, named after the resolved path


def _side(path: Path | str, suffix: str) -> Path:
 return Path(f"{path}{suffix}")


def _planted(file: Path, owners: frozenset[int]) -> StateSideFileError | None:
 """The refusal for `file` if it is a symlink, not a regular file, or not ours; else None."""
 try:
  info = os.lstat(file)
 except FileNotFoundError:
  return None
 if stat.S_ISLNK(info.st_mode):
  problem = "is a symbolic link"
 elif not stat.S_ISREG(info.st_mode):
  problem = "is not a regular file"
 elif info.st_uid not in owners:
  problem = f"belongs to another user (uid {info.st_uid})"
 else:
  return None
 return StateSideFileError(
  f"{shown_path(file)}: {problem}; conductor never follows or uses such a file beside its state "
  "(another user may have planted it): remove it and run again"
 )


def _planted_side_file(path: Path) -> StateSideFileError | None:
 # SQLite names its side files after the resolved path of the database.
 real = os.path.realpath(path)
 owners = trusted_owners(real)
 for suffix in _SIDE_SUFFIXES:
  refusal = _planted(_side(real, suffix), owners)
  if refusal is not None:
   return refusal
 return None


def _check_side_files(path: Path) -> None:
 refusal = _planted_side_file(path)
 if refusal is not None:
  raise refusal


def _move_aside(path: Path, why: str) -> Path:
 """Rename `path` and its side files to `<name>.<why>-<UTC time>` (-wal, -shm keep their
 suffix, so SQLite still opens the pair). Side files go first: whatever happens, a state
 never meets another state's WAL (SQLite would replay it into the new file)."""
 stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
 target = path.with_name(f"{path.name}.{why}-{stamp}")
 n = 1
 while any(os.path.lexists(f) for f in (target, *(_side(target, x) for x in _SIDE_SUFFIXES))):
  n += 1
  target = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
 for suffix in _SIDE_SUFFIXES:
  if os.path.lexists(_side(path, suffix)):
   os.rename(_side(path, suffix), _side(target, suffix))
 if os.path.lexists(path):
  os.rename(path, target)
 return target


# -- where states live ------------------------------------------------------------------------


def default_state_path(pipeline_file: Path) -> Path:
 """`build.toml` -> `build.state.db` in the same folder (`*.state.db*` is git-ignored)."""
 return pipeline_file.with_name(pipeline_file.stem + ".state.db")


def demo_state_path() -> Path:
 """The built-in demo's state: `$XDG_STATE_HOME/conductor/demo.state.db`
 (`~/.local/state/conductor/demo.state.db` by default), so a demo run litters no folder."""
 base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
 return Path(base) / "conductor" / "demo.state.db"


# -- recognising a state file without touching it ---------------------------------------------


def check_state_file(path: Path, *, deep: bool = False) -> bool:
 """Whether `path` holds a conductor state (True) or nothing yet (False: no such file).

 Raises `StateFileError` for anything else: a folder, an empty or foreign file, another
 program's SQLite database, a state written by a newer conductor, or (with `deep`)
 `StateDamagedError` for one that SQLite's integrity check (`quick_check`, O(file size))
 finds damaged, saying what `--fresh` would lose. With `deep`, also `StateSideFileError` for
 a planted -wal/-shm/-journal and the other one-line `StateError`s of `error_for`.

 Never writes to the file: the header is read as plain bytes. The deep check reads what
 SQLite would (the main file and its WAL): with no WAL, the main file alone on an immutable
 connection; with one, a private copy of the pair (in the temporary folder) on a read-only
 connection. A read-only connection in place would create a -wal and -shm beside the file,
 and cannot open the pair at all in a read-only folder; it is used only when no copy can be
 made (the temporary folder is full), and then makes a -shm beside the state.
 """
 try:
  with open(path, "rb") as f:
   header = f.read(_HEADER_SIZE)
 except FileNotFoundError:
  return False
 except IsADirectoryError:
  raise StateFileError(
   f"{shown_path(path)}: is a folder, not a state file; give a file path"
  ) from None
 except OSError as exc:
  raise StateFileError(f"{shown_path(path)}: cannot read the state file ({exc.strerror})") from None
 refuse = "refusing to touch it; choose another --state"
 if not header:
  raise StateFileError(f"{shown_path(path)}: is an empty file, not a conductor state; {refuse}")
 if len(header) < _HEADER_SIZE or not header.startswith(_SQLITE_MAGIC):
  raise StateFileError(
   f"{shown_path(path)}: is not a conductor state (not an SQLite file); {refuse}"
  )
 app_id = int.from_bytes(header[68:72], "big")
 if app_id != APPLICATION_ID:
  raise StateFileError(
   f"{shown_path(path)}: is another program's SQLite database, not a conductor state; {refuse}"
  )
 version = int.from_bytes(header[60:64], "big")
 if version > SCHEMA_VERSION:
  raise StateFileError(
   f"{shown_path(path)}: was written by a newer conductor (state format {version}, this one reads "
   f"{SCHEMA_VERSION}); upgrade conductor or choose another --state"
  )
 if deep:
  with _translating(path):
   _check_side_files(path)
   _deep_check(path)
 return True


def _deep_check(path: Path) -> None:
 wal = _side(os.path.realpath(path), "-wal")
 if not os.path.lexists(wal):
  # No WAL: the main file is all there is, and immutable reads it without creating a -wal
  # and -shm beside it (a plain read-only connection would).
  _integrity_check(f"file:{quote(os.path.abspath(path))}?mode=ro&immutable=1", path)
  return
 # The WAL holds the latest commits (a killed run leaves them there, and it may have been
 # killed half-way through copying them into the main file: the main file alone may look
 # damaged then). Check a private copy of the pair, as SQLite will see it on opening.
 scratch = tempfile.mkdtemp(prefix="conductor-check-")
 try:
  copy = os.path.join(scratch, "state.db")
  try:
   shutil.copyfile(path, copy)
   shutil.copyfile(wal, copy + "-wal")
  except OSError:
   copy = ""  # no room for a copy: read it in place (that makes a -shm beside it)
  if copy:
   _integrity_check(f"file:{quote(copy)}?mode=ro", path)
   return
 finally:
  shutil.rmtree(scratch, ignore_errors=True)
 _integrity_check(f"file:{quote(os.path.abspath(path))}?mode=ro", path)


def _integrity_check(uri: str, path: Path) -> None:
 conn = sqlite3.connect(uri, uri=True)
 try:
  try:
   problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
   fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
  except sqlite3.DatabaseError as exc:
   if ((exc.sqlite_errorcode or 0) & 0xFF) not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
    raise  # not a verdict on the file: translated by the caller (busy, I/O, ...)
   problems, fmt = [str(exc)], None
  if problems != ["ok"]:
   # quick_check finds a subset of what integrity_check finds: this is a real verdict.
   raise StateDamagedError(
    f"{shown_path(path)}: the conductor state is damaged (SQLite's integrity check: {problems[0]}); "
    f"{_FRESH_HINT.format(name=path.name)}, losing the progress it records "
    f"({_progress(conn)}); or choose another --state"
   )
  if fmt is None or fmt[0] != FORMAT:
   raise StateFileError(
    f"{shown_path(path)}: is not a conductor state (no format marker); refusing to touch it; "
    "choose another --state"
   )
 finally:
  conn.close()


def _progress(conn: sqlite3.Connection) -> str:
 # What a damaged state still says about its progress, as far as SQLite can read it.
 try:
  total, completed = conn.execute(
   "SELECT count(*), count(*) FILTER (WHERE status = 'completed') FROM ticket_state"
  ).fetchone()
 except sqlite3.Error:
  return "SQLite cannot read how many tickets it records as completed"
 return f"{completed} of {total} tickets completed"


# -- what the store hands back ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TicketState:
 id: str
 position: int
 fingerprint: str
 status: str
 attempts: int
 error: str | None
 exit_code: int | None
 updated_at: float
 # Prompt and completion tokens of the ticket's latest attempt that reported a usage; None
 # when none did (every ticket but agents').
 tokens: int | None = None


@dataclass(frozen=True, slots=True)
class PauseState:
 paused: bool
 reason: str | None
 since: float | None  # time.time()
 running_at_pause: tuple[str, ...]
 # While paused: when the pipeline resumes by itself (time.time(); None: only by hand), and
 # whether a person paused it (then only a person resumes it, whatever `auto_resume_at`).
 auto_resume_at: float | None = None
 by_person: bool = True


@dataclass(frozen=True, slots=True)
class HistoryEntry:
 seq: int
 at: float
 ticket: str | None
 status: str
 attempt: int
 detail: str | None
 pid: int


@dataclass(frozen=True, slots=True)
class Restored:
 """What `StateStore.restore` found: how this run starts."""

 fresh: bool  # a new state (or --fresh): nothing was restored
 interrupted: tuple[str, ...]  # were running when the last process died; run again
 retried: tuple[str, ...]  # had failed; a re-run tries them again
 completed: int
 total: int
 pause: PauseState
 tokens_used: int = 0  # every usage recorded so far, across runs (not after --fresh)
 token_budget: int | None = None  # raised by `conductor resume --budget` (see `StateStore`)
 # Of `interrupted`, those the last process died under without recording it (killed, or
 # ended by a ticket's own code): now also in `StateStore.died_under()`.
 died_under: tuple[str, ...] = ()

 @property
 def done(self) -> bool:
  return self.completed == self.total


# The history's event for a transition is its `Change` value, except for a ticket a retry
# unblocked, stored as "todo" (detail "unblocked by a retry") since the first format.
_UNBLOCKED_EVENT = "todo"
# ... as plain `str`s, as the status too: sqlite3 binds an exact str directly, while a
# `StrEnum` member goes through its adapter look-ups (a tenth of a chain's commit).
_EVENTS: dict[Change, str] = {c: str(c.value) for c in Change} | {
 Change.UNBLOCKED: _UNBLOCKED_EVENT
}
_STATUSES: dict[Status | None, str | None] = {s: str(s.value) for s in Status} | {None: None}
# A history row as recorded: (at, ticket, event, status, attempt, detail, error, exit_code);
# the pid is written into the statement. Up to `_BATCH` rows go in one INSERT statement.
# Rows are buffered as the values they do not share with most rows, and one letter a row (its
# kind) says which: the statement for the buffered kinds writes the rest as literals (binding
# a text costs SQLite a copy; three NULLs a row cost more than a tenth of a no-op ticket's
# store cost). A start, and a completion with no error, exit code, output or usage, are
# (at, ticket, attempt); another row with no detail, error or exit code is "plain", the first
# five values; the rest all eight. A commit's kinds follow the run's shape, so its statements
# are few (a chain's commits are all "CS", a wide DAG's rounds "CSCS...").
_ROW = 8
_PLAIN = 5
_BATCH = 64
_INSERT_HISTORY = (
 "INSERT INTO history (at, ticket, event, status, attempt, detail, error, exit_code, pid) VALUES "
)
_STARTED_ROW, _COMPLETED_ROW, _PLAIN_ROW, _FULL_ROW = "S", "C", "p", "g"
_WIDTHS = {_STARTED_ROW: 3, _COMPLETED_ROW: 3, _PLAIN_ROW: _PLAIN, _FULL_ROW: _ROW}
_STATEMENTS = 128  # the history statements kept by kinds; past that, the cache starts again
# Each kind's VALUES, with `{pid}` to fill in.
_VALUES = {
 _STARTED_ROW: f"(?, ?, '{_EVENTS[Change.STARTED]}', '{_STATUSES[Status.IN_PROGRESS]}', ?, "
 "NULL, NULL, NULL, {pid})",
 _COMPLETED_ROW: f"(?, ?, '{_EVENTS[Change.COMPLETED]}', '{_STATUSES[Status.COMPLETED]}', ?, "
 "NULL, NULL, NULL, {pid})",
 _PLAIN_ROW: "(?, ?, ?, ?, ?, NULL, NULL, NULL, {pid})",
 _FULL_ROW: "(?, ?, ?, ?, ?, ?, ?, ?, {pid})",
}
_TICKET_COLUMNS = "id, position, fingerprint, status, attempts, error, exit_code, updated_at"
_TICKETS = f"SELECT {_TICKET_COLUMNS} FROM ticket_state ORDER BY position"
# ... with each ticket's tokens (TicketState.tokens): one seek in `outputs` a ticket.
_TICKETS_WITH_TOKENS = (
 f"SELECT {_TICKET_COLUMNS}, (SELECT o.prompt_tokens + o.completion_tokens FROM outputs AS o "
 "WHERE o.ticket = s.id AND o.prompt_tokens IS NOT NULL ORDER BY o.attempt DESC LIMIT 1) "
 "FROM ticket_state AS s ORDER BY position"
)
_ANY_USAGE = "SELECT 1 FROM outputs WHERE prompt_tokens IS NOT NULL LIMIT 1"
# At most one output a ticket is not NULL (see the `outputs` table): the latest one.
_OUTPUT = (
 "SELECT output FROM outputs WHERE ticket = ? AND output IS NOT NULL ORDER BY attempt DESC LIMIT 1"
)
_TOKENS_USED = "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM outputs"
_INSERT_OUTPUT = "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?, ?)"
_CLEAR_OUTPUT = "UPDATE outputs SET output = NULL WHERE ticket = ? AND output IS NOT NULL"
# The changes that end an attempt: its output replaces the ticket's last one (even by none).
_FINISHED = frozenset((Change.COMPLETED, Change.FAILED, Change.RETRYING))
_NO_PAUSE = (
 "UPDATE pause SET paused = 0, reason = NULL, since = NULL, running_at_pause = '[]', "
 "auto_resume_at = NULL, by_person = 1"
)
# Bring the `tickets` rows of the tickets the history has news of up to date (what the
# `ticket_state` view says of them). In place with UPDATE ... FROM where SQLite has it
# (3.33): a third faster than replacing the rows, which takes 0.6 s after 100,000 tickets.
_LAST_ENTRIES = (
 "(SELECT ticket, max(seq) AS seq FROM history WHERE seq > ? AND seq <= ? AND ticket IS NOT NULL "
 "GROUP BY ticket) AS last"
)
_COMPACT_UPDATE = (
 "UPDATE tickets SET status = h.status, attempts = h.attempt, error = h.error, "
 f"exit_code = h.exit_code, updated_at = h.at FROM {_LAST_ENTRIES} "
 "JOIN history AS h ON h.seq = last.seq WHERE tickets.id = last.ticket"
)
_COMPACT_REPLACE = (
 f"INSERT OR REPLACE INTO tickets ({_TICKET_COLUMNS}) SELECT {_TICKET_COLUMNS} "
 "FROM ticket_state WHERE id IN "
 "(SELECT ticket FROM history WHERE seq > ? AND seq <= ? AND ticket IS NOT NULL)"
)
_COMPACT = _COMPACT_UPDATE if sqlite3.sqlite_version_info >= (3, 33) else _COMPACT_REPLACE
# History entries brought into `tickets` per statement: in order, so a later slice's entry
# for a ticket overrides an earlier one's, and SQLite's working memory for the grouping stays
# ~1 MB instead of growing with the run (8 MB for 200,000 entries).
_COMPACT_SLICE = 25_000


class StateStore:
 """One pipeline's state file, open on one SQLite connection.

 Open with `StateStore.open(path)`; `restore(...)` applies the stored state to a pipeline's
 tickets before the engine is built; `attach(conductor)` records every transition of a run.
 Not thread-safe: use it from the thread that opened it (the event loop's).

 About 710 lines: one SQLite connection and its transaction state (`_dirty`, the buffered
 history rows) are shared by opening, restoring, upgrading an older format, the offline pause
 flag and budget, reading outputs and tokens, and recording a run;
 each part must see the others' uncommitted writes, so they stay one class. The file-level
 checks (foreign, damaged, planted files) and the error translation are functions outside it.
 """

 def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
  self.path = path
  self._conn = conn
  self._closed = False
  self._pid = os.getpid()
  self._dirty = False  # a transaction is open with writes not yet committed
  # History rows recorded and not yet written, flat, in order, and their kinds (a letter a
  # row: `_VALUES`): they are written together when committed, in as few INSERT statements
  # as possible.
  self._rows: list[object] = []
  self._kinds = ""
  self._inserts: dict[str, str] = {}  # kinds -> its INSERT statement
  self._cursor = conn.cursor()  # the commits' own (`Connection.execute` makes a new one)
  self._pending: list[Transition] = []  # recorded, not yet committed (only with watchers)
  self._watchers: list[Callable[[Transition], None]] = []
  self._cancel_run: Callable[[], None] | None = None  # the attached run's cancel()
  self._conductor: ConductorEngine | None = None  # the attached run
  self._budget_seen: int | None = None  # its token budget as last stored or attached
  # Tickets with a stored output (the `outputs` row of their latest finished attempt): as
  # another attempt of one ends, that output is cleared. Loaded by `attach`.
  self._with_output: set[str] = set()
  self._version: int = conn.execute("PRAGMA user_version").fetchone()[0]
  self.failure: str | None = None  # why writing failed (one line); the run was cancelled then
  # Where `open(..., fresh=True)` moved a damaged state before starting this one, if it did.
  self.moved_aside: Path | None = None

 # -- opening and closing ------------------------------------------------------------------

 @classmethod
 def open(
  cls,
  path: Path,
  *,
  create: bool = True,
  synchronous: str = "NORMAL",
  deep_check: bool = False,
  fresh: bool = False,
 ) -> StateStore:
  """Open the state at `path`, creating it (atomically, via a rename) if it does not exist.

  Raises `StateFileError` for a file that is not a conductor state (nothing written), and
  for a missing one when `create` is false; `deep_check` also runs SQLite's integrity check
  (see `check_state_file`). `fresh` (the user asked to start over) implies `deep_check`, and
  a damaged state is then moved aside, with its -wal and -shm, as
  `<name>.damaged-<UTC time>` (`moved_aside`), and a new one created. Every other problem
  is a one-line `StateError` too (disk full, read-only, planted side files, ...).
  `synchronous` is "NORMAL" (survives any kill of the process) or "FULL" (also survives
  power loss; an fsync per commit).
  """
  if synchronous not in ("NORMAL", "FULL"):
   raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
  moved: Path | None = None
  with _translating(path):
   _check_side_files(path)
   try:
    exists = check_state_file(path, deep=deep_check or fresh)
   except StateDamagedError:
    if not fresh or not create:
     raise
    moved = _move_aside(path, "damaged")
    exists = False
   if not exists:
    if not create:
     raise StateFileError(
      f"{shown_path(path)}: no such state file; it is made by `conductor run PIPELINE --state {shell_path(path)}`"
     )
    _create(path)
   store = cls(path, cls._connect(path, synchronous))
  store.moved_aside = moved
  return store

 @staticmethod
 def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
  # We issue BEGIN / COMMIT ourselves. The busy timeout only matters while another program
  # has the file open (see below), and then it is better to say so soon.
  # Room for the history statements (`_STATEMENTS`, a few in most runs) and the others.
  conn = sqlite3.connect(
   path, isolation_level=None, timeout=2.0, cached_statements=_STATEMENTS + 64
  )
  try:
   # One process at a time owns a state (server.StateOwner's lock). Telling SQLite so
   # before its first read lets it keep the WAL index in its own memory and take the file
   # lock once, instead of six fcntl() calls per commit: a quarter of what the store costs a
   # chain of tickets. Other processes cannot read the file while it is open, so they ask
   # the owner (`conductor status`); a kill releases the lock with the process.
   conn.execute("PRAGMA locking_mode = EXCLUSIVE")
   conn.execute("PRAGMA journal_mode = WAL")
   conn.execute(f"PRAGMA synchronous = {synchronous}")
   conn.execute("PRAGMA foreign_keys = OFF")
   fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
  except BaseException:
   conn.close()
   raise
  if fmt is None or fmt[0] != FORMAT:
   conn.close()
   raise StateFileError(
    f"{shown_path(path)}: is not a conductor state (no format marker); choose another --state"
   )
  return conn

 def close(self) -> None:
  """Commit what is pending and close. Idempotent.

  Raises a one-line `StateError` if that fails, except when the run already failed to write
  (`failure` says why) and when only the compaction (bringing `tickets` up to date, an
  optimisation) finds the disk full or the file read-only: everything is committed then,
  and the next run compacts.
  """
  if self._closed:
   return
  self._closed = True
  with _translating(self.path):
   try:
    if self.failure is None:
     self._note_budget()
    self.commit()
    if self.failure is None:
     try:
      with self._transaction():
       self._compact()
     except sqlite3.OperationalError as exc:
      if (exc.sqlite_errorcode or 0) & 0xFF not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY):
       raise
   finally:
    self._conn.close()

 def __enter__(self) -> StateStore:
  return self

 def __exit__(self, *exc: object) -> None:
  self.close()

 # -- reading ------------------------------------------------------------------------------

 @_user_errors
 def tickets(self) -> list[TicketState]:
  """Every ticket's current state (committed or recorded on this connection), in pipeline
  order. O(tickets + history since the tickets were last brought up to date)."""
  self.commit()
  query = _TICKETS
  if self._version >= 2 and self._conn.execute(_ANY_USAGE).fetchone() is not None:
   query = _TICKETS_WITH_TOKENS  # only agents report a usage: others never pay for it
  return [TicketState(*row) for row in self._conn.execute(query)]

 @_user_errors
 def history(self, *, since_seq: int = 0, limit: int | None = None) -> list[HistoryEntry]:
  """The transition log, oldest first (the last `limit` entries when given)."""
  self.commit()
  query = "SELECT seq, at, ticket, event, attempt, detail, pid FROM history WHERE seq > ?"
  if limit is None:
   rows = self._conn.execute(query + " ORDER BY seq", (since_seq,)).fetchall()
  else:
   rows = self._conn.execute(query + " ORDER BY seq DESC LIMIT ?", (since_seq, limit)).fetchall()
   rows.reverse()
  return [HistoryEntry(*row) for row in rows]

 @_user_errors
 def pause_state(self) -> PauseState:
  """The pause flag. A state of format 1 has only a person's pauses, without a timer."""
  if self._version < 2:
   paused, reason, since, running = self._conn.execute(
    "SELECT paused, reason, since, running_at_pause FROM pause"
   ).fetchone()
   return PauseState(bool(paused), reason, since, tuple(json.loads(running)))
  paused, reason, since, running, resume_at, by_person = self._conn.execute(
   "SELECT paused, reason, since, running_at_pause, auto_resume_at, by_person FROM pause"
  ).fetchone()
  return PauseState(
   bool(paused), reason, since, tuple(json.loads(running)), resume_at, bool(by_person)
  )

 @_user_errors
 def meta(self) -> dict[str, str]:
  return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

 @_user_errors
 def ticket_status(self, ticket_id: str) -> str | None:
  """The ticket's current status (a `dag_engine.Status` value); None if the state has no
  such ticket. One row of `ticket_state`: O(log tickets + history since the tickets were
  last brought up to date)."""
  self.commit()
  row = self._conn.execute("SELECT status FROM ticket_state WHERE id = ?", (ticket_id,)).fetchone()
  return None if row is None else str(row[0])

 @_user_errors
 def output(self, ticket_id: str) -> str | None:
  """The whole output of the ticket's latest finished attempt (completed, failed, retrying).

  None: no such ticket, no attempt finished yet, or the latest printed nothing (an earlier
  attempt's output is never shown for it). O(log outputs) plus the output's size.
  """
  self.commit()
  if self._version < 2:
   return None
  row = self._conn.execute(_OUTPUT, (ticket_id,)).fetchone()
  return None if row is None else str(row[0])

 @_user_errors
 def outputs(self, ids: Iterable[str]) -> dict[str, str]:
  """`output(id)` for each of `ids` that has one (what `ConductorEngine.restore_outputs`
  takes). O(len(ids) log outputs) plus the outputs' size."""
  self.commit()
  if self._version < 2:
   return {}
  found: dict[str, str] = {}
  for tid in ids:
   row = self._conn.execute(_OUTPUT, (tid,)).fetchone()
   if row is not None:
    found[tid] = row[0]
  return found

 @_user_errors
 def tokens_used(self) -> int:
  """The prompt and completion tokens of every usage recorded (every attempt, every run
  since the state was made or last run --fresh). O(rows of `outputs`)."""
  self.commit()
  if self._version < 2:
   return 0
  return int(self._conn.execute(_TOKENS_USED).fetchone()[0])

 @_user_errors
 def raised_token_budget(self) -> int | None:
  """The token budget a person set with `conductor resume --budget` (`set_token_budget`, or
  a live run's `ConductorEngine.resume(token_budget=...)`), if any. A run's budget is the
  larger of it and the pipeline file's (`session.DurableRun.conductor`)."""
  return self._meta_int("token_budget")

 @_user_errors
 def token_budget(self) -> int | None:
  """The budget the next run has, as far as the state knows: the larger of the pipeline
  file's at the last run (its `[pipeline] token_budget`) and the raised one; None: none."""
  budgets = [b for b in (self._meta_int("pipeline_token_budget"), self.raised_token_budget()) if b]
  return max(budgets) if budgets else None

 def _meta_int(self, key: str) -> int | None:
  row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
  return None if row is None else int(row[0])

 def _set_meta_int(self, key: str, value: int | None) -> None:
  # Inside the caller's transaction.
  if value is None:
   self._conn.execute("DELETE FROM meta WHERE key = ?", (key,))
  else:
   self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

 def _upgrade(self) -> None:
  """Bring a state of an older format to this one, in one transaction (`_UPGRADES`).

  Called by the first write (a run's `restore`, `attach`, `set_paused`, `set_token_budget`):
  reading never writes, so `conductor status` of an older state leaves it as it was.
  """
  if self._version >= SCHEMA_VERSION:
   return
  with self._transaction():
   for version in range(self._version, SCHEMA_VERSION):
    for statement in _UPGRADES[version]:
     self._conn.execute(statement)
   self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
   self._conn.execute(
    "INSERT OR REPLACE INTO meta VALUES ('schema', ?), ('upgraded_at', ?)",
    (str(SCHEMA_VERSION), str(time.time())),
   )
  self._version = SCHEMA_VERSION

 # -- starting a run -----------------------------------------------------------------------

 @_user_errors
 def restore(
  self,
  name: str,
  tickets: Sequence[Ticket],
  *,
  fresh: bool = False,
  source: str | None = None,
  token_budget: int | None = None,
 ) -> Restored:
  """Bind this state to a pipeline and apply what it holds to `tickets`, in place.

  `token_budget` is the pipeline file's (kept for `token_budget()` when no run is live). A
  state of an older format is upgraded first (`_upgrade`), unless the pipeline changed.
  A new state, or `fresh`, records the tickets as todo, clears the history, the pause flag,
  the outputs, the tokens used and a raised budget. Otherwise the stored ticket set must
  match the pipeline exactly (same ids, same fingerprints: `PipelineChangedError`, naming
  `source` (the pipeline file) or `name`, otherwise; nothing written); then each ticket gets
  its stored status, attempts and error, with three adjustments written to the state and
  its history: tickets that were in progress (the process died under them) become todo,
  "interrupted"; failed ones become todo, "retry" (a re-run is a request to try again, with
  the full `retries`: the engine gives every run a new try, see `ExecutionEngine`);
  blocked ones become todo (the engine re-blocks what still must be). Then the `tickets`
  table is brought up to date with the history. O(tickets + history since the last run).
  """
  now = time.time()
  stored = {} if fresh else {row.id: row for row in self.tickets()}  # fresh: nothing to read
  if not stored:
   self._upgrade()
   self._write_fresh(name, tickets, now, token_budget)
   return Restored(True, (), (), 0, len(tickets), self.pause_state())

  prints = dict(zip([t.id for t in tickets], fingerprints(tickets), strict=True))
  added = [tid for tid in prints if tid not in stored]
  removed = [tid for tid in stored if tid not in prints]
  changed = [tid for tid, fp in prints.items() if tid in stored and stored[tid].fingerprint != fp]
  if added or removed or changed:
   raise PipelineChangedError(self.path, source or name, added, removed, changed)
  self._upgrade()

  interrupted: list[str] = []
  died: list[str] = []
  retried: list[str] = []
  completed = 0
  cancelled = self._cancelled_last_run(stored)
  with self._transaction():
   for position, ticket in enumerate(tickets):
    row = stored[ticket.id]
    status, error = row.status, row.error
    if ticket.id in cancelled:  # already todo and logged "interrupted" by its run
     interrupted.append(ticket.id)
    if status == Status.IN_PROGRESS:
     interrupted.append(ticket.id)
     died.append(ticket.id)
     event, detail = "interrupted", "the previous run ended while it ran"
    elif status == Status.FAILED:
     retried.append(ticket.id)
     event, detail = Status.TODO, "retry: the pipeline was run again"
    elif status == Status.BLOCKED:
     event, detail, error = Status.TODO, "unblocked for the re-run", None
    else:
     event = None
    if event is not None:
     status = Status.TODO
     self._log(
      now,
      ticket.id,
      event,
      status=status,
      attempt=row.attempts,
      detail=detail,
      error=error,
      exit_code=row.exit_code,
     )
    if position != row.position:
     self._conn.execute("UPDATE tickets SET position = ? WHERE id = ?", (position, ticket.id))
    ticket.status = Status(status)
    ticket.attempts = row.attempts
    ticket.error = error
    completed += status == Status.COMPLETED
   self._conn.execute(
    "INSERT OR REPLACE INTO meta VALUES ('pipeline', ?), ('opened_at', ?)", (name, str(now))
   )
   self._set_meta_int("pipeline_token_budget", token_budget)
   if died:
    self._conn.execute(
     "INSERT OR REPLACE INTO meta VALUES ('died_under', ?)",
     (json.dumps(sorted(self.died_under().union(died))),),
    )
   self._compact()
   self._mark_run_start()
  return Restored(
   False,
   tuple(interrupted),
   tuple(retried),
   completed,
   len(tickets),
   self.pause_state(),
   self.tokens_used(),
   self.raised_token_budget(),
   tuple(died),
  )

 def died_under(self) -> frozenset[str]:
  """The tickets a run of this state ever died under: in progress when its process ended
  without recording them (a kill, a crash, or the ticket's own code ending the process),
  as `restore` found them. Kept until `--fresh`; the session runs the `call` tickets among
  them in processes of their own (`conductor.isolation`)."""
  with _translating(self.path):
   row = self._conn.execute("SELECT value FROM meta WHERE key = 'died_under'").fetchone()
  return frozenset() if row is None else frozenset(json.loads(row[0]))

 def _cancelled_last_run(self, stored: dict[str, TicketState]) -> set[str]:
  # Tickets whose attempt the last run cancelled (a second Ctrl+C, SIGTERM, Cancel): that
  # run logged them "interrupted" and stored them todo, so only its history tells. The run
  # began at history entry `run_seq` (meta; absent in files from before it: the whole
  # history is read once). O(history of the last run).
  found = self._conn.execute("SELECT value FROM meta WHERE key = 'run_seq'").fetchone()
  since = int(found[0]) if found is not None else 0
  rows = self._conn.execute(
   "SELECT DISTINCT ticket FROM history WHERE seq > ? AND event = 'interrupted'", (since,)
  )
  return {tid for (tid,) in rows if tid in stored and stored[tid].status == Status.TODO}

 def _mark_run_start(self) -> None:
  # Where the run now starting begins in the history (see _cancelled_last_run).
  self._write_rows()
  last = self._conn.execute("SELECT max(seq) FROM history").fetchone()[0] or 0
  self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('run_seq', ?)", (str(last),))

 def _write_fresh(
  self, name: str, tickets: Sequence[Ticket], now: float, token_budget: int | None
 ) -> None:
  with self._transaction():
   self._conn.execute("DELETE FROM tickets")
   self._conn.execute("DELETE FROM history")
   self._conn.execute("DELETE FROM outputs")
   self._conn.execute(_NO_PAUSE)
   self._set_meta_int("token_budget", None)
   self._set_meta_int("pipeline_token_budget", token_budget)
   self._conn.execute("DELETE FROM meta WHERE key = 'died_under'")
   # A fresh state: fresh run state too. The rows are made in C (zip), 100,000 of them.
   self._conn.executemany(
    f"INSERT INTO tickets VALUES (?, ?, ?, '{Status.TODO}', 0, NULL, NULL, ?)",
    zip(
     [t.id for t in tickets],
     itertools.count(),
     fingerprints(tickets),
     itertools.repeat(now),
    ),
   )
   self._conn.execute(
    "INSERT OR REPLACE INTO meta VALUES ('pipeline', ?), ('opened_at', ?), ('synced_seq', '0')",
    (name, str(now)),
   )
   self._log(now, None, "fresh", detail=f"{len(tickets)} ticket{'' if len(tickets) == 1 else 's'}")
   self._mark_run_start()
  self._with_output.clear()
  for t in tickets:
   t.status, t.attempts, t.error = Status.TODO, 0, None

 # -- the pause flag without a running process ---------------------------------------------

 @_user_errors
 def set_paused(
  self,
  paused: bool,
  reason: str | None = None,
  *,
  by_person: bool = True,
  auto_resume_at: float | None = None,
  token_budget: int | None = None,
 ) -> PauseState:
  """Write the pause flag (for `conductor pause`/`resume` when no run is live); commits.

  The rules are `ConductorEngine`'s. Pausing is a person's (`by_person`), with no automatic
  resume; an automatic pause (`by_person=False`, until `auto_resume_at` or None: by hand)
  never replaces a person's. Idempotent: pausing a paused state keeps its `since` (and its
  reason unless given); a person pausing an automatic pause makes it theirs (logged again).
  Resuming with `token_budget` first raises the budget to it (`set_token_budget`). Resuming
  while the budget is spent (the tokens used reach `token_budget`, else `token_budget()`)
  raises `TokenBudgetSpent` (one line) and writes nothing.
  """
  current = self.pause_state()
  now = time.time()
  if paused and current.paused and current.by_person and not by_person:
   return current  # a person's pause wins
  if not paused:
   budget = token_budget if token_budget is not None else self.token_budget()
   used = self.tokens_used()
   if budget is not None and used >= budget:
    raise TokenBudgetSpent(used, budget)  # the engine's refusal, with no live run
  self._upgrade()
  with self._transaction():
   if paused:
    since = now
    if current.paused:  # already paused: keep when it began, and its reason unless given
     since = current.since if current.since is not None else now
     reason = reason if reason is not None else current.reason
    if by_person:
     auto_resume_at = None
    self._conn.execute(
     "UPDATE pause SET paused = 1, reason = ?, since = ?, running_at_pause = '[]', "
     "auto_resume_at = ?, by_person = ?",
     (reason, since, auto_resume_at, int(by_person)),
    )
    if not current.paused or (by_person, auto_resume_at) != (
     current.by_person,
     current.auto_resume_at,
    ):
     self._log(now, None, "paused", detail=reason)
   else:
    if token_budget is not None:
     self._set_meta_int("token_budget", token_budget)
    self._conn.execute(_NO_PAUSE)
    if current.paused:
     self._log(now, None, "resumed")
  return self.pause_state()

 @_user_errors
 def set_token_budget(self, budget: int | None) -> None:
  """Keep `budget` as the raised token budget (`raised_token_budget`; None forgets it);
  commits. Does not resume (see `set_paused`). During a run nothing needs to call it: the
  store keeps the run's budget as it changes (`attach`)."""
  self._upgrade()
  with self._transaction():
   self._set_meta_int("token_budget", budget)

 # -- recording a run ----------------------------------------------------------------------

 def attach(self, conductor: ConductorEngine) -> None:
  """Record every transition of `conductor` from now on (call before `run()`).

  The listener runs on the loop as the engine emits, and only appends the history row to a
  buffer, from the transition alone. `commit()` is its flush, which the run's journal calls
  write-ahead (`journal.Journal`). If a commit fails, the run is cancelled (see `commit`).

  An attempt that ends with an output or a usage also writes its `outputs` row, in the same
  commit as its transition. The run's token budget is kept as it changes (a person's
  `resume(token_budget=...)`): read at each pause and resume, and when the store closes.
  A state of an older format is upgraded first.
  """
  self._upgrade()
  self._cancel_run = conductor.cancel
  self._conductor = conductor
  self._budget_seen = conductor.token_budget
  with _translating(self.path):
   self._with_output = {
    tid for (tid,) in self._conn.execute("SELECT ticket FROM outputs WHERE output IS NOT NULL")
   }
  conductor.add_listener(_Recorder(self), flush=self.commit)

 def watch(self, fn: Callable[[Transition], None]) -> None:
  """Call `fn(transition)` for every recorded transition once it is committed (on the loop).

  What a watcher prints is therefore already durable: a ticket printed "completed" never
  runs again, whatever happens to the process next.
  """
  self._watchers.append(fn)

 def commit(self) -> None:
  """Make everything recorded so far durable. O(1) when nothing is pending.

  A write error (disk full, the file deleted, ...) does not raise here: the run is
  cancelled and `failure` says why, so no worker starts on an undurable state.
  """
  kinds = self._kinds
  if not kinds and not self._dirty:
   return
  try:
   if len(kinds) > _BATCH:  # several statements: one transaction around them
    self._begin()
    self._write_rows()
   elif kinds:  # `_write_rows` inlined: the one statement of most commits (a chain's all)
    rows = self._rows
    self._rows, self._kinds = [], ""
    self._cursor.execute(self._inserts.get(kinds) or self._insert(kinds), rows)
   # Alone, one statement is one transaction: no BEGIN and COMMIT to send.
   if self._dirty:
    self._conn.execute("COMMIT")
  except sqlite3.Error as exc:
   self._failed(exc)
   return
  self._dirty = False
  if self._pending:
   pending, self._pending = self._pending, []
   for transition in pending:
    for fn in self._watchers:
     fn(transition)

 def _record(self, t: Transition) -> None:
  # The listener: ConductorEngine calls it on the loop for every transition but the starts
  # and plain completions, which come by `_started` / `_completed` (journal.Recorder).
  if self.failure is not None:
   return
  tid, change, at, status, attempt, detail, error, exit_code, _, output, usage, _, _ = t
  if tid is None:
   try:
    self._record_pipeline_event(t)
   except sqlite3.Error as exc:
    self._failed(exc)
    return
  else:
   self._log(
    at,
    tid,
    _EVENTS[change],
    status=_STATUSES[status],
    attempt=attempt,
    detail=detail,
    error=error,
    exit_code=exit_code,
   )
   # Only attempts with an output or a usage, or that end one with a stored output, cost more.
   if (
    output is not None
    or usage is not None
    or (self._with_output and change in _FINISHED and tid in self._with_output)
   ):
    try:
     self._record_output(t)
    except sqlite3.Error as exc:
     self._failed(exc)
     return
  if self._watchers:
   self._pending.append(t)

 def _started(self, tid: str, at: float, attempt: int) -> None:
  # The journal's own call for a start (journal.Recorder): `_record` of its Transition.
  if self.failure is None:
   self._rows += (at, tid, attempt)
   self._kinds += _STARTED_ROW
   if self._watchers:
    self._pending.append(Transition(tid, Change.STARTED, at, Status.IN_PROGRESS, attempt))

 def _completed(self, tid: str, at: float, attempt: int) -> None:
  # The same for a plain completion; one that ends a stored output clears it (`_record`).
  if self.failure is None:
   if self._with_output and tid in self._with_output:
    self._record(Transition(tid, Change.COMPLETED, at, Status.COMPLETED, attempt))
    return
   self._rows += (at, tid, attempt)
   self._kinds += _COMPLETED_ROW
   if self._watchers:
    self._pending.append(Transition(tid, Change.COMPLETED, at, Status.COMPLETED, attempt))

 def _record_output(self, t: Transition) -> None:
  # The attempt's row in `outputs`, in the transaction its transition commits in. An
  # attempt that did not end (interrupted, say, by PausePipeline) keeps only its usage.
  tid, output, usage = t.ticket, t.output, t.usage
  assert tid is not None
  self._begin()
  if t.change in _FINISHED:
   if tid in self._with_output:
    self._conn.execute(_CLEAR_OUTPUT, (tid,))
    self._with_output.discard(tid)
  else:
   output = None
  if output is None and usage is None:
   return
  self._conn.execute(
   _INSERT_OUTPUT,
   (
    tid,
    t.attempt,
    t.at,
    None if usage is None else usage.prompt_tokens,
    None if usage is None else usage.completion_tokens,
    output,
   ),
  )
  if output is not None:
   self._with_output.add(tid)

 def _record_pipeline_event(self, t: Transition) -> None:
  self._begin()
  if t.change is Change.PAUSED:
   # Again while paused (a person takes over an automatic pause, a new reason or time):
   # the pause began when it began.
   self._conn.execute(
    "UPDATE pause SET since = CASE WHEN paused = 1 THEN coalesce(since, ?2) ELSE ?2 END, "
    "paused = 1, reason = ?1, running_at_pause = ?3, auto_resume_at = ?4, by_person = ?5",
    (
     t.detail,
     t.at,
     json.dumps(list(t.running_at_pause)),
     t.auto_resume_at,
     int(t.by_person),
    ),
   )
  elif t.change is Change.RESUMED:
   self._conn.execute(_NO_PAUSE)
  self._note_budget()
  self._log(t.at, None, t.change, detail=t.detail)

 def _note_budget(self) -> None:
  # Keep the attached run's token budget if a person changed it; committed with the rest.
  if self._conductor is None:
   return
  budget = self._conductor.token_budget
  if budget != self._budget_seen:
   self._budget_seen = budget
   self._begin()
   self._set_meta_int("token_budget", budget)

 def _compact(self) -> None:
  # Bring `tickets` up to date with the history, inside the caller's transaction.
  # O(history since the last time).
  self._write_rows()
  synced = int(self._conn.execute("SELECT value FROM meta WHERE key = 'synced_seq'").fetchone()[0])
  last = self._conn.execute("SELECT max(seq) FROM history").fetchone()[0] or 0
  if last <= synced:
   return
  for first in range(synced, last, _COMPACT_SLICE):
   self._conn.execute(_COMPACT, (first, min(first + _COMPACT_SLICE, last)))
  self._conn.execute("UPDATE meta SET value = ? WHERE key = 'synced_seq'", (str(last),))

 def _begin(self) -> None:
  if not self._dirty:
   self._conn.execute("BEGIN")
   self._dirty = True

 def _log(
  self,
  at: float,
  ticket: str | None,
  event: str,
  *,
  status: str | None = None,
  attempt: int = 0,
  detail: str | None = None,
  error: str | None = None,
  exit_code: int | None = None,
 ) -> None:
  # Buffered like the run's own rows, so the history stays in order; written on commit.
  if detail is None and error is None and exit_code is None:
   self._rows += (at, ticket, event, status, attempt)
   self._kinds += _PLAIN_ROW
  else:
   self._rows += (at, ticket, event, status, attempt, detail, error, exit_code)
   self._kinds += _FULL_ROW

 def _write_rows(self) -> None:
  # Execute the buffered history rows in order, `_BATCH` to a statement.
  rows, kinds = self._rows, self._kinds
  if not kinds:
   return
  self._rows, self._kinds = [], ""
  if len(kinds) <= _BATCH:
   self._conn.execute(self._insert(kinds), rows)
   return
  first = 0
  for start in range(0, len(kinds), _BATCH):
   some = kinds[start : start + _BATCH]
   end = first + sum(_WIDTHS[kind] for kind in some)
   self._conn.execute(self._insert(some), rows[first:end])
   first = end

 def _insert(self, kinds: str) -> str:
  sql = self._inserts.get(kinds)
  if sql is None:
   if len(self._inserts) >= _STATEMENTS:  # an unusual run: keep the cache bounded
    self._inserts.clear()
   pid = int(self._pid)
   values = ", ".join(_VALUES[kind] for kind in kinds).format(pid=pid)
   sql = self._inserts[kinds] = _INSERT_HISTORY + values
  return sql

 def _transaction(self) -> _Transaction:
  return _Transaction(self)

 def _failed(self, exc: sqlite3.Error) -> None:
  self.failure = str(error_for(self.path, exc))
  try:
   if self._conn.in_transaction:
    self._conn.execute("ROLLBACK")
  except sqlite3.Error:
   pass
  self._dirty = False
  self._rows, self._kinds = [], ""
  self._pending.clear()
  if self._cancel_run is not None:
   self._cancel_run()


class _Recorder:
 """What `StateStore.attach` adds to the run's journal: a `journal.Recorder` whose calls
 are the store's own (no call in between on the hot path)."""

 __slots__ = ("_record", "completed", "started")

 def __init__(self, store: StateStore) -> None:
  self._record = store._record
  self.started = store._started
  self.completed = store._completed

 def __call__(self, transition: Transition, /) -> None:
  self._record(transition)


class _Transaction:
 """`with store._transaction():` one explicit transaction, committed on success and rolled
 back (with the rows buffered for it) if the body or the commit fails."""

 def __init__(self, store: StateStore) -> None:
  self._store = store

 def __enter__(self) -> None:
  self._store.commit()  # whatever the run recorded comes first
  self._store._conn.execute("BEGIN IMMEDIATE")

 def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
  if exc_type is None:
   try:
    self._store._write_rows()
    self._store._conn.execute("COMMIT")
   except BaseException:
    self._abort()
    raise
  else:
   self._abort()

 def _abort(self) -> None:
  store = self._store
  store._rows, store._kinds = [], ""
  # SQLite may have rolled back already (it does on some disk-full errors).
  if store._conn.in_transaction:
   with contextlib.suppress(sqlite3.Error):
    store._conn.execute("ROLLBACK")


def _create(path: Path) -> None:
 """Create a new, empty state at `path` atomically: built beside it, then renamed in.

 A kill half-way leaves at most a stray `<path>.new-<pid>`, never a half-made state. The
 temporary file is made with O_EXCL | O_NOFOLLOW (a planted link there is refused, never
 followed). A -wal, -shm or -journal left beside a missing state (the state was deleted
 without them) is moved aside first: SQLite would replay that WAL into the new state.
 """
 path.parent.mkdir(parents=True, exist_ok=True)
 if any(os.path.lexists(_side(path, suffix)) for suffix in _SIDE_SUFFIXES):
  _move_aside(path, "orphaned")
 tmp = path.with_name(f"{path.name}.new-{os.getpid()}")
 for stale in (tmp, *(_side(tmp, suffix) for suffix in _SIDE_SUFFIXES)):
  # A killed process with our pid may have left these; anything else is refused.
  refusal = _planted(stale, trusted_owners(path))
  if refusal is not None:
   raise refusal
  stale.unlink(missing_ok=True)
 try:
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
 except FileExistsError:
  raise StateSideFileError(
   f"{shown_path(tmp)}: appeared while conductor was creating it (another user's doing?); remove it and "
   "run again"
  ) from None
 os.close(fd)
 try:
  conn = sqlite3.connect(tmp, isolation_level=None)
  try:
   # Header fields first, in rollback-journal mode, so the marker is in the main file
   # itself (not only in a WAL) from the first commit on.
   # Small pages: a commit writes whole pages to the WAL, and a commit of a scheduling
   # round touches one or two pages at the end of `history`; measured 15-25% faster than
   # 4096 on the no-op benchmark (benchmarks/store_overhead.py).
   conn.execute("PRAGMA page_size = 1024")
   conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
   conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
   conn.execute("BEGIN")
   conn.executescript(_SCHEMA.replace("BEGIN", ""))  # executescript commits first: fine
   conn.execute(
    "INSERT INTO meta VALUES ('format', ?), ('schema', ?), ('created_at', ?), ('synced_seq', '0')",
    (FORMAT, str(SCHEMA_VERSION), str(time.time())),
   )
   conn.execute("PRAGMA journal_mode = WAL")
  finally:
   conn.close()
  os.replace(tmp, path)
 except BaseException:
  for leftover in (tmp, *(_side(tmp, suffix) for suffix in _SIDE_SUFFIXES)):
   with contextlib.suppress(OSError):
    leftover.unlink(missing_ok=True)
  raise
