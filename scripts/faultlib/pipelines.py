"""Pipelines for the fault rows: chain, wide and random DAGs of probe tickets.

Every probe logs `TICKET ATTEMPT start` when it begins and `TICKET ATTEMPT end` when its work
is done, one `write` per line (O_APPEND, so lines never mix), into `runs.log` in the row's
folder, never beside the state: a full disk or a killed writer cannot lose the log.

- `shell`: `/bin/sh -c` with `CONDUCTOR_TICKET` / `CONDUCTOR_ATTEMPT` from its environment;
  its processes carry `CONDUCTOR_STATE`, which is how leftovers are found.
- `sync` / `async`: `call` tickets into the module `fprobe.py` beside the pipeline, which
  reads the ticket's id and attempt from the `Ticket` it is given.
- `hold`: a shell ticket that waits (bounded) for the file `release` in the row's folder,
  to keep a run alive for as long as a row needs it.
"""

from __future__ import annotations

import json
import random
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

SHAPES = ("chain", "wide", "random")
T = TypeVar("T")

FPROBE = '''"""Probe tickets for scripts/faulttest: log start and end, one write per line."""
import json
import os
import time

import anyio

_HERE = os.path.dirname(os.path.abspath(__file__))
_LOG = os.path.join(_HERE, "runs.log")
try:
 with open(os.path.join(_HERE, "probe-sleeps.json")) as _f:
  _SLEEPS = json.load(_f)
except OSError:
 _SLEEPS = {}


def _log(ticket, phase):
 fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
 try:
  os.write(fd, f"{ticket.id} {ticket.attempts} {phase}\\n".encode())
 finally:
  os.close(fd)


def sync_probe(ticket):
 _log(ticket, "start")
 time.sleep(_SLEEPS.get(ticket.id, 0))
 _log(ticket, "end")


async def async_probe(ticket):
 _log(ticket, "start")
 await anyio.sleep(_SLEEPS.get(ticket.id, 0))
 _log(ticket, "end")
'''


def _toml(text: str) -> str:
 # A JSON string is a valid TOML basic string (json.dumps never writes "\/").
 return json.dumps(text)


def shell_probe(log: Path, seconds: float) -> str:
 """The command of a shell probe ticket that works `seconds`."""
 where = shlex.quote(str(log))
 me = '"$CONDUCTOR_TICKET $CONDUCTOR_ATTEMPT'
 work = f"; sleep {seconds:.3f}" if seconds > 0 else ""
 return f'echo {me} start" >> {where}{work}; echo {me} end" >> {where}'


def hold_command(log: Path, release: Path, limit: float = 90.0) -> str:
 """A shell probe that ends once `release` exists (or after `limit` seconds)."""
 where, flag = shlex.quote(str(log)), shlex.quote(str(release))
 me = '"$CONDUCTOR_TICKET $CONDUCTOR_ATTEMPT'
 rounds = int(limit / 0.05)
 return (
  f'echo {me} start" >> {where}; i=0; '
  f"while [ ! -e {flag} ] && [ $i -lt {rounds} ]; do sleep 0.05; i=$((i+1)); done; "
  f'echo {me} end" >> {where}'
 )


# The head of a faulttest module with one bad ticket in it: `.format(what=..., flag=...)`
# with the rest of the module (`usercode`, `procexit`); its `_log` writes the probes' lines.
BAD_HEAD = '''"""A ticket that {what} while {flag} exists (scripts/faulttest)."""
import asyncio
import os
import signal
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_FLAG = os.path.join(_HERE, "{flag}")


def _log(ticket, phase):
 fd = os.open(os.path.join(_HERE, "runs.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
 try:
  os.write(fd, f"{{ticket.id}} {{ticket.attempts}} {{phase}}\\n".encode())
 finally:
  os.close(fd)

'''


@dataclass
class Pipeline:
 """A DAG of tickets: `deps` in file order, and each ticket's work as TOML lines."""

 deps: dict[str, tuple[str, ...]]
 work: dict[str, str]
 sleeps: dict[str, float] = field(default_factory=dict)  # of the call probes
 kinds: dict[str, str] = field(default_factory=dict)

 def descendants(self, tid: str) -> set[str]:
  below: dict[str, list[str]] = {t: [] for t in self.deps}
  for t, ds in self.deps.items():
   for d in ds:
    below[d].append(t)
  seen: set[str] = set()
  todo = [tid]
  while todo:
   for child in below[todo.pop()]:
    if child not in seen:
     seen.add(child)
     todo.append(child)
  return seen

 def write(self, folder: Path, *, name: str = "p", max_workers: int = 4) -> Path:
  """Write `p.toml`, `fprobe.py` and `probe-sleeps.json` into `folder`; return the toml."""
  lines = [f"[pipeline]\nname = {_toml(name)}\nmax_workers = {max_workers}\n"]
  for tid, ds in self.deps.items():
   lines.append(f"\n[[tickets]]\nid = {_toml(tid)}\n")
   if ds:
    lines.append(f"depends_on = [{', '.join(_toml(d) for d in ds)}]\n")
   lines.append(self.work[tid] + "\n")
  path = folder / "p.toml"
  path.write_text("".join(lines))
  (folder / "fprobe.py").write_text(FPROBE)
  (folder / "probe-sleeps.json").write_text(json.dumps(self.sleeps))
  return path


def shape_deps(
 shape: str, n: int, rng: random.Random, prefix: str = "t"
) -> dict[str, tuple[str, ...]]:
 """`n` ticket ids and their dependencies: a chain, a wide fan (plus a join), or random."""
 ids = [f"{prefix}{i:05d}" if n > 9999 else f"{prefix}{i:04d}" for i in range(n)]
 deps: dict[str, tuple[str, ...]] = {}
 for i, tid in enumerate(ids):
  if shape == "chain":
   deps[tid] = (ids[i - 1],) if i else ()
  elif shape == "wide":
   deps[tid] = tuple(ids[:-1]) if i == n - 1 and n > 2 else ()
  elif shape == "random":
   window = ids[max(0, i - 12) : i]
   k = min(len(window), rng.choice((0, 1, 1, 2, 2, 3)))
   deps[tid] = tuple(sorted(rng.sample(window, k)))
  else:
   raise ValueError(f"unknown shape {shape!r}")
 return deps


def probe_pipeline(
 shape: str,
 n: int,
 rng: random.Random,
 log: Path,
 *,
 mix: Mapping[str, float],
 seconds: tuple[float, float] = (0.0, 0.0),
 slow: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Pipeline:
 """A `shape` of `n` probes, each of a kind drawn from `mix` (`shell`, `sync`, `async`
 -> weight), working uniform(`seconds`); a fraction `slow[0]` works uniform(slow[1:])."""
 deps = shape_deps(shape, n, rng)
 kinds, weights = zip(*mix.items(), strict=True)
 pipeline = Pipeline(deps, {})
 for tid in deps:
  kind = rng.choices(kinds, weights)[0]
  lo, hi = slow[1:] if rng.random() < slow[0] else seconds
  secs = round(rng.uniform(lo, hi), 3)
  pipeline.kinds[tid] = kind
  if kind == "shell":
   pipeline.work[tid] = f"run = {_toml(shell_probe(log, secs))}"
  elif kind in ("sync", "async"):
   pipeline.work[tid] = f'call = "fprobe:{kind}_probe"'
   if secs > 0:
    pipeline.sleeps[tid] = secs
  else:
   raise ValueError(f"unknown probe kind {kind!r}")
 return pipeline


def add_hold(pipeline: Pipeline, log: Path, release: Path, tid: str = "hold") -> None:
 """Add an independent `hold` ticket (see `hold_command`) at the front of the pipeline."""
 pipeline.deps = {tid: (), **pipeline.deps}
 pipeline.work[tid] = f"run = {_toml(hold_command(log, release))}"
 pipeline.kinds[tid] = "hold"


def add_bulk(pipeline: Pipeline, shape: str, n: int, rng: random.Random) -> None:
 """Add `n` instant `sleep = 0` tickets of `shape` (not probes: only the state sees them),
 to make the pipeline big."""
 for tid, ds in shape_deps(shape, n, rng, prefix="b").items():
  pipeline.deps[tid] = ds
  pipeline.work[tid] = "sleep = 0"
  pipeline.kinds[tid] = "bulk"


def toml_string(text: str) -> str:
 return _toml(text)


def with_bad_ticket(pipe: Pipeline, shape: str, rng: random.Random, call: str) -> list[str]:
 """Put a ticket "bad" doing `call` (a `call = ...` target) into `pipe`, amid its probes,
 some of them depending on it; return the probes not below it (its siblings)."""
 ids = list(pipe.deps)
 i = rng.randint(2, len(ids) - 4)
 if shape == "chain":
  bad_deps: tuple[str, ...] = (ids[i - 1],)
  below = [ids[i + 1]]
 elif shape == "wide":
  bad_deps, below = (), [ids[-1]]
 else:
  bad_deps = tuple(sorted(rng.sample(ids[:i], rng.randint(0, 2))))
  below = rng.sample(ids[i + 1 :], 2)
 deps = dict(pipe.deps)
 pipe.deps = {}
 for tid in ids:
  pipe.deps[tid] = (*deps[tid], "bad") if tid in below else deps[tid]
  if tid == ids[i]:
   pipe.deps["bad"] = bad_deps
 pipe.work["bad"] = f"call = {_toml(call)}"
 downstream = pipe.descendants("bad")
 return [t for t in pipe.deps if t != "bad" and t not in downstream]


def spread(every: list[T], shape: str, long: bool) -> list[tuple[T, str]]:
 """Which of `every` trial a row of `shape` runs, on which backend: with `long`, each on
 both; otherwise each on two of the three shapes, once on each backend."""
 if long:
  return [(v, b) for v in every for b in ("asyncio", "trio")]
 at = SHAPES.index(shape)
 return [
  (v, ("asyncio", "trio")[(i + k) % 2])
  for i, v in enumerate(every)
  for k in (0, 1)
  if (i + k) % 3 == at
 ]
