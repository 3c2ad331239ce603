"""What every fault row shares: running `conductor`, judging its output, reading the
state, reading the probe log, counting what went wrong, and finding leftover processes.

A `Row` is one line of the table (a fault class and a DAG shape); a `Lab` is its folder
with its pipeline, its state and its probe log, and runs commands for it. Every command
is bounded: one that does not end in time is killed (its whole session and every process
tagged with the row) and counted as a hang.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COUNTS = ("lost", "re-run", "early", "extra", "traceback", "exit", "leftover", "hang", "broken")
"""What a row counts; every one must stay 0.

lost: tickets not completed after the row's final clean run. re-run: tickets durably
completed (in the state read after a run ended) that started again later. early: a start
that was not durable or came before its dependencies ended: an attempt number that ran
twice, a ticket that started before a dependency's probe had ended, or a dependency that
ran again after a dependent had started. extra: a ticket started more than once within one
run (no ticket has retries: a second start in one process is a restart storm).
traceback: "Traceback" in a conductor command's stdout or stderr. exit: an exit code that
the row did not expect (a death by a signal included). leftover: processes of the row still
alive after a run ended. hang: a command that did not end within its bound. broken: any
other promise not kept (victim file changed, a good state refused, a control server that
stopped answering, an exit 2 with more than one line, ...), each with a note saying which.
"""

SIGNAL_EXIT = {129: "SIGHUP", 130: "SIGINT", 143: "SIGTERM"}


@dataclass
class Config:
 """Settings for the whole suite."""

 command: list[str]  # how to start `conductor`
 env: dict[str, str]  # added to every conductor command's environment
 run_tag: str  # in FAULTTEST_RUN of every process the suite starts
 work: Path  # the suite's folder
 long: bool
 deadline: float  # time.monotonic() by which the suite should be done


@dataclass
class Row:
 klass: str
 shape: str
 counts: Counter[str] = field(default_factory=Counter)
 trials: int = 0
 notes: list[str] = field(default_factory=list)  # causes of the counts
 info: list[str] = field(default_factory=list)  # what ran, for the reader
 skipped: str | None = None
 seconds: float = 0.0

 def fail(self, count: str, note: str, n: int = 1) -> None:
  assert count in COUNTS, count
  if n <= 0:
   return
  self.counts[count] += n
  if note not in self.notes and len(self.notes) < 60:
   self.notes.append(note)

 @property
 def status(self) -> str:
  if self.skipped is not None:
   return "SKIP"
  return "FAIL" if any(self.counts[c] for c in COUNTS) else "PASS"

 def to_json(self) -> dict[str, Any]:
  return {
   "class": self.klass,
   "shape": self.shape,
   "status": self.status,
   "trials": self.trials,
   "counts": {c: self.counts[c] for c in COUNTS},
   "notes": self.notes,
   "info": self.info,
   "skipped": self.skipped,
   "seconds": round(self.seconds, 1),
  }


@dataclass
class Done:
 """A finished command."""

 label: str
 code: int | None  # None: it did not end in time and was killed
 out: str
 err: str
 seconds: float
 bound: float
 printed: Counter[str] = field(default_factory=Counter)  # "in_progress" lines per ticket

 @property
 def hung(self) -> bool:
  return self.code is None

 def last(self) -> str:
  """The line that says what happened: the exception of a traceback, else the last."""
  for text in (self.err, self.out):
   lines = [ln for ln in text.splitlines() if ln.strip()]
   if not lines:
    continue
   if "Traceback" in text:
    if exc_line(text):
     return exc_line(text)
    plain = [ln for ln in lines if not ln[:1].isspace() and ln[:1] not in "|+"]
    plain = [ln for ln in plain if not ln.startswith("Traceback")]
    if plain:
     return clip(plain[-1])
   return clip(lines[-1])
  return ""


def clip(text: str, limit: int = 220) -> str:
 text = text.strip().replace("\n", " | ")
 return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_exit(code: int | None) -> str:
 if code is None:
  return "no exit (killed after its bound)"
 if code < 0:
  try:
   return f"killed by {signal.Signals(-code).name}"
  except ValueError:
   return f"killed by signal {-code}"
 return f"exit {code}"


# -- the probe log -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
 ticket: str
 attempt: int
 phase: str  # "start" or "end"


class ProbeLog:
 """`runs.log`, read incrementally. `mark()` returns the index where the next run's lines
 begin; a row keeps its marks to tell runs apart."""

 def __init__(self, path: Path) -> None:
  self.path = path
  self.entries: list[Entry] = []
  self._pos = 0
  self._partial = b""

 def reset(self) -> None:
  self.path.write_text("")
  self.entries, self._pos, self._partial = [], 0, b""

 def read(self) -> list[Entry]:
  try:
   with self.path.open("rb") as f:
    f.seek(self._pos)
    data = f.read()
  except FileNotFoundError:
   return self.entries
  self._pos += len(data)
  data = self._partial + data
  *lines, self._partial = data.split(b"\n")
  for raw in lines:
   parts = raw.decode(errors="replace").split()
   if len(parts) == 3 and parts[1].isdigit() and parts[2] in ("start", "end"):
    self.entries.append(Entry(parts[0], int(parts[1]), parts[2]))
  return self.entries

 def mark(self) -> int:
  return len(self.read())

 def starts_since(self, mark: int) -> Counter[str]:
  return Counter(e.ticket for e in self.read()[mark:] if e.phase == "start")


# -- the state, read from a copy ------------------------------------------------------------


@dataclass
class State:
 tickets: dict[str, tuple[str, int]]  # id -> (status, attempts)
 errors: dict[str, str]  # id -> its last error, if any
 events: list[tuple[str, str, int]]  # (ticket, event, attempt) in order
 paused: bool
 integrity: str  # "ok", or what SQLite said

 def completed(self) -> set[str]:
  return {t for t, (status, _) in self.tickets.items() if status == "completed"}

 def with_status(self, status: str) -> list[str]:
  return [t for t, (s, _) in self.tickets.items() if s == status]


def read_state(state: Path, scratch: Path) -> State | None:
 """The state as SQLite sees it (WAL included), read from a copy so that reading never
 changes the files the next run will open. None when there is no state file."""
 try:
  if not stat.S_ISREG(state.lstat().st_mode):
   return None
 except FileNotFoundError:
  return None
 shutil.rmtree(scratch, ignore_errors=True)
 scratch.mkdir(parents=True)
 copy = scratch / "copy.db"
 shutil.copyfile(state, copy)
 wal = state.with_name(state.name + "-wal")
 if wal.is_file() and not wal.is_symlink():
  shutil.copyfile(wal, scratch / "copy.db-wal")
 try:
  conn = sqlite3.connect(copy, timeout=5)
  try:
   check = conn.execute("PRAGMA integrity_check").fetchall()
   integrity = "ok" if check == [("ok",)] else "; ".join(str(r[0]) for r in check[:3])
   rows = conn.execute("SELECT id, status, attempts, error FROM ticket_state").fetchall()
   tickets = {str(r[0]): (str(r[1]), int(r[2])) for r in rows}
   errors = {str(r[0]): str(r[3]) for r in rows if r[3] is not None}
   events = [
    (str(r[0]), str(r[1]), int(r[2]))
    for r in conn.execute(
     "SELECT ticket, event, attempt FROM history WHERE ticket IS NOT NULL ORDER BY seq"
    )
   ]
   paused = bool(conn.execute("SELECT paused FROM pause").fetchone()[0])
  finally:
   conn.close()
 except sqlite3.Error as exc:
  return State({}, {}, [], False, f"unreadable: {exc}")
 return State(tickets, errors, events, paused, integrity)


# -- processes ----------------------------------------------------------------------------------


def _environ(pid: int) -> list[bytes]:
 try:
  with open(f"/proc/{pid}/environ", "rb") as f:
   return f.read().split(b"\0")
 except OSError:  # gone, or a zombie
  return []


def processes_with(markers: Collection[bytes]) -> list[int]:
 """Live processes (not zombies) whose environment holds one of `markers` (`VAR=value`)."""
 me = os.getpid()
 found = []
 for entry in os.scandir("/proc"):
  if not entry.name.isdigit() or int(entry.name) == me:
   continue
  env = _environ(int(entry.name))
  if env and any(m in env for m in markers):
   found.append(int(entry.name))
 return found


def dying(pid: int) -> bool:
 """A zombie, or a process with SIGKILL pending: gone in a moment."""
 try:
  status = Path(f"/proc/{pid}/status").read_text()
 except OSError:
  return True
 fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
 if fields.get("State", "").strip()[:1] in ("Z", "X"):
  return True
 kill = 1 << (signal.SIGKILL - 1)
 return any(int(fields.get(k, "0").strip() or "0", 16) & kill for k in ("SigPnd", "ShdPnd"))


def describe_process(pid: int) -> str:
 env = dict(v.split(b"=", 1) for v in _environ(pid) if b"=" in v)
 try:
  with open(f"/proc/{pid}/cmdline", "rb") as f:
   cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
 except OSError:
  cmd = "?"
 ticket = env.get(b"CONDUCTOR_TICKET", b"").decode(errors="replace")
 attempt = env.get(b"CONDUCTOR_ATTEMPT", b"").decode(errors="replace")
 who = f"ticket {ticket} attempt {attempt}: " if ticket else ""
 return f"pid {pid} ({who}{clip(cmd, 60)})"


def kill_all(pids: Iterable[int]) -> None:
 """SIGKILL these processes and their process groups (never our own group), and wait
 (bounded) until they are gone."""
 mine = os.getpgrp()
 pids = list(pids)
 for pid in pids:
  with contextlib.suppress(OSError):
   group = os.getpgid(pid)
   if group != mine and group > 1:
    os.killpg(group, signal.SIGKILL)
  with contextlib.suppress(OSError):
   os.kill(pid, signal.SIGKILL)
 end = time.monotonic() + 5
 while time.monotonic() < end and any(_environ(p) for p in pids):
  time.sleep(0.02)


# -- a row's folder, and the commands run in it -----------------------------------------------


IN_PROGRESS = re.compile(rb": (\S+) in_progress \(attempt \d+\)")


class Printed:
 """The "TICKET in_progress (attempt N)" lines a run printed, counted per ticket, read
 incrementally from its output file."""

 def __init__(self, path: Path) -> None:
  self.path = path
  self.counts: Counter[str] = Counter()
  self._pos = 0
  self._partial = b""

 def read(self) -> Counter[str]:
  try:
   with self.path.open("rb") as f:
    f.seek(self._pos)
    data = f.read()
  except OSError:
   return Counter(self.counts)
  self._pos += len(data)
  data = self._partial + data
  *lines, self._partial = data.split(b"\n")
  for line in lines:
   m = IN_PROGRESS.search(line)
   if m:
    self.counts[m.group(1).decode(errors="replace")] += 1
  return Counter(self.counts)


class Bg:
 """A command running in the background, in a session of its own."""

 def __init__(self, label: str, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
  self.label = label
  self.proc = proc
  self.out_path = out
  self.err_path = err
  self.began = time.monotonic()

 @property
 def pid(self) -> int:
  return self.proc.pid

 def alive(self) -> bool:
  return self.proc.poll() is None

 def output(self) -> str:
  try:
   return self.out_path.read_text(errors="replace")
  except OSError:
   return ""

 def kill(self) -> None:
  with contextlib.suppress(OSError):
   os.killpg(self.proc.pid, signal.SIGKILL)
  with contextlib.suppress(OSError):
   self.proc.kill()
  with contextlib.suppress(subprocess.TimeoutExpired):
   self.proc.wait(timeout=10)


class Lab:
 """One row's folder: its pipeline, its state (`state/p.state.db` unless given), its
 probe log, and the conductor commands run against them."""

 def __init__(
  self, cfg: Config, row: Row, folder: Path, rng: random.Random, state: Path | None = None
 ) -> None:
  self.cfg = cfg
  self.row = row
  self.rng = rng
  self.folder = folder
  folder.mkdir(parents=True, exist_ok=True)
  folder.chmod(0o755)
  self.state = state or folder / "state" / "p.state.db"
  self.state.parent.mkdir(parents=True, exist_ok=True)
  self.pipeline = folder / "p.toml"
  self.log = ProbeLog(folder / "runs.log")
  self.log.reset()
  self.tag = f"{cfg.run_tag}-{row.klass}-{row.shape}"
  self._n = 0

 # -- commands

 def env(self) -> dict[str, str]:
  return {
   **os.environ,
   **self.cfg.env,
   "PYTHONUNBUFFERED": "1",
   "FAULTTEST_RUN": self.cfg.run_tag,
   "FAULTTEST_ROW": self.tag,
  }

 def run_args(self, backend: str, *, fresh: bool = False, state: Path | None = None) -> list[str]:
  args = ["run", str(self.pipeline), "--state", str(state or self.state), "--backend", backend]
  return [*args, "--fresh"] if fresh else args

 def control_args(self, op: str, *more: str, state: Path | None = None) -> list[str]:
  return [op, "--state", str(state or self.state), *more]

 def start(self, label: str, args: Sequence[str], *, prefix: Sequence[str] = ()) -> Bg:
  self._n += 1
  out = self.folder / f"cmd{self._n:03d}.out"
  err = self.folder / f"cmd{self._n:03d}.err"
  with out.open("wb") as o, err.open("wb") as e:
   proc = subprocess.Popen(
    [*prefix, *self.cfg.command, *args],
    cwd=self.folder,
    stdin=subprocess.DEVNULL,
    stdout=o,
    stderr=e,
    env=self.env(),
    start_new_session=True,
   )
  return Bg(label, proc, out, err)

 def finish(
  self,
  bg: Bg,
  *,
  expect: Collection[int],
  bound: float,
  mark: int | None = None,
  judge: bool = True,
 ) -> Done:
  """Wait for `bg` to end, at most `bound` seconds. With `mark` (the log index where its
  run began), a restart storm (a ticket started three times in this run, by the probe log
  or by the run's own "in_progress" lines) is noticed: the run then gets 2 s more to end
  by itself before it is killed."""
  end = bg.began + bound
  storm_at: float | None = None
  code: int | None = None
  printed = Printed(bg.out_path)
  while True:
   try:
    code = bg.proc.wait(timeout=0.1)
    break
   except subprocess.TimeoutExpired:
    pass
   now = time.monotonic()
   if mark is not None and storm_at is None:
    starts = self.log.starts_since(mark)
    starts |= printed.read()
    if starts and max(starts.values()) >= 3:
     storm_at = now
     end = min(end, now + 2.0)
   if now > end:
    bg.kill()
    self.reap()
    code = None
    break
  done = Done(
   bg.label,
   code,
   bg.output(),
   bg.err_path.read_text(errors="replace"),
   time.monotonic() - bg.began,
   bound,
   printed.read(),
  )
  if judge:
   self.judge(done, expect)
  return done

 def cmd(
  self,
  label: str,
  args: Sequence[str],
  *,
  expect: Collection[int],
  bound: float = 30.0,
  prefix: Sequence[str] = (),
  judge: bool = True,
 ) -> Done:
  return self.finish(
   self.start(label, args, prefix=prefix), expect=expect, bound=bound, judge=judge
  )

 def judge(self, done: Done, expect: Collection[int]) -> None:
  """Count a hang, a traceback, an unexpected exit code, an exit 2 of several lines."""
  row = self.row
  if done.hung:
   row.fail(
    "hang",
    f"`{done.label}` did not end by itself (killed after {done.seconds:.0f} s): {done.last()}",
   )
  if "Traceback" in done.out or "Traceback" in done.err:
   row.fail("traceback", f"`{done.label}` printed a traceback: {done.last()}")
  elif not done.hung and done.code not in expect:
   want = " or ".join(str(c) for c in sorted(expect))
   row.fail("exit", f"`{done.label}`: {describe_exit(done.code)}, expected {want}: {done.last()}")
  if done.code == 2 and "Traceback" not in done.err:
   lines = [ln for ln in done.err.splitlines() if ln.strip()]
   if len(lines) != 1:
    row.fail(
     "broken",
     f"`{done.label}`: exit 2 with {len(lines)} lines on stderr, not one: {done.last()}",
    )

 # -- processes

 def markers(self) -> list[bytes]:
  return [
   f"FAULTTEST_ROW={self.tag}".encode(),
   b"CONDUCTOR_STATE=" + os.fsencode(os.path.realpath(self.state)),
  ]

 def leftovers(self, when: str) -> None:
  """Count the row's processes alive the moment a run has ended (except those already
  dying: a zombie, or SIGKILL pending), then kill them."""
  pids = [p for p in processes_with(self.markers()) if not dying(p)]
  if pids:
   shown = "; ".join(describe_process(p) for p in pids[:3])
   self.row.fail("leftover", f"{when}: {len(pids)} process(es) still running: {shown}", len(pids))
   kill_all(pids)

 def reap(self) -> None:
  """Kill the row's processes without counting them (after a hang, or at the end)."""
  kill_all(processes_with(self.markers()))

 # -- the state

 def snapshot(self, state: Path | None = None) -> State | None:
  found = read_state(state or self.state, self.folder / "scratch")
  if found is not None and found.integrity != "ok":
   self.row.fail("broken", f"the state is damaged as SQLite sees it: {clip(found.integrity)}")
  return found


# -- checks over a row's log and states -------------------------------------------------------


@dataclass
class Ledger:
 """What a row remembers across its runs to judge them at the end: where each run began
 in the probe log, and the tickets completed (durably) when a run had ended."""

 # (label, first log index, end log index, "in_progress" lines per ticket it printed)
 runs: list[tuple[str, int, int, Counter[str]]] = field(default_factory=list)
 completed_at: list[tuple[int, set[str], str]] = field(default_factory=list)

 def run(self, label: str, first: int, end: int, printed: Counter[str] | None = None) -> None:
  self.runs.append((label, first, end, printed or Counter()))

 def ended(self, log_index: int, state: State | None, label: str) -> None:
  if state is not None:
   self.completed_at.append((log_index, state.completed(), label))


def check_log(
 row: Row,
 entries: Sequence[Entry],
 deps: Mapping[str, Sequence[str]],
 ledger: Ledger,
) -> None:
 """Early starts, restarts within one run, completed tickets that ran again."""
 seen: Counter[tuple[str, int]] = Counter()
 first_end: dict[str, int] = {}
 first_start: dict[str, int] = {}
 last_start: dict[str, int] = {}
 starts: dict[str, list[int]] = defaultdict(list)
 early: set[str] = set()
 for i, e in enumerate(entries):
  if e.phase == "end":
   first_end.setdefault(e.ticket, i)
   continue
  seen[e.ticket, e.attempt] += 1
  starts[e.ticket].append(i)
  first_start.setdefault(e.ticket, i)
  last_start[e.ticket] = i
  for d in deps.get(e.ticket, ()):
   if first_end.get(d, len(entries)) > i and e.ticket not in early:
    early.add(e.ticket)
    row.fail("early", f"{e.ticket} (attempt {e.attempt}) started before its dependency {d} ended")
 for (tid, attempt), k in seen.items():
  if k > 1:
   row.fail("early", f"{tid} attempt {attempt} started {k} times: that start was not durable")
 for tid, ds in deps.items():
  for d in ds:
   if tid in first_start and last_start.get(d, -1) > first_start[tid]:
    row.fail("early", f"{d} ran again after its dependent {tid} had started")
 for label, first, end, printed in ledger.runs:
  counts = Counter(e.ticket for e in entries[first:end] if e.phase == "start")
  counts |= printed  # the larger of the two counts, per ticket
  many = {t: k for t, k in counts.items() if k > 1}
  if many:
   worst = max(many, key=lambda t: many[t])
   row.fail(
    "extra",
    f"`{label}`: {len(many)} ticket(s) started more than once in that one run "
    f"({worst} {many[worst]} times): a restart storm",
    len(many),
   )
 rerun: set[str] = set()
 for index, done, label in ledger.completed_at:
  for tid in sorted(done - rerun):
   if any(i >= index for i in starts.get(tid, ())):
    rerun.add(tid)
    row.fail("re-run", f"{tid} was completed in the state after `{label}`, then started again")


def start_over(row: Row, lab: Lab, ledger: Ledger, deps: Mapping[str, Sequence[str]]) -> None:
 """Before a `--fresh` run (attempts start again at 1): judge the log so far, then begin a
 new log and a new ledger."""
 check_log(row, lab.log.read(), deps, ledger)
 lab.log.reset()
 ledger.runs.clear()
 ledger.completed_at.clear()


def check_final(
 row: Row, state: State | None, deps: Mapping[str, Sequence[str]], label: str
) -> None:
 """Lost: tickets not completed once the row's final clean run has ended."""
 if state is None:
  row.fail("lost", f"after `{label}` there is no state file at all", len(deps))
  return
 lost = [t for t in deps if state.tickets.get(t, ("missing", 0))[0] != "completed"]
 if lost:
  statuses = Counter(state.tickets.get(t, ("missing", 0))[0] for t in lost)
  row.fail(
   "lost",
   f"after `{label}`: {len(lost)} ticket(s) not completed ({dict(statuses)}), e.g. "
   f"{', '.join(lost[:4])}",
   len(lost),
  )


def check_interrupted(row: Row, before: State | None, after: State | None, label: str) -> None:
 """Tickets in flight when a run died must be recorded "interrupted" by the next run
 and run again with a higher attempt count."""
 if before is None or after is None:
  return
 for tid in before.with_status("in_progress"):
  was = before.tickets[tid][1]
  marks = sum(1 for t, ev, _ in after.events if t == tid and ev == "interrupted")
  earlier = sum(1 for t, ev, _ in before.events if t == tid and ev == "interrupted")
  if marks <= earlier or after.tickets.get(tid, ("", 0))[1] <= was:
   row.fail(
    "broken",
    f"{tid} was in flight when `{label}` died, but was not recorded interrupted and run again",
   )


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
 """Poll `predicate()` until true or `timeout` seconds passed (a test harness may poll)."""
 end = time.monotonic() + timeout
 while True:
  if predicate():
   return True
  if time.monotonic() > end:
   return False
  time.sleep(interval)


def wait_starts(lab: Lab, bg: Bg, mark: int, goal: int, timeout: float = 30) -> bool:
 """Wait (bounded) until `goal` probes started since `mark`; False if the run ended first."""
 end = time.monotonic() + timeout
 while time.monotonic() < end:
  if sum(lab.log.starts_since(mark).values()) >= goal:
   return bg.alive()
  if not bg.alive():
   return False
  time.sleep(0.005)
 return bg.alive()


def exc_line(text: str) -> str:
 """The `SomeError: message` line of a traceback, if any."""
 found = re.findall(
  r"^[\s|+-]*(\w[\w.]*(?:Error|Exception|Interrupt|Exit|Group|Cancelled)\b(?::.*)?)$", text, re.M
 )
 return clip(found[-1]) if found else ""
