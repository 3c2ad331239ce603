"""user-exception: a `call` ticket whose code raises anything at all.

One trial per kind of exception and per flavour (a sync function, run in a thread, and an
async one, awaited on the loop; an import-time failure is one flavour): a small DAG of probe
tickets with one bad ticket in it, some tickets depending on it. The bad ticket raises only
while the file `raise-now` exists. Expected: the run ends by itself with exit 1, the bad
ticket failed with a one-line error, every ticket not below it started exactly once, none
below it started; then, the file removed, a clean re-run finishes everything and starts
nothing that had completed.
"""

from __future__ import annotations

import random
import time

from .harness import Config, Lab, Ledger, Row, check_final, check_log, clip
from .pipelines import BAD_HEAD, probe_pipeline, spread, with_bad_ticket

CLASS = "user-exception"

BAD_MODULE = (
 BAD_HEAD
 + '''
class Custom(BaseException):
 """Not an Exception: a BaseException of the user's own."""


class BadStr(Exception):
 def __str__(self):
  raise RuntimeError("__str__ of the exception raised")

 def __repr__(self):
  raise RuntimeError("__repr__ of the exception raised")


def _recurse(n):
 return _recurse(n + 1) + 1


def _raise():
 {body}


if {at_import} and os.path.exists(_FLAG):
 _raise()


def sync(ticket):
 _log(ticket, "start")
 if not {at_import} and os.path.exists(_FLAG):
  _raise()
 _log(ticket, "end")


async def coro(ticket):
 _log(ticket, "start")
 if not {at_import} and os.path.exists(_FLAG):
  _raise()
 _log(ticket, "end")
'''
)

KINDS: dict[str, str] = {
 "sys.exit(3)": "sys.exit(3)",
 "raise SystemExit": "raise SystemExit",
 "KeyboardInterrupt": "raise KeyboardInterrupt",
 "GeneratorExit": "raise GeneratorExit",
 "a BaseException subclass": 'raise Custom("user-defined")',
 "asyncio.CancelledError": "raise asyncio.CancelledError()",
 "RecursionError": "_recurse(0)",
 "MemoryError": 'raise MemoryError("simulated: out of memory")',
 "an exception whose __str__ raises": "raise BadStr()",
}
IMPORT_KINDS: dict[str, str] = {
 "RuntimeError at import": 'raise RuntimeError("broken at import")',
 "sys.exit(4) at import": "sys.exit(4)",
}


def variants() -> list[tuple[str, str, str, bool]]:
 """(label, body, flavour, at_import) for every trial, in a fixed order."""
 found = []
 for kind, body in KINDS.items():
  for flavour in ("sync", "coro"):
   found.append((f"{kind} ({'async' if flavour == 'coro' else 'sync'})", body, flavour, False))
 for kind, body in IMPORT_KINDS.items():
  found.append((kind, body, "sync", True))
 return found


def run(cfg: Config, row: Row, rng: random.Random, until: float) -> None:
 mine = spread(variants(), row.shape, cfg.long)
 per_trial = 0.0
 for number, ((label, body, flavour, at_import), backend) in enumerate(mine):
  if number and time.monotonic() + per_trial > until:
   row.info.append(f"time budget: {number} of {len(mine)} kinds run")
   break
  began = time.monotonic()
  row.trials += 1
  _trial(
   cfg,
   row,
   rng,
   number=number,
   label=label,
   body=body,
   flavour=flavour,
   at_import=at_import,
   backend=backend,
  )
  per_trial = max(per_trial, time.monotonic() - began)


def _trial(
 cfg: Config,
 row: Row,
 rng: random.Random,
 *,
 number: int,
 label: str,
 body: str,
 flavour: str,
 at_import: bool,
 backend: str,
) -> None:
 lab = Lab(cfg, row, cfg.work / f"{CLASS}-{row.shape}" / f"k{number:02d}", rng)
 pipe = probe_pipeline(
  row.shape,
  10,
  rng,
  lab.log.path,
  mix={"shell": 40, "sync": 30, "async": 30},
  seconds=(0.02, 0.15),
 )
 module = f"bad{number:02d}"
 (lab.folder / f"{module}.py").write_text(
  BAD_MODULE.format(what=f"raises {label}", flag="raise-now", body=body, at_import=at_import)
 )
 siblings = with_bad_ticket(pipe, row.shape, rng, f"{module}:{flavour}")
 pipe.write(lab.folder)
 flag = lab.folder / "raise-now"
 flag.write_text("")
 ledger = Ledger()

 what = f"conductor run ({backend}) with a ticket raising {label}"
 mark = lab.log.mark()
 if at_import:
  # The pipeline is refused at load (call targets are imported then): one line naming the
  # ticket, exit 2, nothing started and no state written. The clean re-run below still runs.
  done = lab.finish(
   lab.start(what, lab.run_args(backend, fresh=True)), expect={2}, bound=15, mark=mark
  )
  if not done.hung and ("'bad'" not in done.err or "importing module" not in done.err):
   row.fail(
    "broken", f"`{what}`: the refusal does not name the ticket and its import: {done.last()}"
   )
  started = sum(lab.log.starts_since(mark).values())
  if started:
   row.fail("broken", f"`{what}`: {started} ticket(s) started though the pipeline was refused")
  if lab.state.exists():
   row.fail("broken", f"`{what}`: a refused pipeline wrote a state file")
 else:
  _check_first_run(lab, row, ledger, what=what, mark=mark, backend=backend, siblings=siblings)
 flag.unlink()
 what = f"clean re-run ({backend}) after {label}, the ticket fixed"
 mark = lab.log.mark()
 done = lab.finish(lab.start(what, lab.run_args(backend)), expect={0}, bound=30, mark=mark)
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 check_final(row, lab.snapshot(), pipe.deps, what)
 check_log(row, lab.log.read(), pipe.deps, ledger)


def _check_first_run(
 lab: Lab, row: Row, ledger: Ledger, *, what: str, mark: int, backend: str, siblings: list[str]
) -> None:
 # The run with the bad ticket: it fails alone (exit 1); every sibling runs once, completes.
 done = lab.finish(
  lab.start(what, lab.run_args(backend, fresh=True)), expect={1}, bound=15, mark=mark
 )
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 first = lab.snapshot()
 ledger.ended(lab.log.mark(), first, what)
 starts = lab.log.starts_since(mark)
 never = [t for t in siblings if starts[t] == 0]
 if never and not done.hung:
  row.fail(
   "broken",
   f"`{what}`: {len(never)} sibling(s) of the bad ticket never started: {', '.join(never[:4])}",
  )
 if first is not None and not done.hung:
  unfinished = [t for t in siblings if first.tickets.get(t, ("missing", 0))[0] != "completed"]
  if unfinished:
   how = first.tickets.get(unfinished[0], ("missing", 0))
   row.fail(
    "broken",
    f"`{what}`: {len(unfinished)} sibling(s) of the bad ticket did not complete in that run "
    f"(e.g. {unfinished[0]}: {how[0]}, attempt {how[1]})",
   )
  status = first.tickets.get("bad", ("missing", 0))[0]
  error = first.errors.get("bad", "")
  if status != "failed":
   row.fail("broken", f"`{what}`: the bad ticket is {status}, not failed")
  elif not error.strip() or "\n" in error.strip():
   row.fail("broken", f"`{what}`: the bad ticket's error is not one line: {clip(error)!r}")
 elif first is None:
  row.fail("broken", f"`{what}`: no state after the run")
