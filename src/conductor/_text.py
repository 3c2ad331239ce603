"""Words for people: untrusted text made safe to print, paths, counts, lists and clocks.

Every view (the terminal's, the dashboard's, error messages) says these things the same way:
a path as `shown_path` (relative under the current folder, else `~/...`; JSON for scripts
carries the absolute, resolved path instead), a count as `plural` ("1 ticket"), ids as
`listed` ("a, b (+3)"), a duration as `clock`.

A ticket id, a pause reason, a path or a command's last stderr line is untrusted: a newline in it
would forge a second log line, an escape sequence would repaint the terminal. `printable`
escapes every character that `str.isprintable()` rejects (C0/C1 controls, DEL, Unicode format
characters such as bidi overrides, separators other than the space) the way `repr` would.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

__all__ = ["clock", "listed", "plural", "printable", "shell_path", "shown_path"]


def printable(text: str) -> str:
 """`text` with every non-printable character escaped (`\\n`, `\\x1b`, `\\u202e`). O(len)."""
 if text.isprintable():  # the common case, in C
  return text
 return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
 return repr(ch)[1:-1] if ch not in "'\"" else ch


def first_line(text: str, limit: int = 200) -> str:
 """The first line of `text` (surrounding blanks dropped), cut to `limit` characters with
 "…": how a message from elsewhere (an exception, a server) becomes part of one line."""
 lines = text.strip().splitlines()
 line = lines[0].strip() if lines else ""
 return line if len(line) <= limit else line[: limit - 1] + "…"


def shown_path(path: Path | str) -> str:
 """A path as people read and type it, escaped: relative under the current folder, else
 `~/...`, else absolute. Every path in a message for people goes through this (JSON for
 scripts carries the absolute, resolved path instead)."""
 full = Path(os.path.abspath(path))
 for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
  if full.is_relative_to(base):
   return printable(prefix + str(full.relative_to(base)))
 return printable(str(full))


def shell_path(path: Path | str) -> str:
 """A path for a command line people copy: `shown_path`, shell-quoted, with a leading `~/`
 left outside the quotes so the shell still expands it."""
 shown = shown_path(path)
 if shown.startswith("~/"):
  return "~/" + shlex.quote(shown[2:])
 return shlex.quote(shown)


def clock(seconds: float) -> str:
 """`75.2` -> `01:15`; an hour or more -> `1:02:03`."""
 minutes, secs = divmod(int(seconds), 60)
 hours, minutes = divmod(minutes, 60)
 return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def plural(n: int, one: str, many: str | None = None) -> str:
 """`1 ticket`, `2 tickets`, `3 processes`."""
 return f"{n:,} {one if n == 1 else (many or one + 's')}"


def listed(ids: Sequence[str], limit: int = 8) -> str:
 """Ticket ids for a line of text: `a, b, c (+4)`, escaped."""
 shown = ids[:limit]
 more = f" (+{len(ids) - len(shown)})" if len(ids) > len(shown) else ""
 return ", ".join(printable(i) for i in shown) + more
