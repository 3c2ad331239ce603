"""The suite's driver: options, the rows in order, the time budget, the table, the JSON."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

from .harness import COUNTS, Config, Row, kill_all, processes_with
from .pipelines import SHAPES
from .selfcheck import self_check

ROOT = Path(__file__).resolve().parents[2]

# class -> (module, share of the time budget)
CLASSES: dict[str, tuple[str, float]] = {
 "planted": ("planted", 1.0),
 "user-exception": ("usercode", 2.0),
 "process-exit": ("procexit", 1.5),
 "control-traffic": ("traffic", 2.0),
 "signals": ("interrupts", 2.0),
 "disk-full": ("diskfull", 1.5),
 "kill-at-write": ("writekill", 3.0),
}


def _command(source: Path | None) -> tuple[list[str], dict[str, str]]:
 if source is not None:
  path = os.pathsep.join([str(source / "src"), str(source)])
  return [sys.executable, "-m", "conductor"], {"PYTHONPATH": path}
 script = ROOT / ".venv" / "bin" / "conductor"
 if script.exists():
  return [str(script)], {}
 return [sys.executable, "-m", "conductor"], {}


def _unmount_under(folder: Path) -> None:
 try:
  mounts = Path("/proc/mounts").read_text().splitlines()
 except OSError:
  return
 for line in reversed(mounts):
  where = line.split()[1].replace("\\040", " ")
  if where.startswith(str(folder) + "/"):
   subprocess.run(["umount", "-l", where], capture_output=True, check=False, timeout=30)


def table(rows: list[Row]) -> str:
 heads = ["class", "shape", "trials", *COUNTS, "result", "time"]
 body = [
  [
   r.klass,
   r.shape,
   str(r.trials),
   *(("-" if r.skipped else str(r.counts[c])) for c in COUNTS),
   r.status,
   f"{r.seconds:.0f}s",
  ]
  for r in rows
 ]
 widths = [max(len(x) for x in col) for col in zip(heads, *body, strict=False)]
 lines = []
 for cells in [heads, *body]:
  parts = [
   c.ljust(w) if i < 2 or i >= len(cells) - 2 else c.rjust(w)
   for i, (c, w) in enumerate(zip(cells, widths, strict=True))
  ]
  lines.append("  ".join(parts).rstrip())
 return "\n".join(lines)


def main(doc: str) -> int:
 parser = argparse.ArgumentParser(
  prog="faulttest", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
 )
 parser.add_argument("--seed", type=int, default=int(time.time()))
 parser.add_argument(
  "--only",
  action="append",
  metavar="CLASS",
  help=f"run only these classes (comma-separated or repeated): {', '.join(CLASSES)}",
 )
 parser.add_argument("--long", action="store_true", help="a deeper run (about 30 minutes)")
 parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
 parser.add_argument("--keep", action="store_true", help="keep the work folder")
 parser.add_argument(
  "--budget", type=float, metavar="SECONDS", help="time for the suite (default 420, --long 1800)"
 )
 parser.add_argument(
  "--source",
  metavar="DIR",
  help="run conductor from this source tree (DIR/src, DIR) instead of the venv's",
 )
 parser.add_argument("--strict", action="store_true", help="a skipped row fails the suite")
 args = parser.parse_args()
 only = [c.strip() for part in args.only or [] for c in part.split(",") if c.strip()]
 unknown = [c for c in only if c not in CLASSES]
 if unknown:
  parser.error(f"unknown class {', '.join(unknown)}; the classes: {', '.join(CLASSES)}")
 if not Path("/proc/self/environ").exists():
  print("faulttest: needs Linux (/proc) to find the processes a run leaves behind")
  return 2
 classes = [c for c in CLASSES if not only or c in only]
 budget = args.budget or (1800.0 if args.long else 420.0)
 source = Path(args.source).resolve() if args.source else None
 command, env = _command(source)
 work = Path(tempfile.mkdtemp(prefix="conductor-faulttest-"))
 work.chmod(0o755)
 run_tag = f"ft{os.getpid()}-{args.seed}"
 started = time.monotonic()
 cfg = Config(command, env, run_tag, work, args.long, started + budget)
 rows = [Row(c, s) for c in classes for s in SHAPES]
 print(
  f"faulttest: seed {args.seed}, {len(rows)} rows, budget {budget:.0f} s"
  f"{', long' if args.long else ''}, conductor from {source or ' '.join(command)}, in {work}",
  flush=True,
 )
 problems = self_check(cfg)
 if problems:
  print("faulttest: its own checks are broken (a bug of the suite, not of conductor):")
  for problem in problems:
   print(f"  - {problem}")
  return 1
 print("self-check: each count fires on a planted fault and stays 0 on a clean one", flush=True)
 weights = {r.klass + r.shape: CLASSES[r.klass][1] for r in rows}
 try:
  for i, row in enumerate(rows):
   left = cfg.deadline - time.monotonic()
   share = weights[row.klass + row.shape] / sum(weights[r.klass + r.shape] for r in rows[i:])
   until = time.monotonic() + max(0.0, left * share)
   began = time.monotonic()
   module: ModuleType = importlib.import_module(f"faultlib.{CLASSES[row.klass][0]}")
   rng = random.Random(f"{args.seed}/{row.klass}/{row.shape}")
   try:
    module.run(cfg, row, rng, until)
   except Exception:  # a bug of the suite: say so loudly, count it, go on
    row.fail("broken", "faulttest itself failed: " + traceback.format_exc(limit=-3).strip())
   finally:
    kill_all(processes_with([f"FAULTTEST_ROW={run_tag}-{row.klass}-{row.shape}".encode()]))
    _unmount_under(work)
   row.seconds = time.monotonic() - began
   print(
    f"  {row.klass:16} {row.shape:7} {row.status}  ({row.seconds:.0f} s, {row.trials} trials)",
    flush=True,
   )
 finally:
  kill_all(processes_with([f"FAULTTEST_RUN={run_tag}".encode()]))
  _unmount_under(work)
 elapsed = time.monotonic() - started

 failed = [r for r in rows if r.status == "FAIL"]
 skipped = [r for r in rows if r.status == "SKIP"]
 print()
 print(table(rows))
 print()
 totals = {c: sum(r.counts[c] for r in rows) for c in COUNTS}
 ok = not failed and not (args.strict and skipped)
 verdict = (
  f"{'PASS' if ok else 'FAIL'}: {len(rows) - len(failed) - len(skipped)} of {len(rows)} rows "
  f"passed, {len(failed)} failed, {len(skipped)} skipped in {elapsed:.0f} s; "
  + ", ".join(f"{v} {c}" for c, v in totals.items())
 )
 for row in failed:
  print(f"{row.klass} / {row.shape}: FAIL")
  for note in row.notes[:8]:
   print(f"  - {note}")
  if len(row.notes) > 8:
   print(f"  - ... and {len(row.notes) - 8} more (see --json)")
 for row in skipped:
  print(f"{row.klass} / {row.shape}: SKIPPED, not passed: {row.skipped}")
 for row in rows:  # what a row did not cover, passed or not
  for line in row.info:
   if any(word in line for word in ("not tried", "skipped", "time budget")):
    print(f"{row.klass} / {row.shape}: not covered: {line}")
 print(f"verdict: {verdict}")
 if args.json:
  data = {
   "seed": args.seed,
   "long": args.long,
   "budget": budget,
   "elapsed": round(elapsed, 1),
   "source": str(source) if source else None,
   "passed": ok,
   "verdict": verdict,
   "totals": totals,
   "rows": [r.to_json() for r in rows],
  }
  Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
 if args.keep or failed:
  print(f"work folder kept: {work}")
 else:
  with contextlib.suppress(OSError):
   shutil.rmtree(work)
 return 0 if ok else 1
