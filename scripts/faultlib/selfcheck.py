"""The suite checks itself first: each count must fire on a planted fault, and stay 0 on a
clean history. A suite whose checks cannot fail would pass anything."""

from __future__ import annotations

import os
import random
import subprocess
from collections import Counter

from .harness import (
 Config,
 Done,
 Entry,
 Lab,
 Ledger,
 Row,
 State,
 check_final,
 check_log,
 processes_with,
)

DEPS = {"a": (), "b": ("a",), "c": ("b",)}


def _e(text: str) -> list[Entry]:
 out = []
 for item in text.split(","):
  tid, attempt, phase = item.split()
  out.append(Entry(tid, int(attempt), phase))
 return out


def _log_case(entries: str, ledger: Ledger | None = None) -> Counter[str]:
 row = Row("self-check", "-")
 check_log(row, _e(entries), DEPS, ledger or Ledger())
 return row.counts


def _state(statuses: dict[str, str]) -> State:
 return State({t: (s, 1) for t, s in statuses.items()}, {}, [], False, "ok")


def self_check(cfg: Config) -> list[str]:
 """Problems found in the suite's own checks (empty: every check can fail)."""
 problems: list[str] = []

 def want(name: str, counts: Counter[str], expected: dict[str, int]) -> None:
  got = {k: v for k, v in counts.items() if v}
  if got != expected:
   problems.append(f"{name}: counted {got}, expected {expected}")

 clean = "a 1 start,a 1 end,b 1 start,b 1 end,c 1 start,c 1 end"
 want("a clean history", _log_case(clean), {})
 want("an attempt started twice", _log_case("a 1 start,a 1 start,a 1 end"), {"early": 1})
 want("a start before its dependency ended", _log_case("a 1 start,b 1 start,a 1 end"), {"early": 1})
 want(
  "a dependency run again after its dependent started",
  _log_case("a 1 start,a 1 end,b 1 start,a 2 start,a 2 end,b 1 end"),
  {"early": 1},
 )
 one_run = Ledger()
 one_run.run("run", 0, 4)
 want(
  "a restart within one run",
  _log_case("a 1 start,a 2 start,a 3 start,a 3 end", one_run),
  {"extra": 1},
 )
 printed = Ledger()
 printed.run("run", 0, 2, Counter({"c": 40}))
 want("a restart seen only in the output", _log_case("a 1 start,a 1 end", printed), {"extra": 1})
 after = Ledger()
 after.ended(2, _state({"a": "completed", "b": "todo", "c": "todo"}), "run 1")
 want(
  "a completed ticket started again",
  _log_case(clean.replace("b 1 start", "a 2 start,a 2 end,b 1 start"), after),
  {"re-run": 1},
 )
 row = Row("self-check", "-")
 check_final(row, _state({"a": "completed", "b": "failed", "c": "todo"}), DEPS, "final")
 want("tickets not completed", row.counts, {"lost": 2})

 lab = Lab(cfg, Row("self-check", "-"), cfg.work / "self-check", random.Random(0))
 for name, done, expect, counts in (
  (
   "a traceback",
   Done("x", 1, "", "Traceback (most recent call last):\nValueError: x", 0, 1),
   {1},
   {"traceback": 1},
  ),
  ("an exit code not expected", Done("x", 3, "", "oops", 0, 1), {0}, {"exit": 1}),
  ("a death by a signal", Done("x", -1, "", "", 0, 1), {0, 129}, {"exit": 1}),
  ("exit 2 with two lines", Done("x", 2, "", "one\ntwo", 0, 1), {2}, {"broken": 1}),
  ("a hang", Done("x", None, "", "", 9, 1), {0}, {"hang": 1}),
  ("a one-line exit 2", Done("x", 2, "", "conductor: full", 0, 1), {2}, {}),
 ):
  lab.row = Row("self-check", "-")
  lab.judge(done, expect)
  want(name, lab.row.counts, counts)

 lab.row = Row("self-check", "-")
 sleeper = subprocess.Popen(
  ["sleep", "30"], env={**os.environ, "FAULTTEST_ROW": lab.tag}, start_new_session=True
 )
 try:
  lab.leftovers("self-check")
  want("a process left running", lab.row.counts, {"leftover": 1})
  if sleeper.wait(timeout=10) != -9:
   problems.append("a leftover process was counted but not killed")
 finally:
  if sleeper.poll() is None:
   sleeper.kill()
   sleeper.wait()
 lab.row = Row("self-check", "-")
 lab.leftovers("self-check, nothing running")
 want("no process left", lab.row.counts, {})
 if processes_with([f"FAULTTEST_ROW={lab.tag}".encode()]):
  problems.append("processes of the self-check are still alive")
 return problems
