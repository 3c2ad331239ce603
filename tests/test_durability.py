"""Durability as a user meets it: real `conductor` processes, kill -9, other terminals.

Every wait is on a real signal (a line on the child's stdout, a process exit, the control
socket answering) and bounded by a timeout, so a bug fails the test instead of hanging it.
Runs use asyncio and trio (`--backend`). The tickets are small Python scripts that log their
ticket and attempt (`CONDUCTOR_TICKET`, `CONDUCTOR_ATTEMPT`) when they start: so the log
shows, from outside the runner and across kills, that no attempt ran twice and that no
dependency ran again once a dependent had started (each start, and the completions before it,
were durable first). The state is read only while no run holds it (a run opens it
exclusively); test_store checks the write-ahead at every single start.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import WAIT, Child, conductor, one_line_error, reap_children

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

BACKENDS = ["asyncio", "trio"]

TICK = """
import os, sys, time
with open("runs.log", "a") as log:
 log.write(f"{os.environ['CONDUCTOR_TICKET']} {os.environ['CONDUCTOR_ATTEMPT']}\\n")
time.sleep(float(sys.argv[1]))
"""


def layered(seed: int) -> tuple[str, dict[str, tuple[str, ...]]]:
 """A pipeline of 14 tickets in four layers; each ticket runs tick.py."""
 rng = random.Random(seed)
 layers = [[f"r{i}" for i in range(3)], [f"m{i}" for i in range(6)], [f"n{i}" for i in range(4)]]
 deps: dict[str, tuple[str, ...]] = {tid: () for tid in layers[0]}
 for upper, lower in itertools.pairwise(layers):
  for tid in lower:
   deps[tid] = tuple(sorted(rng.sample(upper, 2)))
 deps["join"] = tuple(layers[2])
 text = '[pipeline]\nname = "p"\nmax_workers = 3\n'
 for tid, ds in deps.items():
  command = f"{sys.executable} tick.py {rng.uniform(0.02, 0.1):.3f}"
  text += f"\n[[tickets]]\nid = {tid!r}\ndepends_on = {list(ds)!r}\nrun = {command!r}\n"
 return text.replace("'", '"'), deps


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
 yield
 reap_children()


def read_state(state: Path) -> dict[str, tuple[str, int]]:
 conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
 try:
  return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, status, attempts FROM ticket_state")}
 finally:
  conn.close()


def history(state: Path) -> list[tuple[str | None, str, int]]:
 conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
 try:
  return conn.execute("SELECT ticket, event, pid FROM history ORDER BY seq").fetchall()
 finally:
  conn.close()


TRANSITION = r"^\d\d:\d\d:\d\d p: \S+ (in_progress|completed)"


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
 (tmp_path / "tick.py").write_text(TICK)
 yield tmp_path


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_at_random_points_then_resume_loses_nothing_and_reruns_no_completed_ticket(
 workdir: Path, backend: str
) -> None:
 rng = random.Random(f"kill-{backend}")
 state = workdir / "p.state.db"
 text, deps = layered(seed=1)
 (workdir / "p.toml").write_text(text)
 kills: list[tuple[dict[str, tuple[str, int]], int]] = []  # (state right after the kill, next pid)
 for _cycle in range(4):
  child = Child("run", "p.toml", "--state", str(state), "--backend", backend, cwd=workdir)
  if kills:
   kills[-1] = (kills[-1][0], child.proc.pid)
  child.wait_for("^control it from another terminal")
  before = kills[-1][0] if kills else {}
  done = sum(1 for status, _ in before.values() if status == "completed")
  # A random point among the transitions still to come (two per remaining ticket).
  child.wait_for(TRANSITION, rng.randint(1, max(1, 2 * (len(deps) - done) - 2)))
  child.kill_hard()
  kills.append((read_state(state), 0))
 final = Child("run", "p.toml", "--state", str(state), "--backend", backend, cwd=workdir)
 kills[-1] = (kills[-1][0], final.proc.pid)
 assert final.finish() == 0, final.lines[-15:]

 end = read_state(state)
 assert {status for status, _ in end.values()} == {"completed"}  # nothing lost
 runs: dict[str, list[int]] = defaultdict(list)
 first: dict[str, int] = {}  # ticket -> where in the log it first ran
 last: dict[str, int] = {}  # ... and last
 for at, line in enumerate((workdir / "runs.log").read_text().splitlines()):
  tid, attempt = line.split()
  runs[tid].append(int(attempt))
  first.setdefault(tid, at)
  last[tid] = at
 for tid, attempts in runs.items():
  # Each start was durable before the ticket ran: a kill never made an attempt run twice.
  assert attempts == sorted(set(attempts)), (tid, attempts)
  assert max(attempts) <= end[tid][1]
  # Its dependencies' completions were durable before it started: none ran again after.
  for dep in deps[tid]:
   assert last[dep] < first[tid], (dep, tid)
 assert set(runs) == set(deps)
 events = history(state)
 for at_kill, next_pid in kills:
  for tid, (status, attempts) in at_kill.items():
   if status == "completed":  # durable completion: never started again
    assert end[tid][1] == attempts, (tid, at_kill[tid], end[tid])
   elif status == "in_progress":  # in flight at the kill: interrupted, then run again
    assert (tid, "interrupted", next_pid) in events, tid
    assert end[tid][1] > attempts


@pytest.mark.parametrize("backend", BACKENDS)
def test_pause_from_another_terminal_survives_kill_9_and_resumes_from_another(
 tmp_path: Path, backend: str
) -> None:
 # Three chains of three 0.3 s tickets, three workers: t0 t1 t2 first, then t3 t4 t5, ...
 text = '[pipeline]\nname = "p"\nmax_workers = 3\n'
 for i in range(9):
  text += f'[[tickets]]\nid = "t{i}"\nsleep = 0.5\n'
  text += f'depends_on = ["t{i - 3}"]\n' if i >= 3 else ""
 (tmp_path / "p.toml").write_text(text)
 state = tmp_path / "p.state.db"
 run = Child("run", "p.toml", "--backend", backend, cwd=tmp_path)
 run.wait_for("^control it from another terminal: .*--state p.state.db")
 run.wait_for(r" p: t\d in_progress", 3)

 paused = conductor("pause", "--state", "p.state.db", "--reason", "lunch", cwd=tmp_path)
 assert paused.returncode == 0, paused.stderr
 assert f"running, pid {run.proc.pid}" in paused.stdout and "no worker starts" in paused.stdout
 run.wait_for(" p: pipeline paused: lunch")
 # The workers running at the pause finish; nothing else starts (checked in the history).
 finishing = re.search(r"still finishing: (.*)$", paused.stdout.strip())
 names = finishing[1].split(", ") if finishing else []
 for name in names:
  run.wait_for(rf" p: {name} completed")
 status = json.loads(conductor("status", "--state", "p.state.db", "--json", cwd=tmp_path).stdout)
 assert status["live"] and status["mma_status"] == "paused" and status["pause_reason"] == "lunch"
 assert sorted(status["running_at_pause"]) == sorted(names)
 assert status["finishing"] == [] and status["running"] == []
 assert status["counts"]["completed"] + len(status["pending"]) == 9

 run.kill_hard()
 offline = json.loads(conductor("status", "p.toml", "--json", cwd=tmp_path).stdout)
 assert not offline["live"] and offline["paused"] and offline["mma_status"] == "paused"

 again = Child("run", "p.toml", "--backend", backend, cwd=tmp_path)
 again.wait_for(r"^PAUSED since .* \(lunch\): nothing starts until it is resumed")
 status = json.loads(conductor("status", "--state", "p.state.db", "--json", cwd=tmp_path).stdout)
 assert status["live"] and status["pid"] == again.proc.pid and status["mma_status"] == "paused"
 assert status["running"] == []

 resumed = conductor("resume", "--state", "p.state.db", cwd=tmp_path)
 assert resumed.returncode == 0 and "resumed p (running" in resumed.stdout
 assert again.finish() == 0, again.lines[-10:]
 events = [(ticket, event) for ticket, event, _pid in history(state)]
 paused_at = events.index((None, "paused"))
 resumed_at = events.index((None, "resumed"))
 assert all(event != "in_progress" for _, event in events[paused_at:resumed_at])
 assert {s for s, _ in read_state(state).values()} == {"completed"}


def alive(pid: int) -> bool:
 """Running (a zombie nobody reaps, as in some containers, counts as ended)."""
 try:
  stat = Path(f"/proc/{pid}/stat").read_text()
 except FileNotFoundError:
  return False
 return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_a_killed_run_left_running_is_stopped_before_its_ticket_runs_again(
 tmp_path: Path, backend: str
) -> None:
 # The first attempt reports its pid through a FIFO and sleeps; the second one just ends.
 os.mkfifo(tmp_path / "started")
 command = "if [ -e again ]; then exit 0; fi; touch again; echo $$ > started; exec sleep 60"
 (tmp_path / "p.toml").write_text(f'[[tickets]]\nid = "t"\nrun = {json.dumps(command)}\n')
 run = Child("run", "p.toml", "--backend", backend, cwd=tmp_path)
 reported: list[str] = []
 reader = threading.Thread(target=lambda: reported.append((tmp_path / "started").read_text()))
 reader.start()
 reader.join(WAIT)
 assert reported, run.lines[-10:]
 pid = int(reported[0])
 try:
  os.kill(run.proc.pid, signal.SIGKILL)  # the runner only: its ticket's process lives on
  run.proc.wait(WAIT)
  assert alive(pid)
  again = conductor("run", "p.toml", "--backend", backend, cwd=tmp_path)
  assert again.returncode == 0, again.stdout + again.stderr
  assert "1 interrupted, running again: t" in again.stdout
  assert "stopped 1 process that the killed run had left running (ticket t)" in (
   again.stdout.replace("\n", " ")
  )
  assert not alive(pid)
 finally:
  with contextlib.suppress(ProcessLookupError):
   os.kill(pid, signal.SIGKILL)


def test_with_no_run_pause_and_resume_write_the_flag_to_the_state(tmp_path: Path) -> None:
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 first = conductor("run", "p.toml", cwd=tmp_path)
 assert first.returncode == 0 and "state: p.state.db (new)" in first.stdout
 again = conductor("run", "p.toml", cwd=tmp_path)  # a done pipeline: nothing to do
 assert again.returncode == 0 and "already completed" in again.stdout and "--fresh" in again.stdout

 paused = conductor("pause", "p.toml", "--reason", "laptop lid", cwd=tmp_path)
 assert paused.returncode == 0 and "p (not running)" in paused.stdout
 report = json.loads(conductor("status", "p.toml", "--json", cwd=tmp_path).stdout)
 assert not report["live"] and report["paused"] and report["pause_reason"] == "laptop lid"
 resumed = conductor("resume", "p.toml", cwd=tmp_path)
 assert resumed.returncode == 0 and "p (not running)" in resumed.stdout
 report = json.loads(conductor("status", "p.toml", "--json", cwd=tmp_path).stdout)
 assert not report["paused"]
 events = [event for _ticket, event, _pid in history(tmp_path / "p.state.db")]
 assert events[-2:] == ["paused", "resumed"]


def test_a_changed_pipeline_is_refused_until_run_fresh(tmp_path: Path) -> None:
 pipeline = tmp_path / "p.toml"
 pipeline.write_text(
  '[[tickets]]\nid = "a"\nsleep = 0\n[[tickets]]\nid = "b"\nrun = "true"\n'
  '[[tickets]]\nid = "c"\nsleep = 0\n'
 )
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 0
 before = (tmp_path / "p.state.db").read_bytes()
 pipeline.write_text(
  '[[tickets]]\nid = "a"\nsleep = 0\n[[tickets]]\nid = "b"\nrun = "echo changed"\n'
  '[[tickets]]\nid = "d"\nsleep = 0\n'
 )
 one_line_error(
  conductor("run", "p.toml", cwd=tmp_path),
  "p.toml changed since its state",
  "added: d",
  "removed: c",
  "changed: b",
  "--fresh",
 )
 assert (tmp_path / "p.state.db").read_bytes() == before
 fresh = conductor("run", "p.toml", "--fresh", cwd=tmp_path)
 assert fresh.returncode == 0 and "b completed" in fresh.stdout


def test_a_locked_state_is_refused_with_the_holders_pid_and_a_killed_holder_frees_it(
 tmp_path: Path,
) -> None:
 # b waits for a, so while paused there is always work left: every run below starts paused.
 (tmp_path / "p.toml").write_text(
  '[[tickets]]\nid = "a"\nsleep = 1\n[[tickets]]\nid = "b"\ndepends_on = ["a"]\nsleep = 0\n'
 )
 one_line_error(conductor("pause", "--state", "s.state.db", cwd=tmp_path), "no such state file")
 holder = Child("run", "p.toml", "--state", "s.state.db", cwd=tmp_path)
 holder.wait_for("^control it from another terminal")
 assert conductor("pause", "--state", "s.state.db", cwd=tmp_path).returncode == 0
 holder.kill_hard()  # leaves a stale lock file and a stale socket file behind
 assert (tmp_path / "s.state.db-lock").exists() and (tmp_path / "s.state.db-ctl").exists()
 offline = conductor("status", "--state", "s.state.db", cwd=tmp_path)
 assert offline.returncode == 0 and "not running" in offline.stdout, offline.stderr
 assert not (tmp_path / "s.state.db-lock").exists()  # reused, then removed by its last holder

 holder = Child("run", "p.toml", "--state", "s.state.db", cwd=tmp_path)
 holder.wait_for("^PAUSED since")
 line = one_line_error(
  conductor("run", "p.toml", "--state", "s.state.db", cwd=tmp_path), "in use by conductor pid"
 )
 assert f"pid {holder.proc.pid}" in line
 holder.kill_hard()
 second = Child("run", "p.toml", "--state", "s.state.db", cwd=tmp_path)
 second.wait_for("^PAUSED since")
 assert conductor("resume", "--state", "s.state.db", cwd=tmp_path).returncode == 0
 assert second.finish() == 0
 assert {status for status, _ in read_state(tmp_path / "s.state.db").values()} == {"completed"}
 left = {"s.state.db-lock", "s.state.db-ctl.lock", "s.state.db-ctl"} & set(os.listdir(tmp_path))
 assert not left  # the killed runs' files, reused by the next holders and removed


def test_foreign_damaged_and_missing_state_files_get_one_line_and_stay_untouched(
 tmp_path: Path,
) -> None:
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 assert conductor("run", "p.toml", "--state", "good.state.db", cwd=tmp_path).returncode == 0
 good = (tmp_path / "good.state.db").read_bytes()
 damaged = bytearray(good)
 damaged[1024:3072] = b"\xa5" * 2048
 foreign = sqlite3.connect(tmp_path / "other.db")
 foreign.execute("CREATE TABLE mine (x)")
 foreign.commit()
 foreign.close()
 files = {
  "notes.txt": b"just some notes\n" * 10,
  "empty.db": b"",
  "damaged.state.db": bytes(damaged),
  "other.db": (tmp_path / "other.db").read_bytes(),
 }
 for name, data in files.items():
  (tmp_path / name).write_bytes(data)
 for name, data in files.items():
  commands = [["run", "p.toml"], ["status"], ["pause"], ["resume"]]
  if name != "damaged.state.db":  # --fresh moves a damaged state aside (next test)
   commands.append(["run", "p.toml", "--fresh"])
  for command in commands:
   one_line_error(conductor(*command, "--state", name, cwd=tmp_path), name)
   assert (tmp_path / name).read_bytes() == data, (name, command)
 # Damaged (SQLite's integrity check fails): the refusal says what --fresh would lose, and
 # --fresh keeps the damaged file aside instead of destroying it.
 refused = conductor("run", "p.toml", "--state", "damaged.state.db", cwd=tmp_path)
 assert "--fresh" in refused.stderr and "delete" not in refused.stderr
 fresh = conductor("run", "p.toml", "--fresh", "--state", "damaged.state.db", cwd=tmp_path)
 assert fresh.returncode == 0, fresh.stderr
 assert "moved aside" in fresh.stdout
 (aside,) = tmp_path.glob("damaged.state.db.damaged-*")
 assert aside.read_bytes() == files["damaged.state.db"]
 one_line_error(conductor("status", "--state", "missing.db", cwd=tmp_path), "no such state file")
 one_line_error(conductor("status", cwd=tmp_path), "--state")


def test_status_shows_attempts_errors_and_the_history(tmp_path: Path) -> None:
 (tmp_path / "p.toml").write_text(
  '[[tickets]]\nid = "ok"\nrun = "true"\n'
  '[[tickets]]\nid = "bad"\nrun = "echo nope >&2; exit 3"\n'
  '[[tickets]]\nid = "after"\ndepends_on = ["bad"]\nrun = "true"\n'
 )
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 1
 report = json.loads(conductor("status", "p.toml", "--json", "--history", cwd=tmp_path).stdout)
 rows = {row["id"]: row for row in report["tickets"]}
 assert rows["bad"]["error"] == "exit code 3: nope" and rows["bad"]["exit_code"] == 3
 assert rows["after"]["status"] == "blocked" and report["mma_status"] == "error"
 assert report["history"][0]["status"] == "fresh"
 shown = conductor("status", "p.toml", "--history", cwd=tmp_path).stdout
 assert "exit code 3: nope" in shown and "bad failed (attempt 1)" in shown
 # A re-run retries the failed ticket (attempt 2) and what it blocked.
 (tmp_path / "p.toml").write_text((tmp_path / "p.toml").read_text())
 rerun = conductor("run", "p.toml", cwd=tmp_path)
 assert "1 failed, retrying: bad" in rerun.stdout and "bad in_progress (attempt 2)" in rerun.stdout
