"""Text that came from outside (ticket ids, reasons, errors, command output) made safe to print.

A ticket id, a pause reason or a command's last stderr line is untrusted: a newline in it
would forge a second log line, an escape sequence would repaint the terminal. `printable`
escapes every character that `str.isprintable()` rejects (C0/C1 controls, DEL, Unicode format
characters such as bidi overrides, separators other than the space) the way `repr` would.
"""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: str) -> str:
 """`text` with every non-printable character escaped (`\\n`, `\\x1b`, `\\u202e`). O(len)."""
 if text.isprintable():  # the common case, in C
  return text
 return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
 return repr(ch)[1:-1] if ch not in "'\"" else ch
