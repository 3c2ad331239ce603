"""signals: SIGHUP, SIGTERM and SIGINT, once or twice, sent to `conductor run` at a random
moment of its run (after a random number of ticket starts, plus a random delay), three
times in a row on the same state (each run resumes the last), then a clean re-run.

Expected: exit 128 + the signal (129, 130, 143), or 0 if the run had finished first;
nothing left running once it has exited; no ticket left `in_progress` in the state (the run
recorded them interrupted); the clean re-run finishes everything, nothing completed runs
again, nothing starts early. Signals are sent once the run is starting tickets (the
interpreter's start-up, before the handlers exist, is not covered).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time

from .harness import Config, Lab, Ledger, Row, check_final, check_log, start_over, wait_starts
from .pipelines import probe_pipeline

CLASS = "signals"
HUP, INT, TERM = signal.SIGHUP, signal.SIGINT, signal.SIGTERM
VARIANTS: list[tuple[signal.Signals, ...]] = [
 (HUP,),
 (TERM,),
 (INT,),
 (HUP, HUP),
 (TERM, TERM),
 (INT, INT),
 (INT, TERM),
 (INT, HUP),
 (TERM, INT),
]


def run(cfg: Config, row: Row, rng: random.Random, until: float) -> None:
 lab = Lab(cfg, row, cfg.work / f"{CLASS}-{row.shape}", rng)
 n = 16 if row.shape == "chain" else 24
 pipe = probe_pipeline(
  row.shape,
  n,
  rng,
  lab.log.path,
  mix={"shell": 70, "sync": 15, "async": 15},
  seconds=(0.05, 0.2) if row.shape == "chain" else (0.05, 0.3),
  slow=(0.15, 0.6, 1.2),
 )
 pipe.write(lab.folder)
 at = ("chain", "wide", "random").index(row.shape)
 count = 12 if cfg.long else 4
 plan = [VARIANTS[(at * count + k) % len(VARIANTS)] for k in range(count)]
 ledger = Ledger()
 fresh = True
 per_run = 0.0
 for k, signals in enumerate(plan):
  if k and time.monotonic() + per_run > until:
   row.info.append(f"time budget: {k} of {len(plan)} signalled runs")
   break
  began = time.monotonic()
  row.trials += 1
  backend = ("asyncio", "trio")[(at + k) % 2]
  names = "+".join(s.name for s in signals)
  what = f"conductor run ({backend}) sent {names}"
  state = lab.snapshot() if not fresh else None
  left = len(pipe.deps) - (len(state.completed()) if state else 0)
  if left < 3:
   fresh = True
   left = len(pipe.deps)
  if fresh:
   start_over(row, lab, ledger, pipe.deps)
  mark = lab.log.mark()
  bg = lab.start(what, lab.run_args(backend, fresh=fresh))
  fresh = False
  goal = rng.randint(1, max(1, left - 2))
  reached = wait_starts(lab, bg, mark, goal)
  sent = []
  if reached:
   time.sleep(rng.uniform(0, 0.15))
   for i, sig in enumerate(signals):
    if i:
     time.sleep(rng.uniform(0.0, 0.5))
    if bg.alive():
     with contextlib.suppress(ProcessLookupError):
      os.kill(bg.pid, sig)
      sent.append(sig)
  if not sent:
   row.info.append(f"`{what}`: the run ended before the signal")
  expect = {0} | {128 + s for s in sent}
  done = lab.finish(bg, expect=expect, bound=40, mark=mark)
  ledger.run(what, mark, lab.log.mark(), done.printed)
  lab.leftovers(f"after `{what}` exited")
  after = lab.snapshot()
  ledger.ended(lab.log.mark(), after, what)
  if after is not None and sent and not done.hung:
   flight = after.with_status("in_progress")
   if flight:
    row.fail(
     "broken",
     f"`{what}` ({'exit ' + str(done.code)}) left {len(flight)} ticket(s) in_progress in the "
     f"state, not recorded interrupted: {', '.join(flight[:4])}",
    )
  per_run = max(per_run, time.monotonic() - began)
 what = "clean re-run (asyncio) after the signals"
 mark = lab.log.mark()
 done = lab.cmd(what, lab.run_args("asyncio"), expect={0}, bound=60)
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 check_final(row, lab.snapshot(), pipe.deps, what)
 check_log(row, lab.log.read(), pipe.deps, ledger)
