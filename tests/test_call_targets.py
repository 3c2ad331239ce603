"""`call` targets as a user meets them through the real command: `validate` and `run` refuse a
target that cannot be called, in one line, before touching any state; a target that breaks
later fails only its ticket, in plain words, with no class name of ours in the text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from procs import conductor, one_line_error

# A private class name, such as the "_BadTarget: bad call target ..." a user once read.
PRIVATE_NAME = re.compile(r"(?<![\w.])_[A-Z]\w*")


def pipeline(folder: Path, *tickets: tuple[str, str]) -> Path:
 """p.toml in `folder` with one `call` ticket per (id, target), each depending on the one
 before it."""
 text, previous = "", None
 for tid, target in tickets:
  text += f'[[tickets]]\nid = "{tid}"\ncall = "{target}"\n'
  if previous is not None:
   text += f'depends_on = ["{previous}"]\n'
  previous = tid
 path = folder / "p.toml"
 path.write_text(text)
 return path


@pytest.mark.parametrize(
 ("source", "target", "needles"),
 [
  (None, "no_such_module_4711:step", ("no module named 'no_such_module_4711'", "check")),
  ("def step(ticket):\n pass\n", "steps:stpe", ("module 'steps' has no attribute 'stpe'",)),
  ("step = 3\n", "steps:step", ("step is an int, not a function",)),
  ("import sys\nsys.exit(4)\n", "steps:step", ("importing module 'steps' raised SystemExit",)),
  ("raise KeyboardInterrupt\n", "steps:step", ("raised KeyboardInterrupt", "fix the module")),
  ("import no_such_dependency_4711\n", "steps:step", ("No module named", "install")),
 ],
 ids=["no-module", "no-function", "not-callable", "exits-at-import", "ctrl-c-at-import", "dep"],
)
def test_validate_and_run_refuse_a_target_that_cannot_be_called_before_touching_state(
 tmp_path: Path, source: str | None, target: str, needles: tuple[str, ...]
) -> None:
 if source is not None:
  (tmp_path / "steps.py").write_text(source)
 path = pipeline(tmp_path, ("py", target))
 before = set(tmp_path.iterdir())
 for command in ("validate", "run"):
  line = one_line_error(conductor(command, "p.toml", cwd=tmp_path), "p.toml", "'py'", *needles)
  assert f"'{target}'" in line and not PRIVATE_NAME.search(line), line
 assert set(tmp_path.iterdir()) == before  # no state file, no lock file: refused first
 assert path.exists()


def test_validate_imports_the_target_from_the_pipeline_s_folder_wherever_it_runs(
 tmp_path: Path,
) -> None:
 (tmp_path / "pipes").mkdir()
 (tmp_path / "pipes" / "steps.py").write_text("def step(ticket):\n return 'ok'\n")
 pipeline(tmp_path / "pipes", ("py", "steps:step"))
 result = conductor("validate", "pipes/p.toml", cwd=tmp_path)
 assert result.returncode == 0, result.stderr
 assert "ok" in result.stdout


def test_a_target_that_breaks_during_the_run_fails_its_ticket_in_plain_words(
 tmp_path: Path,
) -> None:
 # `forget` deletes `later` from the module: `later` resolved when the file was loaded, and
 # no longer does when its ticket starts.
 (tmp_path / "steps.py").write_text(
  "def forget(ticket):\n global later\n del later\n\ndef later(ticket):\n return 'never'\n"
 )
 pipeline(tmp_path, ("first", "steps:forget"), ("second", "steps:later"))
 error = "bad call target 'steps:later': module 'steps' has no attribute 'later'"
 run = conductor("run", "p.toml", cwd=tmp_path)
 assert run.returncode == 1, (run.stdout[-2000:], run.stderr)
 assert f"second failed (attempt 1): {error}" in run.stdout
 status = conductor("status", "p.toml", cwd=tmp_path)
 assert status.returncode == 0, status.stderr
 assert "bad call target" in status.stdout
 as_json = conductor("status", "--json", "p.toml", cwd=tmp_path)
 assert f'"error": "{error}; check the function name"' in as_json.stdout
 for text in (run.stdout, run.stderr, status.stdout, status.stderr, as_json.stdout):
  assert not PRIVATE_NAME.search(text), PRIVATE_NAME.search(text)
  assert "CallTargetError" not in text
