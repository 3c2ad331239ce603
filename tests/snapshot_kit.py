"""A `SnapshotCache` snapshot with the driver's part left plain: for tests of the cache and
of what views make of its snapshots. Tests import it as `from snapshot_kit import build`."""

from __future__ import annotations

from collections.abc import Sequence

from conductor.dag_engine import Ticket
from conductor.snapshots import MmaStatus, Snapshot, SnapshotCache


def build(
 cache: SnapshotCache, *, rows: bool = False, ready: Sequence[Ticket] = (), max_workers: int = 4
) -> Snapshot:
 """`cache.build(...)` of an executing, unpaused run with nobody at a pause."""
 return cache.build(
  rows=rows,
  name="p",
  status=MmaStatus.EXECUTING,
  paused=False,
  pause_reason=None,
  paused_at=None,
  running_at_pause=(),
  finishing=(),
  ready=ready,
  elapsed=0.0,
  spawned=0,
  max_workers=max_workers,
  error=None,
  stopping=False,
 )
