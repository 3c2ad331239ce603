"""Running the real `conductor` command in tests: one place for the subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

COMMAND_TIMEOUT = 120.0  # seconds one command may take before the test fails (not hangs)


def conductor(
 *args: str,
 cwd: Path | None = None,
 prefix: tuple[str, ...] = (),
 timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
 """Run `conductor ARGS` (with this interpreter) to its end; `prefix` goes before it (an
 strace, say). Output is captured, wide enough that rich does not wrap a line."""
 return subprocess.run(
  [*prefix, sys.executable, "-m", "conductor", *args],
  cwd=cwd,
  capture_output=True,
  text=True,
  timeout=timeout,
  check=False,
  env={**os.environ, "COLUMNS": "200"},
 )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
 """Assert the promise for a user's mistake: exit 2, one line on stderr, no traceback; and
 that the line says each of `needles`. Returns the line."""
 assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr)
 lines = result.stderr.strip().splitlines()
 assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
 for needle in needles:
  assert needle in lines[0], lines[0]
 return lines[0]
