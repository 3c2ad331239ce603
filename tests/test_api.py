"""The flat public API: `from conductor import ...` is enough to build and run a pipeline."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest

import conductor
from conductor import ConductorEngine, ExecutionEngine, MmaStatus, Ticket, WorkResult

pytestmark = pytest.mark.anyio


def test_every_name_in_all_is_importable_from_the_package() -> None:
 for name in conductor.__all__:
  assert getattr(conductor, name) is not None, name


def test_importing_conductor_loads_neither_the_dashboard_nor_the_cli() -> None:
 # imgui-bundle is heavy and needs a display to be useful: only `conductor.gui` imports it.
 code = (
  "import sys, conductor\n"
  "loaded = [m for m in sys.modules if m.split('.')[0] == 'imgui_bundle'"
  " or m in ('conductor.gui', 'conductor.cli')]\n"
  "print(loaded)\n"
 )
 result = subprocess.run(
  [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
 )
 assert result.stdout.strip() == "[]", result.stdout


async def test_a_pipeline_runs_with_the_flat_api_alone() -> None:
 async def worker(ticket: Ticket) -> WorkResult:
  return WorkResult(output=ticket.id)

 engine = ExecutionEngine([Ticket("plan"), Ticket("code", ("plan",))])
 with anyio.fail_after(30):
  final = await ConductorEngine(engine, worker).run()
 assert final.status is MmaStatus.DONE and final.counts.completed == 2
