"""Hostile or broken pipeline input: one line naming the file and ticket, exit 2, never a
traceback; text that cannot be printed never passes as a ticket id.

Covers the file (`conductor.pipeline`), the Python API (`dag_engine.ExecutionEngine`) and the
command (`conductor validate` / `run`, real processes).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from procs import conductor, one_line_error

from conductor.dag_engine import (
 CycleError,
 ExecutionEngine,
 InvalidTicketIdError,
 PipelineError,
 SelfDependencyError,
 Ticket,
)
from conductor.pipeline import MAX_ID_LENGTH, PipelineFileError, load_pipeline

# Characters str.isprintable() rejects, of every kind: C0 controls (NUL, newline, tab, escape),
# DEL, a C1 control (CSI), a line separator, bidi and zero-width format characters.
UNPRINTABLE = ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x9b", "\u2028", "\u202e", "\u200b"]


def toml_string(text: str) -> str:
 return (
  '"'
  + "".join(ch if ch.isprintable() and ch not in '"\\' else f"\\u{ord(ch):04x}" for ch in text)
  + '"'
 )


def one_line(error: Exception) -> str:
 message = str(error)
 assert message.isprintable(), repr(message)  # no newline, no escape: one safe line
 return message


# -- ticket ids that cannot be printed ------------------------------------------------------


@pytest.mark.parametrize("bad", UNPRINTABLE, ids=[repr(c) for c in UNPRINTABLE])
def test_an_unprintable_character_in_a_ticket_id_is_refused_naming_it_escaped(
 tmp_path: Path, bad: str
) -> None:
 tid = f"build{bad}x"
 path = tmp_path / "p.toml"
 path.write_text(f"[[tickets]]\nid = {toml_string(tid)}\nsleep = 0\n")
 with pytest.raises(PipelineFileError) as caught:
  load_pipeline(path)
 message = one_line(caught.value)
 escaped = repr(bad)[1:-1]
 assert message.startswith(f"{path}: ticket 'build{escaped}x': 'id' has a character"), message
 assert caught.value.ticket == tid


@pytest.mark.parametrize("bad", UNPRINTABLE, ids=[repr(c) for c in UNPRINTABLE])
def test_an_unprintable_character_in_depends_on_is_refused(tmp_path: Path, bad: str) -> None:
 path = tmp_path / "p.toml"
 path.write_text(
  f'[[tickets]]\nid = "a"\nsleep = 0\n\n[[tickets]]\nid = "b"\nsleep = 0\n'
  f"depends_on = [{toml_string('a' + bad)}]\n"
 )
 with pytest.raises(PipelineFileError) as caught:
  load_pipeline(path)
 message = one_line(caught.value)
 assert f"ticket 'b': 'depends_on' entry 'a{repr(bad)[1:-1]}' has a character" in message


@pytest.mark.parametrize("bad", UNPRINTABLE, ids=[repr(c) for c in UNPRINTABLE])
def test_the_engine_refuses_unprintable_ids_from_the_python_api(bad: str) -> None:
 with pytest.raises(InvalidTicketIdError) as caught:
  ExecutionEngine([Ticket("ok"), Ticket(f"x{bad}")])
 assert isinstance(caught.value, PipelineError) and caught.value.ticket == f"x{bad}"
 assert f"'x{repr(bad)[1:-1]}'" in one_line(caught.value)
 with pytest.raises(InvalidTicketIdError) as caught:
  ExecutionEngine([Ticket("ok"), Ticket("b", ("ok", f"y{bad}"))])
 assert caught.value.ticket == "b" and "depends on 'y" in one_line(caught.value)


def test_the_engine_refuses_an_id_that_is_not_a_string() -> None:
 with pytest.raises(InvalidTicketIdError, match="is a int, not a string"):
  ExecutionEngine([Ticket(7)])  # type: ignore[arg-type]


def test_printable_unicode_ids_still_pass() -> None:
 ids = ["café", "日本語", "a b", "x-1.2_3", "emoji🙂"]
 engine = ExecutionEngine([Ticket(tid) for tid in ids])
 assert list(engine.tickets) == ids


def test_a_shell_ticket_never_starts_with_an_unprintable_id(tmp_path: Path) -> None:
 # What the user meets: exit 2 with one escaped line, and the ticket's command never ran.
 (tmp_path / "p.toml").write_text(
  '[[tickets]]\nid = "a\\u001b]0;owned\\u0007"\nrun = "touch ran"\n'
 )
 for command in ("validate", "run"):
  result = conductor(command, "p.toml", cwd=tmp_path)
  assert result.returncode == 2, result
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "\x1b" not in result.stderr and "\x07" not in result.stderr
  assert "\\x1b]0;owned\\x07" in lines[0]
 assert not (tmp_path / "ran").exists()


def test_a_cycle_message_prints_ids_escaped() -> None:
 # Ids are checked first, so a cycle only ever holds printable ids; printed via printable
 # all the same.
 with pytest.raises(CycleError) as caught:
  ExecutionEngine([Ticket("a", ("b",)), Ticket("b", ("a",))])
 assert "a -> b -> a" in one_line(caught.value)


def test_a_self_dependency_is_the_shortest_cycle() -> None:
 with pytest.raises(CycleError) as caught:
  ExecutionEngine([Ticket("a", ("a",))])
 assert isinstance(caught.value, SelfDependencyError)
 assert caught.value.cycle == ("a", "a") and caught.value.ticket == "a"
 assert "ticket 'a' depends on itself" in one_line(caught.value)


# -- size and depth traps -------------------------------------------------------------------


@pytest.mark.parametrize(
 "value",
 ["[" * 500 + "]" * 500, "{a = " * 500 + "1" + "}" * 500, "[" * 100_000 + "]" * 100_000],
 ids=["arrays", "inline-tables", "arrays-100k"],
)
def test_deeply_nested_toml_is_one_line_not_a_recursion_error(tmp_path: Path, value: str) -> None:
 path = tmp_path / "p.toml"
 path.write_text(f'x = {value}\n[[tickets]]\nid = "a"\nsleep = 0\n')
 with pytest.raises(PipelineFileError) as caught:
  load_pipeline(path)
 assert "nested too deeply" in one_line(caught.value) and str(path) in str(caught.value)
 result = conductor("validate", "p.toml", cwd=tmp_path)
 assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
 assert "Traceback" not in result.stderr


def test_an_id_too_long_is_refused_shown_cut_short(tmp_path: Path) -> None:
 path = tmp_path / "p.toml"
 long_id = "x" * 1_000_000
 path.write_text(
  f'[[tickets]]\nid = "{long_id}"\nsleep = 0\n\n[[tickets]]\nid = "b"\nsleep = 0\n'
  f'depends_on = ["{"y" * (MAX_ID_LENGTH + 1)}"]\n'
 )
 with pytest.raises(PipelineFileError) as caught:
  load_pipeline(path)
 message = one_line(caught.value)
 assert "1000000 characters long" in message and len(message) < 400, message
 path.write_text(path.read_text().replace(long_id, "a"))
 with pytest.raises(PipelineFileError) as caught:
  load_pipeline(path)
 assert f"{MAX_ID_LENGTH + 1} characters long" in one_line(caught.value)
 assert caught.value.ticket == "b"
 path.write_text(path.read_text().replace("y" * (MAX_ID_LENGTH + 1), "a" * MAX_ID_LENGTH))
 path.write_text(path.read_text().replace('id = "a"', f'id = "{"a" * MAX_ID_LENGTH}"'))
 assert len(load_pipeline(path).tickets) == 2  # the longest id allowed


def test_a_huge_or_endless_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
 path = tmp_path / "huge.toml"
 with open(path, "wb") as f:
  f.truncate(200 * 1024 * 1024)  # sparse: costs no disk
 for target in (path, Path("/dev/zero")):
  with pytest.raises(PipelineFileError) as caught:
   load_pipeline(target)
  assert "too large for a pipeline file" in one_line(caught.value)


def test_a_string_value_with_control_characters_is_shown_escaped(tmp_path: Path) -> None:
 path = tmp_path / "p.toml"
 path.write_text('[[tickets]]\nid = "a"\nsleep = "\\u009b2J\\u202e"\n')
 with pytest.raises(PipelineFileError) as caught:
  load_pipeline(path)
 assert "\\x9b2J\\u202e" in one_line(caught.value)


def test_a_pipeline_name_that_cannot_be_printed_is_refused(tmp_path: Path) -> None:
 path = tmp_path / "p.toml"
 path.write_text('[pipeline]\nname = "p\\rforged"\n[[tickets]]\nid = "a"\nsleep = 0\n')
 with pytest.raises(PipelineFileError) as caught:
  load_pipeline(path)
 assert "[pipeline]: 'name' has a character that cannot be printed (\\r)" in one_line(caught.value)


def test_a_ticket_with_very_many_unknown_keys_gets_a_short_line(tmp_path: Path) -> None:
 path = tmp_path / "p.toml"
 keys = "".join(f'"k{i}\\n" = 1\n' for i in range(20_000))
 path.write_text(f'[[tickets]]\nid = "a"\nsleep = 0\n{keys}')
 with pytest.raises(PipelineFileError) as caught:
  load_pipeline(path)
 message = one_line(caught.value)
 assert "'k0\\n'" in message and "and 19992 more" in message and len(message) < 600, message


# -- call targets whose module is hostile ---------------------------------------------------


@pytest.mark.parametrize(
 ("body", "expected"),
 [
  (
   "raise RuntimeError('\\x1b[2J\\x1b]0;owned\\x07\\nsecond line')",
   "raised RuntimeError: \\x1b[2J\\x1b]0;owned\\x07; fix the module",
  ),
  (
   "class Bad(Exception):\n def __str__(self):\n  raise RuntimeError('no')\nraise Bad()",
   "raised Bad (its message could not be read); fix the module",
  ),
  ("def f(n):\n return f(n + 1)\nf(0)", "raised RecursionError: maximum recursion depth"),
  ("raise MemoryError('simulated')", "raised MemoryError: simulated; fix the module"),
 ],
 ids=["escapes", "str-raises", "recursion", "memory"],
)
def test_whatever_a_module_raises_at_import_is_one_escaped_line(
 tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, expected: str
) -> None:
 monkeypatch.setattr(sys, "path", list(sys.path))
 name = f"hostile_{uuid.uuid4().hex}"
 (tmp_path / f"{name}.py").write_text(f"{body}\n")
 path = tmp_path / "p.toml"
 path.write_text(f'[[tickets]]\nid = "a"\ncall = "{name}:step"\n')
 with pytest.raises(PipelineFileError) as caught:
  load_pipeline(path)
 message = one_line(caught.value)
 assert message.startswith(f"{path}: ticket 'a': call target '{name}:step': importing module")
 assert expected in message and "second line" not in message, message
 assert name not in sys.modules


# -- agent tickets ------------------------------------------------------------------------------

AGENT_HEAD = '[pipeline.agent]\nbase_url = "http://localhost:11434/v1"\nmodel = "m"\n'


@pytest.mark.parametrize("bad", UNPRINTABLE[3:], ids=[repr(c) for c in UNPRINTABLE[3:]])
def test_an_unprintable_reference_is_shown_escaped(tmp_path: Path, bad: str) -> None:
 # A `{{ID}}` holds no whitespace, so of these only the ones that are not spaces make a
 # reference; either way the line stays one printable line.
 path = tmp_path / "p.toml"
 prompt = toml_string(f"use {{{{x{bad}y}}}}")
 path.write_text(f'{AGENT_HEAD}[[tickets]]\nid = "a"\nprompt = {prompt}\n')
 try:
  load_pipeline(path)
 except PipelineFileError as exc:
  message = one_line(exc)
  assert f"'{{{{x{repr(bad)[1:-1]}y}}}}' in its prompt" in message, message
 else:
  assert bad.isspace()  # not a reference, so nothing to refuse


def test_a_key_pasted_into_api_key_env_never_reaches_the_terminal(tmp_path: Path) -> None:
 key = "sk-proj-" + uuid.uuid4().hex
 (tmp_path / "p.toml").write_text(
  f'[pipeline.agent]\nbase_url = "https://api.openai.com/v1"\nmodel = "m"\napi_key_env = "{key}"\n'
  '[[tickets]]\nid = "a"\nprompt = "hi"\n'
 )
 result = conductor("validate", "p.toml", cwd=tmp_path)
 line = one_line_error(result, "p.toml", "api_key_env", "looks like a key")
 assert key not in result.stdout + result.stderr and key[8:] not in line


def test_a_reference_outside_depends_on_fails_validate_with_exit_2(tmp_path: Path) -> None:
 (tmp_path / "p.toml").write_text(
  f'{AGENT_HEAD}[[tickets]]\nid = "plan"\nprompt = "x"\n'
  '[[tickets]]\nid = "code"\nprompt = "Write {{ plan }}"\n'
 )
 one_line_error(
  conductor("validate", "p.toml", cwd=tmp_path), "p.toml", "'code'", "add 'plan' to depends_on"
 )


def test_the_agent_example_passes_validate() -> None:
 example = Path(__file__).resolve().parent.parent / "examples" / "agents.toml"
 result = conductor("validate", str(example))
 assert result.returncode == 0, result.stderr
 assert "3 tickets" in result.stdout
