"""Startup, exit and memory of a real `conductor run` on a 100,000-ticket pipeline file.

For each size (default 10,000 and 100,000 tickets) it writes a pipeline file: a random DAG
of `sleep = 0` tickets (each depends on up to two of the 1,000 tickets before it), about
64 bytes a ticket (6.4 MB at 100,000). Then, `--trials` times, it measures with real
subprocesses (`python -m conductor`, output to a pipe, as off a terminal):

- validate:   `conductor validate FILE`, from process start to exit;
- first start: `conductor run FILE --fresh`, from process start to the first ticket start
  (the `at` of the first "in_progress" in the state's history);
- exit:        from the last ticket's "completed" in the history to the process's exit;
- total:       the whole run, process start to exit;
- peak RSS:    the run's maximum resident set (`wait4`'s rusage, the child alone).

Targets (issue #13, at 100,000 tickets): first start <= 1.5 s, last done -> exit <= 1 s,
peak RSS <= 100 MB. Best of the trials for times and RSS (the machine is shared; noise only
ever adds). `write_pipeline` and `start_run` are there for other benchmarks that need a big
live run (e.g. timing `conductor status` against it).

    python benchmarks/scale.py [--sizes 10000 100000] [--trials 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks._common import (
 default_json_path,
 format_table,
 machine_info,
 machine_line,
 write_json,
)

# The interpreter that runs conductor: this one, with whatever PYTHONPATH it was given (so a
# copy of an older tree can be measured the same way).
CONDUCTOR = [sys.executable, "-m", "conductor"]


def write_pipeline(
 path: Path, tickets: int, *, seed: int = 13, sleep: float = 0.0, max_workers: int = 16
) -> Path:
 """Write a random-DAG pipeline of `tickets` sleep tickets to `path`; return `path`.

 Ticket i depends on up to two distinct tickets among the 1,000 before it, so the graph is
 wide enough to keep `max_workers` busy and deep enough to have many rounds.
 """
 rng = random.Random(seed)
 width = len(str(tickets - 1))
 lines = [f'[pipeline]\nname = "scale{tickets}"\nmax_workers = {max_workers}\n']
 for i in range(tickets):
  tid = f"t{i:0{width}d}"
  deps = sorted({rng.randrange(max(0, i - 1000), i) for _ in range(rng.randint(0, 2))}) if i else []
  dep_list = ", ".join(f'"t{d:0{width}d}"' for d in deps)
  lines.append(f'[[tickets]]\nid = "{tid}"\ndepends_on = [{dep_list}]\nsleep = {sleep}\n')
 path.write_text("\n".join(lines), encoding="utf-8")
 return path


def start_run(pipeline: Path, state: Path, *extra: str) -> subprocess.Popen[bytes]:
 """Start `conductor run PIPELINE --state STATE --fresh` off a terminal (output discarded)."""
 return subprocess.Popen(
  [*CONDUCTOR, "run", str(pipeline), "--state", str(state), "--fresh", *extra],
  stdin=subprocess.DEVNULL,
  stdout=subprocess.DEVNULL,
  stderr=subprocess.PIPE,
 )


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, int, float]:
 """Wait for `proc`; its exit status, its peak RSS in KiB and the time it was seen to exit."""
 _, status, usage = os.wait4(proc.pid, 0)
 ended = time.time()
 proc.returncode = os.waitstatus_to_exitcode(status)
 return proc.returncode, usage.ru_maxrss, ended


@dataclass(frozen=True, slots=True)
class Trial:
 validate_s: float
 first_start_s: float
 exit_s: float
 total_s: float
 peak_rss_mb: float


def trial(pipeline: Path, folder: Path) -> Trial:
 began = time.time()
 proc = subprocess.Popen(
  [*CONDUCTOR, "validate", str(pipeline)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
 )
 code, _, ended = _wait(proc)
 if code != 0:
  raise SystemExit(
   f"validate failed ({code}): {proc.stderr.read().decode() if proc.stderr else ''}"
  )
 validate = ended - began

 state = folder / "scale.state"
 for old in folder.glob("scale.state*"):  # a new state each time, as a first run has
  old.unlink()
 began = time.time()
 proc = start_run(pipeline, state)
 code, rss_kib, ended = _wait(proc)
 if code != 0:
  raise SystemExit(f"run failed ({code}): {proc.stderr.read().decode() if proc.stderr else ''}")
 with sqlite3.connect(state) as conn:
  first = conn.execute("SELECT min(at) FROM history WHERE event = 'in_progress'").fetchone()[0]
  last = conn.execute("SELECT max(at) FROM history WHERE event = 'completed'").fetchone()[0]
 conn.close()
 return Trial(validate, first - began, ended - last, ended - began, rss_kib / 1024)


def main() -> None:
 parser = argparse.ArgumentParser(
  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
 )
 parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
 parser.add_argument("--trials", type=int, default=3)
 parser.add_argument("--json", type=Path, default=default_json_path("scale"))
 args = parser.parse_args()

 info = machine_info(["anyio", "trio", "rtoml"])
 print(machine_line(info))
 results: dict[str, object] = {}
 rows = []
 with tempfile.TemporaryDirectory(prefix="conductor-scale-") as tmp:
  folder = Path(tmp)
  for size in args.sizes:
   pipeline = write_pipeline(folder / f"scale{size}.toml", size)
   mb = pipeline.stat().st_size / 1e6
   trials = [trial(pipeline, folder) for _ in range(args.trials)]
   best = Trial(*(min(getattr(t, f) for t in trials) for f in Trial.__slots__))
   results[str(size)] = {"file_mb": mb, "best": asdict(best), "trials": [asdict(t) for t in trials]}
   rows.append(
    [
     f"{size:,} ({mb:.1f} MB)",
     f"{best.validate_s:.2f}",
     f"{best.first_start_s:.2f}",
     f"{best.exit_s:.2f}",
     f"{best.total_s:.2f}",
     f"{best.peak_rss_mb:.0f}",
    ]
   )
 print(
  format_table(
   ["tickets", "validate s", "first start s", "last done → exit s", "run total s", "peak RSS MB"],
   rows,
  )
 )
 print(
  f"best of {args.trials}; targets at 100,000: first start <= 1.5 s, exit <= 1 s, RSS <= 100 MB"
 )
 write_json(args.json, {"machine": info, "trials": args.trials, "sizes": results})
 print(f"wrote {args.json}")


if __name__ == "__main__":
 main()
