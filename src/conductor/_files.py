"""Whose files conductor will use beside a state: the one rule, for every file it keeps there.

The store applies it to SQLite's side files (`-wal`, `-shm`, `-journal`), `conductor.locks`
to the lock files, and the control client to whoever serves the control socket. A file
beside a state owned by anyone else may have been planted to make conductor overwrite,
believe or replay something, so it is refused, never used.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["trusted_owners"]


def trusted_owners(state: Path | str) -> frozenset[int]:
 """The uids that may own a file beside `state`, or serve its control socket.

 This user (the effective uid: files are created as it, and the kernel reports peers by
 it); root, who could replace the state itself anyway; and the owner of the state file as
 opened (symlinks followed, as SQLite follows them), e.g. a user's state that root reads.
 Cost: one `stat`.
 """
 owners = {os.geteuid(), 0}
 with contextlib.suppress(OSError):  # no state yet: it will be this user's
  owners.add(os.stat(state).st_uid)
 return frozenset(owners)
