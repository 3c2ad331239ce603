"""Agent tickets across kill -9: real `conductor run` processes against a real loopback
chat-completions server (tests/chat_server.py), and a state of the first format upgraded.

What a run committed is never asked again: a reply whose completion was committed is not
requested again by the re-run, and is whole in the state (`conductor output`); a request in
flight at the kill is sent again, as attempt 2. The tokens spent and an automatic pause with
its resume time are in the state too. Every wait is on a real signal (a request reaching the
server, a line of the run's output, a process exit), bounded by a timeout.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_server import ChatServer, Hang, RateLimited, Reply
from procs import WAIT, Child, conductor, reap_children
from test_store import make_v1_state

from conductor.pipeline import load_pipeline

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

BACKENDS = ["asyncio", "trio"]
# Over 64 KiB, on many lines, with characters a careless path would mangle.
BIG = "".join(f"line {i}: {'é' * 40} {{not a template}} \t\n" for i in range(2000))


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
 yield
 reap_children()


@pytest.fixture
def server() -> Iterator[ChatServer]:
 with ChatServer() as chat:
  yield chat


def write_pipeline(folder: Path, server: ChatServer, tickets: str) -> Path:
 path = folder / "agents.toml"
 path.write_text(
  '[pipeline]\nname = "p"\nmax_workers = 2\n'
  f'[pipeline.agent]\nbase_url = "{server.base_url}"\nmodel = "m"\n' + tickets
 )
 return path


def status(folder: Path) -> dict[str, Any]:
 result = conductor("status", "agents.toml", "--json", cwd=folder)
 assert result.returncode == 0, result.stderr
 report: dict[str, Any] = json.loads(result.stdout)
 return report


def run(folder: Path, backend: str) -> Child:
 return Child("run", "agents.toml", "--backend", backend, cwd=folder)


PLAN_DO = """
[[tickets]]
id = "plan"
prompt = "plan it"

[[tickets]]
id = "do"
depends_on = ["plan"]
prompt = "do this: {{ plan }}"
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_in_flight_at_kill_9_is_sent_again_by_the_re_run(
 tmp_path: Path, server: ChatServer, backend: str
) -> None:
 write_pipeline(tmp_path, server, PLAN_DO)
 server.queue(Hang())  # plan's request: held until the client goes away
 child = run(tmp_path, backend)
 (first,) = server.wait_for_requests(1, WAIT)
 child.kill_hard()
 server.wait_for_abandoned(1, WAIT)  # the killed process's socket closed
 offline = status(tmp_path)
 assert offline["interrupted"] == ["plan"] and offline["tokens_used"] == 0

 again = run(tmp_path, backend)
 assert again.finish() == 0, again.lines[-10:]
 requests = server.requests
 assert len(requests) == 3  # plan (killed), plan again, do
 assert requests[1].body == first.body  # the same request, sent again
 tickets = {t["id"]: t for t in status(tmp_path)["tickets"]}
 assert tickets["plan"]["attempts"] == 2 and tickets["plan"]["status"] == "completed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_committed_reply_is_never_asked_again_and_survives_kill_9_whole_with_its_tokens(
 tmp_path: Path, server: ChatServer, backend: str
) -> None:
 write_pipeline(tmp_path, server, PLAN_DO)
 server.queue(Reply(text=BIG, usage=(11, 7000)), Hang())  # plan replies; do's request hangs
 child = run(tmp_path, backend)
 # `do` starts only once plan's completion, its reply with it, is committed (write-ahead):
 # its request reaching the server is the proof.
 server.wait_for_requests(2, WAIT)
 child.kill_hard()
 offline = status(tmp_path)
 assert offline["tokens_used"] == 7011
 assert {t["id"]: t["tokens"] for t in offline["tickets"]} == {"plan": 7011, "do": None}
 shown = conductor("output", "plan", "agents.toml", cwd=tmp_path)
 assert shown.returncode == 0, shown.stderr
 assert shown.stdout == BIG  # whole, unchanged

 server.queue(Reply(text="done", usage=(3, 2)))
 again = run(tmp_path, backend)
 assert again.finish() == 0, again.lines[-10:]
 requests = server.requests
 assert len(requests) == 3  # plan once; do twice (killed, then again)
 assert requests[2].last_user_message == "do this: " + BIG  # plan's reply, restored whole
 final = status(tmp_path)
 assert final["tokens_used"] == 7011 + 5 and final["counts"]["completed"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_automatic_pause_survives_kill_9_and_the_re_run_resumes_by_itself_at_its_time(
 tmp_path: Path, server: ChatServer, backend: str
) -> None:
 write_pipeline(tmp_path, server, PLAN_DO)
 server.queue(RateLimited(retry_after=2))
 child = run(tmp_path, backend)
 server.wait_for_requests(1, WAIT)
 child.wait_for(r"pipeline paused")  # printed once committed
 child.kill_hard()
 assert len(server.requests) == 1  # killed before it resumed
 offline = status(tmp_path)
 assert offline["paused"] and offline["paused_by"] == "pipeline"
 resume_at = offline["auto_resume_at"]
 assert resume_at is not None

 again = run(tmp_path, backend)  # nobody resumes it: it does, at resume_at
 assert again.finish() == 0, again.lines[-10:]
 requests = server.requests
 assert len(requests) == 3
 # The monotonic arrival, as time.time(): never before the stored resume time.
 arrived = requests[1].arrived + (time.time() - time.monotonic())
 assert arrived >= resume_at - 0.05  # (the two clocks read a moment apart)
 final = status(tmp_path)
 assert not final["paused"] and final["counts"]["completed"] == 2


def test_a_state_of_the_first_format_is_read_as_it_is_and_upgraded_by_a_run(
 tmp_path: Path,
) -> None:
 log = tmp_path / "runs.log"
 (tmp_path / "tick.py").write_text(
  "import os\nwith open('runs.log', 'a') as f:\n f.write(os.environ['CONDUCTOR_TICKET'] + '\\n')\n"
 )
 text = '[pipeline]\nname = "p"\n'
 for tid, deps in (("a", []), ("b", ["a"]), ("c", ["b"])):
  text += f"[[tickets]]\nid = {json.dumps(tid)}\ndepends_on = {json.dumps(deps)}\n"
  text += f"run = {json.dumps(f'{sys.executable} tick.py')}\n"
 pipeline_file = tmp_path / "agents.toml"
 pipeline_file.write_text(text)
 state = tmp_path / "agents.state.db"
 make_v1_state(state, load_pipeline(pipeline_file).tickets, {"a": "completed"}, paused=False)

 before = status(tmp_path)  # read as it is
 assert [t["status"] for t in before["tickets"]] == ["completed", "todo", "todo"]
 assert before["tokens_used"] == 0 and not before["paused"]
 assert version(state) == 1

 result = conductor("run", "agents.toml", cwd=tmp_path)
 assert result.returncode == 0, result.stdout[-2000:] + result.stderr
 assert log.read_text().split() == ["b", "c"]  # a stayed completed
 assert version(state) == 2
 after = status(tmp_path)
 assert [t["status"] for t in after["tickets"]] == ["completed"] * 3
 history = conductor("status", "agents.toml", "--json", "--history", cwd=tmp_path)
 assert json.loads(history.stdout)["history"][0]["status"] == "fresh"  # the old history kept


def version(state: Path) -> int:
 conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
 try:
  return int(conn.execute("PRAGMA user_version").fetchone()[0])
 finally:
  conn.close()
