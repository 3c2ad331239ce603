"""control-traffic: hostile requests on a live run's control socket (`<state>-ctl`).

The run holds itself open with a `hold` ticket while probes keep starting around it. Then:
deep JSON (a 20,000-deep array, a 10,000-deep object, a deep value inside a real request),
oversized lines (1 MB with no newline, 200 KB with one), non-UTF-8, a BOM, binary junk,
NULs, JSON of the wrong types, huge numbers, NaN, half-open requests (shut down for writing
mid-request), a connection closed at once, one reset, one closed before the answer, fifty
requests in one write; and while 8 slow clients dribble a request one byte at a time
(never finishing) and 50 idle connections stay open: `conductor status --json`, then 40 of
them in parallel. After each step a plain status request on the socket must still be
answered, and the run must still be alive. Then `conductor pause` and `resume`, release the
hold: the run must end by itself with exit 0, no ticket started twice, nothing left over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .harness import Config, Done, Lab, Ledger, Row, check_final, check_log, clip, wait_until
from .pipelines import add_bulk, add_hold, probe_pipeline

CLASS = "control-traffic"
STATUS = b'{"op": "status"}\n'


def socket_path(state: Path) -> Path:
 """Where the run listens: `<state>-ctl`, or the private short path conductor uses when
 that is too long for a Unix socket (see conductor.control.control_socket_path)."""
 absolute = Path(os.path.abspath(state))
 beside = absolute.with_name(absolute.name + "-ctl")
 if len(os.fsencode(beside)) <= 100:
  return beside
 digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:24]
 return Path(tempfile.gettempdir()) / f"conductor-{os.getuid()}" / f"{digest}.sock"


def exchange(
 path: Path,
 data: bytes,
 *,
 read: bool = True,
 shut: bool = False,
 reset: bool = False,
 timeout: float = 3.0,
) -> bytes:
 """Send `data`, then read up to a newline (or EOF, or `timeout`). Never raises."""
 sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
 sock.settimeout(timeout)
 got = bytearray()
 try:
  sock.connect(os.fspath(path))
  if data:
   sock.sendall(data)
  if shut:
   sock.shutdown(socket.SHUT_WR)
  if reset:
   sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
   return b""
  while read and len(got) < (1 << 22):
   chunk = sock.recv(1 << 16)
   if not chunk:
    break
   got += chunk
   if got.endswith(b"\n"):
    break
 except OSError:
  pass
 finally:
  sock.close()
 return bytes(got)


def healthy(path: Path) -> str | None:
 """None if a plain status request is answered with ok, else what went wrong."""
 try:
  with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
   sock.settimeout(10.0)
   sock.connect(os.fspath(path))
 except OSError as exc:
  return f"cannot be reached ({exc.strerror or exc})"
 answer = exchange(path, STATUS, timeout=10.0)
 if not answer:
  return "did not answer a plain status request within 10 s"
 try:
  data = json.loads(answer)
 except ValueError:
  return f"a status answer that is not JSON: {clip(answer.decode(errors='replace'), 80)}"
 if not isinstance(data, dict) or not data.get("ok"):
  return f"status refused: {clip(str(data), 120)}"
 return None


def _hostile(rng: random.Random) -> list[tuple[str, Callable[[Path], object]]]:
 deep_array = b"[" * 20000 + b"]" * 20000 + b"\n"
 deep_object = b'{"a":' * 10000 + b"1" + b"}" * 10000 + b"\n"
 deep_inside = b'{"op": "status", "history": ' + b"[" * 15000 + b"]" * 15000 + b"}\n"
 wrong = [
  b"null\n",
  b"[]\n",
  b'"status"\n',
  b"42\n",
  b'{"op": ["status"]}\n',
  b'{"op": {"op": "status"}}\n',
  b'{"op": "status", "history": {"x": []}}\n',
  b'{"op": "pause", "reason": {"a": [1, 2]}}\n',
  b'{"op": "resume", "reason": 7}\n',
  b'{"op": "approve", "tickets": "t0001"}\n',
  b'{"op": "approve", "tickets": [1, null, {"x": 1}]}\n',
  b'{"op": "launch-missiles"}\n',
  b'{"op": "status", "history": ' + b"9" * 5000 + b"}\n",
  b'{"op": "status", "history": 1e999999}\n',
  b'{"op": NaN}\n',
  b'{"op": "status"} trailing junk\n',
  b"{" + b'"k": 1, ' * 5000 + b'"op": "status"}\n',
 ]

 def each(items: list[bytes]) -> Callable[[Path], object]:
  return lambda p: [exchange(p, item) for item in items]

 return [
  ("a 20,000-deep JSON array", lambda p: exchange(p, deep_array)),
  ("a 10,000-deep JSON object", lambda p: exchange(p, deep_object)),
  ("a 15,000-deep value in a status request", lambda p: exchange(p, deep_inside)),
  ("1 MB with no newline", lambda p: exchange(p, b"x" * (1 << 20))),
  (
   "a 200 KB request line",
   lambda p: exchange(p, b'{"op": "status", "reason": "' + b"x" * 200_000 + b'"}\n'),
  ),
  (
   "a 60 KB reason",
   lambda p: exchange(p, b'{"op": "resume", "reason": "' + b"r" * 60_000 + b'"}\n'),
  ),
  (
   "non-UTF-8 bytes",
   each([b'{"op": "\xff\xfe\xfd"}\n', b"\xc3\x28\xa0\xa1\n", b"\x80" * 100 + b"\n"]),
  ),
  ("a UTF-8 BOM, then a request", lambda p: exchange(p, b'\xef\xbb\xbf{"op": "status"}\n')),
  ("binary junk", each([rng.randbytes(4096) + b"\n", rng.randbytes(70_000)])),
  ("NUL bytes", lambda p: exchange(p, b"\x00" * 4096 + b"\n")),
  ("JSON of the wrong types", each(wrong)),
  ("half-open: half a request, then shut down", lambda p: exchange(p, b'{"op": "sta', shut=True)),
  (
   "half-open: a request without its newline",
   lambda p: exchange(p, b'{"op": "status"}', shut=True),
  ),
  ("a connection closed at once", lambda p: exchange(p, b"", read=False)),
  ("a connection reset after its request", lambda p: exchange(p, STATUS, reset=True)),
  (
   "closed before reading the answer",
   lambda p: exchange(p, b'{"op": "status", "history": true}\n', read=False),
  ),
  ("50 requests in one write", lambda p: exchange(p, STATUS * 50)),
 ]


class Slow:
 """Clients that dribble a request one byte at a time and never finish it, plus idle
 connections that send nothing; all closed by `stop()`."""

 def __init__(self, path: Path, dribblers: int, idle: int) -> None:
  self.stop_event = threading.Event()
  self.socks: list[socket.socket] = []
  self.threads = [
   threading.Thread(target=self._dribble, args=(path,), daemon=True) for _ in range(dribblers)
  ]
  for _ in range(idle):
   s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
   s.settimeout(3)
   with contextlib.suppress(OSError):
    s.connect(os.fspath(path))
   self.socks.append(s)
  for t in self.threads:
   t.start()

 def _dribble(self, path: Path) -> None:
  with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
   s.settimeout(3)
   try:
    s.connect(os.fspath(path))
    for byte in b'{"op": "status", "history": true, "reason": "' + b"z" * 10_000:
     if self.stop_event.wait(0.25):
      return
     s.sendall(bytes([byte]))
   except OSError:
    return

 def stop(self) -> None:
  self.stop_event.set()
  for t in self.threads:
   t.join(10)
  for s in self.socks:
   s.close()


def run(cfg: Config, row: Row, rng: random.Random, until: float) -> None:
 lab = Lab(cfg, row, cfg.work / f"{CLASS}-{row.shape}", rng)
 release = lab.folder / "release"
 pipe = probe_pipeline(
  row.shape,
  36,
  rng,
  lab.log.path,
  mix={"shell": 50, "sync": 25, "async": 25},
  seconds=(0.1, 0.2) if row.shape == "chain" else (0.1, 0.4),
 )
 add_hold(pipe, lab.log.path, release)
 bulk = {"chain": 2000, "wide": 20000, "random": 5000}[row.shape]
 add_bulk(pipe, row.shape, bulk, rng)
 row.info.append(f"{len(pipe.deps)} tickets: 36 probes, a hold, {bulk} instant ones")
 pipe.write(lab.folder)
 backend = ("asyncio", "trio")[("chain", "wide", "random").index(row.shape) % 2]
 path = socket_path(lab.state)
 ledger = Ledger()
 row.trials += 1
 what = f"conductor run ({backend}) under hostile control traffic"
 mark = lab.log.mark()
 bg = lab.start(what, lab.run_args(backend, fresh=True))
 if not wait_until(lambda: (path.exists() and lab.log.mark() > mark) or not bg.alive(), 30):
  row.fail("broken", f"`{what}`: its control socket did not appear within 30 s")
 if bg.alive():
  slow = Slow(path, dribblers=8, idle=50)
  try:
   one = lab.cmd(
    "conductor status --json (8 slow clients, 50 idle)",
    lab.control_args("status", "--json"),
    expect={0},
    bound=30,
   )
   if one.code == 0:
    _live(row, one)
   parallel = [
    lab.start("conductor status --json (40 in parallel)", lab.control_args("status", "--json"))
    for _ in range(40)
   ]
   failed = 0
   for started in parallel:
    done = lab.finish(started, expect={0}, bound=90)  # a failure counts as an exit
    failed += done.code != 0
    if done.code == 0:
     _live(row, done)
   row.info.append(f"{failed} of 40 parallel `conductor status --json` failed")
  finally:
   slow.stop()
  problem = healthy(path)
  if problem:
   row.fail("broken", f"after the slow, idle and parallel clients: the control server {problem}")
  lab.cmd(
   "conductor pause (live)", lab.control_args("pause", "--reason", "traffic"), expect={0}, bound=30
  )
  lab.cmd("conductor resume (live)", lab.control_args("resume"), expect={0}, bound=30)
 items = _hostile(rng)
 first = ("chain", "wide", "random").index(row.shape)
 items = items[first:] + items[:first]  # each shape leads with another deep request
 for k, (name, send) in enumerate(items):
  if not bg.alive():
   row.fail("broken", f"the run died during the traffic, before {name}")
   break
  send(path)
  problem = healthy(path)
  if problem:
   row.fail("broken", f"after {name}: the control server {problem}")
   if k + 1 < len(items):
    row.info.append(f"{len(items) - k - 1} hostile items not tried: the server was gone")
   break
 if bg.alive():  # a hostile "pause" may have been obeyed: the run must be able to end
  lab.cmd("conductor resume (after the traffic)", lab.control_args("resume"), expect={0}, bound=30)
 release.write_text("")
 done = lab.finish(bg, expect={0}, bound=90, mark=mark)
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 ledger.ended(lab.log.mark(), lab.snapshot(), what)
 if time.monotonic() > until:
  row.info.append("over its time share")
 what = "clean re-run (asyncio) after the traffic"
 mark = lab.log.mark()
 lab.cmd(
  "conductor resume (to be sure the final run is not paused)",
  lab.control_args("resume"),
  expect={0},
 )
 done = lab.cmd(what, lab.run_args("asyncio"), expect={0}, bound=60)
 ledger.run(what, mark, lab.log.mark(), done.printed)
 lab.leftovers(f"after `{what}`")
 check_final(row, lab.snapshot(), pipe.deps, what)
 check_log(row, lab.log.read(), pipe.deps, ledger)


def _live(row: Row, done: Done) -> bool:
 """Whether a `status --json` answered from the live run; count it if it did not."""
 if done.code != 0:
  return False
 try:
  live = json.loads(done.out).get("live")
 except (ValueError, AttributeError):
  live = None
 if live is not True:
  row.fail("broken", f"`{done.label}` did not answer from the live run (live: {live})")
  return False
 return True
