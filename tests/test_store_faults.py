"""The state file under faults: kills at any write, a full disk, read-only places, damage, and
files planted beside it by another local user.

Real faults only: `strace` kills the runner at its N-th write to the state (the kernel's own
fault injection, over a range of N), a real tmpfs fills up, a real read-only mount, another
real uid. Every user-facing outcome is either success or ONE line on stderr with exit 2 that
names the state; nothing recorded before the fault is lost, and no completed ticket runs again.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from procs import conductor, one_line_error

from conductor.pipeline import load_pipeline, pipeline_from_dict
from conductor.store import (
 StateDamagedError,
 StateDiskFullError,
 StateError,
 StateReadOnlyError,
 StateSideFileError,
 StateStore,
 check_state_file,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux faults")

WAIT = 120.0  # seconds any one conductor command may take before the test fails
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534


def image(state: Path) -> dict[str, tuple[str, int]]:
 """Every ticket's (status, attempts) as the next run will find them: read from a copy of the
 state and its WAL (reading in place would checkpoint the WAL: change what we test)."""
 with tempfile.TemporaryDirectory() as folder:
  copy = Path(folder) / "copy.db"
  for suffix in ("", "-wal"):
   if os.path.exists(f"{state}{suffix}"):
    shutil.copyfile(f"{state}{suffix}", f"{copy}{suffix}")
  conn = sqlite3.connect(copy)
  try:
   rows = conn.execute("SELECT id, status, attempts FROM ticket_state").fetchall()
  finally:
   conn.close()
 return {tid: (status, attempts) for tid, status, attempts in rows}


def write_pipeline(
 path: Path, ids: list[str], deps: dict[str, str], body: str, workers: int
) -> Path:
 text = f'[pipeline]\nname = "p"\nmax_workers = {workers}\n'
 for tid in ids:
  text += f'\n[[tickets]]\nid = "{tid}"\n{body}\n'
  if tid in deps:
   text += f'depends_on = ["{deps[tid]}"]\n'
 path.write_text(text)
 return path


def chain(path: Path, n: int, body: str = "sleep = 0", workers: int = 4) -> Path:
 ids = [f"c{i}" for i in range(n)]
 return write_pipeline(path, ids, {ids[i]: ids[i - 1] for i in range(1, n)}, body, workers)


def wide(path: Path, n: int, body: str = "sleep = 0", workers: int = 8) -> Path:
 return write_pipeline(path, [f"w{i}" for i in range(n)], {}, body, workers)


# -- a kill at any write ----------------------------------------------------------------------

needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


def strace_run(
 cwd: Path, state: Path, files: tuple[str, ...], when: int, fault: str = "signal=SIGKILL"
) -> subprocess.CompletedProcess[str]:
 """`conductor run` with a fault injected by the kernel at its `when`-th pwrite64 to
 `files` (suffixes of the state: "" the main file, "-wal" its WAL): by default SIGKILL;
 `error=EIO` and the like make that one write fail."""
 paths = [arg for suffix in files for arg in ("-P", f"{state}{suffix}")]
 return subprocess.run(
  [
   "strace",
   "-f",
   "-qq",
   "-o",
   os.devnull,
   *paths,
   "-e",
   "trace=pwrite64",
   "-e",
   f"inject=pwrite64:{fault}:when={when}",
   sys.executable,
   "-m",
   "conductor",
   "run",
   "p.toml",
   "--state",
   state.name,
  ],
  cwd=cwd,
  capture_output=True,
  text=True,
  timeout=WAIT,
  check=False,
 )


def kill_at_write(cwd: Path, state: Path, files: tuple[str, ...], when: int) -> int:
 return strace_run(cwd, state, files, when).returncode


# (shape, files traced, write numbers): the WAL takes a write per commit; the main file only
# at checkpoints (every ~1000 WAL pages), where the first report's kill happened.
KILLS = [
 ("chain", ("", "-wal"), (1, 5, 400, 1500, 4000, 8000)),
 ("chain", ("",), (1, 100, 700)),
 ("wide", ("", "-wal"), (1, 60, 900, 4500)),
 ("wide", ("",), (50, 200)),
]


@needs_strace
@pytest.mark.parametrize(("shape", "files", "whens"), KILLS, ids=[f"{k[0]}{k[1]}" for k in KILLS])
def test_a_kill_at_any_write_to_the_state_is_resumed_with_every_completed_ticket_kept(
 tmp_path: Path, shape: str, files: tuple[str, ...], whens: tuple[int, ...]
) -> None:
 (chain if shape == "chain" else wide)(tmp_path / "p.toml", 3000)
 state = tmp_path / "p.state.db"
 for when in whens:
  for leftover in tmp_path.glob("p.state.db*"):
   leftover.unlink()
  code = kill_at_write(tmp_path, state, files, when)
  assert code in (0, -9, 137), (when, code)
  before = image(state) if state.exists() else {}
  done = {tid: attempts for tid, (status, attempts) in before.items() if status == "completed"}
  result = conductor("run", "p.toml", cwd=tmp_path)
  assert result.returncode == 0, (when, code, result.stderr)
  after = image(state)
  assert len(after) == 3000 and {s for s, _ in after.values()} == {"completed"}, when
  # Nothing completed before the kill ran again: its attempt count did not move.
  assert {tid: after[tid][1] for tid in done} == done, (when, code)


@needs_strace
@pytest.mark.parametrize(
 ("fault", "says"),
 [
  ("error=EIO", "I/O error on the state file"),
  ("error=ENOSPC", "is full"),
  ("error=EDQUOT", "quota"),
 ],
)
@pytest.mark.parametrize("when", [3, 150])
def test_a_failed_write_mid_run_is_one_line_and_the_next_run_resumes(
 tmp_path: Path, fault: str, says: str, when: int
) -> None:
 chain(tmp_path / "p.toml", 400)
 state = tmp_path / "p.state.db"
 one_line_error(
  strace_run(tmp_path, state, ("-wal",), when, fault), says, state.name
 )  # shown relative to the cwd
 kept = {tid: n for tid, (status, n) in image(state).items() if status == "completed"}
 assert len(kept) < 400
 result = conductor("run", "p.toml", cwd=tmp_path)
 assert result.returncode == 0, result.stderr
 after = image(state)
 assert {s for s, _ in after.values()} == {"completed"}
 assert {tid: after[tid][1] for tid in kept} == kept


@needs_strace
def test_the_deep_check_reads_the_wal_without_writing_beside_the_state_even_in_a_read_only_folder(
 tmp_path: Path,
) -> None:
 # The first report: killed in the middle of a checkpoint, the main file alone looks damaged
 # (SQLite's "malformed"), the main file with its WAL is fine.
 chain(tmp_path / "p.toml", 3000)
 state = tmp_path / "p.state.db"
 assert kill_at_write(tmp_path, state, ("",), 100) in (-9, 137)
 assert Path(f"{state}-wal").exists()
 with contextlib.ExitStack() as cleanup:
  folder = Path(tempfile.mkdtemp(prefix="conductor-test-"))  # a place another uid can reach
  cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
  for suffix in ("", "-wal"):
   shutil.copyfile(f"{state}{suffix}", folder / f"s.state.db{suffix}")
  before = {p.name: p.read_bytes() for p in folder.iterdir()}
  assert check_state_file(folder / "s.state.db", deep=True)
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
  if not IS_ROOT:
   return
  # Another user, for whom the folder and the files are read-only, with no -shm: SQLite
  # cannot open the pair in place at all.
  folder.chmod(0o755)
  for p in folder.iterdir():
   p.chmod(0o644)

  def as_another_user() -> str:
   assert check_state_file(folder / "s.state.db", deep=True)
   try:
    StateStore.open(folder / "s.state.db").close()
   except StateError as exc:
    return str(exc)
   return "opened"

  said = as_user(NOBODY, as_another_user)
  assert "read-only" in said and "I/O" not in said, said
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
 # And the run itself resumes from it.
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 0


def as_user(uid: int, fn: Callable[[], str]) -> str:
 """Run `fn` in a forked child that has become `uid` (a real other user: the interpreter
 itself may live where that user cannot read); return what it returned or raised."""
 read, write = os.pipe()
 pid = os.fork()
 if pid == 0:  # the child: never returns into pytest
  code = 0
  try:
   os.close(read)
   os.setgroups([])
   os.setgid(uid)
   os.setuid(uid)
   answer = fn()
  except BaseException as exc:
   answer, code = f"raised {exc!r}", 1
  os.write(write, answer.encode())
  os._exit(code)
 os.close(write)
 try:
  ready, _, _ = select.select([read], [], [], WAIT)
  assert ready, "the child did not answer in time"
  with os.fdopen(read, "rb", closefd=False) as pipe:
   answer = pipe.read().decode()
 finally:
  os.close(read)
  with contextlib.suppress(ProcessLookupError):
   if not ready:
    os.kill(pid, 9)
  _, status = os.waitpid(pid, 0)
 assert os.waitstatus_to_exitcode(status) == 0, answer
 return answer


# -- damaged states ---------------------------------------------------------------------------


def damaged_state(path: Path, tickets: int = 300, completed: int = 120) -> bytes:
 """A state whose history pages are trashed behind an intact header and schema."""
 p = pipeline_from_dict({"tickets": [{"id": f"t{i}", "sleep": 0} for i in range(tickets)]})
 with StateStore.open(path) as store:
  store.restore("p", p.tickets)
 conn = sqlite3.connect(path)
 conn.execute(
  "UPDATE tickets SET status = 'completed', attempts = 1 WHERE position < ?", (completed,)
 )
 conn.commit()
 conn.close()
 data = bytearray(path.read_bytes())
 data[len(data) // 2 : len(data) // 2 + 3072] = b"\xa5" * 3072
 path.write_bytes(bytes(data))
 return bytes(data)


def test_a_damaged_state_is_refused_untouched_saying_what_fresh_would_lose(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 data = damaged_state(path)
 for call in (
  lambda: StateStore.open(path, deep_check=True),
  lambda: StateStore.open(path, create=False, deep_check=True),  # status and pause, offline
  lambda: check_state_file(path, deep=True),
 ):
  with pytest.raises(StateDamagedError) as caught:
   call()
  message = str(caught.value)
  assert "\n" not in message and str(path) in message and "damaged" in message
  assert "--fresh" in message and "delete" not in message
  assert re.search(r"\(\d+ of 300 tickets completed|cannot read how many", message), message
  assert path.read_bytes() == data
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p.state.db"]


def test_the_readers_of_a_damaged_state_give_one_line_not_a_traceback(tmp_path: Path) -> None:
 # Opened without the deep check (as a caller may): the damage surfaces in a reader.
 path = tmp_path / "p.state.db"
 damaged_state(path)
 with pytest.raises(StateError) as caught:
  store = StateStore.open(path)
  try:
   store.tickets()
   store.history()
  finally:
   store.close()
 assert "damaged" in str(caught.value) and "\n" not in str(caught.value)


def test_fresh_moves_a_damaged_state_and_its_wal_aside_and_starts_over(tmp_path: Path) -> None:
 path = tmp_path / "p.state.db"
 data = damaged_state(path)
 Path(f"{path}-wal").write_bytes(b"")  # an empty WAL beside it: moved with it
 store = StateStore.open(path, fresh=True)
 try:
  moved = store.moved_aside
  assert moved is not None and re.fullmatch(r"p\.state\.db\.damaged-\d{8}T\d{6}Z", moved.name)
  assert moved.read_bytes() == data and Path(f"{moved}-wal").exists()
  restored = store.restore("p", pipeline_from_dict({"tickets": [{"id": "a", "sleep": 0}]}).tickets)
  assert restored.fresh and [t.id for t in store.tickets()] == ["a"]
 finally:
  store.close()
 assert check_state_file(path, deep=True)
 # A healthy state is not moved by fresh=True (restore(fresh=True) is what forgets it).
 StateStore.open(path, fresh=True).close()
 assert sorted(p.name for p in tmp_path.iterdir() if "damaged" in p.name) == [
  moved.name,
  f"{moved.name}-wal",
 ]


def test_every_command_refuses_a_page_damaged_state_and_leaves_it_untouched(
 tmp_path: Path,
) -> None:
 (tmp_path / "p.toml").write_text(
  "".join(f'[[tickets]]\nid = "t{i}"\nsleep = 0\n' for i in range(300))
 )
 state = tmp_path / "p.state.db"
 data = damaged_state(state)
 for command in (("status",), ("pause",), ("resume",), ("status", "--history"), ("run", "p.toml")):
  line = one_line_error(conductor(*command, "--state", str(state), cwd=tmp_path), state.name)
  assert "damaged" in line and "--fresh" in line and "delete" not in line, (command, line)
  assert state.read_bytes() == data, command
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(("-wal", "-shm", "-journal"))]


def test_run_fresh_moves_a_damaged_state_aside_and_runs(tmp_path: Path) -> None:
 # Needs control.open_run to open the state with StateStore.open(..., fresh=fresh).
 (tmp_path / "p.toml").write_text(
  "".join(f'[[tickets]]\nid = "t{i}"\nsleep = 0\n' for i in range(300))
 )
 state = tmp_path / "p.state.db"
 data = damaged_state(state)
 result = conductor("run", "p.toml", "--fresh", "--state", str(state), cwd=tmp_path)
 assert result.returncode == 0, result.stderr
 (moved,) = tmp_path.glob("p.state.db.damaged-*")
 assert moved.read_bytes() == data
 assert {s for s, _ in image(state).values()} == {"completed"}


def test_a_new_state_never_replays_a_wal_left_beside_a_deleted_one(tmp_path: Path) -> None:
 # A user deletes the state but not its WAL (as the old advice said): SQLite would replay
 # that WAL into the new state, bringing the old tickets back (or corrupting it).
 path = tmp_path / "p.state.db"
 old = pipeline_from_dict({"tickets": [{"id": f"old{i}", "sleep": 0} for i in range(50)]})
 store = StateStore.open(path)
 store.restore("p", old.tickets)
 store.set_paused(True, "x")
 wal = Path(f"{path}-wal").read_bytes()  # what a kill at this moment leaves
 store.close()
 path.unlink()
 Path(f"{path}-wal").write_bytes(wal)
 new = pipeline_from_dict({"tickets": [{"id": "new", "sleep": 0}]})
 with StateStore.open(path, deep_check=True) as store:
  restored = store.restore("p", new.tickets)
  assert restored.fresh and [t.id for t in store.tickets()] == ["new"]
  assert not store.pause_state().paused
 assert [p.name for p in tmp_path.glob("*orphaned*-wal")], sorted(os.listdir(tmp_path))


# -- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
 """A real 1 MB tmpfs, unmounted afterwards (needs root, as in CI; skipped otherwise)."""
 mount = tmp_path / "disk"
 mount.mkdir()
 result = subprocess.run(
  ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount)],
  capture_output=True,
  text=True,
  timeout=WAIT,
  check=False,
 )
 if result.returncode != 0:
  pytest.skip(f"cannot mount a tmpfs to fill up: {result.stderr.strip() or result.returncode}")
 try:
  yield mount
 finally:
  subprocess.run(["umount", "-l", str(mount)], timeout=WAIT, check=False)


def fill(disk: Path, leave: int = 0) -> Path:
 """Fill `disk` up to the last byte, then give back `leave` bytes."""
 filler = disk / "filler"
 fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
 try:
  with contextlib.suppress(OSError):
   while True:
    os.write(fd, b"\0" * 4096)
  size = os.fstat(fd).st_size
 finally:
  os.close(fd)
 os.truncate(filler, max(0, size - leave))
 return filler


PROBE = 'run = "echo $CONDUCTOR_TICKET $CONDUCTOR_ATTEMPT >> runs.log"'


def starts(folder: Path) -> Counter[str]:
 log = folder / "runs.log"
 lines = log.read_text().split("\n") if log.exists() else []
 pairs = [line.split() for line in lines if line]
 assert len(pairs) == len({tuple(p) for p in pairs}), "an attempt ran twice"
 return Counter(tid for tid, _ in pairs)


def test_a_full_disk_at_creation_leaves_no_half_made_state(disk: Path) -> None:
 fill(disk)
 with pytest.raises(StateDiskFullError) as caught:
  StateStore.open(disk / "new.state.db")
 assert str(caught.value) == (
  f"the disk holding {disk / 'new.state.db'} is full: free some space and run again; "
  "everything recorded so far is kept"
 )
 assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_a_full_disk_at_start_mid_run_and_under_pause_resume_status_loses_nothing(
 tmp_path: Path, disk: Path
) -> None:
 # The pipeline and the probes' log live outside the small disk; the state on it.
 chain(tmp_path / "p.toml", 300, PROBE, workers=2)
 state = disk / "p.state.db"
 with StateStore.open(state) as store:  # a state written before the disk filled up
  store.restore("p", load_pipeline(tmp_path / "p.toml").tickets)
 assert conductor("status", "--state", str(state), cwd=tmp_path).returncode == 0

 filler = fill(disk)  # full before the run starts
 one_line_error(conductor("run", "p.toml", "--state", str(state), cwd=tmp_path), "is full")
 one_line_error(conductor("pause", "--state", str(state), cwd=tmp_path), "is full")
 assert conductor("status", "--state", str(state), cwd=tmp_path).returncode == 0
 filler.unlink()
 assert {s for s, _ in image(state).values()} == {"todo"} and not starts(tmp_path)
 with StateStore.open(state) as store:
  assert not store.pause_state().paused  # the refused pause wrote nothing

 filler = fill(disk, leave=96 * 1024)  # room for a few dozen commits: full mid-run
 one_line_error(conductor("run", "p.toml", "--state", str(state), cwd=tmp_path), "is full", "kept")
 kept = {tid: n for tid, (status, n) in image(state).items() if status == "completed"}
 assert 0 < len(kept) < 300
 status = conductor("status", "--state", str(state), "--json", cwd=tmp_path)
 assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
 filler.unlink()

 assert conductor("pause", "--state", str(state), cwd=tmp_path).returncode == 0
 fill(disk)
 one_line_error(conductor("resume", "--state", str(state), cwd=tmp_path), "is full")
 (disk / "filler").unlink()
 assert conductor("resume", "--state", str(state), cwd=tmp_path).returncode == 0

 result = conductor("run", "p.toml", "--state", str(state), cwd=tmp_path)
 assert result.returncode == 0, result.stderr
 after = image(state)
 assert {s for s, _ in after.values()} == {"completed"}
 assert {tid: after[tid][1] for tid in kept} == kept  # nothing completed ran again
 runs = starts(tmp_path)
 assert set(runs) == set(after)
 # Only a ticket whose completion the full disk kept from being recorded ran twice.
 again = [tid for tid, n in runs.items() if n > 1]
 assert len(again) <= 2 and all(tid not in kept and runs[tid] == 2 for tid in again), again


def test_a_read_only_file_system_is_named_read_only_not_an_io_error(disk: Path) -> None:
 state = disk / "p.state.db"
 with StateStore.open(state) as store:
  store.restore("p", pipeline_from_dict({"tickets": [{"id": "a", "sleep": 0}]}).tickets)
 remount = subprocess.run(
  ["mount", "-o", "remount,ro", str(disk)], capture_output=True, timeout=WAIT, check=False
 )
 assert remount.returncode == 0, remount.stderr
 for call in (
  lambda: StateStore.open(state).set_paused(True),
  lambda: StateStore.open(disk / "new.state.db"),
 ):
  with pytest.raises(StateReadOnlyError) as caught:
   call()
  assert "read-only" in str(caught.value) and "I/O" not in str(caught.value)
  assert "\n" not in str(caught.value)
 assert check_state_file(state, deep=True)


# -- files planted beside the state -----------------------------------------------------------


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
@pytest.mark.parametrize("exists", [True, False], ids=["state", "no-state"])
def test_a_planted_side_file_symlink_is_refused_and_its_target_untouched(
 tmp_path: Path, suffix: str, exists: bool
) -> None:
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 if exists:
  assert conductor("run", "p.toml", "--state", "S", cwd=tmp_path).returncode == 0
 victim = tmp_path / "victim.txt"
 victim.write_text("precious\n")
 (tmp_path / f"S{suffix}").symlink_to(victim)
 for command in (("run", "p.toml", "--fresh"), ("run", "p.toml")):
  line = one_line_error(conductor(*command, "--state", "S", cwd=tmp_path), f"S{suffix}")
  assert "symbolic link" in line
 assert victim.read_text() == "precious\n"
 assert (tmp_path / f"S{suffix}").is_symlink()


def test_the_temporary_new_state_is_never_a_followed_link(tmp_path: Path) -> None:
 victim = tmp_path / "victim.txt"
 victim.write_text("precious\n")
 state = tmp_path / "S"
 (tmp_path / f"S.new-{os.getpid()}").symlink_to(victim)
 with pytest.raises(StateSideFileError) as caught:
  StateStore.open(state)
 assert "symbolic link" in str(caught.value) and not state.exists()
 assert victim.read_text() == "precious\n"


@pytest.mark.skipif(not IS_ROOT, reason="needs root to plant a file as another user")
def test_a_side_file_of_another_user_is_refused(tmp_path: Path) -> None:
 state = tmp_path / "S"
 with StateStore.open(state) as store:
  store.restore("p", pipeline_from_dict({"tickets": [{"id": "a", "sleep": 0}]}).tickets)
 planted = Path(f"{state}-wal")
 planted.write_bytes(b"")
 os.chown(planted, NOBODY, NOBODY)
 with pytest.raises(StateSideFileError) as caught:
  StateStore.open(state)
 assert "another user" in str(caught.value)
