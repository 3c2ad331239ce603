"""Python steps of `build.toml`, referenced from it as `call = "build_steps:<function>"`.

conductor imports this module from the pipeline file's folder and calls the function with
the ticket. A plain function runs in a worker thread; an `async def` one in the event loop.
"""

from __future__ import annotations

from pathlib import Path

from conductor.dag_engine import Ticket

OUT = Path(__file__).resolve().parent / "out"  # the process's cwd may be anywhere


def write_manifest(ticket: Ticket) -> str:
 """Write out/manifest.txt from out/config.txt; the returned text is the ticket's output."""
 config = dict(
  line.split("=", 1) for line in (OUT / "config.txt").read_text().splitlines() if "=" in line
 )
 lines = [f"{key}: {value}" for key, value in sorted(config.items())]
 lines.append(f"written by ticket {ticket.id} (attempt {ticket.attempts})")
 (OUT / "manifest.txt").write_text("\n".join(lines) + "\n")
 return f"manifest: {len(config)} settings"
