"""Pipeline files: what loads, and the one-line message for every mistake a user can make."""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import textwrap
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import conductor.pipeline as pipeline_module
from conductor.agents import AgentConfig, AgentWork
from conductor.dag_engine import Status, Ticket, gc_paused
from conductor.pipeline import (
 Pipeline,
 PipelineFileError,
 fingerprint,
 load_pipeline,
 pipeline_from_dict,
)
from conductor.workers import CallWork, ShellWork, SleepWork

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

GOOD = """
[pipeline]
name = "release"
max_workers = 2
auto_queue = false

[[tickets]]
id = "build"
description = "Compile"
run = "make"
retries = 2

[[tickets]]
id = "docs"
call = "{steps}:write_docs"

[[tickets]]
id = "ship"
depends_on = ["build", "docs", "build"]
sleep = 1
fail = true
"""


def write(tmp_path: Path, text: str, name: str = "pipe.toml") -> Path:
 path = tmp_path / name
 path.write_text(textwrap.dedent(text))
 return path


Module = Callable[[Path, str], str]


@pytest.fixture
def module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Module]:
 """Writes a uniquely named module into a folder and returns its name; what loading
 imported (the modules, the folders added to sys.path) is undone after the test."""
 monkeypatch.setattr(sys, "path", list(sys.path))
 monkeypatch.setattr(sys, "dont_write_bytecode", True)
 names: list[str] = []

 def make(folder: Path, source: str) -> str:
  name = f"steps_{uuid.uuid4().hex}"
  (folder / f"{name}.py").write_text(textwrap.dedent(source))
  names.append(name)
  return name

 yield make
 for name in names:
  sys.modules.pop(name, None)


def good(tmp_path: Path, module: Module) -> tuple[Path, str]:
 """GOOD written to pipe.toml, its `call` module beside it; (the file, the module's name)."""
 steps = module(tmp_path, "def write_docs(ticket):\n return 'docs'\n")
 return write(tmp_path, GOOD.replace("{steps}", steps)), steps


def error_for(tmp_path: Path, text: str) -> PipelineFileError:
 path = write(tmp_path, text)
 with pytest.raises(PipelineFileError) as info:
  load_pipeline(path)
 message = str(info.value)
 assert "\n" not in message
 assert message.startswith(str(path))
 assert info.value.path == path
 return info.value


TICKET = '[[tickets]]\nid = "a"\nrun = "true"\n'


# -- loading ----------------------------------------------------------------------------------


def test_a_good_file_loads_with_every_field(tmp_path: Path, module: Module) -> None:
 path, steps = good(tmp_path, module)
 pipeline = load_pipeline(path)
 folder = tmp_path.resolve()
 assert (pipeline.name, pipeline.path, pipeline.max_workers, pipeline.auto_queue) == (
  "release",
  folder / "pipe.toml",
  2,
  False,
 )
 build, docs, ship = pipeline.tickets
 assert (build.id, build.description, build.retries, build.depends_on) == (
  "build",
  "Compile",
  2,
  (),
 )
 assert build.work == ShellWork("make", folder)
 assert docs.work == CallWork(f"{steps}:write_docs", folder)
 assert ship.work == SleepWork(1.0, fail=True)
 assert ship.depends_on == ("build", "docs")
 assert all(t.status is Status.TODO and t.attempts == 0 for t in pipeline.tickets)


def test_defaults_are_the_file_name_four_workers_and_auto_queue(tmp_path: Path) -> None:
 pipeline = load_pipeline(write(tmp_path, TICKET, "nightly.toml"))
 assert (pipeline.name, pipeline.max_workers, pipeline.auto_queue) == ("nightly", 4, True)
 (ticket,) = pipeline.tickets
 assert (ticket.depends_on, ticket.description, ticket.retries) == ((), "", 0)


def test_every_load_builds_fresh_tickets(tmp_path: Path, module: Module) -> None:
 path, _ = good(tmp_path, module)
 first, second = load_pipeline(path), load_pipeline(path)
 first.tickets[0].status = Status.COMPLETED
 assert second.tickets[0].status is Status.TODO
 assert first.tickets[0] is not second.tickets[0]


def test_a_relative_path_gives_absolute_work_folders(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 write(tmp_path, TICKET)
 monkeypatch.chdir(tmp_path)
 pipeline = load_pipeline("pipe.toml")
 assert pipeline.path == tmp_path.resolve() / "pipe.toml"
 work = pipeline.tickets[0].work
 assert isinstance(work, ShellWork) and work.cwd == tmp_path.resolve()


def test_a_file_starting_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
 path = tmp_path / "bom.toml"
 path.write_bytes(b"\xef\xbb\xbf" + TICKET.encode())
 assert load_pipeline(path).tickets[0].id == "a"


@pytest.mark.parametrize("name", ["build.toml", "flaky.toml", "agents.toml"])
def test_the_example_pipelines_load(name: str, module: Module) -> None:
 # Loading build.toml imports examples/build_steps.py: forgotten again after the test
 # (`module` puts sys.path back and keeps bytecode out of the repository).
 saved = sys.modules.pop("build_steps", None)
 try:
  pipeline = load_pipeline(EXAMPLES / name)
 finally:
  sys.modules.pop("build_steps", None)
  if saved is not None:
   sys.modules["build_steps"] = saved
 assert pipeline.tickets and pipeline.path == (EXAMPLES / name).resolve()


def test_a_dict_in_the_file_format_builds_the_same_pipeline(tmp_path: Path) -> None:
 data = {
  "pipeline": {"max_workers": 3},
  "tickets": [{"id": "a", "sleep": 0.5}, {"id": "b", "depends_on": ["a"], "run": "true"}],
 }
 pipeline = pipeline_from_dict(data, name="demo")
 assert isinstance(pipeline, Pipeline)
 assert (pipeline.name, pipeline.path, pipeline.max_workers) == ("demo", None, 3)
 assert [t.id for t in pipeline.tickets] == ["a", "b"]
 with_path = pipeline_from_dict(data, path=tmp_path / "x.toml")
 assert with_path.tickets[1].work == ShellWork("true", tmp_path)


def test_a_bad_dict_names_the_pipeline_in_its_message() -> None:
 with pytest.raises(PipelineFileError) as info:
  pipeline_from_dict({"tickets": [{"id": "a"}]}, name="demo")
 assert str(info.value).startswith("pipeline 'demo': ticket 'a': has no work")
 assert info.value.path is None and info.value.ticket == "a"


# -- file-level errors ------------------------------------------------------------------------


def test_a_missing_file_says_so(tmp_path: Path) -> None:
 path = tmp_path / "nope.toml"
 with pytest.raises(PipelineFileError) as info:
  load_pipeline(path)
 assert str(info.value) == f"{path}: no such pipeline file; check the path"


def test_a_folder_is_not_a_pipeline_file(tmp_path: Path) -> None:
 with pytest.raises(PipelineFileError, match="is a folder, not a pipeline file"):
  load_pipeline(tmp_path)


def test_a_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
 path = tmp_path / "latin.toml"
 path.write_bytes(b'[[tickets]]\nid = "caf\xe9"\n')
 with pytest.raises(PipelineFileError, match="not UTF-8 text"):
  load_pipeline(path)


def test_a_toml_syntax_error_gives_its_line_and_column(tmp_path: Path) -> None:
 error = error_for(tmp_path, '[[tickets]]\nid = "a"\nrun = "true\n')
 assert error.line == 3
 assert str(error).startswith(f"{tmp_path / 'pipe.toml'}:3:")
 assert "TOML syntax error" in str(error) and "fix the syntax" in str(error)
 assert "(at line" not in str(error)


TOML_MISTAKES = [
 '[[tickets]]\nid = "a"\nrun = "true\n',  # an unclosed string
 '[[tickets]]\nid = "a"\nid = "b"\nsleep = 0\n',  # a key twice
 '[[tickets]]\nid = "a"\ndepends_on = ["b",\nsleep = 0\n',  # an unclosed array
 "[[tickets]]\nid = \n",  # no value
 "[pipeline]\n[pipeline]\n",  # a table twice
]


@pytest.mark.parametrize("text", TOML_MISTAKES)
def test_a_toml_syntax_error_reads_the_same_with_and_without_the_fast_parser(
 tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
 # tomllib words every syntax error, whichever parser read the file first.
 fast = error_for(tmp_path, text)
 monkeypatch.setattr(pipeline_module, "_rtoml", None)
 slow = error_for(tmp_path, text)
 assert (str(fast), fast.line) == (str(slow), slow.line)
 with pytest.raises(tomllib.TOMLDecodeError):
  tomllib.loads(text)


def test_a_value_only_tomllib_reads_still_loads(tmp_path: Path) -> None:
 # rtoml refuses a float that overflows to infinity; tomllib reads it, and then the
 # pipeline check words the mistake, as it always did.
 error = error_for(tmp_path, '[[tickets]]\nid = "a"\nsleep = 1e400\n')
 assert str(error).endswith("ticket 'a': 'sleep' must be a number of seconds >= 0, found float inf")


def test_loading_holds_off_the_garbage_collector_and_turns_it_back_on(tmp_path: Path) -> None:
 seen: list[bool] = []
 real = pipeline_module._parse_toml

 def parse(text: str, given: Path) -> dict[str, object]:
  seen.append(gc.isenabled())
  return real(text, given)

 with pytest.MonkeyPatch.context() as patch:
  patch.setattr(pipeline_module, "_parse_toml", parse)
  assert gc.isenabled()
  load_pipeline(write(tmp_path, '[[tickets]]\nid = "a"\nsleep = 0\n'))
 assert seen == [False] and gc.isenabled()
 with pytest.raises(PipelineFileError), gc_paused():  # on again after an error, too
  load_pipeline(write(tmp_path, "[[tickets]]\nid = \n"))
 assert gc.isenabled()


def _many(n: int, *, at: int = -1, extra: str = "") -> str:
 # n sleep tickets, each depending on the one before; `extra` goes into ticket `at`.
 parts = ['[pipeline]\nname = "many"  # a comment\n']
 for i in range(n):
  deps = f'["t{i - 1}"]' if i else "[]"
  parts.append(
   f'[[tickets]]  # no. {i}\nid = "t{i}"\ndepends_on = {deps}\nsleep = 0\n'
   + (extra + "\n" if i == at else "")
  )
 return "\n".join(parts)


_AGENT_TABLE = '[pipeline.agent]\nbase_url = "http://h/v1"\nmodel = "m"\n'


def _prompts(n: int, *, bad: int = -1) -> str:
 # n prompt tickets, each reading the one before; ticket `bad` reads one it does not depend on.
 parts = []
 for i in range(1, n + 1):
  ref = f"t{i - 2}" if i == bad else f"t{i - 1}"
  parts.append(
   f'[[tickets]]\nid = "t{i}"\ndepends_on = ["t{i - 1}"]\nprompt = "on {{{{{ref}}}}}"\n'
  )
 return '[[tickets]]\nid = "t0"\nprompt = "start"\n' + "\n".join(parts)


def _outcome(path: Path) -> object:
 try:
  pipeline = load_pipeline(path)
 except PipelineFileError as exc:
  return (str(exc), exc.line, exc.ticket)
 return (
  pipeline.name,
  pipeline.agent,
  pipeline.token_budget,
  pipeline.dask,
  [(t.id, t.depends_on, t.work, t.retries) for t in pipeline.tickets],
 )


@pytest.mark.parametrize(
 "text",
 [
  _many(25),
  _many(25, at=3, extra="retries = -1"),  # a mistake in the first slice ...
  _many(25, at=20, extra="retries = -1"),  # ... in a later one
  _many(25, at=3, extra="retries = -1") + "\n[oops\n",  # ... and a syntax error after it
  _many(25, at=21, extra="x = 1\nx = 2"),  # a syntax error in a later slice
  _many(25, at=21, extra="sleep2 = 1e400"),  # a value only tomllib reads
  _many(25) + "\n[pipeline]\nmax_workers = 3\n",  # a table after the tickets
  _many(25) + "\n[pipeline.more]\nx = 1\n",
  _many(25, at=0, extra='description = """\n[[tickets]]\nid = "fake"\n"""'),
  'tickets = [{id = "x", sleep = 0}]\n' + _many(25),
  "[[tickets]]\n" * 25,
  _many(25, at=9, extra="retries = -1").replace("\n", "\r\n"),
  '[pipeline]\ntoken_budget = 9\ndask = "local:2"\n' + _AGENT_TABLE + _prompts(25),
  _AGENT_TABLE + _prompts(25, bad=22),  # a reference outside depends_on in a later slice
  _prompts(25) + _AGENT_TABLE,  # the agent table after the tickets
  _prompts(25),  # no agent table at all
 ],
)
def test_a_big_file_read_in_slices_loads_as_it_does_whole(
 tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
 path = write(tmp_path, text)
 monkeypatch.setattr(pipeline_module, "_rtoml", None)
 whole = _outcome(path)
 monkeypatch.undo()
 monkeypatch.setattr(pipeline_module, "_WHOLE_FAST", 0)  # every file is big
 monkeypatch.setattr(pipeline_module, "_SLICE", 150)  # characters: 2 or 3 tickets a slice
 sliced = _outcome(path)
 assert sliced == whole


def test_equal_work_specs_and_ids_are_held_once(tmp_path: Path) -> None:
 # Memory, at 100,000 tickets: one SleepWork per distinct sleep, one string per id.
 text = (
  "".join(
   f'[[tickets]]\nid = "t{i}"\ndepends_on = {json.dumps([f"t{d}" for d in range(i)][-2:])}\n'
   f"sleep = {value}\n"
   for i, value in enumerate(["0", "0.0", "-0.0", "1", "1.0", "2.5"])
  )
  + '[[tickets]]\nid = "r1"\nrun = "make"\n[[tickets]]\nid = "r2"\nrun = "make"\n'
 )
 tickets = load_pipeline(write(tmp_path, text)).tickets
 works = [t.work for t in tickets]
 assert works[0] is works[1] and works[3] is works[4] and works[6] is works[7]
 assert works[2] is not works[0]  # -0.0: equal to 0.0, but told apart where it is shown
 assert [w.describe() for w in works[:6]] == [  # type: ignore[attr-defined]
  "sleep 0s",
  "sleep 0s",
  "sleep -0s",
  "sleep 1s",
  "sleep 1s",
  "sleep 2.5s",
 ]
 assert all(dep is tickets[int(dep[1:])].id for t in tickets for dep in t.depends_on)


PLAIN_CASES = [
 {"id": "a", "sleep": 0},
 {"id": "a", "sleep": -0.0},
 {"id": "a", "sleep": 1.5, "fail": True, "retries": 2, "description": "d"},
 {"id": "a", "depends_on": ["b", "b", "c"], "run": "make"},
 {"id": "a", "depends_on": [], "run": "make", "description": "x"},
 {"id": "a", "sleep": True},
 {"id": "a", "sleep": float("inf")},
 {"id": "a", "sleep": float("nan")},
 {"id": "a", "sleep": -1},
 {"id": "a", "sleep": 1, "fail": 1},
 {"id": "a", "run": "make", "fail": False},
 {"id": "a", "run": "  "},
 {"id": "a", "run": "make", "sleep": 1},
 {"id": "a", "sleep": 1, "retries": True},
 {"id": "a", "sleep": 1, "retries": -1},
 {"id": "a", "sleep": 1, "description": 3},
 {"id": "a", "depends_on": "b", "sleep": 1},
 {"id": "a", "depends_on": ["b", ""], "sleep": 1},
 {"id": "a", "depends_on": ["b\n"], "sleep": 1},
 {"id": "a", "depends_on": ["x" * 257], "sleep": 1},
 {"id": " ", "sleep": 1},
 {"id": "a\x1b", "sleep": 1},
 {"id": "x" * 257, "sleep": 1},
 {"id": 3, "sleep": 1},
 {"sleep": 1},
 {"id": "a"},
 {"id": "a", "sleep": 1, "model": "m"},
 {"id": "a", "sleep": 1, "bogus": 1},
]


@pytest.mark.parametrize("raw", PLAIN_CASES)
def test_the_quick_path_for_plain_tickets_builds_what_the_full_checks_build(
 raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
 def outcome() -> object:
  try:
   pipeline = pipeline_from_dict({"tickets": [raw]}, path=Path("/p/pipe.toml"))
  except PipelineFileError as exc:
   return str(exc)
  (t,) = pipeline.tickets
  return t.id, t.depends_on, t.description, t.work, t.retries, repr(getattr(t.work, "seconds", 0))

 quick = outcome()
 monkeypatch.setattr(pipeline_module, "_plain_ticket", lambda *args: None)
 assert outcome() == quick


def test_a_big_file_is_parsed_a_slice_at_a_time(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 # The tables of one slice are turned into tickets before the next slice is parsed.
 assert pipeline_module._rtoml is not None
 monkeypatch.setattr(pipeline_module, "_WHOLE_FAST", 0)
 monkeypatch.setattr(pipeline_module, "_SLICE", 1)  # characters: a ticket a slice
 parsed: list[int] = []
 built: list[int] = []
 real_loads, real_ticket = pipeline_module._rtoml.loads, pipeline_module._ticket

 def loads(text: str) -> dict[str, Any]:
  parsed.append(len(built))
  return real_loads(text)

 def ticket(check: Any, index: int, *args: Any, **kwargs: Any) -> Ticket:
  built.append(index)
  return real_ticket(check, index, *args, **kwargs)

 monkeypatch.setattr(pipeline_module._rtoml, "loads", loads)
 monkeypatch.setattr(pipeline_module, "_ticket", ticket)
 assert len(load_pipeline(write(tmp_path, _many(10))).tickets) == 10
 assert parsed == [0, *range(10)]  # the head, then each ticket's slice


def test_a_file_without_tickets_says_how_to_add_one(tmp_path: Path) -> None:
 error = error_for(tmp_path, '[pipeline]\nname = "empty"\n')
 assert str(error).endswith(": no tickets; add at least one [[tickets]] table with an id and work")


def test_an_unknown_top_level_key_lists_the_allowed_ones(tmp_path: Path) -> None:
 error = error_for(tmp_path, "version = 2\n" + TICKET)
 assert str(error).endswith(
  ": unknown key 'version' in the top level; allowed keys: pipeline, tickets"
 )


def test_tickets_written_as_a_single_table_are_rejected(tmp_path: Path) -> None:
 error = error_for(tmp_path, '[tickets]\nid = "a"\nrun = "true"\n')
 assert "'tickets' must be an array of tables ([[tickets]]), found a table" in str(error)


def test_an_unknown_pipeline_key_lists_the_allowed_ones(tmp_path: Path) -> None:
 error = error_for(tmp_path, "[pipeline]\nworkers = 2\n" + TICKET)
 assert str(error).endswith(
  ": [pipeline]: unknown key 'workers' in [pipeline]; allowed keys: name, max_workers, auto_queue, "
  "token_budget, dask, agent"
 )


@pytest.mark.parametrize(
 ("line", "expected"),
 [
  ("max_workers = 0", "'max_workers' must be an integer >= 1, found integer 0"),
  ('max_workers = "4"', "'max_workers' must be an integer >= 1, found string \"4\""),
  ("max_workers = true", "'max_workers' must be an integer >= 1, found boolean true"),
  ('auto_queue = "yes"', "'auto_queue' must be a boolean (true or false), found string \"yes\""),
  ("name = 7", "'name' must be a non-empty string, found integer 7"),
 ],
)
def test_a_wrong_pipeline_type_names_the_key_the_type_and_what_was_found(
 tmp_path: Path, line: str, expected: str
) -> None:
 error = error_for(tmp_path, f"[pipeline]\n{line}\n" + TICKET)
 assert str(error) == f"{tmp_path / 'pipe.toml'}: [pipeline]: {expected}"
 assert error.ticket is None


# -- ticket errors ----------------------------------------------------------------------------


def test_a_ticket_without_id_is_named_by_its_position(tmp_path: Path) -> None:
 error = error_for(tmp_path, TICKET + '[[tickets]]\nrun = "true"\n')
 assert str(error) == (
  f'{tmp_path / "pipe.toml"}: ticket #2 (counting from the top): has no id; add id = "<name>" to it'
 )
 assert error.ticket is None


def test_an_empty_id_is_rejected(tmp_path: Path) -> None:
 error = error_for(tmp_path, '[[tickets]]\nid = ""\nrun = "true"\n')
 assert str(error).endswith(": ticket #1: 'id' must be a non-empty string, found string \"\"")


def test_an_unknown_ticket_key_names_the_ticket_and_the_allowed_keys(tmp_path: Path) -> None:
 error = error_for(tmp_path, TICKET + "timeout = 5\ndepends = []\n")
 assert str(error) == (
  f"{tmp_path / 'pipe.toml'}: ticket 'a': unknown keys 'timeout', 'depends' in a ticket; "
  "allowed keys: id, depends_on, description, run, call, sleep, prompt, fail, system, model, "
  "retries"
 )
 assert error.ticket == "a"


def test_a_ticket_without_work_says_which_keys_give_it_work(tmp_path: Path) -> None:
 error = error_for(tmp_path, '[[tickets]]\nid = "idle"\n')
 assert str(error).endswith(
  ": ticket 'idle': has no work; add one of "
  'run = "<shell command>", call = "module:function", sleep = <seconds> '
  'or prompt = "<text for the model>"'
 )


def test_a_ticket_with_two_kinds_of_work_is_rejected(tmp_path: Path) -> None:
 error = error_for(tmp_path, '[[tickets]]\nid = "both"\nrun = "true"\nsleep = 1\n')
 assert str(error).endswith(
  ": ticket 'both': has run and sleep; keep exactly one of run, call, sleep, prompt (one kind "
  "of work)"
 )
 assert error.ticket == "both"


def test_fail_is_only_allowed_on_sleep_tickets(tmp_path: Path) -> None:
 error = error_for(tmp_path, TICKET + "fail = true\n")
 assert str(error).endswith(": ticket 'a': 'fail' only applies to sleep tickets; remove it")


@pytest.mark.parametrize(
 ("lines", "expected"),
 [
  (
   'depends_on = "b"',
   '\'depends_on\' must be an array of ticket ids (depends_on = ["a", "b"]), found string "b"',
  ),
  ('depends_on = ["b", 3]', "found an array with integer 3"),
  ("description = 1", "'description' must be a string, found integer 1"),
  ("retries = -1", "'retries' must be an integer >= 0, found integer -1"),
  ("retries = 1.5", "'retries' must be an integer >= 0, found float 1.5"),
  ("run = ''", "'run' must be a non-empty shell command string, found string \"\""),
  ("run = ['make']", "'run' must be a non-empty shell command string, found an array"),
  ("call = 3", "'call' must be a string \"module:function\", found integer 3"),
  ("call = 'steps.write'", "bad call target 'steps.write': write it as 'package.module:function'"),
  ("sleep = -1", "'sleep' must be a number of seconds >= 0, found integer -1"),
  ("sleep = inf", "'sleep' must be a number of seconds >= 0, found float inf"),
  ("sleep = '1'", "'sleep' must be a number of seconds >= 0, found string \"1\""),
  ("sleep = 1\nfail = 'yes'", "'fail' must be a boolean (true or false), found string \"yes\""),
 ],
)
def test_a_wrong_ticket_type_names_the_ticket_the_key_and_what_was_found(
 tmp_path: Path, lines: str, expected: str
) -> None:
 error = error_for(tmp_path, f'[[tickets]]\nid = "t1"\n{lines}\n')
 assert str(error).startswith(f"{tmp_path / 'pipe.toml'}: ticket 't1': ")
 assert expected in str(error)
 assert error.ticket == "t1" and error.line is None


def test_graph_mistakes_are_left_to_the_engine(tmp_path: Path) -> None:
 text = '[[tickets]]\nid = "a"\ndepends_on = ["ghost", "a"]\nrun = "true"\n' + TICKET
 assert [t.id for t in load_pipeline(write(tmp_path, text)).tickets] == ["a", "a"]


# -- call targets -----------------------------------------------------------------------------


def call_pipeline(tmp_path: Path, target: str, extra: str = "") -> Path:
 return write(tmp_path, f'[[tickets]]\nid = "py"\ncall = "{target}"\n{extra}')


def test_a_call_target_is_imported_from_the_file_s_folder_when_loaded(
 tmp_path: Path, module: Module, monkeypatch: pytest.MonkeyPatch
) -> None:
 (tmp_path / "pipes").mkdir()
 steps = module(tmp_path / "pipes", "def step(ticket):\n return 'ok'\n")
 monkeypatch.chdir(tmp_path)  # the module is beside the file, not in the current folder
 load_pipeline(call_pipeline(tmp_path / "pipes", f"{steps}:step"))
 assert sys.modules[steps].__file__ == str(tmp_path.resolve() / "pipes" / f"{steps}.py")


@pytest.mark.parametrize(
 ("target", "expected"),
 [
  (
   "no_such_module_4711:step",
   "bad call target 'no_such_module_4711:step': no module named 'no_such_module_4711' in ",
  ),
  ("{steps}.sub:step", "no module named '{steps}.sub'"),
  ("{steps}:missing", "module '{steps}' has no attribute 'missing'; check the function name"),
  ("{steps}:Thing.missing", "has no attribute 'Thing.missing'"),
  ("{steps}:VALUE", "VALUE is an int, not a function; point the target at a function"),
 ],
)
def test_a_call_target_that_cannot_be_called_is_refused_naming_ticket_target_and_fix(
 tmp_path: Path, module: Module, target: str, expected: str
) -> None:
 steps = module(tmp_path, "VALUE = 3\nclass Thing:\n pass\ndef step(ticket):\n pass\n")
 error = error_for(tmp_path, call_pipeline(tmp_path, target.format(steps=steps)).read_text())
 assert str(error).startswith(f"{tmp_path / 'pipe.toml'}: ticket 'py': bad call target ")
 assert expected.format(steps=steps) in str(error), str(error)
 assert error.ticket == "py"


@pytest.mark.parametrize(
 ("body", "expected"),
 [
  ("raise RuntimeError('broken\\nat import')", "raised RuntimeError: broken; fix the module"),
  ("raise ValueError('bad setting')", "raised ValueError: bad setting; fix the module"),
  ("import sys\nsys.exit(4)", "raised SystemExit: sys.exit(4) was called"),
  ("raise KeyboardInterrupt", "raised KeyboardInterrupt; fix the module"),
  ("raise GeneratorExit", "raised GeneratorExit; fix the module"),
  (
   "import no_such_dependency_4711",
   "raised ModuleNotFoundError: No module named 'no_such_dependency_4711'; install what it",
  ),
 ],
 ids=["runtime-error", "value-error", "sys-exit", "keyboard-interrupt", "generator-exit", "dep"],
)
def test_a_module_that_raises_when_imported_is_refused_in_one_line(
 tmp_path: Path, module: Module, body: str, expected: str
) -> None:
 steps = module(tmp_path, f"{body}\ndef step(ticket):\n pass\n")
 error = error_for(tmp_path, call_pipeline(tmp_path, f"{steps}:step").read_text())
 assert str(error).startswith(
  f"{tmp_path / 'pipe.toml'}: ticket 'py': call target '{steps}:step': "
  f"importing module '{steps}' {expected}"
 ), str(error)
 assert f"python -c 'import {steps}'" in str(error) and error.ticket == "py"


def test_every_file_mistake_is_reported_before_any_module_is_imported(
 tmp_path: Path, module: Module
) -> None:
 steps = module(tmp_path, "raise RuntimeError('imported')\n")
 text = call_pipeline(tmp_path, f"{steps}:step").read_text() + '[[tickets]]\nid = "b"\n'
 error = error_for(tmp_path, text)
 assert "ticket 'b': has no work" in str(error) and steps not in sys.modules


def test_without_resolving_only_the_syntax_of_a_target_is_checked(
 tmp_path: Path, module: Module
) -> None:
 path = call_pipeline(tmp_path, "no_such_module_4711:step")
 pipeline = load_pipeline(path, resolve_calls=False)
 assert pipeline.tickets[0].work == CallWork("no_such_module_4711:step", tmp_path.resolve())
 with pytest.raises(PipelineFileError, match=r"write it as .package\.module:function."):
  load_pipeline(call_pipeline(tmp_path, "no-colon"), resolve_calls=False)


def test_a_dict_imports_nothing_unless_asked(tmp_path: Path, module: Module) -> None:
 data = {"tickets": [{"id": "py", "call": "no_such_module_4711:step"}]}
 assert pipeline_from_dict(data, name="demo").tickets[0].id == "py"
 with pytest.raises(PipelineFileError) as info:
  pipeline_from_dict(data, name="demo", resolve_calls=True)
 assert str(info.value).startswith(
  "pipeline 'demo': ticket 'py': bad call target 'no_such_module_4711:step': no module named"
 )


# -- agent tickets ----------------------------------------------------------------------------

AGENT = """
[pipeline]
token_budget = 1000
dask = "tcp://10.0.0.5:8786"

[pipeline.agent]
base_url = "http://localhost:11434/v1"
model = "qwen2.5-coder:1.5b"
api_key_env = "OPENAI_API_KEY"
timeout = 30

[[tickets]]
id = "plan"
prompt = "Plan it"
system = "Be brief"

[[tickets]]
id = "review"
depends_on = ["plan"]
prompt = "Review {{ plan }} and {{plan}}"
model = "big-model"
"""


def test_an_agent_pipeline_loads_its_endpoint_budget_dask_and_prompts(tmp_path: Path) -> None:
 pipeline = load_pipeline(write(tmp_path, AGENT))
 agent = AgentConfig("http://localhost:11434/v1", "qwen2.5-coder:1.5b", "OPENAI_API_KEY", 30.0)
 assert (pipeline.agent, pipeline.token_budget, pipeline.dask) == (
  agent,
  1000,
  "tcp://10.0.0.5:8786",
 )
 plan, review = pipeline.tickets
 assert plan.work == AgentWork("Plan it", agent, system="Be brief")
 assert review.work == AgentWork("Review {{ plan }} and {{plan}}", agent, model="big-model")
 assert review.work.inputs == ("plan",)


def test_without_the_new_keys_there_is_no_agent_budget_or_dask(tmp_path: Path) -> None:
 pipeline = load_pipeline(write(tmp_path, TICKET))
 assert (pipeline.agent, pipeline.token_budget, pipeline.dask) == (None, None, None)


def test_the_agent_table_s_optional_keys_have_their_defaults(tmp_path: Path) -> None:
 text = '[pipeline.agent]\nbase_url = "https://api.example.com/v1"\n' + TICKET
 assert load_pipeline(write(tmp_path, text)).agent == AgentConfig("https://api.example.com/v1")


def test_a_prompt_ticket_may_name_its_own_model_instead_of_the_table(tmp_path: Path) -> None:
 text = '[pipeline.agent]\nbase_url = "http://h:1/v1"\n[[tickets]]\nid = "a"\nprompt = "hi"\nmodel = "m"\n'
 work = load_pipeline(write(tmp_path, text)).tickets[0].work
 assert work == AgentWork("hi", AgentConfig("http://h:1/v1"), model="m")


def test_an_agent_table_without_base_url_is_fine_until_a_ticket_has_a_prompt(
 tmp_path: Path,
) -> None:
 table = '[pipeline.agent]\nmodel = "m"\n'
 assert load_pipeline(write(tmp_path, table + TICKET)).agent is None
 error = error_for(tmp_path, table + '[[tickets]]\nid = "p"\nprompt = "hi"\n')
 assert str(error).endswith(
  ": ticket 'p': has a prompt but [pipeline.agent] has no base_url; add base_url = "
  '"http://localhost:11434/v1" (your endpoint\'s URL) to [pipeline.agent]'
 )
 assert error.ticket == "p"


@pytest.mark.parametrize(
 "text",
 [
  "{plan}",  # single braces
  "{{ two words }}",  # not an id
  "{{}} and {{ }}",  # empty
  "{ {plan} }",
  "{{plan}",
 ],
)
def test_malformed_braces_are_sent_as_written_not_refused(tmp_path: Path, text: str) -> None:
 body = f'[pipeline.agent]\nbase_url = "http://h/v1"\nmodel = "m"\n[[tickets]]\nid = "a"\nprompt = {json.dumps(text)}\n'
 work = load_pipeline(write(tmp_path, body)).tickets[0].work
 assert isinstance(work, AgentWork) and work.prompt == text and work.inputs == ()


def test_a_prompt_ticket_without_an_agent_table_says_what_to_add(tmp_path: Path) -> None:
 error = error_for(tmp_path, '[[tickets]]\nid = "plan"\nprompt = "hi"\n')
 assert str(error) == (
  f"{tmp_path / 'pipe.toml'}: ticket 'plan': has a prompt but the file has no [pipeline.agent] "
  'table; add [pipeline.agent] with base_url = "http://localhost:11434/v1" and '
  'model = "qwen2.5-coder:1.5b"'
 )
 assert error.ticket == "plan"


def test_a_prompt_ticket_without_a_model_anywhere_is_refused_with_the_fix(tmp_path: Path) -> None:
 text = '[pipeline.agent]\nbase_url = "http://h/v1"\n[[tickets]]\nid = "plan"\nprompt = "hi"\n'
 error = error_for(tmp_path, text)
 assert str(error).endswith(
  ": ticket 'plan': has no model; add model = \"<name>\" to [pipeline.agent] (for every "
  "prompt ticket) or to this ticket"
 )


@pytest.mark.parametrize(
 ("lines", "where", "ref"),
 [
  ('prompt = "Use {{plan}}"', "prompt", "plan"),
  ('prompt = "Use {{  plan  }}"', "prompt", "plan"),
  ('depends_on = ["plan"]\nprompt = "{{plan}} {{ spec }}"', "prompt", "spec"),
  ('prompt = "hi"\nsystem = "You know {{ notes }}"', "system", "notes"),
 ],
)
def test_a_reference_outside_depends_on_names_file_ticket_reference_and_fix(
 tmp_path: Path, lines: str, where: str, ref: str
) -> None:
 head = '[pipeline.agent]\nbase_url = "http://h/v1"\nmodel = "m"\n'
 error = error_for(tmp_path, f'{head}[[tickets]]\nid = "review"\n{lines}\n')
 assert str(error) == (
  f"{tmp_path / 'pipe.toml'}: ticket 'review': '{{{{{ref}}}}}' in its {where} reads the output "
  f"of '{ref}', which is not among its depends_on; add '{ref}' to depends_on"
 )
 assert error.ticket == "review"


@pytest.mark.parametrize(
 ("lines", "expected"),
 [
  (
   "prompt = ''",
   "'prompt' must be a non-empty string (the text sent to the model), found string \"\"",
  ),
  (
   "prompt = 3",
   "'prompt' must be a non-empty string (the text sent to the model), found integer 3",
  ),
  ("prompt = 'hi'\nsystem = 1", "'system' must be a string (the system message), found integer 1"),
  (
   "prompt = 'hi'\nmodel = ' '",
   "'model' must be a non-empty string (the model's name at the endpoint), found string \" \"",
  ),
  ("prompt = 'hi'\nmodel = 2", "'model' must be a non-empty string"),
  ("run = 'true'\nsystem = 'x'", "'system' only applies to prompt tickets; remove it"),
  ("sleep = 1\nmodel = 'm'", "'model' only applies to prompt tickets; remove it"),
  ("call = 'm:f'\nmodel = 'm'", "'model' only applies to prompt tickets; remove it"),
  (
   "run = 'true'\nprompt = 'hi'",
   "has run and prompt; keep exactly one of run, call, sleep, prompt",
  ),
  ("prompt = 'hi'\nfail = true", "'fail' only applies to sleep tickets; remove it"),
 ],
)
def test_a_wrong_prompt_ticket_names_the_ticket_the_key_and_the_fix(
 tmp_path: Path, lines: str, expected: str
) -> None:
 head = '[pipeline.agent]\nbase_url = "http://h/v1"\nmodel = "m"\n'
 error = error_for(tmp_path, f'{head}[[tickets]]\nid = "t1"\n{lines}\n')
 assert str(error).startswith(f"{tmp_path / 'pipe.toml'}: ticket 't1': {expected}")
 assert error.ticket == "t1"


@pytest.mark.parametrize(
 ("lines", "expected"),
 [
  (
   "token_budget = 0",
   "[pipeline]: 'token_budget' must be an integer >= 1 (tokens), found integer 0",
  ),
  (
   "token_budget = 1.5",
   "[pipeline]: 'token_budget' must be an integer >= 1 (tokens), found float 1.5",
  ),
  ("token_budget = true", "found boolean true"),
  ("token_budget = '9'", 'found string "9"'),
  (
   'dask = "tcp://host"',
   '[pipeline]: \'dask\' must be "tcp://HOST:PORT" (a running Dask scheduler) or "local:N" (a local cluster of N >= 1 workers), found string "tcp://host"',
  ),
  ('dask = "tcp://host:0"', 'found string "tcp://host:0"'),
  ('dask = "tcp://host:65536"', 'found string "tcp://host:65536"'),
  ('dask = "tcp://:8786"', 'found string "tcp://:8786"'),
  ('dask = "localhost:8786"', 'found string "localhost:8786"'),
  ('dask = "local:0"', 'found string "local:0"'),
  ('dask = "local:two"', 'found string "local:two"'),
  ('dask = "local:\u0664"', 'found string "local:\u0664"'),  # an Arabic-Indic four
  ("dask = 4", "found integer 4"),
  ("agent = 3", "[pipeline]: 'agent' must be a table ([pipeline.agent]), found integer 3"),
  (
   "[pipeline.agent]\nurl = 'x'",
   "[pipeline.agent]: unknown key 'url' in [pipeline.agent]; allowed keys: base_url, model, api_key_env, timeout",
  ),
  (
   "[pipeline.agent]\nbase_url = 'localhost:11434'",
   '[pipeline.agent]: \'base_url\' must be an http:// or https:// URL such as "http://localhost:11434/v1", found string "localhost:11434"',
  ),
  ("[pipeline.agent]\nbase_url = 'ftp://h/v1'", "'base_url' must be an http:// or https:// URL"),
  ("[pipeline.agent]\nbase_url = 'http://'", "'base_url' must be an http:// or https:// URL"),
  (
   "[pipeline.agent]\nbase_url = 'http://h:99999/v1'",
   "'base_url' must be an http:// or https:// URL",
  ),
  ("[pipeline.agent]\nbase_url = 'http://h /v1'", "'base_url' must be an http:// or https:// URL"),
  ("[pipeline.agent]\nbase_url = 5", "found integer 5"),
  (
   "[pipeline.agent]\nmodel = ''",
   "[pipeline.agent]: 'model' must be a non-empty string (the model's name at the endpoint), found string \"\"",
  ),
  (
   "[pipeline.agent]\napi_key_env = 5",
   "[pipeline.agent]: 'api_key_env' must be the name of an environment variable (api_key_env = \"OPENAI_API_KEY\"), found integer 5",
  ),
  (
   "[pipeline.agent]\napi_key_env = 'MY KEY'",
   "[pipeline.agent]: 'api_key_env' must be the NAME of an environment variable (letters, digits and _, not starting with a digit), not a key: e.g. api_key_env = \"OPENAI_API_KEY\"",
  ),
  (
   "[pipeline.agent]\napi_key_env = '1KEY'",
   "'api_key_env' must be the NAME of an environment variable",
  ),
  (
   "[pipeline.agent]\ntimeout = 0",
   "[pipeline.agent]: 'timeout' must be a number of seconds > 0, found integer 0",
  ),
  ("[pipeline.agent]\ntimeout = -1.5", "found float -1.5"),
  ("[pipeline.agent]\ntimeout = nan", "found float nan"),
  ("[pipeline.agent]\ntimeout = true", "found boolean true"),
  ("[pipeline.agent]\ntimeout = '30'", 'found string "30"'),
 ],
)
def test_a_wrong_agent_budget_or_dask_setting_names_the_table_the_key_and_the_fix(
 tmp_path: Path, lines: str, expected: str
) -> None:
 error = error_for(tmp_path, f"[pipeline]\n{lines}\n" + TICKET)
 table = "[pipeline.agent]" if "[pipeline.agent]" in lines else "[pipeline]"
 assert str(error).startswith(f"{tmp_path / 'pipe.toml'}: {table}: ")
 assert expected in str(error)
 assert error.ticket is None


@pytest.mark.parametrize("key", ["sk-proj-abc123DEF", "sk_live_abc123", "hf_abcDEF123", "gsk_abc"])
def test_a_key_written_where_its_variable_s_name_belongs_is_refused_without_showing_it(
 tmp_path: Path, key: str
) -> None:
 error = error_for(tmp_path, f"[pipeline.agent]\napi_key_env = '{key}'\n" + TICKET)
 assert str(error) == (
  f"{tmp_path / 'pipe.toml'}: [pipeline.agent]: 'api_key_env' holds what looks like a key; "
  'never write a key into the file: write api_key_env = "OPENAI_API_KEY" and set that '
  "variable to the key where conductor runs"
 )
 assert key not in str(error) and key[3:] not in str(error)


@pytest.mark.parametrize(
 "address",
 ["tcp://127.0.0.1:8786", "tcp://sched.example.com:1", "tcp://[::1]:8786", "local:1", "local:12"],
)
def test_a_dask_address_in_either_form_loads(tmp_path: Path, address: str) -> None:
 text = f'[pipeline]\ndask = "{address}"\n' + TICKET
 assert load_pipeline(write(tmp_path, text)).dask == address


def test_an_agent_file_reads_the_same_with_and_without_the_fast_parser(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
 good_path = write(tmp_path, AGENT, "good.toml")
 bad_path = write(tmp_path, AGENT.replace('depends_on = ["plan"]\n', ""), "bad.toml")
 fast = [_outcome(good_path), _outcome(bad_path)]
 monkeypatch.setattr(pipeline_module, "_rtoml", None)
 assert [_outcome(good_path), _outcome(bad_path)] == fast
 assert isinstance(fast[1], tuple) and "add 'plan' to depends_on" in str(fast[1][0])


def test_the_agent_example_asks_a_local_ollama_plan_implement_review() -> None:
 pipeline = load_pipeline(EXAMPLES / "agents.toml")
 assert pipeline.agent is not None
 assert pipeline.agent.base_url == "http://localhost:11434/v1"
 assert pipeline.agent.api_key_env is None and pipeline.token_budget is not None
 assert [(t.id, t.depends_on) for t in pipeline.tickets] == [
  ("plan", ()),
  ("implement", ("plan",)),
  ("review", ("plan", "implement")),
 ]
 works = [t.work for t in pipeline.tickets if isinstance(t.work, AgentWork)]
 assert [w.inputs for w in works] == [(), ("plan",), ("plan", "implement")]


# -- fingerprints -----------------------------------------------------------------------------


def test_a_fingerprint_is_stable_and_ignores_run_state_description_and_location(
 tmp_path: Path,
) -> None:
 one = Ticket("a", ("b",), "first", ShellWork("make", tmp_path / "x"), retries=1)
 two = Ticket("a", ("b",), "second", ShellWork("make", tmp_path / "y"), retries=1)
 two.status, two.attempts, two.error = Status.FAILED, 3, "boom"
 assert fingerprint(one) == fingerprint(two)
 assert len(fingerprint(one)) == 64 and int(fingerprint(one), 16) >= 0


PINNED = "4efdfcad515ff81ca468ebff254fe375686e1fd1b3dacf149c4342dc418ad3e9"


def test_the_fingerprint_of_a_known_ticket_never_changes() -> None:
 # Saved states compare against this value across versions: changing it orphans them.
 ticket = Ticket("build", ("configure",), work=SleepWork(1, fail=True), retries=2)
 assert fingerprint(ticket) == fingerprint(
  Ticket("build", ("configure",), work=SleepWork(1.0, fail=True), retries=2)
 )
 assert fingerprint(ticket) == PINNED


@pytest.mark.parametrize(
 "changed",
 [
  Ticket("b", ("x",), work=ShellWork("make", Path("."))),
  Ticket("a", ("y",), work=ShellWork("make", Path("."))),
  Ticket("a", ("x", "y"), work=ShellWork("make", Path("."))),
  Ticket("a", ("x",), work=ShellWork("make all", Path("."))),
  Ticket("a", ("x",), work=ShellWork("make", Path("."), {"CC": "clang"})),
  Ticket("a", ("x",), work=CallWork("make:main")),
  Ticket("a", ("x",), work=SleepWork(1)),
  Ticket("a", ("x",), work=ShellWork("make", Path(".")), retries=1),
 ],
)
def test_a_fingerprint_changes_with_the_definition(changed: Ticket) -> None:
 base = Ticket("a", ("x",), work=ShellWork("make", Path(".")))
 assert fingerprint(changed) != fingerprint(base)


def test_sleep_and_fail_both_count_in_the_fingerprint() -> None:
 assert fingerprint(Ticket("a", work=SleepWork(1))) != fingerprint(Ticket("a", work=SleepWork(2)))
 assert fingerprint(Ticket("a", work=SleepWork(1))) != fingerprint(
  Ticket("a", work=SleepWork(1, fail=True))
 )


@pytest.mark.parametrize(
 "ticket",
 [
  Ticket("build", ("configure",), work=SleepWork(1, fail=True), retries=2),
  Ticket("a", work=SleepWork(0)),
  Ticket("a", work=SleepWork(0.1 + 0.2)),
  Ticket("a", work=SleepWork(1e300)),
  Ticket(
   'é"\\ \u2028 \U0001f600', ("ü", 'x"y', "\\"), work=ShellWork("echo 'ä' \"$x\"", Path("."))
  ),
  Ticket("a", ("b", "b"), work=CallWork("steps:run", Path("."))),
  Ticket("a", work=ShellWork("make", Path("."), {"Z": "1", "A": "é"})),
  Ticket("a", work=SleepWork(float("inf"))),
  Ticket("a", work=SleepWork(True)),  # type: ignore[arg-type]
  Ticket("a", work=None, retries=10**30),
  Ticket("a", work=CallWork("m:f"), retries=True),
  Ticket("r", ("p",), work=AgentWork('é "{{p}}"\n\u2028', AgentConfig("http://h/v1", "m"))),
  Ticket("r", work=AgentWork("x", AgentConfig("http://h/v1"), system="s", model="n")),
  Ticket("r", work=AgentWork("x", AgentConfig("http://h/v1"))),
  Ticket("r", work=AgentWork("x", AgentConfig("http://h/v1", 3), system=4)),  # type: ignore[arg-type]
 ],
)
def test_the_fast_fingerprint_is_the_canonical_json_one(ticket: Ticket) -> None:
 # pipeline._canonical_fast writes the common work kinds directly; the digest must be the
 # one of the canonical JSON (sorted keys, no spaces, unescaped UTF-8), which saved states hold.
 definition = {
  "v": 1,
  "id": ticket.id,
  "depends_on": list(ticket.depends_on),
  "work": pipeline_module._work_definition(ticket.work),
  "retries": ticket.retries,
 }
 blob = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
 assert fingerprint(ticket) == hashlib.sha256(blob.encode("utf-8")).hexdigest()


def test_fingerprints_of_many_tickets_are_each_ticket_s_fingerprint(tmp_path: Path) -> None:
 # They share work specs (as a loaded file's do), and some take the general path.
 shared = SleepWork(1)
 tickets = [
  Ticket("a", work=shared),
  Ticket("b", ("a",), work=shared, retries=2),
  Ticket("c", ("a", "b"), work=ShellWork("make", tmp_path)),
  Ticket("d", work=ShellWork("make", tmp_path, {"X": "1"})),
  Ticket("e", work=None),
  Ticket("f", work=SleepWork(1.0)),
 ]
 loaded = load_pipeline(write(tmp_path, GOOD.format(steps="steps"), "p.toml"), resolve_calls=False)
 for some in (tickets, list(loaded.tickets)):
  assert list(pipeline_module.fingerprints(some)) == [fingerprint(t) for t in some]


AGENT_HERE = AgentConfig("http://localhost:11434/v1", "m", None, 600.0)


@pytest.mark.parametrize(
 "elsewhere",
 [
  AgentConfig("https://api.openai.com/v1", "m", "OPENAI_API_KEY", 30.0),
  AgentConfig("http://localhost:8000/v1", None),  # ... with the model named by the ticket
 ],
)
def test_a_prompt_ticket_s_fingerprint_ignores_where_it_is_sent(elsewhere: AgentConfig) -> None:
 # Pointing a pipeline at another provider is not an edit: its saved replies stay valid.
 here = Ticket("r", ("p",), work=AgentWork("Review {{p}}", AGENT_HERE, system="s"))
 there = Ticket("r", ("p",), work=AgentWork("Review {{p}}", elsewhere, system="s", model="m"))
 assert fingerprint(here) == fingerprint(there)
 assert pipeline_module._canonical_fast(here) is not None  # the fast path covers them


@pytest.mark.parametrize(
 "changed",
 [
  AgentWork("Review {{p}} again", AGENT_HERE, system="s"),
  AgentWork("Review {{p}}", AGENT_HERE, system="t"),
  AgentWork("Review {{p}}", AGENT_HERE),  # no system message at all
  AgentWork("Review {{p}}", AGENT_HERE, system="s", model="other"),
  AgentWork("Review {{p}}", AgentConfig("http://localhost:11434/v1", "other"), system="s"),
 ],
)
def test_a_prompt_ticket_s_fingerprint_changes_with_what_is_asked_and_of_which_model(
 changed: AgentWork,
) -> None:
 base = Ticket("r", ("p",), work=AgentWork("Review {{p}}", AGENT_HERE, system="s"))
 assert fingerprint(Ticket("r", ("p",), work=changed)) != fingerprint(base)
 assert fingerprint(Ticket("r", ("p",), work=changed)) != fingerprint(
  Ticket("r", ("p",), work=SleepWork(1))
 )
