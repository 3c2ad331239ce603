"""The `conductor` command as a user meets it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from procs import conductor


def write(path: Path, text: str) -> Path:
 path.write_text(text)
 return path


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
 assert result.returncode == 2, result
 lines = result.stderr.strip().splitlines()
 assert len(lines) == 1, result.stderr
 assert "Traceback" not in result.stderr
 for needle in needles:
  assert needle in lines[0]


GOOD = """
[pipeline]
name = "tiny"
max_workers = 2

[[tickets]]
id = "hello"
run = "echo hello > hello.txt"

[[tickets]]
id = "world"
depends_on = ["hello"]
run = "cat hello.txt && echo world"
"""


def test_run_completes_a_shell_pipeline_and_exits_0(tmp_path: Path) -> None:
 pipeline = write(tmp_path / "tiny.toml", GOOD)
 result = conductor("run", str(pipeline), cwd=tmp_path / "..")
 assert result.returncode == 0, result.stderr
 # Paths as people type them: relative to where the command was given, however it was named.
 folder = tmp_path.name
 assert (
  f"conductor: running tiny from {folder}/tiny.toml: 2 tickets, max 2 workers" in result.stdout
 )
 assert f"state: {folder}/tiny.state.db (new)" in result.stdout
 assert f"--state {folder}/tiny.state.db" in result.stdout
 assert (tmp_path / "hello.txt").read_text() == "hello\n"  # cwd is the pipeline's folder
 # Off a terminal: one plain line per transition.
 assert "tiny: hello completed (attempt 1)" in result.stdout
 assert result.stdout.index("hello completed") < result.stdout.index("world in_progress")
 assert "all tickets completed" in result.stdout


def test_run_on_trio_too(tmp_path: Path) -> None:
 pipeline = write(tmp_path / "tiny.toml", GOOD)
 result = conductor("run", str(pipeline), "--backend", "trio", "--max-workers", "1")
 assert result.returncode == 0, result.stderr
 assert "max 1 worker, trio" in result.stdout


def test_failed_ticket_blocks_dependents_and_exits_1(tmp_path: Path) -> None:
 pipeline = write(
  tmp_path / "fails.toml",
  """
[[tickets]]
id = "broken"
run = "echo oops >&2; exit 3"

[[tickets]]
id = "after"
depends_on = ["broken"]
run = "echo never"

[[tickets]]
id = "independent"
run = "echo fine"
""",
 )
 result = conductor("run", str(pipeline))
 assert result.returncode == 1
 assert "broken failed" in result.stdout and "exit code 3" in result.stdout
 assert "after blocked" in result.stdout
 assert "independent completed" in result.stdout
 # Then, after the final view, the tickets that did not complete, with why.
 lines = result.stdout.splitlines()
 assert [line.split(":")[0] for line in lines if line.startswith(("failed ", "blocked "))] == [
  "failed broken",
  "blocked after",
 ]
 assert "blocked after: dependency 'broken' failed; retry 'broken' to unblock" in lines
 # ... and how to retry from the terminal: run it again (there is no `retry` command).
 assert lines[-1].endswith("(exit 1); run it again to retry the failed ones"), lines[-1]


@pytest.mark.parametrize(
 ("text", "needles"),
 [
  ("[[tickets]]\nid = 'a'\nrun = 'true'\ndepends_on = ['ghost']\n", ("bad.toml", "'a'", "ghost")),
  (
   "[[tickets]]\nid = 'a'\nrun = 'true'\n[[tickets]]\nid = 'a'\nrun = 'true'\n",
   ("bad.toml", "'a'"),
  ),
  (
   "[[tickets]]\nid = 'a'\nrun = 'true'\ndepends_on = ['b']\n"
   "[[tickets]]\nid = 'b'\nrun = 'true'\ndepends_on = ['a']\n",
   ("bad.toml", "a -> b -> a"),
  ),
  ("[[tickets]]\nid = 'a'\n", ("bad.toml", "'a'", "run")),
  ("[pipeline]\nname = 'x'\n", ("bad.toml", "ticket")),
  ("[[tickets]\nid = 'a'\n", ("bad.toml", "line")),
  ("[[tickets]]\nid = 'a'\nrun = 'true'\ncolour = 'red'\n", ("bad.toml", "colour")),
  (
   "[pipeline]\nmax_workers = 'four'\n[[tickets]]\nid = 'a'\nrun = 'true'\n",
   ("bad.toml", "max_workers"),
  ),
 ],
 ids=[
  "unknown-dependency",
  "duplicate-id",
  "cycle",
  "no-work",
  "no-tickets",
  "toml-syntax",
  "unknown-key",
  "wrong-type",
 ],
)
def test_bad_pipeline_files_get_one_line_and_exit_2(
 tmp_path: Path, text: str, needles: tuple[str, ...]
) -> None:
 pipeline = write(tmp_path / "bad.toml", text)
 for command in ("run", "validate"):
  assert_one_line_error(conductor(command, str(pipeline)), *needles)


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
 assert_one_line_error(conductor("run", str(tmp_path / "nope.toml")), "nope.toml")


def test_bad_max_workers_is_refused_by_the_parser(tmp_path: Path) -> None:
 pipeline = write(tmp_path / "tiny.toml", GOOD)
 result = conductor("run", str(pipeline), "--max-workers", "0")
 assert result.returncode == 2
 assert "Traceback" not in result.stderr


def test_validate_summarises_a_good_file_in_words(tmp_path: Path) -> None:
 pipeline = write(tmp_path / "tiny.toml", GOOD)
 result = conductor("validate", str(pipeline), cwd=tmp_path)
 assert result.returncode == 0
 assert result.stdout.startswith("tiny.toml: ok — pipeline 'tiny', 2 tickets, 1 dependency,")
 alone = write(tmp_path / "one.toml", "[[tickets]]\nid = 'a'\nrun = 'true'\n")
 result = conductor("validate", str(alone), cwd=tmp_path)
 assert "1 ticket, 0 dependencies" in result.stdout


def test_the_shipped_examples_validate() -> None:
 examples = Path(__file__).parent.parent / "examples"
 for pipeline in sorted(examples.glob("*.toml")):
  assert conductor("validate", str(pipeline)).returncode == 0, pipeline


def test_status_of_a_large_pipeline_lists_the_notable_tickets_and_all_on_request(
 tmp_path: Path,
) -> None:
 tickets = "".join(f'[[tickets]]\nid = "t{i}"\nsleep = 0\n' for i in range(60))
 tickets += '[[tickets]]\nid = "bad"\nsleep = 0\nfail = true\n'
 tickets += '[[tickets]]\nid = "after"\nsleep = 0\ndepends_on = ["bad"]\n'
 write(tmp_path / "big.toml", tickets)
 assert conductor("run", "big.toml", cwd=tmp_path).returncode == 1
 short = conductor("status", "big.toml", cwd=tmp_path)
 assert short.returncode == 0, short.stderr
 assert table_ids(short.stdout) == ["bad", "after"]
 assert "60 of 62 tickets not listed" in short.stdout and "--all" in short.stdout
 every = conductor("status", "big.toml", "--all", cwd=tmp_path)
 assert len(table_ids(every.stdout)) == 62 and "not listed" not in every.stdout


def table_ids(output: str) -> list[str]:
 """The ticket ids of a `conductor status` table (wrapped error lines left out)."""
 statuses = {"todo", "in_progress", "completed", "failed", "blocked"}
 rows = [line.split() for line in output.splitlines() if line.startswith("  ")]
 return [w[0] for w in rows if len(w) > 1 and w[1] in statuses]
