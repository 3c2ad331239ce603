"""The control socket under hostile and unlucky traffic, as a user and a second user meet it.

Real `conductor run` processes, real Unix sockets, real locks. The runs' tickets block on a
FIFO the test holds open, so a run stays live exactly as long as the test needs it; each
ticket logs its start (`runs.log`), so the log shows that nothing a client sent made a
ticket start twice. Every wait is on a line, a process exit or a socket answer, bounded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from procs import Child, conductor, one_line_error, reap_children
from rich.console import Console, RenderableType

from conductor import control, locks
from conductor._files import trusted_owners
from conductor.control import (
 MAX_REASON,
 ControlError,
 control_socket_path,
 request,
 status_json,
)
from conductor.dag_engine import ExecutionEngine, Ticket
from conductor.locks import FileLock, handover_lock_path, owner_lock_path
from conductor.multi_agent_conductor import ConductorEngine
from conductor.pipeline import load_pipeline
from conductor.report import live_report
from conductor.server import _Answers
from conductor.session import open_run
from conductor.store import StateError
from conductor.views import render_status

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="needs Linux")

BACKENDS = ["asyncio", "trio"]
WAIT = 60.0  # seconds any single wait may take before the test fails

# A ticket that logs its start, opens the FIFO `hold`, says so on the FIFO `started`, then
# blocks until the test closes `hold`. It opens `hold` before it says so: opened after the
# test had closed it (a slow shell on a loaded machine), the open would wait for a writer
# forever.
HELD = (
 "echo $CONDUCTOR_TICKET $CONDUCTOR_ATTEMPT >> runs.log; exec 3< hold; "
 "echo $CONDUCTOR_TICKET > started; cat <&3 > /dev/null"
)


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
 yield
 reap_children()


def status(state: Path, cwd: Path) -> dict[str, object]:
 result = conductor("status", "--state", str(state), "--json", cwd=cwd)
 assert result.returncode == 0, result.stderr
 report = json.loads(result.stdout)
 assert isinstance(report, dict)
 return report


class HeldRun:
 """A live `conductor run` whose tickets all start, then block until `release()`."""

 def __init__(self, folder: Path, backend: str, ids: list[str], *, extra: str = "") -> None:
  self.folder = folder
  self.state = folder / "p.state.db"
  self.ids = ids
  os.mkfifo(folder / "hold")
  # Our end stays open, so a ticket's `cat` blocks until we close it: then all see EOF.
  self._hold: int | None = os.open(folder / "hold", os.O_RDWR | os.O_NONBLOCK)
  os.mkfifo(folder / "started")
  self._started = os.open(folder / "started", os.O_RDWR | os.O_NONBLOCK)  # never at EOF
  text = f'[pipeline]\nname = "p"\nmax_workers = {len(ids)}\n{extra}'
  for tid in ids:
   text += f"[[tickets]]\nid = {tid!r}\nrun = {HELD!r}\n"
  (folder / "p.toml").write_text(text.replace("'", '"'))
  self.child = Child("run", "p.toml", "--backend", backend, cwd=folder, timeout=WAIT)
  self.child.wait_for("^control it from another terminal")

 def wait_started(self) -> None:
  """Wait until every ticket's command runs (its process is up, blocked on `hold`)."""
  seen = b""
  while seen.count(b"\n") < len(self.ids):
   readable, _, _ = select.select([self._started], [], [], WAIT)
   assert readable, f"tickets did not all start within {WAIT} s: {seen!r}"
   seen += os.read(self._started, 4096)

 def release(self) -> None:
  if self._hold is not None:
   os.close(self._hold)
   self._hold = None

 def close(self) -> None:
  self.release()
  os.close(self._started)

 def assert_each_started_once(self) -> None:
  assert self.child.finish() == 0, self.child.lines[-10:]
  starts = (self.folder / "runs.log").read_text().split("\n")[:-1]
  assert sorted(starts) == sorted(f"{tid} 1" for tid in self.ids), starts
  conn = sqlite3.connect(f"file:{self.state}?mode=ro", uri=True)
  try:
   events = conn.execute("SELECT ticket FROM history WHERE event = 'in_progress'").fetchall()
  finally:
   conn.close()
  assert sorted(t for (t,) in events) == sorted(self.ids)

 def assert_live(self) -> None:
  report = status(self.state, self.folder)
  assert report["live"] and report["pid"] == self.child.proc.pid, report


@pytest.fixture
def held() -> Iterator[list[HeldRun]]:
 runs: list[HeldRun] = []
 yield runs
 for run in runs:
  run.close()


def connect(path: Path) -> socket.socket:
 sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
 sock.settimeout(WAIT)
 sock.connect(os.fspath(path))
 return sock


def answer_of(sock: socket.socket) -> dict[str, object] | None:
 """The answer line the server sent before closing (None if it closed without one)."""
 data = b""
 with contextlib.suppress(ConnectionResetError, BrokenPipeError):
  while chunk := sock.recv(1 << 16):
   data += chunk
 sock.close()
 if not data:
  return None
 assert data.endswith(b"\n") and data.count(b"\n") == 1, data[:200]
 answer = json.loads(data)
 assert isinstance(answer, dict)
 return answer


def exchange(path: Path, payload: bytes) -> dict[str, object] | None:
 sock = connect(path)
 with contextlib.suppress(BrokenPipeError, ConnectionResetError):
  sock.sendall(payload)
 return answer_of(sock)


# -- item 2: nothing a client sends stops the server or the run --------------------------------

BAD_REQUESTS = {
 "20,000-deep JSON array": b"[" * 20_000 + b"]" * 20_000 + b"\n",
 "20,000-deep JSON object": b'{"a":' * 20_000 + b"1" + b"}" * 20_000 + b"\n",
 "oversized line": b"x" * (64 * 1024 + 10) + b"\n",
 "not UTF-8": b'{"op": "st\xffatus"}\n',
 "UTF-16": '{"op": "status"}\n'.encode("utf-16"),
 "not JSON": b"pause please\n",
 "an empty line": b"\n",
 "a huge number": b"1" * 50_000 + b"\n",
 "not an object": b'["pause"]\n',
 "a bare string": b'"pause"\n',
 "no op": b'{"reason": "x"}\n',
 "an op of the wrong type": b'{"op": ["pause"]}\n',
 "an unknown op": b'{"op": "explode"}\n',
 "a reason of the wrong type": b'{"op": "pause", "reason": {"a": 1}}\n',
 "a reason over the limit": json.dumps({"op": "pause", "reason": "x" * (MAX_REASON + 1)}).encode()
 + b"\n",
 "approve with no list": b'{"op": "approve", "tickets": "a"}\n',
 "approve of unknown ids": b'{"op": "approve", "tickets": ["a", "nope\\u001b[2J"]}\n',
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_slow_half_open_and_concurrent_requests_never_stop_the_run(
 tmp_path: Path, backend: str, held: list[HeldRun]
) -> None:
 run = HeldRun(tmp_path, backend, ["a", "b", "c"])
 held.append(run)
 run.wait_started()
 path = control_socket_path(run.state)
 silent = connect(path)  # connects, never sends: must hold up nobody, and be dropped in time

 for name, payload in BAD_REQUESTS.items():
  answer = exchange(path, payload)
  assert answer is None or answer["ok"] is False, (name, answer)
  if name != "oversized line":  # the only one the server may cut short without a word
   assert answer is not None and isinstance(answer["error"], str), name
  run.assert_live()
 assert status(run.state, tmp_path)["paused"] is False  # the over-long reason paused nothing

 # Closed mid-line, reset mid-line: nobody to answer; the server carries on.
 closed = connect(path)
 closed.sendall(b'{"op": "pau')
 closed.close()
 reset = connect(path)
 reset.sendall(b'{"op": "res')
 reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
 reset.close()  # linger 0: RST
 # A slow client, mid-line while the flood comes (its whole line must arrive within the
 # server's CONTROL_TIMEOUT, so it starts only now: the steps above may take seconds).
 partial = connect(path)
 partial.sendall(b'{"op": "sta')
 # Many at once, each bad in its own way, none waiting for another.
 flood = [connect(path) for _ in range(60)]
 for i, sock in enumerate(flood):
  sock.sendall(list(BAD_REQUESTS.values())[i % len(BAD_REQUESTS)])
 for sock in flood:
  answer = answer_of(sock)
  assert answer is None or answer["ok"] is False
 run.assert_live()

 # The slow client finishes its line and gets its answer; the silent one is dropped in time.
 partial.sendall(b'tus"}\n')
 answer = answer_of(partial)
 assert answer is not None and answer["ok"] is True
 report = answer["report"]
 assert isinstance(report, dict) and report["running"] == ["a", "b", "c"]
 dropped = answer_of(silent)  # bounded by the server's own timeout, not by us
 assert dropped is not None and dropped["ok"] is False and "within" in str(dropped["error"])

 run.release()
 run.assert_each_started_once()


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_out_of_file_descriptors_stops_accepting_for_a_while_never_the_run(
 tmp_path: Path, backend: str, held: list[HeldRun]
) -> None:
 run = HeldRun(tmp_path, backend, ["a", "b"])
 held.append(run)
 run.wait_started()
 pid = run.child.proc.pid
 limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
 in_use = len(os.listdir(f"/proc/{pid}/fd"))
 resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 2, limits[1]))
 path = control_socket_path(run.state)
 flood = [connect(path) for _ in range(8)]  # the kernel queues what the run cannot accept
 try:
  run.child.wait_for("control server: accepting a connection failed .*Too many open files")
 finally:
  for sock in flood:
   sock.close()
  resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
 run.assert_live()
 run.release()
 run.assert_each_started_once()
 assert not any("Traceback" in line for line in run.child.lines)


@pytest.mark.anyio
async def test_a_bug_in_answering_is_logged_in_one_line_and_the_server_carries_on(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
 # The structural guarantee: whatever a connection's handler raises stays in that handler.
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 pipeline = load_pipeline(tmp_path / "p.toml")
 durable = open_run(tmp_path / "p.state.db", pipeline)
 go = anyio.Event()
 started: list[str] = []

 async def worker(ticket: Ticket) -> None:
  started.append(ticket.id)
  await go.wait()

 engine = ConductorEngine(ExecutionEngine(pipeline.tickets), worker, name="p")
 durable.store.attach(engine)
 original = _Answers._answer
 calls = 0

 def buggy(self: _Answers, *args: object) -> object:
  nonlocal calls
  calls += 1
  if calls == 1:
   raise RuntimeError("a bug\nwith a forged line")
  return original(self, *args)  # type: ignore[arg-type]

 monkeypatch.setattr(_Answers, "_answer", buggy)
 answers: list[object] = []

 async def body() -> object:
  async with anyio.create_task_group() as tg:
   tg.start_soon(engine.run)
   with anyio.fail_after(WAIT):
    # A pause goes through `_answer` (a status without history has a path of its own).
    with pytest.raises(ControlError, match="could not answer"):
     await anyio.to_thread.run_sync(request, durable.state, "pause")
    answers.append(await anyio.to_thread.run_sync(request, durable.state, "status"))
   go.set()
  return None

 try:
  await durable.drive(engine, body)
 finally:
  durable.close()
 assert started == ["a"] and engine.snapshot().counts.completed == 1
 assert isinstance(answers[0], dict) and answers[0]["live"] is True
 err = capfd.readouterr().err.strip().splitlines()
 assert len(err) == 1 and "RuntimeError: a bug\\nwith a forged line" in err[0], err


# -- item 7: the client checks who serves the socket ------------------------------------------

FOREIGN_SERVER = r"""
import os, socket, sys
path = sys.argv[1]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o666)
os.setgid(65534)
os.setuid(65534)
server.listen(8)  # the peer credentials a client sees are those of listen()
print("ready", flush=True)
while True:
 conn, _ = server.accept()
 try:
  conn.recv(65536)
  conn.sendall(b'{"ok": true, "report": {"pipeline": "p", "pid": 1, "mma_status": "paused", '
   b'"paused": true, "running_at_pause": [], "finishing": []}}\n')
 except OSError:
  pass
 conn.close()
"""


@pytest.mark.skipif(os.getuid() != 0, reason="plays another local user: needs root")
def test_a_socket_served_by_another_user_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 0
 state = tmp_path / "p.state.db"
 owner = FileLock(owner_lock_path(state), trusted_owners(state))  # as if a run held the state...
 assert owner.try_acquire()
 server = subprocess.Popen(
  [sys.executable, "-c", FOREIGN_SERVER, str(control_socket_path(state))],
  stdout=subprocess.PIPE,
  text=True,
 )
 try:
  assert server.stdout is not None and server.stdout.readline() == "ready\n"
  for command in (["pause", "--reason", "x"], ["resume"], ["status"]):
   result = conductor(*command, "--state", "p.state.db", cwd=tmp_path)
   one_line_error(result, "served by uid 65534", "refusing")
   assert "paused" not in result.stdout and "resumed" not in result.stdout
 finally:
  server.kill()
  server.communicate(timeout=WAIT)
  owner.release()
 conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
 try:
  assert conn.execute("SELECT paused FROM pause").fetchone() == (0,)  # no fallback write
 finally:
  conn.close()


# -- item 10: many clients at once -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_40_parallel_status_calls_on_a_live_20000_ticket_run_all_succeed(
 tmp_path: Path, backend: str
) -> None:
 os.mkfifo(tmp_path / "hold")
 hold = os.open(tmp_path / "hold", os.O_RDWR | os.O_NONBLOCK)
 try:
  text = '[pipeline]\nname = "big"\nmax_workers = 4\n[[tickets]]\nid = "hold"\nrun = "cat hold"\n'
  text += "".join(
   f'[[tickets]]\nid = "t{i}"\ndepends_on = ["hold"]\nsleep = 0\n' for i in range(20_000)
  )
  (tmp_path / "big.toml").write_text(text)
  run = Child("run", "big.toml", "--backend", backend, cwd=tmp_path, timeout=WAIT)
  run.wait_for(r" big: hold in_progress")
  clients = [
   subprocess.Popen(
    [sys.executable, "-m", "conductor", "status", "--state", "big.state.db", "--json"],
    cwd=tmp_path,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
   )
   for _ in range(40)
  ]
  results = [client.communicate(timeout=4 * WAIT) for client in clients]
  failed = [
   (c.returncode, err) for c, (_, err) in zip(clients, results, strict=True) if c.returncode
  ]
  assert not failed, failed[:3]
  for out, _ in results:
   report = json.loads(out)
   assert report["live"] and report["pid"] == run.proc.pid
   assert report["counts"]["total"] == 20_001 and len(report["tickets"]) == 20_001
   assert report["running"] == ["hold"] and report["awaiting_approval"] == []
   assert report["pending"] == [f"t{i}" for i in range(20_000)]  # many blocks of `Ids`
   assert next(iter(report)) == "live"
 finally:
  os.close(hold)


@pytest.mark.parametrize("backend", BACKENDS[:1])
def test_parallel_commands_on_a_state_no_run_holds_take_turns_and_all_succeed(
 tmp_path: Path, backend: str
) -> None:
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 assert conductor("run", "p.toml", "--backend", backend, cwd=tmp_path).returncode == 0
 commands = [["status", "--json"], ["pause", "--reason", "r"], ["resume"]] * 6
 clients = [
  subprocess.Popen(
   [sys.executable, "-m", "conductor", *command, "--state", "p.state.db"],
   cwd=tmp_path,
   stdout=subprocess.PIPE,
   stderr=subprocess.PIPE,
   text=True,
  )
  for command in commands
 ]
 for client in clients:
  _, err = client.communicate(timeout=WAIT)
  assert client.returncode == 0, err


def test_an_offline_command_waiting_too_long_names_the_command_holding_the_state(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.setattr(control, "CONTROL_TIMEOUT", 0.5)
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 0
 state = tmp_path / "p.state.db"
 holder = FileLock(
  owner_lock_path(state), trusted_owners(state)
 )  # a `conductor pause` suspended mid-way
 assert holder.try_acquire()
 holder.write(json.dumps({"pid": 4242, "since": 0, "command": "pause"}))
 try:
  with pytest.raises(ControlError, match=r"`conductor pause` \(pid 4242\) has held it"):
   request(state, "status")
  holder.write(json.dumps({"pid": 4343, "since": 0}))  # a run whose socket was deleted
  with pytest.raises(ControlError, match="pid 4343 holds it but its control socket"):
   request(state, "status")
 finally:
  holder.release()
 assert request(state, "status")["live"] is False
 # A run starting (it holds the handover lock exclusively) is named as such.
 handover = FileLock(handover_lock_path(state), trusted_owners(state))
 assert handover.try_acquire()
 try:
  with pytest.raises(ControlError, match="starting or ending a run"):
   request(state, "status")
 finally:
  handover.release()


# -- item 9: approve --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_approve_queues_waiting_tickets_of_a_live_run_and_refuses_unknown_ids(
 tmp_path: Path, backend: str
) -> None:
 (tmp_path / "p.toml").write_text(
  '[pipeline]\nname = "p"\nauto_queue = false\n'
  '[[tickets]]\nid = "a"\nsleep = 0\n'
  '[[tickets]]\nid = "b"\ndepends_on = ["a"]\nsleep = 0\n'
  '[[tickets]]\nid = "c"\nsleep = 0\n'
 )
 state = tmp_path / "p.state.db"
 run = Child("run", "p.toml", "--backend", backend, cwd=tmp_path, timeout=WAIT)
 run.wait_for("^control it from another terminal")
 assert request(state, "status")["report"]["awaiting_approval"] == ["a", "c"]

 with pytest.raises(ControlError, match=r"no ticket 'zz' in pipeline p") as refused:
  request(state, "approve", tickets=["a", "zz"])
 assert "\n" not in str(refused.value)
 assert request(state, "status")["report"]["awaiting_approval"] == ["a", "c"]  # none approved

 early = request(state, "approve", tickets=["b"])  # not ready yet: not waiting
 assert early["live"] and early["report"]["approved"] == []
 assert early["report"]["not_waiting"] == [{"id": "b", "status": "todo"}]

 first = request(state, "approve", tickets=["a", "a"])
 assert first["report"]["approved"] == ["a"] and first["report"]["pid"] == run.proc.pid
 run.wait_for(r" p: a completed")
 assert request(state, "status")["report"]["awaiting_approval"] == ["c", "b"]
 rest = request(state, "approve", tickets=["a", "b", "c"])
 assert rest["report"]["approved"] == ["b", "c"]
 assert rest["report"]["not_waiting"] == [{"id": "a", "status": "completed"}]
 assert run.finish() == 0, run.lines[-10:]

 with pytest.raises(ControlError, match="approvals go to a running pipeline"):
  request(state, "approve", tickets=["a"])
 assert request(state, "status")["report"]["awaiting_approval"] == []


# -- item 6: nothing beside a state is followed through a symlink ----------------------------


def plant(kind: str, path: Path, victim: Path) -> None:
 if kind == "symlink":
  path.symlink_to(victim)
 elif kind == "dangling symlink":
  path.symlink_to(victim.with_name("not-there-yet"))
 elif kind == "hard link":
  os.link(victim, path)
 elif kind == "FIFO":
  os.mkfifo(path)
 elif kind == "folder":
  path.mkdir()


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "hard link", "FIFO", "folder"])
@pytest.mark.parametrize("suffix", ["-lock", "-ctl.lock"])
def test_a_planted_lock_file_is_refused_in_one_line_and_the_victim_is_untouched(
 tmp_path: Path, kind: str, suffix: str
) -> None:
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 0
 victim = tmp_path / "important.txt"
 victim.write_text("precious\n")
 planted = tmp_path / f"p.state.db{suffix}"
 plant(kind, planted, victim)
 for command in (["run", "p.toml", "--fresh"], ["pause", "--state", "p.state.db"]):
  one_line_error(conductor(*command, cwd=tmp_path), planted.name, "remove it")
  assert victim.read_text() == "precious\n"
  assert not victim.with_name("not-there-yet").exists()


@pytest.mark.parametrize("kind", ["symlink", "regular file"])
def test_a_planted_control_socket_path_is_refused_in_one_line(tmp_path: Path, kind: str) -> None:
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 0
 victim = tmp_path / "important.txt"
 victim.write_text("precious\n")
 planted = tmp_path / "p.state.db-ctl"
 if kind == "symlink":
  planted.symlink_to(victim)
 else:
  planted.write_text("not a socket\n")
 for command in (["run", "p.toml", "--fresh"], ["pause", "--state", "p.state.db"]):
  one_line_error(conductor(*command, cwd=tmp_path), "p.state.db-ctl", "remove it")
 assert victim.read_text() == "precious\n"


# -- item 14: a clear limit for reasons; a symlinked state reaches its run ----------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reason_over_the_limit_is_refused_clearly_live_and_offline(
 tmp_path: Path, backend: str, held: list[HeldRun]
) -> None:
 run = HeldRun(tmp_path, backend, ["a"])
 held.append(run)
 run.wait_started()
 long = "x" * 100_000
 one_line_error(
  conductor("pause", "--state", "p.state.db", "--reason", long, cwd=tmp_path),
  f"limit is {MAX_REASON}",
 )
 with pytest.raises(StateError, match=f"1001 characters long; the limit is {MAX_REASON}"):
  request(run.state, "pause", reason="y" * (MAX_REASON + 1))
 assert status(run.state, tmp_path)["paused"] is False
 exact = request(run.state, "pause", reason="z" * MAX_REASON)
 assert exact["live"] and exact["report"]["paused"]
 request(run.state, "resume")
 run.release()
 run.assert_each_started_once()
 one_line_error(
  conductor("pause", "--state", "p.state.db", "--reason", long, cwd=tmp_path),
  f"limit is {MAX_REASON}",
 )
 assert status(run.state, tmp_path)["paused"] is False


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_symlink_to_a_live_runs_state_reaches_that_run(
 tmp_path: Path, backend: str, held: list[HeldRun]
) -> None:
 real = tmp_path / "real"
 real.mkdir()
 run = HeldRun(real, backend, ["a", "b"])
 held.append(run)
 run.wait_started()
 (tmp_path / "link.db").symlink_to(run.state)
 (tmp_path / "dir").symlink_to(real)
 for link in ("link.db", "dir/p.state.db"):
  report = status(Path(link), tmp_path)
  assert report["live"] and report["pid"] == run.child.proc.pid
 paused = conductor("pause", "--state", "link.db", cwd=tmp_path)
 assert paused.returncode == 0 and f"pid {run.child.proc.pid}" in paused.stdout, paused.stderr
 one_line_error(conductor("run", "p.toml", "--state", "../link.db", cwd=real), "in use by")
 assert conductor("resume", "--state", "dir/p.state.db", cwd=tmp_path).returncode == 0
 run.release()
 run.assert_each_started_once()


# -- the lock files: gone after use, and as exclusive as ever ---------------------------------


def beside(state: Path) -> set[str]:
 """The control files found beside `state`: its lock files and its socket."""
 names = {state.name + suffix for suffix in ("-lock", "-ctl.lock", "-ctl")}
 return {p.name for p in state.parent.iterdir()} & names


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_and_the_commands_after_it_leave_no_lock_file_or_socket_beside_the_state(
 tmp_path: Path, backend: str, held: list[HeldRun]
) -> None:
 run = HeldRun(tmp_path, backend, ["a"])
 held.append(run)
 run.wait_started()
 assert beside(run.state) == {"p.state.db-lock", "p.state.db-ctl"}  # the live run's
 assert request(run.state, "pause")["live"] and request(run.state, "resume")["live"]
 assert beside(run.state) == {"p.state.db-lock", "p.state.db-ctl"}  # clients tidied theirs
 run.release()
 run.assert_each_started_once()
 assert beside(run.state) == set()
 for op in ("pause", "status", "resume"):
  assert request(run.state, op)["live"] is False
  assert beside(run.state) == set()


def test_a_locker_that_opened_the_lock_file_as_its_holder_removed_it_locks_the_new_one(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 # The race the re-check exists for, made to happen: `late` opens the file, then its holder
 # lets go (removing it) and another takes the lock on a new file, then `late` locks the
 # file it opened. That lock is free, but it is no longer the lock of the path.
 path = tmp_path / "p.state.db-lock"
 trusted = trusted_owners(tmp_path / "p.state.db")
 first, late, third = (FileLock(path, trusted) for _ in range(3))
 opened = locks.open_beside
 races: list[Callable[[], None]] = []
 opens = 0

 def open_then_race(*args: Any) -> int:
  nonlocal opens
  fd = opened(*args)
  opens += 1
  if races:
   races.pop()()
  return fd

 def hand(holder: FileLock, to: FileLock) -> Callable[[], None]:
  def race() -> None:
   holder.release()
   assert not path.exists() and to.try_acquire()

  return race

 monkeypatch.setattr(locks, "open_beside", open_then_race)
 assert first.try_acquire()
 races.append(hand(first, third))
 opens = 0
 assert not late.try_acquire() and not late.held  # third holds the path's lock
 assert opens == 3  # late's open, third's of a new file, late's again
 # The same while waiting: late's wait ends with False, as first holds it all along.
 races.append(hand(third, first))
 assert late.acquire(0.2) is False
 first.release()
 assert late.acquire(WAIT) and path.exists()
 late.release()
 assert not path.exists()


def test_the_last_shared_holder_removes_the_lock_file_and_an_exclusive_one_waits_for_all(
 tmp_path: Path,
) -> None:
 path = tmp_path / "p.state.db-ctl.lock"
 trusted = trusted_owners(tmp_path / "p.state.db")
 a, b, c = (FileLock(path, trusted) for _ in range(3))
 assert a.try_acquire(shared=True) and b.try_acquire(shared=True)
 assert not c.try_acquire()
 a.release()
 assert path.exists() and not c.try_acquire()  # b still holds it
 b.release()
 assert not path.exists()
 assert c.try_acquire() and path.exists()
 assert not a.try_acquire(shared=True)
 c.release()
 assert not path.exists()


def test_lockers_racing_the_removal_of_the_lock_file_still_take_turns(tmp_path: Path) -> None:
 # Four threads lock one path over and over, exclusively and shared, each lock removing the
 # file as it lets go: at no moment may an exclusive holder share it with anyone.
 path = tmp_path / "p.state.db-lock"
 trusted = trusted_owners(tmp_path / "p.state.db")
 guard = threading.Lock()  # guards `inside`, `overlaps` and `taken`
 inside = {"exclusive": 0, "shared": 0}
 overlaps: list[dict[str, int]] = []
 taken = 0

 def locker(number: int) -> None:
  nonlocal taken
  lock = FileLock(path, trusted)
  for i in range(300):
   kind = "shared" if (i + number) % 3 == 0 else "exclusive"
   assert lock.acquire(WAIT, shared=kind == "shared")
   with guard:
    inside[kind] += 1
    if inside["exclusive"] > 1 or (inside["exclusive"] and inside["shared"]):
     overlaps.append(dict(inside))
    taken += 1
   time.sleep(0)  # lets another thread in while this one holds the lock
   with guard:
    inside[kind] -= 1
   lock.release()

 threads = [threading.Thread(target=locker, args=(n,)) for n in range(4)]
 for thread in threads:
  thread.start()
 for thread in threads:
  thread.join(WAIT)
 assert not any(thread.is_alive() for thread in threads)
 assert taken == 4 * 300 and not overlaps, overlaps[:3]
 assert not path.exists()


# -- status at scale: a summary for plain `conductor status`, the report kept per ticket -------


@pytest.mark.anyio
async def test_a_status_summary_shows_what_the_full_report_shows_and_the_report_is_exact(
 tmp_path: Path,
) -> None:
 # 40 tickets: t05 fails and blocks t06, t10 holds (running) and t20..t39 wait for it, the
 # rest complete. The full report is assembled from per-ticket text the run keeps up to date;
 # it must equal `live_report` of a snapshot with rows, and the summary (plain `status`)
 # must render exactly as the full report does while listing only the notable tickets.
 lines = ['[pipeline]\nname = "p"\nmax_workers = 4\n']
 for i in range(40):
  after = ' depends_on = ["t05"]' if i == 6 else ' depends_on = ["t10"]' if i >= 20 else ""
  lines.append(f'[[tickets]]\nid = "t{i:02d}"\nsleep = 0\n{after.strip()}\n')
 (tmp_path / "p.toml").write_text("".join(lines))
 pipeline = load_pipeline(tmp_path / "p.toml")
 durable = open_run(tmp_path / "p.state.db", pipeline)
 go, settled = anyio.Event(), anyio.Event()
 finished = 0

 async def worker(ticket: Ticket) -> None:
  nonlocal finished
  try:
   if ticket.id == "t10":
    await go.wait()
   elif ticket.id == "t05":
    raise RuntimeError("t05 broke")
  finally:
   finished += 1
   if finished == 18:  # 17 completed and t05 (t10 still running)
    settled.set()

 engine = ConductorEngine(ExecutionEngine(pipeline.tickets), worker, name="p", max_workers=4)
 durable.store.attach(engine)
 got: dict[str, Any] = {}

 async def body() -> None:
  async with anyio.create_task_group() as tg:
   tg.start_soon(engine.run)
   with anyio.fail_after(WAIT):
    await settled.wait()
    # Twice: the second report re-encodes only what changed (nothing here).
    for _ in range(2):
     got["full"] = await anyio.to_thread.run_sync(request, durable.state, "status")
     got["json"] = await anyio.to_thread.run_sync(status_json, durable.state)
    got["json history"] = await anyio.to_thread.run_sync(
     functools.partial(status_json, durable.state, history=True)
    )
    got["summary"] = await anyio.to_thread.run_sync(
     functools.partial(request, durable.state, "status", summary=True)
    )
    got["history"] = await anyio.to_thread.run_sync(
     functools.partial(request, durable.state, "status", history=True)
    )
    got["expected"] = live_report(engine.snapshot(), durable.state, os.getpid())
   go.set()

 try:
  await durable.drive(engine, body)
 finally:
  durable.close()
 full, summary, expected = got["full"]["report"], got["summary"]["report"], got["expected"]
 # `status --json` prints the report as the run sent it: one line, `live` first, the same.
 raw = got["json"]
 assert raw.endswith(b"\n") and raw.count(b"\n") == 1
 printed = json.loads(raw)
 assert next(iter(printed)) == "live" and printed == got["full"]["report"]
 assert json.loads(got["json history"]) == got["history"]["report"]
 assert full["counts"] == {
  "todo": 20,
  "in_progress": 1,
  "completed": 17,
  "failed": 1,
  "blocked": 1,
  "total": 40,
 }
 for item, want in zip(full["tickets"], expected["tickets"], strict=True):
  # The run converts monotonic times to wall times once; live_report at each call.
  assert (item["updated_at"] is None) == (want["updated_at"] is None), item
  if want["updated_at"] is not None:
   assert abs(item["updated_at"] - want["updated_at"]) < 1.0
   item["updated_at"] = want["updated_at"]
 assert full == expected
 with_history = got["history"]["report"]
 assert any(e["ticket"] == "t05" and e["status"] == "failed" for e in with_history["history"])
 assert [(t["id"], t["status"]) for t in with_history["tickets"]] == [
  (t["id"], t["status"]) for t in full["tickets"]
 ]
 assert [t["id"] for t in summary["tickets"]] == ["t05", "t06", "t10"]
 assert summary["summary"] == {"notable": 3, "pending": 20, "awaiting_approval": 0}
 assert len(summary["pending"]) < len(full["pending"]) == 20
 shown = render_status(got["full"])
 assert text_of(render_status(got["summary"])) == text_of(shown)
 assert "pending (20): t20, t21" in text_of(shown) and "(+8)" in text_of(shown)


def text_of(renderable: RenderableType) -> str:
 console = Console(width=200, color_system=None)
 with console.capture() as captured:
  console.print(renderable)
 return captured.get()


def _answer_once(path: Path, answer: bytes, ready: threading.Event) -> None:
 # A server at the control socket path that reads one request and sends `answer`.
 with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
  server.bind(os.fspath(path))
  server.listen(1)
  ready.set()
  server.settimeout(WAIT)
  conn, _ = server.accept()
  with conn:
   conn.settimeout(WAIT)
   request_line = b""
   while not request_line.endswith(b"\n"):
    request_line += conn.recv(4096)
   assert json.loads(request_line)["raw"] is True
   conn.sendall(answer)


@pytest.mark.parametrize(
 ("answer", "what"),
 [
  (b'{"ok": true, "bytes": 1000}\n{"live": true, "tick', "a body cut short"),
  (b'{"ok": true, "bytes": 14}\n{"live": true}', "a body not ending its line"),
  (b'{"ok": true, "bytes": 3}\n{"live": true}\n', "a body longer than it said"),
  (b'{"ok": true, "bytes": 0}\n', "an empty body"),
 ],
)
def test_a_status_json_answer_cut_short_is_an_error_and_nothing_is_printed(
 tmp_path: Path, answer: bytes, what: str
) -> None:
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 0
 state = tmp_path / "p.state.db"
 for client in ("python", "cli"):
  ready = threading.Event()
  server = threading.Thread(target=_answer_once, args=(control_socket_path(state), answer, ready))
  server.start()
  try:
   assert ready.wait(WAIT)
   if client == "python":
    with pytest.raises(ControlError, match="incomplete or malformed answer"):
     status_json(state)
   else:
    result = conductor("status", "--state", "p.state.db", "--json", cwd=tmp_path)
    one_line_error(result, "conductor pid")
    assert result.stdout == "", what
  finally:
   server.join(WAIT)
   control_socket_path(state).unlink()


def test_status_json_from_a_run_that_answers_in_one_line_prints_the_same_report(
 tmp_path: Path,
) -> None:
 # A run of a conductor before `raw` answers it as any status: the report is printed all
 # the same, `live` first.
 (tmp_path / "p.toml").write_text('[[tickets]]\nid = "a"\nsleep = 0\n')
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 0
 state = tmp_path / "p.state.db"
 report = {"state": str(state), "pipeline": "p", "live": True, "pid": 1, "tickets": []}
 answer = json.dumps({"ok": True, "report": report}).encode() + b"\n"
 ready = threading.Event()
 server = threading.Thread(target=_answer_once, args=(control_socket_path(state), answer, ready))
 server.start()
 try:
  assert ready.wait(WAIT)
  printed = status_json(state)
 finally:
  server.join(WAIT)
  control_socket_path(state).unlink()
 assert printed.endswith(b"\n") and json.loads(printed) == report
 assert next(iter(json.loads(printed))) == "live"
