"""How a command ends: its exit code, and `UsageError`, the one error a user can cause.

Exit codes, the same for `conductor run`, `demo` and the dashboard: 0 every ticket
completed; 1 some failed or are blocked; 2 bad input or a state that cannot be used (a
one-line message, never a traceback); 130 stopped before the end (Ctrl+C, or the window
closed); 128 + the signal when SIGTERM (143) or SIGHUP (129) stopped it.
"""

from __future__ import annotations

from .multi_agent_conductor import MmaStatus, Snapshot

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_STOPPED", "EXIT_USAGE", "UsageError", "exit_code_for"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130


class UsageError(Exception):
 """A mistake the user can fix: printed as one line, exit code 2."""


def exit_code_for(snap: Snapshot) -> int:
 """The exit code of a run that ended with `snap` (before any signal is accounted for)."""
 if snap.status is MmaStatus.DONE:
  return EXIT_OK
 if snap.counts.failed or snap.counts.blocked or snap.error:
  return EXIT_FAILED
 return EXIT_STOPPED
