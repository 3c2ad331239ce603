"""kill-at-write: SIGKILL `conductor run` at its Nth write-family system call on the state
file or on its WAL, with strace's fault injection, over a range of N; then a clean re-run
must resume and finish, with nothing lost and nothing completed run again.

A first traced run (no injection) counts each call (pwrite64, write, fsync, fdatasync,
ftruncate) on each file; strace counts per call and per thread, and the state is written
from the run's loop thread only, so those counts are where N can land. Each trial starts
from no state, is killed once or twice (the second time while resuming), and re-runs.
"""

from __future__ import annotations

import random
import re
import shutil
import time
from collections import Counter
from pathlib import Path

from .harness import (
 Config,
 Lab,
 Ledger,
 Row,
 State,
 check_final,
 check_interrupted,
 check_log,
)
from .pipelines import probe_pipeline

CLASS = "kill-at-write"
CALLS = ("pwrite64", "write", "fsync", "fdatasync", "ftruncate")
SIZES = {"chain": 800, "wide": 1000, "random": 900}
TRACE_LINE = re.compile(r"^(\d+)\s+(\w+)\(\d+<([^>]*)>")


def _strace(files: list[Path], *more: str) -> list[str]:
 args = ["strace", "-f", "-qq", *more]
 for f in files:
  args += ["-P", str(f)]
 return [*args, "-e", "trace=" + ",".join(CALLS)]


def _calibrate(trace: Path, names: dict[str, str]) -> Counter[tuple[str, str]]:
 per_thread: Counter[tuple[str, str, str]] = Counter()
 for line in trace.read_text(errors="replace").splitlines():
  m = TRACE_LINE.match(line)
  if m and m.group(3) in names:
   per_thread[m.group(1), m.group(2), names[m.group(3)]] += 1
 counts: Counter[tuple[str, str]] = Counter()
 for (_, call, file), k in per_thread.items():
  counts[call, file] = max(counts[call, file], k)
 return counts


def _pick_n(rng: random.Random, count: int, resumed: bool) -> int:
 if resumed:
  return rng.randint(1, max(1, count // 2))
 r = rng.random()
 if r < 0.2:
  return rng.randint(1, min(count, 8))
 if r < 0.4:
  return rng.randint(max(1, count - 8), count)
 return rng.randint(1, count)


def run(cfg: Config, row: Row, rng: random.Random, until: float) -> None:
 if shutil.which("strace") is None:
  row.skipped = "strace is not installed (apt-get install strace)"
  return
 lab = Lab(cfg, row, cfg.work / f"{CLASS}-{row.shape}", rng)
 n = SIZES[row.shape] * (2 if cfg.long else 1)
 pipe = probe_pipeline(
  row.shape,
  n,
  rng,
  lab.log.path,
  mix={"async": 85, "sync": 5, "shell": 10},
  slow=(0.03, 0.01, 0.05),
 )
 pipe.write(lab.folder)
 state = lab.state
 wal = state.with_name(state.name + "-wal")
 files = {"state": state, "wal": wal}

 def clear() -> None:
  shutil.rmtree(state.parent, ignore_errors=True)
  state.parent.mkdir(parents=True)
  lab.log.reset()

 clear()
 trace = lab.folder / "calibration.trace"
 calib = lab.cmd(
  "conductor run (traced, to count the writes)",
  lab.run_args("asyncio"),
  expect={0},
  bound=60,
  prefix=_strace([state, wal], "-y", "-o", str(trace)),
 )
 if calib.code != 0:
  row.info.append("the traced calibration run failed; nothing to count")
  return
 counts = _calibrate(trace, {str(state): "state", str(wal): "wal"})
 trace.unlink()
 targets = sorted((file, call, k) for (call, file), k in counts.items() if k > 0)
 row.info.append(
  "writes counted: " + ", ".join(f"{call} on {file} x{k}" for file, call, k in targets)
 )
 unused = [f"{c} on {f}" for f in files for c in CALLS if counts[c, f] == 0]
 if unused:
  row.info.append("never called (no trial): " + ", ".join(unused))
 if not targets:
  return
 # Every other kill lands on a commit (a WAL write: where a start or a completion becomes
 # durable); the others go round the rest (checkpoints, syncs, truncations).
 commits = [t for t in targets if t[:2] == ("wal", "pwrite64")]
 others = [t for t in targets if t not in commits] or commits
 rng.shuffle(others)
 done_at: Counter[str] = Counter()
 trials = 30 if cfg.long else 8
 kills = misses = 0
 per_trial = 0.0
 for trial in range(trials):
  if trial and time.monotonic() + per_trial > until:
   row.info.append(f"time budget: {trial} of {trials} trials run")
   break
  began = time.monotonic()
  row.trials += 1
  clear()
  backend = ("asyncio", "trio")[trial % 2]
  ledger = Ledger()
  before: State | None = None
  killed = ""
  for k in range(2 if rng.random() < 0.4 else 1):
   turn = 2 * trial + k
   file, call, count = (commits or others)[0] if turn % 2 == 0 else others[turn // 2 % len(others)]
   at = _pick_n(rng, count, resumed=k > 0)
   label = f"conductor run ({backend}) killed at {call} #{at} on the {file} file"
   mark = lab.log.mark()
   done = lab.cmd(
    label,
    lab.run_args(backend, fresh=k == 0),
    expect={-9, 0},
    bound=60,
    prefix=_strace(
     [files[file]], "-o", "/dev/null", "-e", f"inject={call}:signal=SIGKILL:when={at}"
    ),
   )
   ledger.run(label, mark, lab.log.mark(), done.printed)
   killed = label
   if done.code == -9:
    kills += 1
    done_at[f"{call} on {file}"] += 1
   elif done.code == 0:
    misses += 1
   before = lab.snapshot()
   ledger.ended(lab.log.mark(), before, label)
   if done.code != -9:
    break
  label = f"clean re-run ({backend}) after trial {trial + 1}"
  mark = lab.log.mark()
  final = lab.cmd(label, lab.run_args(backend), expect={0}, bound=60)
  ledger.run(label, mark, lab.log.mark(), final.printed)
  lab.leftovers(f"after `{label}`")
  after = lab.snapshot()
  if final.code == 2 and before is not None and before.integrity == "ok":
   row.fail(
    "broken",
    f"`{label}` refused a state that SQLite's integrity_check passes "
    f"({len(before.completed())} completed): {final.last()}",
   )
  if final.code == 0:
   check_interrupted(row, before, after, killed)
  check_final(row, after, pipe.deps, label)
  check_log(row, lab.log.read(), pipe.deps, ledger)
  per_trial = max(per_trial, time.monotonic() - began)
 row.info.append(
  f"{kills} kills at a write ({', '.join(f'{k} at {w}' for w, k in sorted(done_at.items()))}); "
  f"{misses} runs ended before their Nth call"
 )
