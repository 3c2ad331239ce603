"""What the `conductor` command shows, view by view: each is a function of a snapshot, a
transition or a report, so these tests need no run and no terminal."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from rich.console import Console, RenderableType
from snapshot_kit import build

from conductor import ConductorEngine, ExecutionEngine, MmaStatus, Snapshot, Status, Ticket
from conductor.multi_agent_conductor import suggested_budget
from conductor.snapshots import SnapshotCache, ticket_json
from conductor.transitions import Change, Transition
from conductor.views import (
 KEY_HINT,
 ApprovalNotices,
 approve_command,
 budget_words,
 pause_words,
 plain_line,
 render,
 render_status,
 shell_path,
 tokens_words,
 wall_clock,
)


def text(renderable: RenderableType) -> str:
 console = Console(width=200, color_system=None)
 with console.capture() as captured:
  console.print(renderable)
 return captured.get()


def snapshot(**changes: object) -> Snapshot:
 engine = ExecutionEngine([Ticket("plan"), Ticket("code", ("plan",)), Ticket("ship", ("code",))])
 base = ConductorEngine(engine, name="p").snapshot()
 return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_live_view_ends_with_the_key_hint_and_the_final_frame_without_it() -> None:
 snap = snapshot()
 assert text(render(snap, MmaStatus.EXECUTING)).rstrip().endswith(KEY_HINT)
 final = text(render(snap, MmaStatus.DONE, keys=False))
 assert "p pause" not in final and final.startswith(" DONE   p   0/3 completed")


@pytest.mark.parametrize(("finishing", "says"), [(("plan",), "1 worker finishing: plan")])
def test_the_paused_panel_counts_its_workers_in_words(
 finishing: tuple[str, ...], says: str
) -> None:
 snap = snapshot(paused=True, paused_at=0.0, finishing=finishing, running_at_pause=finishing)
 shown = text(render(snap, MmaStatus.PAUSED))
 assert says in shown and "worker(s)" not in shown


def test_a_log_line_names_the_change_and_escapes_untrusted_text() -> None:
 t = Transition("a\nb", Change.FAILED, 0.0, Status.FAILED, 2, "exit code 3: \x1b[2J")
 line = plain_line("p", t)
 assert line.endswith(" p: a\\nb failed (attempt 2): exit code 3: \\x1b[2J")
 assert "\n" not in line and "\x1b" not in line


def test_approval_notices_name_each_ticket_once_when_it_starts_waiting() -> None:
 engine = ExecutionEngine(
  [Ticket("a"), Ticket("b", ("a",)), Ticket("c"), Ticket("d", ("a", "c"))], auto_queue=False
 )
 said: list[str] = []
 notices = ApprovalNotices(engine, "p.state.db", said.append)
 notices.at_start()
 assert said == [
  "awaiting approval: a, c (approve with `conductor approve --state p.state.db a c`)"
 ]

 def complete(tid: str) -> None:
  engine.queue(tid)
  assert [t.id for t in engine.tick()] == [tid]
  engine.start(tid)
  engine.complete(tid)
  notices.on_transition(Transition(tid, Change.COMPLETED, 0.0, Status.COMPLETED, 1))

 complete("a")  # b is ready now; d still waits for c
 assert said[1:] == ["awaiting approval: b (approve with `conductor approve --state p.state.db b`)"]
 notices.on_transition(Transition("a", Change.STARTED, 0.0, Status.IN_PROGRESS, 1))
 complete("c")  # d; b was told already
 assert said[2:] == ["awaiting approval: d (approve with `conductor approve --state p.state.db d`)"]
 complete("b")
 assert len(said) == 3


def test_commands_people_copy_quote_the_path_but_keep_the_home_folder_expandable(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 (tmp_path / "work").mkdir()
 monkeypatch.chdir(tmp_path / "work")
 monkeypatch.setenv("HOME", str(tmp_path / "home"))
 assert shell_path(tmp_path / "work" / "my runs" / "p.state.db") == "'my runs/p.state.db'"
 assert shell_path(tmp_path / "home" / "x y.db") == "~/'x y.db'"
 assert shell_path(tmp_path / "home" / "x.db") == "~/x.db"
 many = [f"t{i}" for i in range(9)]
 assert approve_command("p.state.db", many) == "conductor approve --state p.state.db TICKET..."


def test_status_shows_the_state_path_relative_to_where_it_is_asked(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.chdir(tmp_path)
 report = {
  "pipeline": "p",
  "mma_status": "idle",
  "live": False,
  "pid": None,
  "state": str(tmp_path / "p.state.db"),
  "counts": {"completed": 0, "total": 1, "in_progress": 0, "todo": 1, "failed": 0, "blocked": 0},
  "paused": False,
  "running": [],
  "interrupted": [],
  "pending": ["a"],
  "tickets": [{"id": "a", "status": "todo", "attempts": 0, "exit_code": None, "error": None}],
 }
 shown = text(render_status({"live": False, "report": report}))
 assert "state p.state.db" in shown and str(tmp_path) not in shown


# -- what `conductor status` reads, kept per ticket (snapshots.SnapshotCache) -----------------


@pytest.mark.parametrize(
 ("tid", "error", "exit_code", "at", "tokens"),
 [
  ("plain", None, None, None, None),
  (
   'quo"te\\ é ✓\n\x1b[31m',
   "line one\nline\ttwo \u2028 \U0001f600",
   -15,
   1700000000.123456789,
   12340,
  ),
  ("x", "", 0, 0.1, 0),
 ],
)
def test_a_tickets_status_item_is_exactly_what_json_dumps_writes(
 tid: str, error: str | None, exit_code: int | None, at: float | None, tokens: int | None
) -> None:
 ticket = Ticket(tid, status=Status.FAILED, attempts=3, error=error)
 want = {
  "id": tid,
  "status": "failed",
  "attempts": 3,
  "error": error,
  "exit_code": exit_code,
  "updated_at": at,
  "tokens": tokens,
 }
 assert ticket_json(ticket, exit_code, at, tokens) == json.dumps(want)


def test_pending_and_notable_follow_each_change_in_ticket_order_after_a_retry() -> None:
 # The cache updates them per changed ticket instead of rescanning: a ticket that goes back
 # to todo (a retry) must land in its place again, and leave the notable ones when done.
 tickets = [Ticket(f"t{i}") for i in range(6)]
 engine = ExecutionEngine(tickets)
 cache = SnapshotCache(engine)

 def pending() -> tuple[str, ...]:
  return tuple(build(cache, max_workers=1).pending)

 def run(tid: str, *, fail: bool = False) -> None:
  ticket = engine.tickets[tid]
  engine.tick()  # hands out what is ready, `tid` among them
  engine.start(tid)
  cache.started(ticket)
  assert tid not in pending()
  cache.finished(ticket, 1 if fail else 0, "")
  if fail:
   engine.fail(tid, "boom")
  else:
   engine.complete(tid)

 run("t0")
 run("t1", fail=True)
 run("t2")
 assert pending() == tuple(engine.pending()) == ("t3", "t4", "t5")
 assert [json.loads(item)["id"] for item in cache.notable(10)[0]] == ["t1"]
 engine.retry("t1")
 cache.changed(engine.tickets["t1"])
 assert pending() == tuple(engine.pending()) == ("t1", "t3", "t4", "t5")
 run("t1")
 assert pending() == tuple(engine.pending())
 listed, count = cache.notable(10)
 assert count == 1 and json.loads(listed[0])["attempts"] == 2  # retried: still notable
 assert [json.loads(item)["status"] for item in cache.status_items()] == [
  "completed",
  "completed",
  "completed",
  "todo",
  "todo",
  "todo",
 ]


def test_a_status_summary_renders_the_lists_it_cut_short_with_their_full_lengths() -> None:
 report = {
  "pipeline": "p",
  "mma_status": "executing",
  "live": True,
  "pid": 7,
  "state": "p.state.db",
  "counts": {"completed": 0, "total": 100, "in_progress": 1, "todo": 98, "failed": 1, "blocked": 0},
  "paused": False,
  "running": ["a"],
  "interrupted": [],
  "pending": [f"p{i}" for i in range(12)],
  "awaiting_approval": [],
  "tickets": [
   {"id": "a", "status": "in_progress", "attempts": 1, "exit_code": None, "error": None},
   {"id": "b", "status": "failed", "attempts": 1, "exit_code": 1, "error": "boom"},
  ],
  "summary": {"notable": 40, "pending": 98, "awaiting_approval": 0},
 }
 shown = text(render_status({"live": True, "report": report}))
 assert "pending (98): p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11 (+86)" in shown
 assert "98 of 100 tickets not listed (38 more notable, the rest" in shown


# -- who paused, until when, and tokens: the same words in every view ------------------------


def test_pause_words_say_who_paused_and_what_ends_it() -> None:
 at = time.time() + 60
 clock = time.strftime("%H:%M:%S", time.localtime(at))
 assert pause_words(True, "lunch", None) == "paused by you: resume by hand"
 assert pause_words(True, "lunch", at) == "paused by you: resume by hand"  # a person's wins
 assert pause_words(False, "429 from api", at) in (
  f"paused: 429 from api; resumes by itself at {clock}",
  # a minute from now may be tomorrow: then the date is said too
  f"paused: 429 from api; resumes by itself at {time.strftime('%Y-%m-%d', time.localtime(at))} {clock}",
 )
 assert pause_words(False, "budget\n", None) == "paused: budget\\n; resume by hand"
 tomorrow = time.time() + 2 * 86400
 assert wall_clock(tomorrow) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(tomorrow))


def test_tokens_are_shown_only_when_a_budget_is_set_or_some_were_spent() -> None:
 assert tokens_words(0, None) is None
 assert tokens_words(12340, None) == "tokens: 12,340"
 assert tokens_words(0, 200000) == "tokens: 0 of 200,000"
 assert (
  budget_words(200340, 200000, "p.toml")
  == "token budget reached: 200,340 of 200,000 tokens; raise it: conductor resume --budget 300000 p.toml"
 )
 line = budget_words(200340, 200000, "--state s.db", asked=150000)
 assert line.startswith("a token budget of 150,000 is not above the 200,340 tokens used; raise it:")
 assert line.endswith("conductor resume --budget 300000 --state s.db")
 assert suggested_budget(500, 100) == 501  # above what was used, whatever the budget


def test_the_live_view_says_who_paused_until_when_and_how_to_raise_a_spent_budget() -> None:
 at = time.time() + 3600
 auto = snapshot(
  paused=True,
  paused_at=time.time(),
  pause_reason="rate limited by api",
  paused_by_person=False,
  auto_resume_at=at,
 )
 shown = text(render(auto, MmaStatus.PAUSED, state="p.state.db"))
 assert f"paused: rate limited by api; resumes by itself at {wall_clock(at)}" in shown
 assert "r resume now" in shown and "p keep it paused" in shown  # the keys' hint
 person = dataclasses.replace(auto, paused_by_person=True, pause_reason="lunch")
 shown = text(render(person, MmaStatus.PAUSED, state="p.state.db"))
 assert "paused by you: resume by hand" in shown and "— lunch" in shown
 assert "resumes by itself" not in shown and shown.rstrip().endswith(KEY_HINT)
 spent = dataclasses.replace(
  auto, pause_reason="token budget reached", auto_resume_at=None, tokens_used=210, token_budget=200
 )
 shown = text(render(spent, MmaStatus.PAUSED, state="p.state.db", notice="refused, see above"))
 assert "tokens: 210 of 200" in shown.splitlines()[0]
 assert "raise it: conductor resume --budget 300 --state p.state.db" in shown
 assert "refused, see above" in shown
 plain = text(render(snapshot(), MmaStatus.EXECUTING))
 assert "tokens" not in plain  # nothing for a pipeline that spends none


def test_an_automatic_pause_logs_what_ends_it() -> None:
 t = Transition(
  None, Change.PAUSED, 0.0, detail="slow down", auto_resume_at=7200.0, by_person=False
 )
 assert plain_line("p", t).endswith(
  f" p: pipeline paused: slow down; resumes by itself at {wall_clock(7200.0)}"
 )
 person = t._replace(by_person=True, auto_resume_at=None)
 assert plain_line("p", person).endswith(" p: pipeline paused: slow down")


def test_status_shows_the_pause_the_tokens_and_a_tokens_column_only_when_spent() -> None:
 report = {
  "pipeline": "p",
  "mma_status": "paused",
  "live": False,
  "pid": None,
  "state": "p.state.db",
  "counts": {"completed": 1, "total": 2, "in_progress": 0, "todo": 1, "failed": 0, "blocked": 0},
  "paused": True,
  "pause_reason": "token budget reached: 210 of 200 tokens",
  "paused_since": 0.0,
  "auto_resume_at": None,
  "paused_by": "pipeline",
  "tokens_used": 210,
  "token_budget": 200,
  "running_at_pause": [],
  "running": [],
  "interrupted": [],
  "pending": ["b"],
  "tickets": [
   {
    "id": "a",
    "status": "completed",
    "attempts": 1,
    "exit_code": None,
    "error": None,
    "tokens": 210,
   },
   {"id": "b", "status": "todo", "attempts": 0, "exit_code": None, "error": None, "tokens": None},
  ],
 }
 shown = text(render_status({"live": False, "report": report}, named="p.toml"))
 assert "tokens: 210 of 200" in shown
 assert "paused: token budget reached: 210 of 200 tokens; resume by hand" in shown
 assert "raise it: conductor resume --budget 300 p.toml" in shown
 header = next(line for line in shown.splitlines() if line.lstrip().startswith("ticket"))
 assert header.split()[:5] == ["ticket", "status", "attempts", "exit", "tokens"]
 row = next(line for line in shown.splitlines() if line.lstrip().startswith("a "))
 assert row.split()[:4] == ["a", "completed", "1", "210"]
 for ticket in report["tickets"]:  # type: ignore[attr-defined]
  ticket["tokens"] = None
 report.update(tokens_used=0, token_budget=None, paused_by="person", pause_reason="lunch")
 shown = text(render_status({"live": False, "report": report}))
 assert "tokens" not in shown and "PAUSED since" in shown and ": lunch" in shown
 assert "paused by you: resume by hand" in shown
