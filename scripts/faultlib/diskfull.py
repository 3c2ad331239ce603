"""disk-full: the state on a small tmpfs (the pipeline, its probes and their log stay on
the normal disk), filled up by a filler file at several moments:

1. full at start: `conductor run --fresh` on a full disk;
2. filled mid-run, once a quarter of the tickets have started;
3. still full, no run: `conductor status`, `pause`, `resume` and `run` on the existing state;
4. filled under a live run, then `conductor pause`, `status --json`, `resume` against it
   (then the space is freed and the run resumed, so it can end);
5. the space freed: a clean `conductor run` must resume and finish everything.

Expected: every command either works or says the disk is full in one line with exit 2;
never a traceback or a hang; nothing left running; the state never damaged; nothing
completed runs again; nothing lost. Needs `mount -t tmpfs` (root): otherwise the row is
skipped, and says why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

from .harness import Config, Lab, Ledger, Row, check_final, check_log, clip, wait_starts
from .pipelines import probe_pipeline

CLASS = "disk-full"
SIZE = "4m"


def fill(folder: Path) -> int:
 """Write `folder/filler` until the file system is full; return the bytes written."""
 written = 0
 fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
 try:
  for size in (1 << 16, 1 << 12, 1):
   block = b"\0" * size
   while True:
    try:
     written += os.write(fd, block)
    except OSError as exc:
     if exc.errno != errno.ENOSPC:
      raise
     break
 finally:
  os.close(fd)
 return written


def free(folder: Path) -> None:
 with contextlib.suppress(FileNotFoundError):
  (folder / "filler").unlink()


def mount(where: Path) -> str | None:
 """Mount a tmpfs of SIZE at `where`; None, or why it could not."""
 where.mkdir(parents=True, exist_ok=True)
 try:
  done = subprocess.run(
   ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(where)],
   capture_output=True,
   text=True,
   timeout=30,
   check=False,
  )
 except (OSError, subprocess.TimeoutExpired) as exc:
  return f"`mount -t tmpfs` could not run: {exc}"
 if done.returncode != 0:
  return f"`mount -t tmpfs` failed ({clip(done.stderr or done.stdout, 120)}): needs root"
 return None


def unmount(where: Path) -> None:
 for args in (["umount", str(where)], ["umount", "-l", str(where)]):
  with contextlib.suppress(OSError, subprocess.TimeoutExpired):
   if subprocess.run(args, capture_output=True, timeout=30, check=False).returncode == 0:
    return


def run(cfg: Config, row: Row, rng: random.Random, until: float) -> None:
 folder = cfg.work / f"{CLASS}-{row.shape}"
 disk = folder / "disk"
 why = mount(disk)
 if why is not None:
  row.skipped = why
  return
 try:
  _rounds(cfg, row, rng, folder=folder, disk=disk, until=until)
 finally:
  unmount(disk)


def _rounds(
 cfg: Config, row: Row, rng: random.Random, *, folder: Path, disk: Path, until: float
) -> None:
 lab = Lab(cfg, row, folder, rng, state=disk / "p.state.db")
 n = 60 if row.shape == "chain" else 120
 pipe = probe_pipeline(
  row.shape,
  n,
  rng,
  lab.log.path,
  mix={"shell": 30, "sync": 30, "async": 40},
  seconds=(0.01, 0.06),
 )
 pipe.write(lab.folder)
 at = ("chain", "wide", "random").index(row.shape)
 ledger = Ledger()
 full = (0, 2)  # works, or says the disk is full (one line, exit 2)

 def ran(what: str, mark: int, printed: Counter[str]) -> None:
  ledger.run(what, mark, lab.log.mark(), printed)
  lab.leftovers(f"after `{what}`")
  ledger.ended(lab.log.mark(), lab.snapshot(), what)

 rounds = 4 if cfg.long else 2
 for r in range(rounds):
  if r and time.monotonic() > until:
   row.info.append(f"time budget: {r} of {rounds} rounds")
   break
  backend = ("asyncio", "trio")[(at + r) % 2]
  if r == 0:  # 1. full at start (later rounds: see 3, the run on a full disk)
   row.trials += 1
   fill(disk)
   what = f"conductor run --fresh ({backend}) on a full disk"
   mark = lab.log.mark()
   done = lab.cmd(what, lab.run_args(backend, fresh=True), expect={2}, bound=60)
   ran(what, mark, done.printed)
   free(disk)

  # 2. filled mid-run
  row.trials += 1
  what = f"conductor run ({backend}), the disk filled mid-run"
  mark = lab.log.mark()
  bg = lab.start(what, lab.run_args(backend))
  goal = max(1, n // 4)
  wait_starts(lab, bg, mark, goal, 60)
  filled = fill(disk) if bg.alive() else 0
  done = lab.finish(bg, expect=full, bound=60, mark=mark)
  ran(what, mark, done.printed)
  row.info.append(f"mid-run fill ({filled} bytes): {done.last() or done.code}")

  # 3. offline commands on the full disk
  if not filled:
   fill(disk)
  for op, args in (
   ("status", lab.control_args("status")),
   ("pause", lab.control_args("pause", "--reason", "disk full")),
   ("resume", lab.control_args("resume")),
   ("run", lab.run_args(backend)),
  ):
   row.trials += 1
   what = f"conductor {op} on a full disk (no live run)"
   mark = lab.log.mark()
   done = lab.cmd(what, args, expect=full, bound=60, judge=True)
   if op == "run":
    ran(what, mark, done.printed)
  free(disk)
  lab.cmd("conductor resume (space freed)", lab.control_args("resume"), expect={0})

  # 4. a live run, the disk filled, then pause / status / resume against it
  row.trials += 1
  what = f"conductor run ({backend}), the disk filled under pause/status/resume"
  mark = lab.log.mark()
  bg = lab.start(what, lab.run_args(backend))
  wait_starts(lab, bg, mark, 1, 60)
  if bg.alive():
   fill(disk)
   lab.cmd("conductor pause (live, disk full)", lab.control_args("pause"), expect=full)
   lab.cmd(
    "conductor status --json (live, disk full)", lab.control_args("status", "--json"), expect=full
   )
   lab.cmd("conductor resume (live, disk full)", lab.control_args("resume"), expect=full)
   free(disk)
   lab.cmd("conductor resume (live, space freed)", lab.control_args("resume"), expect={0})
  else:
   row.info.append("the live run had nothing left to do; step 4 skipped")
  free(disk)
  done = lab.finish(bg, expect=full, bound=60, mark=mark)
  ran(what, mark, done.printed)

 # 5. space freed: the next run resumes and finishes
 free(disk)
 lab.cmd("conductor resume (before the last run)", lab.control_args("resume"), expect={0})
 what = "clean re-run (asyncio), the space freed"
 mark = lab.log.mark()
 done = lab.cmd(what, lab.run_args("asyncio"), expect={0}, bound=60)
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 check_final(row, lab.snapshot(), pipe.deps, what)
 check_log(row, lab.log.read(), pipe.deps, ledger)
