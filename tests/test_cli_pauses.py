"""Pauses the pipeline makes itself, token budgets and whole outputs, as a user meets them in
the terminal: `conductor status`, `resume --budget`, `output`, and the live view's keys.

Real `conductor` processes (tests/procs.py). A run pauses itself through a `call` ticket
that raises `conductor.PausePipeline` once (a marker file says it did), and spends tokens
through `call` tickets that return a `WorkResult` with a `usage`: no HTTP server needed.
Every wait is on a line the run prints or on a command's answer, bounded by a timeout.
Each command is a process start (most of a second), so each test does what it must with
few of them, and the live runs alternate the backends (the engine's own tests cover both).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import WAIT, Child, conductor, one_line_error, reap_children
from test_cli_faults import Terminal

from conductor import server
from conductor.control import encode
from conductor.views import wall_clock

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

STEPS = """
import pathlib
import conductor
from conductor.workers import Usage, WorkResult

BIG = "".join(f"line {i}: [red]not markup[/] \\u00e9\\u2713\\t{'x' * (i % 50)}\\n" for i in range(4000))

def big(ticket):
 return BIG + "no newline at the end"

def nothing(ticket):
 return ""

def limited(ticket):
 # Pauses the whole pipeline the first time (as a rate limit would), then succeeds.
 marker = pathlib.Path(ticket.id + ".limited")
 if not marker.exists():
  marker.write_text("once")
  after = float(pathlib.Path("resume_after").read_text() or "0") or None
  raise conductor.PausePipeline("rate limited by test (3 requests/min)", resume_after=after)
 return "after the limit\\n"

def spend(ticket):
 return WorkResult(output=f"{ticket.id} spent 200\\n", usage=Usage(150, 50))
"""


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
 yield
 reap_children()


def pipeline(folder: Path, tickets: str, head: str = "") -> Path:
 (folder / "steps.py").write_text(STEPS)
 (folder / "resume_after").write_text("")
 path = folder / "p.toml"
 path.write_text(f'[pipeline]\nname = "p"\n{head}\n{tickets}')
 return path


def big_output(folder: Path) -> str:
 # What steps.big returns, from the module itself (loaded here: no process to start).
 spec = importlib.util.spec_from_file_location("steps_for_test", folder / "steps.py")
 assert spec is not None and spec.loader is not None
 module = importlib.util.module_from_spec(spec)
 spec.loader.exec_module(module)
 return str(module.big(None))


def status_json(folder: Path) -> dict[str, object]:
 result = conductor("status", "--json", "p.toml", cwd=folder)
 assert result.returncode == 0, result.stderr
 report: dict[str, object] = json.loads(result.stdout)
 return report


def ok(*args: str, cwd: Path) -> str:
 result = conductor(*args, cwd=cwd)
 assert result.returncode == 0, (args, result.stdout, result.stderr)
 return result.stdout


# -- conductor output ---------------------------------------------------------------------------


def test_output_prints_a_tickets_whole_output_unchanged_from_the_state(tmp_path: Path) -> None:
 pipeline(
  tmp_path,
  '[[tickets]]\nid = "big"\ncall = "steps:big"\n'
  '[[tickets]]\nid = "quiet"\ncall = "steps:nothing"\n'
  '[[tickets]]\nid = "broken"\nrun = "exit 3"\n'
  '[[tickets]]\nid = "after"\nrun = "true"\ndepends_on = ["broken"]\n',
 )
 assert conductor("run", "p.toml", cwd=tmp_path).returncode == 1
 want = big_output(tmp_path)
 assert len(want.encode()) > 200 * 1024  # well over the control protocol's request line
 assert ok("output", "big", "p.toml", cwd=tmp_path) == want  # no markup, no added newline
 assert ok("output", "big", "--state", "p.state.db", cwd=tmp_path) == want
 one_line_error(
  conductor("output", "ghost", "p.toml", cwd=tmp_path),
  "no ticket 'ghost' in pipeline 'p'",
  "`conductor status p.toml` lists them",
 )
 one_line_error(
  conductor("output", "after", "p.toml", cwd=tmp_path), "'after'", "blocked", "conductor status"
 )
 one_line_error(conductor("output", "quiet", "p.toml", cwd=tmp_path), "'quiet'", "printed nothing")


# -- pauses the pipeline makes itself ----------------------------------------------------------


def test_status_says_who_paused_and_until_when_and_a_persons_pause_wins(tmp_path: Path) -> None:
 backend = "asyncio"
 pipeline(
  tmp_path,
  '[[tickets]]\nid = "big"\ncall = "steps:big"\n'
  '[[tickets]]\nid = "limited"\ncall = "steps:limited"\ndepends_on = ["big"]\n',
 )
 (tmp_path / "resume_after").write_text("3600")
 run = Child("run", "p.toml", "--backend", backend, cwd=tmp_path)
 line = run.wait_for(r"pipeline paused: rate limited by test")

 report = status_json(tmp_path)
 at = report["auto_resume_at"]
 assert isinstance(at, float) and report["paused_by"] == "pipeline"
 assert report["pause_reason"] == "rate limited by test (3 requests/min)"
 assert report["live"] is True and report["tokens_used"] == 0 and report["token_budget"] is None
 words = f"paused: rate limited by test (3 requests/min); resumes by itself at {wall_clock(at)}"
 assert line.endswith(" p: pipeline " + words)
 shown = ok("status", "p.toml", cwd=tmp_path)
 assert words in shown and "tokens" not in shown  # no tokens line for a plain pipeline
 # The live run answers `output` over its socket (a second process could not open the
 # state meanwhile): the whole output, megabytes or not.
 assert ok("output", "big", "p.toml", cwd=tmp_path) == big_output(tmp_path)

 # A person's pause wins: it no longer ends by itself.
 ok("pause", "p.toml", "--reason", "lunch", cwd=tmp_path)
 report = status_json(tmp_path)
 assert report["paused_by"] == "person" and report["auto_resume_at"] is None
 assert report["pause_reason"] == "lunch"

 ok("resume", "p.toml", cwd=tmp_path)
 # Its attempt was given back: no retries, yet it ran again and completed.
 run.wait_for(r" p: limited completed \(attempt 2\)$")
 assert run.finish() == 0


def test_an_automatic_pause_without_a_time_waits_for_a_person_also_across_runs(
 tmp_path: Path,
) -> None:
 backend = "trio"
 pipeline(tmp_path, '[[tickets]]\nid = "limited"\ncall = "steps:limited"\n')
 run = Child("run", "p.toml", "--backend", backend, cwd=tmp_path)
 run.wait_for(r"pipeline paused: rate limited by test \(3 requests/min\); resume by hand$")
 run.proc.send_signal(signal.SIGINT)  # stop: the state keeps the pause, and whose it is
 assert run.finish() != 0
 shown = ok("status", "p.toml", cwd=tmp_path)
 assert "not running" in shown
 assert "paused: rate limited by test (3 requests/min); resume by hand" in shown
 one_line_error(
  conductor("output", "limited", "p.toml", cwd=tmp_path),
  "ticket 'limited' of pipeline 'p' has no output yet (todo): run it: `conductor run p.toml`",
 )
 ok("resume", "p.toml", cwd=tmp_path)
 assert conductor("run", "p.toml", "--backend", backend, cwd=tmp_path).returncode == 0
 assert ok("output", "limited", "p.toml", cwd=tmp_path) == "after the limit\n"


# -- token budgets -----------------------------------------------------------------------------

SPENDERS = (
 '[[tickets]]\nid = "one"\ncall = "steps:spend"\n'
 '[[tickets]]\nid = "two"\ncall = "steps:spend"\ndepends_on = ["one"]\n'
)


def test_a_spent_budget_pauses_and_resume_budget_raises_it_in_a_live_run(tmp_path: Path) -> None:
 pipeline(tmp_path, SPENDERS, head="token_budget = 150")
 run = Child("run", "p.toml", cwd=tmp_path)
 run.wait_for(r"pipeline paused: token budget reached: 200 of 150 tokens; resume by hand$")
 report = status_json(tmp_path)
 assert (report["tokens_used"], report["token_budget"]) == (200, 150)
 assert report["paused_by"] == "pipeline" and report["auto_resume_at"] is None
 tickets = {t["id"]: t for t in report["tickets"]}  # type: ignore[attr-defined]
 assert tickets["one"]["tokens"] == 200 and tickets["two"]["tokens"] is None

 one_line_error(
  conductor("resume", "p.toml", cwd=tmp_path),
  "token budget reached: 200 of 150 tokens; raise it: conductor resume --budget 225 p.toml",
 )
 one_line_error(
  conductor("resume", "--budget", "200", "--state", "p.state.db", cwd=tmp_path),
  "a token budget of 200 is not above the 200 tokens used; raise it: "
  "conductor resume --budget 300 --state p.state.db",
 )
 shown = ok("status", "p.toml", cwd=tmp_path)  # the refused resumes changed nothing:
 assert "tokens: 200 of 150" in shown and "PAUSED since" in shown
 assert "raise it: conductor resume --budget 225 p.toml" in shown
 said = ok("resume", "--budget", "1000", "p.toml", cwd=tmp_path)
 assert said.startswith("resumed p (running, pid")
 assert "with a token budget of 1,000 (200 used)" in said
 assert run.finish() == 0
 report = status_json(tmp_path)
 assert (report["tokens_used"], report["token_budget"]) == (400, 1000)  # kept in the state
 assert [t["tokens"] for t in report["tickets"]] == [200, 200]  # type: ignore[attr-defined]


def test_resume_budget_raises_it_in_the_state_with_no_live_run(tmp_path: Path) -> None:
 pipeline(tmp_path, SPENDERS, head="token_budget = 150")
 run = Child("run", "p.toml", cwd=tmp_path)
 run.wait_for(r"pipeline paused: token budget reached")
 run.proc.send_signal(signal.SIGINT)  # stop: the state stays paused by the budget
 assert run.finish() != 0
 one_line_error(
  conductor("resume", "p.toml", cwd=tmp_path),
  "token budget reached: 200 of 150 tokens; raise it: conductor resume --budget 225 p.toml",
 )
 one_line_error(conductor("resume", "--budget", "199", "p.toml", cwd=tmp_path), "not above")
 shown = ok("status", "p.toml", cwd=tmp_path)  # the refused resumes wrote nothing:
 assert "not running" in shown and "tokens: 200 of 150" in shown
 assert "paused: token budget reached: 200 of 150 tokens; resume by hand" in shown
 said = ok("resume", "--budget", "500", "p.toml", cwd=tmp_path)
 assert "(not running) with a token budget of 500 (200 used)" in said
 assert conductor("run", "p.toml", "--backend", "trio", cwd=tmp_path).returncode == 0
 report = status_json(tmp_path)
 assert (report["tokens_used"], report["token_budget"]) == (400, 500)
 assert report["paused"] is False


def test_resume_budget_must_be_a_whole_number_above_zero(tmp_path: Path) -> None:
 result = conductor("resume", "--budget", "0", "p.toml", cwd=tmp_path)
 assert result.returncode == 2 and "expected a whole number >= 1" in result.stderr


# -- the live view's keys ----------------------------------------------------------------------


def test_in_the_live_view_p_pauses_as_a_person_over_an_automatic_pause(tmp_path: Path) -> None:
 pipeline(tmp_path, '[[tickets]]\nid = "limited"\ncall = "steps:limited"\n')
 (tmp_path / "resume_after").write_text("3600")
 term = Terminal()
 proc = term.spawn("run", "p.toml", cwd=tmp_path)
 try:
  term.wait_shown(b"resumes by itself at")
  term.wait_shown(b"p keep it paused (only you resume it) \xc2\xb7 r resume now")
  os.write(term.master, b"p")
  term.wait_shown(b"paused by you: resume by hand")
  assert status_json(tmp_path)["paused_by"] == "person"
  os.write(term.master, b"p")  # a person's pause: p resumes it
  assert proc.wait(WAIT) == 0
 finally:
  if proc.poll() is None:
   proc.kill()
   proc.wait(WAIT)
  term.close()


def test_in_the_live_view_resume_with_the_budget_spent_says_how_to_raise_it(
 tmp_path: Path,
) -> None:
 pipeline(tmp_path, SPENDERS, head="token_budget = 150")
 term = Terminal()
 proc = term.spawn("run", "p.toml", "--backend", "trio", cwd=tmp_path)
 try:
  term.wait_shown(b"paused: token budget reached: 200 of 150 tokens; resume by hand")
  os.write(term.master, b"r")
  term.wait_shown(
   b"not resumed: token budget reached: 200 of 150 tokens; raise it: "
   b"conductor resume --budget 225 --state p.state.db"
  )
  ok("resume", "--budget", "1000", "--state", "p.state.db", cwd=tmp_path)
  assert proc.wait(WAIT) == 0
 finally:
  if proc.poll() is None:
   proc.kill()
   proc.wait(WAIT)
  term.close()


# -- the protocol's new parts, as pure functions ------------------------------------------------


@pytest.mark.parametrize(
 "output", [None, "", "plain", 'quo"te\\ é ✓\n\x1b[2J \U0001f600\u2028' * 5]
)
def test_an_output_answer_in_pieces_is_exactly_one_encoded_answer(
 output: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.setattr(server, "_OUTPUT_SLICE", 7)  # slices cut escapes and pairs anywhere
 head = {"pipeline": "p", "pid": 1, "ticket": "t\n", "status": "completed"}
 data = b"".join(server._output_pieces(head, output))
 assert data == encode({"ok": True, "report": {**head, "output": output}})


@pytest.mark.parametrize(
 ("message", "refused"),
 [
  ({"op": "output"}, "output needs `ticket`"),
  ({"op": "output", "ticket": ["a"]}, "output needs `ticket`"),
  ({"op": "pause", "token_budget": 5}, "`token_budget` goes with resume"),
  ({"op": "resume", "token_budget": 0}, "`token_budget` goes with resume"),
  ({"op": "resume", "token_budget": True}, "`token_budget` goes with resume"),
  ({"op": "resume", "token_budget": "5"}, "`token_budget` goes with resume"),
 ],
)
def test_the_run_refuses_malformed_output_and_budget_requests(
 message: dict[str, object], refused: str
) -> None:
 answer = server._parse(json.dumps(message).encode())
 assert isinstance(answer, str) and answer.startswith(refused)
 assert server._parse(b'{"op": "resume", "token_budget": 5}') == {"op": "resume", "token_budget": 5}
