"""planted: what another local user who can write the state's folder can plant there.

- Symlinks at `<state>-lock`, `<state>-ctl.lock`, `<state>-wal` and `<state>-shm`, each
  pointing at a victim file, under `conductor run --fresh`, `run`, `status`, `pause` and
  `resume`: the victim must be unchanged (content, size, mode, mtime) and the command must
  refuse with one line and exit 2 (for `-shm`, which a run in exclusive mode may never
  open, exit 0 is accepted too, the victim unchanged).
- A foreign control server: a process running as uid 65534 takes the owner lock
  (`<state>-lock`) and listens at `<state>-ctl`, answering "ok" to everything. `conductor
  pause` (and `status`, `resume`) must refuse: exit 2, and never print "paused".

Then, all of it removed, a clean run must finish everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from .harness import Config, Lab, Ledger, Row, check_final, check_log, start_over
from .pipelines import probe_pipeline
from .traffic import socket_path

CLASS = "planted"
LINKS = ("-lock", "-ctl.lock", "-wal", "-shm")
NOBODY = 65534

FOREIGN = r"""
import fcntl, json, os, socket, sys
lock, path = sys.argv[1], sys.argv[2]
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "since": 0}).encode() + b"\n")
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o777)
server.listen(16)
counts = {"todo": 0, "in_progress": 0, "completed": 0, "failed": 0, "blocked": 0, "total": 0}
report = {
 "state": path, "pipeline": "p", "live": True, "pid": os.getpid(), "mma_status": "paused",
 "paused": True, "pause_reason": "spoofed", "paused_since": 0, "running": [],
 "running_at_pause": [], "finishing": [], "interrupted": [], "pending": [], "counts": counts,
 "tickets": [], "awaiting_approval": [], "approved": [], "not_waiting": [],
}
answer = json.dumps({"ok": True, "live": True, "report": report}).encode() + b"\n"
print("ready", flush=True)
while True:
 conn, _ = server.accept()
 conn.settimeout(5)
 try:
  conn.recv(1 << 16)
  conn.sendall(answer)
 except OSError:
  pass
 conn.close()
"""


def fingerprint(path: Path) -> tuple[str, int, int, int, int]:
 info = path.lstat()
 digest = hashlib.sha256(path.read_bytes()).hexdigest()
 return digest, info.st_size, info.st_mode, info.st_mtime_ns, info.st_uid


def run(cfg: Config, row: Row, rng: random.Random, until: float) -> None:
 lab = Lab(cfg, row, cfg.work / f"{CLASS}-{row.shape}", rng)
 pipe = probe_pipeline(
  row.shape, 8, rng, lab.log.path, mix={"shell": 40, "sync": 30, "async": 30}, seconds=(0.01, 0.05)
 )
 pipe.write(lab.folder)
 at = ("chain", "wide", "random").index(row.shape)
 backend = ("asyncio", "trio")[at % 2]
 ledger = Ledger()
 state = lab.state
 victim = lab.folder / "victim.txt"
 what = f"conductor run ({backend}), nothing planted"
 mark = lab.log.mark()
 done = lab.cmd(what, lab.run_args(backend, fresh=True), expect={0})
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 commands = [
  ("conductor run --fresh", lab.run_args(backend, fresh=True)),
  ("conductor run", lab.run_args(backend)),
  ("conductor status", lab.control_args("status")),
  ("conductor pause", lab.control_args("pause", "--reason", "planted")),
  ("conductor resume", lab.control_args("resume")),
 ]
 for suffix in LINKS:
  link = state.with_name(state.name + suffix)
  for name, args in commands:
   row.trials += 1
   victim.write_bytes(b"important: must not change\n" * 40)
   victim.chmod(0o644)
   before = fingerprint(victim)
   if link.is_symlink() or (link.exists() and suffix in ("-lock", "-ctl.lock")):
    link.unlink()
   elif link.exists():
    row.info.append(f"{link.name} is a real file (not planted over): {name} skipped")
    continue
   os.symlink(victim, link)
   if "--fresh" in args:
    start_over(row, lab, ledger, pipe.deps)
   what = f"{name} with {link.name} planted as a symlink to a victim file"
   mark = lab.log.mark()
   done = lab.cmd(what, args, expect={0, 2} if suffix == "-shm" else {2})
   ledger.run(what, mark, lab.log.mark(), done.printed)
   lab.leftovers(f"after `{what}`")
   after = fingerprint(victim)
   if after != before:
    change = f"size {before[1]} -> {after[1]}" if after[1] != before[1] else "content or time"
    row.fail("broken", f"`{what}` changed the victim file ({change})")
   if link.is_symlink():
    link.unlink()
 _foreign(lab, row)
 what = "conductor resume (nothing planted any more)"
 lab.cmd(what, lab.control_args("resume"), expect={0})
 what = f"clean run ({backend}), nothing planted"
 mark = lab.log.mark()
 done = lab.cmd(what, lab.run_args(backend), expect={0})
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 check_final(row, lab.snapshot(), pipe.deps, what)
 check_log(row, lab.log.read(), pipe.deps, ledger)


def _foreign(lab: Lab, row: Row) -> None:
 if os.geteuid() != 0:
  row.info.append("foreign socket: not tried (needs root to run a server as uid 65534)")
  return
 state = lab.state
 lock = state.with_name(state.name + "-lock")
 sock = socket_path(state)
 folder = state.parent
 python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
 for path in (lock, sock):
  with contextlib.suppress(FileNotFoundError):
   path.unlink()
 folder.chmod(0o777)
 server = subprocess.Popen(
  [python, "-I", "-c", FOREIGN, str(lock), str(sock)],
  stdin=subprocess.DEVNULL,
  stdout=subprocess.PIPE,
  stderr=subprocess.PIPE,
  user=NOBODY,
  group=NOBODY,
  extra_groups=[],
  cwd="/",
 )
 try:
  ready = server.stdout.readline() if server.stdout else b""
  if ready.strip() != b"ready":
   err = server.stderr.read().decode(errors="replace") if server.stderr else ""
   row.fail("broken", f"faulttest could not start the foreign server as uid 65534: {err[-200:]}")
   return
  for op, more in (("pause", ("--reason", "spoofed?")), ("status", ()), ("resume", ())):
   row.trials += 1
   what = f"conductor {op} while uid 65534 holds {lock.name} and serves {sock.name}"
   lab.cmd(what, lab.control_args(op, *more), expect={2})  # exit 0: it believed the server
 finally:
  server.kill()
  server.wait(10)
  for stream in (server.stdout, server.stderr):
   if stream:
    stream.close()
  for path in (lock, sock):
   with contextlib.suppress(FileNotFoundError):
    path.unlink()
  folder.chmod(0o755)
