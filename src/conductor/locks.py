"""The lock files beside a state: opening them safely, locking them, and tidying them away.

What each lock guards (`S-lock`, the owner lock; `S-ctl.lock`, the handover lock) is the
control protocol's business: see `conductor.control`. This module owns the mechanism:

- **A lock file exists only while someone holds it.** Whoever lets go last removes it, while
  still holding it (`FileLock.release`): an exclusive holder always, a shared holder if it
  can turn its lock exclusive without waiting (no one else holds it). So no lock file is
  left beside a pipeline after a run or a command. A holder that is killed leaves its file;
  the kernel drops the lock itself, and the next holder reuses the file and removes it.
- **Locking re-checks the file.** A file can be removed while another process waits to lock
  it (flock locks the open file, not the name). So after flock succeeds, `FileLock` checks
  that the file it locked is still the one at the path (`os.fstat(fd)` against
  `os.stat(path, follow_symlinks=False)`); if not, it closes it and locks the one there now.
  A file is removed only by a holder that excludes every other, so a lock that passes the
  check stays the lock of the path until it is released: holders of the path exclude each
  other exactly as with a file that never goes away. A retry happens only when another
  holder removed the file meanwhile (progress, not a poll), and is bounded: by the caller's
  timeout, and for one that does not wait by `_RACE_RETRIES` removals in a row.
- **Never tricked by a planted file** (`open_beside`): opened with O_NOFOLLOW (a symlink is
  refused, never followed) and O_NONBLOCK (a FIFO cannot hang us), and used only if it is a
  regular file of a trusted owner (`conductor._files.trusted_owners`) with no other hard
  link. Every refusal is a one-line `StateError` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from ._files import trusted_owners
from ._text import shown_path
from .store import StateError, error_for

__all__ = [
 "FileLock",
 "handover_lock_path",
 "open_beside",
 "owner_lock_path",
 "read_owner",
 "symlink_refusal",
]

# Removals in a row after which a lock that does not wait (or whose wait is over) gives up.
# Each one means another holder took the lock and let go between our open and our flock.
_RACE_RETRIES = 64


def owner_lock_path(state: Path) -> Path:
 return state.with_name(state.name + "-lock")


def handover_lock_path(state: Path) -> Path:
 return state.with_name(state.name + "-ctl.lock")


def symlink_refusal(path: Path) -> str:
 """The one-line refusal of a symlink found where conductor keeps a file beside a state."""
 return (
  f"{shown_path(path)}: is a symbolic link; conductor never follows one beside a state (it could be "
  "made to overwrite another file): remove it"
 )


def open_beside(path: Path, flags: int, trusted: frozenset[int]) -> int:
 """Open a file conductor keeps beside a state, never through a symlink, never blocking on
 a FIFO, and only if it is a regular file of a `trusted` user with no other hard link.
 Returns the descriptor (the caller closes it). Raises `StateError` (one line) for
 anything else."""
 flags |= os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
 try:
  fd = os.open(path, flags, 0o600)
 except OSError as exc:
  if exc.errno == errno.ELOOP:
   raise StateError(symlink_refusal(path)) from None
  if exc.errno == errno.EISDIR:
   raise StateError(f"{shown_path(path)}: is a folder, not a lock file; remove it") from None
  raise StateError(f"{shown_path(path)}: cannot open it ({exc.strerror})") from None
 try:
  info = os.fstat(fd)
  if not stat.S_ISREG(info.st_mode):
   raise StateError(
    f"{shown_path(path)}: is not a regular file (a FIFO, socket or device planted there?); remove it"
   )
  if info.st_uid not in trusted:
   raise StateError(
    f"{shown_path(path)}: belongs to uid {info.st_uid}, not to you or the state's owner; "
    "someone else may have planted it: remove it"
   )
  # No links (0) is fine: its holder removed it as we opened it, and FileLock's re-check
  # moves on to the file there now. More than one: it may be another file of yours.
  if info.st_nlink > 1:
   raise StateError(
    f"{shown_path(path)}: has {info.st_nlink} hard links (one may be another file of yours); remove it"
   )
 except BaseException:
  os.close(fd)
  raise
 return fd


class FileLock:
 """An `flock` on a file beside a state, created when missing (mode 0600) and removed by
 its last holder. Not reentrant; use from one thread at a time.

 Exclusive by default; `shared=True` lets any number of shared holders in at once while it
 excludes exclusive ones. flock is per open file, so two `FileLock`s on one path exclude
 each other even in one process; the kernel releases it when the holder dies. The file is
 opened with `open_beside`. The lifecycle (removal on release, re-check on acquire) is in
 the module docstring.
 """

 def __init__(self, path: Path, trusted: frozenset[int]) -> None:
  """`trusted`: who may own the file (`conductor._files.trusted_owners` of its state)."""
  self.path = path
  self._trusted = trusted
  self._fd: int | None = None  # the open, locked file while held
  self._shared = False  # how it is held

 @property
 def held(self) -> bool:
  return self._fd is not None

 def try_acquire(self, *, shared: bool = False) -> bool:
  """Take the lock if it is free; never waits. Raises `StateError` for a planted file."""
  return self.acquire(0.0, shared=shared)

 def acquire(self, timeout: float, *, shared: bool = False) -> bool:
  """Take the lock, waiting up to `timeout` seconds (0: not at all); False if it stayed
  taken. Raises `StateError` for a planted file or a failing flock."""
  assert self._fd is None, "FileLock is not reentrant"
  deadline = time.monotonic() + timeout
  removed = 0  # files we locked that had been removed meanwhile
  while removed < _RACE_RETRIES or time.monotonic() < deadline:
   fd = open_beside(self.path, os.O_RDWR | os.O_CREAT, self._trusted)
   if not _flock(fd, self.path, shared, deadline - time.monotonic()):
    return False
   try:
    current = _is_linked(fd, self.path)
   except OSError as exc:
    os.close(fd)
    raise StateError(f"{shown_path(self.path)}: cannot look at it ({exc.strerror})") from None
   if current:
    self._fd, self._shared = fd, shared
    return True
   # Its holder removed it as it let go (whoever waited for it in the kernel always wakes
   # to such a file): lock the file there now.
   os.close(fd)
   removed += 1
  raise StateError(
   f"{shown_path(self.path)}: was removed {removed} times as conductor locked it; is "
   "another program deleting it? try again"
  )

 def release(self) -> None:
  """Release the lock, removing the file if no one else holds it. Idempotent; never
  waits; never raises (a file it cannot remove stays, harmless)."""
  fd, self._fd = self._fd, None
  if fd is not None:
   _let_go(fd, self.path, self._shared)

 def write(self, text: str) -> None:
  """Replace the file's content (a holder says who it is). Only while held.

  On a full disk (or quota) the file is left empty and nothing is raised: what it says is a
  courtesy to other commands' messages, and a new lock file needs a block the disk may not
  have, which must not stop a `conductor status` (it writes nothing else). Other errors
  raise `StateError` (one line)."""
  fd = self._fd
  assert fd is not None
  try:
   os.ftruncate(fd, 0)
   os.pwrite(fd, text.encode(), 0)
  except OSError as exc:
   if exc.errno in (errno.ENOSPC, errno.EDQUOT):
    return
   raise error_for(self.path, exc) from None  # a read-only remount, a failing disk


def _is_linked(fd: int, path: Path) -> bool:
 """Whether the open file `fd` is still the one at `path` (not removed or replaced)."""
 try:
  now = os.stat(path, follow_symlinks=False)
 except FileNotFoundError:
  return False
 mine = os.fstat(fd)
 return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _let_go(fd: int, path: Path, shared: bool) -> None:
 """Unlock and close `fd`, a lock on `path`, first removing the file if we are its last
 holder (see the module docstring). Never raises."""
 try:
  if shared:
   # The last shared holder removes the file: we are the last if we can hold it
   # exclusively at once. flock converts by dropping our lock first, so if this fails we
   # hold nothing, which is what we want anyway: another holder is left to remove it.
   try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
   except OSError:
    return
  # Held exclusively: no one else can remove or replace the file now, so if the path still
  # names it, it is ours to remove. Removed before the lock goes, never after.
  with contextlib.suppress(OSError):
   if _is_linked(fd, path):
    os.unlink(path)
 finally:
  os.close(fd)


def _flock(fd: int, path: Path, shared: bool, timeout: float) -> bool:
 """Lock the open file `fd`, waiting up to `timeout` seconds.

 True: locked, `fd` is the caller's. False: still taken after `timeout`, and `fd` is gone
 (closed here, or by the helper thread once its flock returns). Raises `StateError` (with
 `fd` closed) if flock fails. flock has no timeout, so a helper thread blocks in the kernel
 (a wait, not a poll); if we give up first, that thread owns the file and releases the lock
 the moment it gets it.
 """
 mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
 try:
  fcntl.flock(fd, mode | fcntl.LOCK_NB)
 except BlockingIOError:
  if timeout <= 0:
   os.close(fd)
   return False
 except OSError as exc:
  os.close(fd)
  raise StateError(f"{shown_path(path)}: cannot lock it ({exc.strerror})") from None
 else:
  return True
 guard = threading.Lock()  # guards `outcome` and `abandoned` between the two threads
 outcome: list[OSError | None] = []  # [None] got it, [error] flock failed
 abandoned = False
 done = threading.Event()

 def wait() -> None:
  try:
   fcntl.flock(fd, mode)
   error = None
  except OSError as exc:
   error = exc
  with guard:
   if abandoned:  # the caller gave up waiting: let go at once, as any holder would
    if error is None:
     _let_go(fd, path, shared)
    else:
     os.close(fd)
    return
   outcome.append(error)
  done.set()

 threading.Thread(target=wait, name=f"flock {path.name}", daemon=True).start()
 done.wait(timeout)
 with guard:
  if not outcome:
   abandoned = True
   return False
 if outcome[0] is not None:
  os.close(fd)
  raise StateError(f"{shown_path(path)}: cannot lock it ({outcome[0].strerror})")
 return True


def read_owner(state: Path) -> dict[str, Any]:
 """What the owner lock file says about its holder ({} if nothing usable, or no file).
 Never follows a symlink nor blocks on a FIFO planted in its place."""
 path = owner_lock_path(state)
 try:
  fd = open_beside(path, os.O_RDONLY, trusted_owners(state))
 except StateError:
  return {}
 try:
  data = json.loads(os.read(fd, 4096) or b"{}")
 except (OSError, ValueError, RecursionError):
  return {}
 finally:
  os.close(fd)
 return data if isinstance(data, dict) else {}
