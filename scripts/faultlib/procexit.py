"""process-exit: a `call` ticket whose code ends the runner's process itself.

Nothing raised, so nothing to catch: `os._exit(7)`, a segfault (SIGSEGV), `abort()`
(SIGABRT), a SIGKILL as the OOM killer sends. One trial per kind and flavour (a sync
function, run in a thread, and an async one, awaited on the loop): a small DAG of probe
tickets with the bad ticket in it, some tickets depending on it; it ends its process while
the file `die-now` exists. Expected:

1. the first run dies of it (that exit code: nothing in a process survives its own
   `os._exit`);
2. the next run says which calls it runs apart, ends by itself with exit 1: the bad ticket
   failed with one line saying how its process died, every ticket not below it completed,
   none below it started, the tickets in flight at the death recorded interrupted and run
   again, the completed ones not;
3. the file removed, a clean re-run finishes everything (the bad ticket still apart).
"""

from __future__ import annotations

import random
import time

from .harness import (
 Config,
 Lab,
 Ledger,
 Row,
 check_final,
 check_interrupted,
 check_log,
 clip,
)
from .pipelines import BAD_HEAD, probe_pipeline, spread, with_bad_ticket

CLASS = "process-exit"

BAD_MODULE = (
 BAD_HEAD
 + """
def _die():
 {body}


def sync(ticket):
 _log(ticket, "start")
 if os.path.exists(_FLAG):
  _die()
 _log(ticket, "end")


async def coro(ticket):
 _log(ticket, "start")
 if os.path.exists(_FLAG):
  _die()
 _log(ticket, "end")
"""
)

# kind -> (body, the first run's exit code, what the failed ticket's error says)
KINDS: dict[str, tuple[str, int, str]] = {
 "os._exit(7)": ("os._exit(7)", 7, "exit code 7"),
 "a segfault": ("os.kill(os.getpid(), signal.SIGSEGV)", -11, "killed by SIGSEGV"),
 "abort()": ("os.abort()", -6, "killed by SIGABRT"),
 "SIGKILL (the OOM killer)": ("os.kill(os.getpid(), signal.SIGKILL)", -9, "killed by SIGKILL"),
}


def run(cfg: Config, row: Row, rng: random.Random, until: float) -> None:
 every = [
  (f"{kind} ({'async' if flavour == 'coro' else 'sync'})", kind, flavour)
  for kind in KINDS
  for flavour in ("sync", "coro")
 ]
 mine = spread(every, row.shape, cfg.long)
 per_trial = 0.0
 for number, ((label, kind, flavour), backend) in enumerate(mine):
  if number and time.monotonic() + per_trial > until:
   row.info.append(f"time budget: {number} of {len(mine)} kinds run")
   break
  began = time.monotonic()
  row.trials += 1
  _trial(cfg, row, rng, number=number, label=label, kind=kind, flavour=flavour, backend=backend)
  per_trial = max(per_trial, time.monotonic() - began)


def _trial(
 cfg: Config,
 row: Row,
 rng: random.Random,
 *,
 number: int,
 label: str,
 kind: str,
 flavour: str,
 backend: str,
) -> None:
 body, first_exit, how = KINDS[kind]
 lab = Lab(cfg, row, cfg.work / f"{CLASS}-{row.shape}" / f"k{number:02d}", rng)
 pipe = probe_pipeline(
  row.shape,
  10,
  rng,
  lab.log.path,
  mix={"shell": 30, "sync": 35, "async": 35},
  seconds=(0.02, 0.15),
 )
 module = f"dies{number:02d}"
 (lab.folder / f"{module}.py").write_text(
  BAD_MODULE.format(what=f"ends its process by {kind}", flag="die-now", body=body)
 )
 siblings = with_bad_ticket(pipe, row.shape, rng, f"{module}:{flavour}")
 downstream = pipe.descendants("bad")
 pipe.write(lab.folder)
 flag = lab.folder / "die-now"
 flag.write_text("")
 ledger = Ledger()

 # 1. The runner dies of the call.
 died = f"conductor run ({backend}) with a call ending its process by {label}"
 mark = lab.log.mark()
 done = lab.finish(
  lab.start(died, lab.run_args(backend, fresh=True)), expect={first_exit}, bound=30, mark=mark
 )
 ledger.run(died, mark, lab.log.mark(), done.printed)
 before = lab.snapshot()
 ledger.ended(lab.log.mark(), before, died)

 # 2. The next run: the bad ticket fails alone, the others complete.
 what = f"the next run ({backend}) after {label}"
 mark = lab.log.mark()
 done = lab.finish(lab.start(what, lab.run_args(backend)), expect={1}, bound=60, mark=mark)
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 second = lab.snapshot()
 ledger.ended(lab.log.mark(), second, what)
 if (
  not done.hung
  and "in processes of their own" not in done.out
  and ("in a process of its own" not in done.out)
 ):
  row.fail("broken", f"`{what}` did not say which calls it runs apart: {done.last()}")
 check_interrupted(row, before, second, died)
 if second is None:
  row.fail("broken", f"`{what}`: no state after the run")
 elif not done.hung:
  status = second.tickets.get("bad", ("missing", 0))[0]
  error = second.errors.get("bad", "").strip()
  if status != "failed":
   row.fail("broken", f"`{what}`: the bad ticket is {status}, not failed")
  elif how not in error or "\n" in error:
   row.fail("broken", f"`{what}`: the bad ticket's error does not say {how!r}: {clip(error)!r}")
  unfinished = [t for t in siblings if second.tickets.get(t, ("missing", 0))[0] != "completed"]
  if unfinished:
   row.fail(
    "broken",
    f"`{what}`: {len(unfinished)} ticket(s) beside the bad one did not complete "
    f"(e.g. {unfinished[0]}: {second.tickets.get(unfinished[0], ('missing', 0))[0]})",
   )
  started_below = [t for t in downstream if second.tickets.get(t, ("", 0))[1] > 0]
  if started_below:
   row.fail("broken", f"`{what}`: {started_below[0]}, below the bad ticket, started")

 # 3. Fixed: everything completes.
 flag.unlink()
 what = f"clean re-run ({backend}) after {label}, the ticket fixed"
 mark = lab.log.mark()
 done = lab.finish(lab.start(what, lab.run_args(backend)), expect={0}, bound=60, mark=mark)
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 check_final(row, lab.snapshot(), pipe.deps, what)
 check_log(row, lab.log.read(), pipe.deps, ledger)
