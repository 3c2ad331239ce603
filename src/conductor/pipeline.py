"""Pipeline files: TOML in, validated `Pipeline` of fresh `Ticket`s out, or one clear error.

The format (every key but `id` and one of `run` / `call` / `sleep` / `prompt` is optional)::

 [pipeline]
 name = "build"          # default: the file name without .toml
 max_workers = 4         # workers at once, >= 1
 auto_queue = true       # false: a ready ticket waits to be queued by hand
 token_budget = 200000   # prompt + completion tokens before the run pauses itself, >= 1
 dask = "local:4"        # run tickets on Dask: "tcp://HOST:PORT" or "local:N"; --dask wins

 [pipeline.agent]        # where prompt tickets go: any OpenAI-compatible endpoint
 base_url = "http://localhost:11434/v1"   # http(s); required once a ticket has a prompt
 model = "qwen2.5-coder:1.5b"             # default model of prompt tickets
 api_key_env = "OPENAI_API_KEY"           # the NAME of the variable holding the key
 timeout = 600                            # seconds for one request, > 0

 [[tickets]]
 id = "compile"
 depends_on = ["configure"]
 description = "Compile the sources"
 run = "make -j4"        # a shell command, run in the pipeline file's folder
 # call = "steps:compile"  a Python function "module:function", imported from that folder
 # sleep = 1.5             a simulated job; `fail = true` makes it fail
 # prompt = "Review: {{ configure }}"   sent to the model; {{ID}} is ID's whole output
 # system = "..."          prompt tickets only: the system message
 # model = "..."           prompt tickets only: overrides [pipeline.agent] model
 retries = 2             # automatic retries after a failure

This module checks the FILE: syntax, keys, types, one kind of work per ticket, and that every
`call` target can be called. For prompt tickets: that there is a `[pipeline.agent]` with a
base_url, a model for each, a variable's name (never a key) in `api_key_env`, and that every
`{{ID}}` names one of the ticket's `depends_on` (`_agent_work` says what counts as one).
Checking the GRAPH (unknown dependencies, duplicate ids, cycles) is
`dag_engine.ExecutionEngine`'s job. TOML is read by rtoml when it is installed (a big file a
slice at a time), else by tomllib, with tomllib's results and messages either way (see
`_sliced`).

Call targets are resolved when a FILE is loaded: `load_pipeline` imports each target's module
exactly as the run will (`workers.resolve_call_target`, the file's folder on `sys.path`), so
`conductor validate` catches a missing module or function, and `run` and the dashboard
refuse the file before they touch any saved state. The import runs the module's top level in
this process, once (the run then finds it in `sys.modules`). Whatever that raises, even
`SystemExit` or `KeyboardInterrupt`, becomes one `PipelineFileError` line. `pipeline_from_dict`
imports nothing unless asked (`resolve_calls=True`): built-in and test pipelines stay pure data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

from ._heap import gc_paused
from ._text import printable, shown_path
from .agents import AgentConfig, AgentWork, template_refs
from .dag_engine import Ticket
from .workers import (
 CallTargetError,
 CallWork,
 ShellWork,
 SleepWork,
 WorkSpec,
 describe_exception,
 parse_call_target,
 resolve_call_target,
)

try:
 import rtoml as _rtoml
except ImportError:  # optional: tomllib does the same, slower
 _rtoml = None  # type: ignore[assignment]

_PIPELINE_KEYS = ("name", "max_workers", "auto_queue", "token_budget", "dask", "agent")
_AGENT_KEYS = ("base_url", "model", "api_key_env", "timeout")
_TOP_KEYS = ("pipeline", "tickets")
_TICKET_KEYS = (
 "id",
 "depends_on",
 "description",
 "run",
 "call",
 "sleep",
 "prompt",
 "fail",
 "system",
 "model",
 "retries",
)
_WORK_KEYS = ("run", "call", "sleep", "prompt")
_WORK_HINT = (
 'run = "<shell command>", call = "module:function", sleep = <seconds> '
 'or prompt = "<text for the model>"'
)
_AGENT_EXAMPLE = 'base_url = "http://localhost:11434/v1" and model = "qwen2.5-coder:1.5b"'
# Limits that keep a wrong or hostile file from exhausting memory or flooding a message: a
# 100,000-ticket pipeline is about 8 MB; an id is shown in every log line and listing, and
# travels in a shell ticket's environment.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class Pipeline:
 """A loaded pipeline. Immutable itself; its `tickets` are fresh mutable run state.

 `path` is the absolute path of the file it came from (None when built in code). Each load
 builds new `Ticket` objects, so two runs never share ticket state.
 """

 name: str
 path: Path | None
 max_workers: int
 auto_queue: bool
 tickets: tuple[Ticket, ...]
 agent: AgentConfig | None = None  # `[pipeline.agent]`; None without one (or without base_url)
 token_budget: int | None = None  # tokens the run may spend before it pauses itself
 dask: str | None = None  # "tcp://HOST:PORT" or "local:N" (`--dask` wins over it)


class PipelineFileError(ValueError):
 """A mistake in a pipeline file (or dict) that the user can fix.

 `str(error)` is ONE line naming the file, the ticket (when there is one) and the fix, ready
 to print without a traceback. `path` is the file as given (None for a dict), `ticket` the
 offending ticket's id (None for file-level errors or a ticket without id), `line` the
 1-based line for TOML syntax errors (None otherwise: tomllib reports no positions for
 valid TOML).
 """

 def __init__(
  self, message: str, *, path: Path | None, ticket: str | None = None, line: int | None = None
 ) -> None:
  super().__init__(message)
  self.path = path
  self.ticket = ticket
  self.line = line


# -- loading ----------------------------------------------------------------------------------


def load_pipeline(path: str | Path, *, resolve_calls: bool = True) -> Pipeline:
 """Read, parse and validate the TOML pipeline at `path`; return fresh tickets.

 Shell tickets run in the file's folder and `call` targets are imported from it, wherever
 the program was started. Raises `PipelineFileError` for every user mistake (missing or
 unreadable file, TOML syntax with its line, unknown keys, wrong types, a ticket without
 id or without exactly one of run / call / sleep, a `call` target that cannot be called);
 nothing else for a bad file. Blocking: with `resolve_calls` (the default) it imports each
 call target's module (see the module docstring); `False` checks only the target's syntax.
 """
 given = Path(path)
 try:
  with open(given, "rb") as f:
   raw = f.read(MAX_FILE_BYTES + 1)  # bounded: also for /dev/zero or an endless pipe
 except FileNotFoundError:
  raise PipelineFileError(
   f"{shown_path(given)}: no such pipeline file; check the path", path=given
  ) from None
 except IsADirectoryError:
  raise PipelineFileError(
   f"{shown_path(given)}: is a folder, not a pipeline file; give the path of a .toml file",
   path=given,
  ) from None
 except OSError as exc:
  raise PipelineFileError(
   f"{shown_path(given)}: cannot read the pipeline file ({exc.strerror}); check its permissions",
   path=given,
  ) from None
 if len(raw) > MAX_FILE_BYTES:
  raise PipelineFileError(
   f"{shown_path(given)}: is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB, too large for a pipeline "
   "file; is it the right file?",
   path=given,
  )
 with gc_paused():  # a 100,000-ticket file is a million objects, kept until built
  return _load(raw, given, resolve_calls)


def _load(raw: bytes, given: Path, resolve_calls: bool) -> Pipeline:
 try:
  text = raw.decode("utf-8-sig")  # -sig: tolerate an editor's BOM
 except UnicodeDecodeError as exc:
  raise PipelineFileError(
   f"{shown_path(given)}: not UTF-8 text (bad byte at offset {exc.start}); save the file as UTF-8",
   path=given,
  ) from None
 build = functools.partial(
  _build,
  path=given.resolve(),
  where=str(given),
  error_path=given,
  name=given.stem,
  resolve_calls=resolve_calls,
 )
 sliced = _sliced(text)
 if sliced is not None:
  head, tickets = sliced
  try:
   return build(head, tickets=tickets)
  except _Unsliceable:
   pass  # parsed whole below: what the slices gave is dropped
  except PipelineFileError:
   try:  # a syntax error anywhere in the file is told first, as when it is parsed whole
    for _ in tickets:
     pass
   except _Unsliceable:
    pass
   else:
    raise
 return build(_parse_toml(text, given))


def _parse_toml(text: str, given: Path) -> dict[str, Any]:
 try:
  if _rtoml is not None and len(text) <= _WHOLE_FAST:
   with contextlib.suppress(Exception):  # tomllib decides, and words the error
    return _rtoml.loads(text)
  return tomllib.loads(text)
 except tomllib.TOMLDecodeError as exc:
  message, line, column = _split_toml_error(str(exc))
  where = f"{shown_path(given)}:{line}:{column}" if line is not None else shown_path(given)
  raise PipelineFileError(
   f"{where}: TOML syntax error: {printable(message)}; fix the syntax at that spot",
   path=given,
   line=line,
  ) from None
 except RecursionError:  # tomllib recurses once per nested array or inline table
  raise PipelineFileError(
   f"{shown_path(given)}: arrays or inline tables are nested too deeply for Python's TOML reader; "
   "flatten them (a pipeline needs two levels)",
   path=given,
  ) from None


# Parsing TOML. rtoml (Rust) reads a 100,000-ticket file 5x faster than tomllib, but holds
# the whole document's tree beside the Python objects it builds (about 30x the text: 200 MB
# for 6 MB). So a big file is read in slices, each beginning at a `[[tickets]]` header, and
# each slice's tickets are checked and turned into `Ticket`s before the next is parsed: the
# memory of one slice, and the parsed tables are dropped as soon as they are used.
# tomllib stays the reference: without rtoml, for a file that cannot be sliced, and for any
# text rtoml refuses (a syntax error, or a value only tomllib takes, such as 1e400), the
# whole file is parsed again by tomllib, so the result and every message are tomllib's.
_TICKETS_HEADER = re.compile(r"^\[\[tickets\]\][ \t]*(?:#[^\n]*)?\r?$", re.MULTILINE)
_SLICE = 64 * 1024  # characters a slice at least: it ends where a `[[tickets]]` line begins
_WHOLE_FAST = 1 << 20  # bytes of text rtoml may parse at once


class _Unsliceable(Exception):
 """The file cannot be read in slices after all; it is parsed whole."""


def _sliced(text: str) -> tuple[dict[str, Any], Iterator[object]] | None:
 # The tables before the first ticket, and the tickets, parsed a slice at a time as they are
 # taken; None when slicing does not apply. Outside a multi-line string nothing but a header
 # can be a `[[tickets]]` line; a file with one is parsed whole.
 if _rtoml is None or len(text) <= _WHOLE_FAST or '"""' in text or "'''" in text:
  return None
 first = _TICKETS_HEADER.search(text)
 if first is None:
  return None
 try:
  head = _rtoml.loads(text[: first.start()])
 except Exception:
  return None
 if "tickets" in head:
  return None
 # Only the headers that end slices are looked for: `^` matches where a line begins, also
 # when the search begins mid-line.
 bounds = [first.start()]
 while (found := _TICKETS_HEADER.search(text, bounds[-1] + _SLICE)) is not None:
  bounds.append(found.start())
 bounds.append(len(text))
 return head, _slices(_rtoml.loads, text, bounds)


def _slices(
 loads: Callable[[str], dict[str, Any]], text: str, bounds: list[int]
) -> Iterator[object]:
 for begin, end in itertools.pairwise(bounds):
  try:
   part = loads(text[begin:end])
  except Exception:
   raise _Unsliceable from None
  if part.keys() != {"tickets"}:  # a table after the tickets: TOML's rules span slices
   raise _Unsliceable
  tickets = part.pop("tickets")
  del part
  yield from tickets


def pipeline_from_dict(
 data: Mapping[str, Any],
 *,
 path: Path | None = None,
 name: str = "pipeline",
 resolve_calls: bool = False,
) -> Pipeline:
 """Build a pipeline from already-parsed data in the file format (e.g. the built-in demo).

 `name` is used when `data` has no `[pipeline] name`. With `path`, shell tickets run in its
 folder and call targets import from it; without, they use the current folder at build time.
 Raises `PipelineFileError` as `load_pipeline` does for the same content; call targets are
 checked only for their syntax unless `resolve_calls` is true (then they are imported).
 """
 where = shown_path(path) if path is not None else f"pipeline {name!r}"
 return _build(
  data, path=path, where=where, error_path=path, name=name, resolve_calls=resolve_calls
 )


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _split_toml_error(text: str) -> tuple[str, int | None, int | None]:
 # Python 3.11's TOMLDecodeError has no lineno attribute: the position is only in the text,
 # as "... (at line 3, column 7)" or "... (at end of document)".
 match = _TOML_POSITION.search(text)
 if match:
  return text[: match.start()], int(match[1]), int(match[2])
 return text.removesuffix(" (at end of document)"), None, None


# -- validation -------------------------------------------------------------------------------


class _Checker:
 """Builds error messages that all start with the file (and ticket) they are about."""

 def __init__(self, where: str, path: Path | None) -> None:
  self.where = where
  self.path = path

 def fail(self, problem: str, ticket: str | None = None, label: str | None = None) -> NoReturn:
  subject = label if label is not None else None if ticket is None else f"ticket '{_shown(ticket)}'"
  message = f"{self.where}: {subject}: {problem}" if subject else f"{self.where}: {problem}"
  raise PipelineFileError(message, path=self.path, ticket=ticket)

 def unknown_keys(
  self,
  table: Mapping[str, Any],
  allowed: tuple[str, ...],
  what: str,
  ticket: str | None = None,
  label: str | None = None,
 ) -> None:
  if len(table) <= len(allowed) and all(key in allowed for key in table):
   return  # the common case, kept cheap: it runs once per ticket
  unknown = [key for key in table if key not in allowed]
  if unknown:
   keys = ", ".join(f"'{_shown(k, 40)}'" for k in unknown[:8])
   if len(unknown) > 8:
    keys += f" and {len(unknown) - 8} more"
   plural = "s" if len(unknown) > 1 else ""
   self.fail(
    f"unknown key{plural} {keys} in {what}; allowed keys: {', '.join(allowed)}",
    ticket,
    label,
   )


def _toml_type(value: object) -> str:
 # Name what was found in TOML's words, since that is what the user wrote.
 if isinstance(value, bool):
  return f"boolean {str(value).lower()}"
 if isinstance(value, int):
  return f"integer {value}"
 if isinstance(value, float):
  return f"float {value}"
 if isinstance(value, str):
  text = value if len(value) <= 40 else value[:39] + "…"
  return f"string {printable(json.dumps(text, ensure_ascii=False))}"
 if isinstance(value, list):
  return "an array"
 if isinstance(value, dict):
  return "a table"
 return type(value).__name__  # dates and times


def _build(
 data: Mapping[str, Any],
 *,
 path: Path | None,
 where: str,
 error_path: Path | None,
 name: str,
 resolve_calls: bool,
 tickets: Iterable[object] | None = None,
) -> Pipeline:
 # `tickets`: the file's tickets, when they are not in `data` (read in slices: `_sliced`).
 check = _Checker(where, error_path)
 if not isinstance(data, Mapping):
  check.fail(f"expected a table at the top level, found {_toml_type(data)}")
 check.unknown_keys(data, _TOP_KEYS, "the top level")

 section = data.get("pipeline", {})
 if not isinstance(section, Mapping):
  check.fail(
   f"'pipeline' must be a table ([pipeline]), found {_toml_type(section)}", label="[pipeline]"
  )
 check.unknown_keys(section, _PIPELINE_KEYS, "[pipeline]", label="[pipeline]")
 pipeline_name = section.get("name", name)
 if not isinstance(pipeline_name, str) or not pipeline_name.strip():
  check.fail(
   f"'name' must be a non-empty string, found {_toml_type(pipeline_name)}", label="[pipeline]"
  )
 if not pipeline_name.isprintable():  # it starts every log line
  check.fail(
   f"'name' has a character that cannot be printed ({_unprintable(pipeline_name)}); "
   "use printable text",
   label="[pipeline]",
  )
 max_workers = section.get("max_workers", 4)
 if not _is_int(max_workers) or max_workers < 1:
  check.fail(
   f"'max_workers' must be an integer >= 1, found {_toml_type(max_workers)}",
   label="[pipeline]",
  )
 auto_queue = section.get("auto_queue", True)
 if not isinstance(auto_queue, bool):
  check.fail(
   f"'auto_queue' must be a boolean (true or false), found {_toml_type(auto_queue)}",
   label="[pipeline]",
  )
 token_budget = section.get("token_budget")
 if token_budget is not None and (not _is_int(token_budget) or token_budget < 1):
  check.fail(
   f"'token_budget' must be an integer >= 1 (tokens), found {_toml_type(token_budget)}",
   label="[pipeline]",
  )
 dask = section.get("dask")
 if dask is not None:
  _check_dask(check, dask)
 agent = _agent_table(check, section["agent"]) if "agent" in section else None

 raw_tickets = data.get("tickets") if tickets is None else tickets
 if raw_tickets is None or (isinstance(raw_tickets, list) and not raw_tickets):
  check.fail("no tickets; add at least one [[tickets]] table with an id and work")
 if tickets is None and not isinstance(raw_tickets, list):
  check.fail(f"'tickets' must be an array of tables ([[tickets]]), found {_toml_type(raw_tickets)}")
 folder = path.parent if path is not None else Path.cwd()
 shared = _Shared()
 built = tuple(
  _ticket(check, index, raw, folder, path is not None, agent=agent, shared=shared)
  for index, raw in enumerate(raw_tickets)
 )
 if resolve_calls:  # after the whole file is checked: a typo is reported before any import
  _resolve_calls(check, shared.calls.values())
 return Pipeline(
  name=pipeline_name,
  path=path,
  max_workers=max_workers,
  auto_queue=auto_queue,
  tickets=built,
  agent=agent.config if agent is not None else None,
  token_budget=token_budget,
  dask=dask,
 )


@dataclass(frozen=True, slots=True)
class _AgentTable:
 """`[pipeline.agent]` as checked. `config` is None when it has no base_url: only a prompt
 ticket needs one, so that is refused at the first prompt ticket (`_agent_work`)."""

 config: AgentConfig | None


_AGENT_LABEL = "[pipeline.agent]"
# An environment variable's name as a POSIX shell takes it; and the beginnings of keys that
# providers hand out (OpenAI, Anthropic "sk-", Hugging Face, Groq, xAI, Perplexity), so a key
# pasted where its variable's name belongs is refused without ever being shown.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_PREFIXES = ("sk-", "sk_", "hf_", "gsk_", "xai-", "pplx-")


def _agent_table(check: _Checker, table: object) -> _AgentTable:
 label = _AGENT_LABEL
 if not isinstance(table, Mapping):
  check.fail(
   f"'agent' must be a table ([pipeline.agent]), found {_toml_type(table)}", label="[pipeline]"
  )
 check.unknown_keys(table, _AGENT_KEYS, label, label=label)
 base_url = table.get("base_url")
 if base_url is not None and not _is_http_url(base_url):
  check.fail(
   "'base_url' must be an http:// or https:// URL such as \"http://localhost:11434/v1\", "
   f"found {_toml_type(base_url)}",
   label=label,
  )
 model = table.get("model")
 if model is not None and not _is_name(model):
  check.fail(
   f"'model' must be a non-empty string (the model's name at the endpoint), found {_toml_type(model)}",
   label=label,
  )
 key_env = table.get("api_key_env")
 if key_env is not None:
  # Never shows the value: it may be the key itself.
  if not isinstance(key_env, str):
   check.fail(
    "'api_key_env' must be the name of an environment variable "
    f'(api_key_env = "OPENAI_API_KEY"), found {_toml_type(key_env)}',
    label=label,
   )
  if key_env.startswith(_KEY_PREFIXES):
   check.fail(
    "'api_key_env' holds what looks like a key; never write a key into the file: write "
    'api_key_env = "OPENAI_API_KEY" and set that variable to the key where conductor runs',
    label=label,
   )
  if not _ENV_NAME.fullmatch(key_env):
   check.fail(
    "'api_key_env' must be the NAME of an environment variable (letters, digits and _, not "
    'starting with a digit), not a key: e.g. api_key_env = "OPENAI_API_KEY"',
    label=label,
   )
 timeout = table.get("timeout")
 if timeout is not None and (
  isinstance(timeout, bool)
  or not isinstance(timeout, int | float)
  or not math.isfinite(timeout)
  or timeout <= 0
 ):
  check.fail(f"'timeout' must be a number of seconds > 0, found {_toml_type(timeout)}", label=label)
 if base_url is None:
  return _AgentTable(None)
 config = AgentConfig(base_url=base_url, model=model, api_key_env=key_env)
 if timeout is not None:
  config = dataclasses.replace(config, timeout=float(timeout))
 return _AgentTable(config)


def _is_http_url(value: object) -> bool:
 if not isinstance(value, str) or not value.isprintable() or any(c.isspace() for c in value):
  return False
 try:
  url = urllib.parse.urlsplit(value)
  url.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
 except ValueError:
  return False
 return url.scheme in ("http", "https") and bool(url.hostname)


def _is_name(value: object) -> bool:
 return isinstance(value, str) and bool(value.strip()) and value.isprintable()


_DASK_TCP = re.compile(r"tcp://(?:\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]@]+):([0-9]{1,5})")
_DASK_LOCAL = re.compile(r"local:([0-9]{1,6})")


def _check_dask(check: _Checker, value: object) -> None:
 if isinstance(value, str):
  tcp = _DASK_TCP.fullmatch(value)
  if tcp is not None and 1 <= int(tcp[1]) <= 65535:
   return
  local = _DASK_LOCAL.fullmatch(value)
  if local is not None and int(local[1]) >= 1:
   return
 check.fail(
  '\'dask\' must be "tcp://HOST:PORT" (a running Dask scheduler) or "local:N" (a local '
  f"cluster of N >= 1 workers), found {_toml_type(value)}",
  label="[pipeline]",
 )


def _check_id(check: _Checker, value: str, tid: str, *, dependency: bool = False) -> None:
 if len(value) <= MAX_ID_LENGTH and value.isprintable():
  return  # once per id and dependency: the good case stays cheap
 what = f"'depends_on' entry '{_shown(value)}'" if dependency else "'id'"
 if len(value) > MAX_ID_LENGTH:
  check.fail(
   f"{what} is {len(value)} characters long; keep ticket ids to {MAX_ID_LENGTH} characters",
   tid,
  )
 if not value.isprintable():
  check.fail(
   f"{what} has a character that cannot be printed ({_unprintable(value)}); ticket ids "
   "must be printable text (no newlines, tabs or control characters)",
   tid,
  )


def _shown(text: str, limit: int = 80) -> str:
 # Untrusted text in a message: escaped, and cut short (an id may be a megabyte long).
 shown = printable(text)
 return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _unprintable(text: str) -> str:
 return ", ".join(dict.fromkeys(printable(ch) for ch in text if not ch.isprintable()))


def _is_int(value: object) -> bool:
 return isinstance(value, int) and not isinstance(value, bool)  # TOML true is not 1


_NO_DEPS: list[str] = []  # read, never changed
_TICKET_KEY_SET = frozenset(_TICKET_KEYS)


class _Shared:
 """What many tickets of one file hold equal, kept once: a 100,000-ticket file names each id
 about twice (as `id` and in a `depends_on`) and mostly repeats a few work specs. Sharing
 them is memory, not meaning: ids are immutable strings and work specs frozen dataclasses.
 Lives while the file is built; every ticket's work is in the file's folder."""

 __slots__ = ("calls", "ids", "shells", "sleeps")

 def __init__(self) -> None:
  self.ids: dict[str, str] = {}  # each id's first string object
  self.sleeps: dict[tuple[float | str, bool], SleepWork] = {}
  self.shells: dict[str, ShellWork] = {}
  # By target: its work, and the first ticket calling it (named if it cannot be imported).
  self.calls: dict[str, tuple[CallWork, str]] = {}

 def sleep(self, seconds: float, fail: bool) -> SleepWork:
  # 0.0 and -0.0 are equal but written apart (in `describe` and the fingerprint).
  same = (seconds if seconds else repr(seconds), fail)
  work = self.sleeps.get(same)
  if work is None:
   work = self.sleeps[same] = SleepWork(seconds=seconds, fail=fail)
  return work

 def shell(self, command: str, folder: Path) -> ShellWork:
  work = self.shells.get(command)
  if work is None:
   work = self.shells[command] = ShellWork(command=command, cwd=folder)
  return work


def _plain_ticket(raw: dict[str, Any], folder: Path, shared: _Shared) -> Ticket | None:
 # The common ticket, built at a tenth of `_ticket`'s cost (it runs 100,000 times for a big
 # file): an id, maybe depends_on, description and retries, and a `sleep` (with or without
 # `fail`) or a `run`. It takes only what `_ticket` takes, and builds the same ticket; None
 # for anything else, at the first doubt, and `_ticket` checks it (and words the mistake).
 if not raw.keys() <= _PLAIN_KEYS:
  return None
 tid = raw.get("id")
 if type(tid) is not str or len(tid) > MAX_ID_LENGTH or not tid.isprintable() or not tid.strip():
  return None
 ids = shared.ids
 deps = raw.get("depends_on")
 if deps is None:
  depends_on: tuple[str, ...] = ()
 elif type(deps) is list:
  kept = []  # each id kept once (see `_Shared`)
  for dep in deps:
   if type(dep) is not str or not dep or len(dep) > MAX_ID_LENGTH or not dep.isprintable():
    return None
   kept.append(ids.setdefault(dep, dep))
  # A dependency listed twice is still one edge.
  depends_on = tuple(dict.fromkeys(kept) if len(kept) > 1 else kept)
 else:
  return None
 description = raw.get("description", "")
 retries = raw.get("retries", 0)
 if type(description) is not str or type(retries) is not int or retries < 0:
  return None
 work: WorkSpec
 value = raw.get("sleep")
 if value is not None:
  fail = raw.get("fail", False)
  if (
   "run" in raw
   or type(value) not in (float, int)
   or not 0 <= value < math.inf
   or type(fail) is not bool
  ):
   return None
  work = shared.sleep(float(value), fail)
 else:
  value = raw.get("run")
  if type(value) is not str or "fail" in raw or not value.strip():
   return None
  work = shared.shell(value, folder)
 return Ticket(ids.setdefault(tid, tid), depends_on, description, work, retries)


# The keys `_plain_ticket` takes: without call, prompt, system and model.
_PLAIN_KEYS = frozenset(("id", "depends_on", "description", "run", "sleep", "fail", "retries"))


def _ticket(
 check: _Checker,
 index: int,
 raw: object,
 folder: Path,
 importable_folder: bool,
 *,
 agent: _AgentTable | None,
 shared: _Shared,
) -> Ticket:
 # Runs once per ticket: the checks of the good case come first and cost little; the first
 # doubt takes the slower checks that find and word the mistake.
 if type(raw) is dict:
  plain = _plain_ticket(raw, folder, shared)
  if plain is not None:
   return plain
 if type(raw) is not dict and not isinstance(raw, Mapping):
  check.fail(
   f"each entry of 'tickets' must be a table ([[tickets]]), found {_toml_type(raw)}",
   label=f"ticket #{index + 1}",
  )
 tid = raw.get("id")
 if tid is None:
  check.fail(
   'has no id; add id = "<name>" to it', label=f"ticket #{index + 1} (counting from the top)"
  )
 if not isinstance(tid, str) or not tid.strip():
  check.fail(
   f"'id' must be a non-empty string, found {_toml_type(tid)}", label=f"ticket #{index + 1}"
  )
 if len(tid) > MAX_ID_LENGTH or not tid.isprintable():
  _check_id(check, tid, tid)
 if not raw.keys() <= _TICKET_KEY_SET:
  check.unknown_keys(raw, _TICKET_KEYS, "a ticket", tid)

 ids = shared.ids
 tid = ids.setdefault(tid, tid)
 deps = raw.get("depends_on", _NO_DEPS)
 depends_on: tuple[str, ...] | None = None
 if type(deps) is list:
  kept = []
  for dep in deps:
   if type(dep) is not str or not dep or len(dep) > MAX_ID_LENGTH or not dep.isprintable():
    break
   kept.append(ids.setdefault(dep, dep))
  else:
   # A dependency listed twice is still one edge.
   depends_on = tuple(dict.fromkeys(kept) if len(kept) > 1 else kept)
 if depends_on is None:
  _check_deps(check, tid, deps)
  depends_on = tuple(dict.fromkeys(deps))
 description = raw.get("description", "")
 if not isinstance(description, str):
  check.fail(f"'description' must be a string, found {_toml_type(description)}", tid)
 retries = raw.get("retries", 0)
 if not _is_int(retries) or retries < 0:
  check.fail(f"'retries' must be an integer >= 0, found {_toml_type(retries)}", tid)

 kinds = [key for key in _WORK_KEYS if key in raw]
 if not kinds:
  check.fail(f"has no work; add one of {_WORK_HINT}", tid)
 if len(kinds) > 1:
  check.fail(
   f"has {' and '.join(kinds)}; keep exactly one of run, call, sleep, prompt (one kind of work)",
   tid,
  )
 kind = kinds[0]
 if "fail" in raw and kind != "sleep":
  check.fail("'fail' only applies to sleep tickets; remove it", tid)
 if kind != "prompt" and ("system" in raw or "model" in raw):
  key = "system" if "system" in raw else "model"
  check.fail(f"'{key}' only applies to prompt tickets; remove it", tid)

 work: object
 value = raw[kind]
 if kind == "run":
  if not isinstance(value, str) or not value.strip():
   check.fail(f"'run' must be a non-empty shell command string, found {_toml_type(value)}", tid)
  work = shared.shell(value, folder)
 elif kind == "call":
  if not isinstance(value, str):
   check.fail(f"'call' must be a string \"module:function\", found {_toml_type(value)}", tid)
  try:
   parse_call_target(value)
  except ValueError as exc:
   check.fail(printable(str(exc)), tid)
  call = shared.calls.get(value)
  if call is None:
   search_path = folder if importable_folder else None
   call = shared.calls[value] = (CallWork(target=value, search_path=search_path), tid)
  work = call[0]
 elif kind == "prompt":
  work = _agent_work(check, tid, raw, deps, agent)
 else:
  if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
   check.fail(f"'sleep' must be a number of seconds >= 0, found {_toml_type(value)}", tid)
  if value < 0:
   check.fail(f"'sleep' must be a number of seconds >= 0, found {_toml_type(value)}", tid)
  fail = raw.get("fail", False)
  if not isinstance(fail, bool):
   check.fail(f"'fail' must be a boolean (true or false), found {_toml_type(fail)}", tid)
  work = shared.sleep(float(value), fail)

 return Ticket(
  id=tid,
  depends_on=depends_on,
  description=description,
  work=work,
  retries=retries,
 )


def _check_deps(check: _Checker, tid: str, deps: object) -> None:
 # Fails, saying what is wrong with `depends_on`, where `_ticket`'s quick check found doubt.
 if not isinstance(deps, list) or not all(isinstance(d, str) and d for d in deps):
  found = (
   _toml_type(deps)
   if not isinstance(deps, list)
   else "an array with " + next(_toml_type(d) for d in deps if not isinstance(d, str) or not d)
  )
  check.fail(
   f'\'depends_on\' must be an array of ticket ids (depends_on = ["a", "b"]), found {found}',
   tid,
  )
 for dep in deps:
  _check_id(check, dep, tid, dependency=True)


def _agent_work(
 check: _Checker,
 tid: str,
 raw: Mapping[str, Any],
 deps: list[str],
 agent: _AgentTable | None,
) -> AgentWork:
 prompt = raw["prompt"]
 if not isinstance(prompt, str) or not prompt.strip():
  check.fail(
   f"'prompt' must be a non-empty string (the text sent to the model), found {_toml_type(prompt)}",
   tid,
  )
 system = raw.get("system")
 if system is not None and not isinstance(system, str):
  check.fail(f"'system' must be a string (the system message), found {_toml_type(system)}", tid)
 model = raw.get("model")
 if model is not None and not _is_name(model):
  check.fail(
   f"'model' must be a non-empty string (the model's name at the endpoint), found {_toml_type(model)}",
   tid,
  )
 # A reference reads a dependency's output, which exists only once that dependency completed:
 # so it must be a dependency. What `template_refs` does not match (`{plan}`, `{{two words}}`,
 # an id with spaces or braces) is no reference and is sent as written.
 for where, text in (("prompt", prompt), ("system", system or "")):
  for ref in template_refs(text):
   if ref not in deps:
    shown = _shown(ref)
    check.fail(
     f"'{{{{{shown}}}}}' in its {where} reads the output of '{shown}', which is not among its "
     f"depends_on; add '{shown}' to depends_on",
     tid,
    )
 if agent is None:
  check.fail(
   f"has a prompt but the file has no [pipeline.agent] table; add [pipeline.agent] with "
   f"{_AGENT_EXAMPLE}",
   tid,
  )
 if agent.config is None:
  check.fail(
   'has a prompt but [pipeline.agent] has no base_url; add base_url = "http://localhost:11434/v1" '
   "(your endpoint's URL) to [pipeline.agent]",
   tid,
  )
 if model is None and agent.config.model is None:
  check.fail(
   'has no model; add model = "<name>" to [pipeline.agent] (for every prompt ticket) or to '
   "this ticket",
   tid,
  )
 return AgentWork(prompt=prompt, agent=agent.config, system=system, model=model)


def _resolve_calls(check: _Checker, calls: Iterable[tuple[CallWork, str]]) -> None:
 # Each distinct target once (100,000 tickets calling one function import it once), in the
 # order the file first names them: `calls` holds each with the first ticket calling it.
 for work, tid in calls:
  try:
   resolve_call_target(work.target, work.search_path)
  except CallTargetError as exc:
   check.fail(printable(str(exc)), tid)
  except BaseException as exc:
   # The user's module ran and raised: a mistake in the pipeline's code, whatever it is
   # (sys.exit() and KeyboardInterrupt included), so one line naming it, never a traceback.
   # A Ctrl+C pressed during a slow import lands here too, and ends as the same line.
   check.fail(_import_failure(work.target, exc), tid)


def _import_failure(target: str, exc: BaseException) -> str:
 module = target.partition(":")[0]
 if isinstance(exc, ModuleNotFoundError):
  fix = "install what it imports into the Python that runs conductor, or fix the import"
 else:
  fix = "fix the module"
 return printable(
  f"call target {target!r}: importing module {module!r} raised {describe_exception(exc)}; "
  f"{fix} (try python -c 'import {module}' in the pipeline's folder)"
 )


# -- fingerprints -----------------------------------------------------------------------------


def fingerprint(ticket: Ticket) -> str:
 """A stable hex digest of what a ticket IS: id, dependencies, work spec and retries.

 Equal for equal definitions across processes, machines and Python versions; different when
 any of those change, so a saved state can tell that its pipeline file was edited. It ignores
 run state (status, attempts, ...), the description (cosmetic) and where the pipeline lives
 (`cwd` and `search_path`: moving the folder does not change the work), nor, for a prompt
 ticket, the endpoint it is sent to (see `_work_definition`). Custom work specs
 are hashed from their dataclass fields, else from `repr`, so they are stable only if that is.
 """
 blob = _canonical_fast(ticket)
 if blob is None:
  definition = {
   "v": 1,
   "id": ticket.id,
   "depends_on": list(ticket.depends_on),
   "work": _work_definition(ticket.work),
   "retries": ticket.retries,
  }
  blob = _CANONICAL.encode(definition)
 return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# The canonical form hashed: `json.dumps(definition, sort_keys=True, separators=(",", ":"),
# ensure_ascii=False)`, its encoder built once.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_quote = json.encoder.encode_basestring  # how that encoder writes a str (ensure_ascii off)


def fingerprints(tickets: Iterable[Ticket]) -> Iterator[str]:
 """`fingerprint(ticket)` of each of `tickets`, in order, lazily: the same digests, with the
 part of a work spec that tickets share (a file's loader shares equal ones) written once."""
 # By id(): each work spec is held here too, so that no other one can take its id.
 specs: dict[int, tuple[object, str | None]] = {}
 for ticket in tickets:
  work = ticket.work
  known = specs.get(id(work))
  if known is None:
   known = specs[id(work)] = (work, _work_spec(work))
  spec = known[1]
  blob = _canonical_fast(ticket, spec)
  yield fingerprint(ticket) if blob is None else hashlib.sha256(blob.encode("utf-8")).hexdigest()


_UNKNOWN = "?"  # not a spec `_work_spec` writes (those are JSON objects)


def _canonical_fast(ticket: Ticket, spec: str | None = _UNKNOWN) -> str | None:
 # The same text as `_CANONICAL.encode` for the work kinds a pipeline file makes, written
 # directly (100,000 fingerprints in a third of the time); None for anything else, which
 # takes the general path. tests/test_pipeline.py checks the two agree. `spec`: the
 # ticket's `_work_spec`, when the caller has it.
 retries = ticket.retries
 if type(retries) is not int:
  return None
 if spec is _UNKNOWN:
  spec = _work_spec(ticket.work)
 if spec is None:
  return None
 try:
  deps = ",".join(map(_quote, ticket.depends_on))
  tid = _quote(ticket.id)
 except TypeError:  # not strings: the general path says what it makes of them
  return None
 return f'{{"depends_on":[{deps}],"id":{tid},"retries":{retries},"v":1,"work":{spec}}}'


def _work_spec(work: object) -> str | None:
 # The canonical JSON of `_work_definition(work)` for the kinds a file makes; else None.
 if type(work) is SleepWork:
  seconds = work.seconds
  fail = work.fail
  if type(seconds) not in (int, float) or not math.isfinite(seconds) or type(fail) is not bool:
   return None
  spec = f'{{"fail":{"true" if fail else "false"},"kind":"sleep","seconds":{float(seconds)!r}}}'
 elif type(work) is ShellWork and work.env is None and type(work.command) is str:
  spec = f'{{"command":{_quote(work.command)},"env":null,"kind":"run"}}'
 elif type(work) is CallWork and type(work.target) is str:
  spec = f'{{"kind":"call","target":{_quote(work.target)}}}'
 elif type(work) is AgentWork and type(work.prompt) is str and type(work.agent) is AgentConfig:
  model, system = _effective_model(work), work.system
  if not (model is None or type(model) is str) or not (system is None or type(system) is str):
   return None
  spec = (
   f'{{"kind":"prompt","model":{_quote_or_null(model)},"prompt":{_quote(work.prompt)},'
   f'"system":{_quote_or_null(system)}}}'
  )
 else:
  return None
 return spec


def _quote_or_null(text: str | None) -> str:
 return "null" if text is None else _quote(text)


def _effective_model(work: AgentWork) -> str | None:
 return work.model if work.model is not None else work.agent.model


def _work_definition(work: object) -> object:
 if work is None:
  return None
 if isinstance(work, AgentWork):
  # What is asked and of which model, not where: base_url, api_key_env and timeout are left
  # out, so pointing the same pipeline at another provider (or key) is not an edited ticket
  # and the replies already saved are kept. A different effective model is another question.
  return {
   "kind": "prompt",
   "prompt": work.prompt,
   "system": work.system,
   "model": _effective_model(work),
  }
 if isinstance(work, ShellWork):
  env = dict(sorted(work.env.items())) if work.env is not None else None
  return {"kind": "run", "command": work.command, "env": env}
 if isinstance(work, CallWork):
  return {"kind": "call", "target": work.target}
 if isinstance(work, SleepWork):
  return {"kind": "sleep", "seconds": float(work.seconds), "fail": work.fail}
 if is_dataclass(work) and not isinstance(work, type):
  values = {f.name: repr(getattr(work, f.name)) for f in fields(work)}
  return {"kind": type(work).__qualname__, "fields": values}
 return {"kind": type(work).__qualname__, "repr": repr(work)}


__all__ = [
 "Pipeline",
 "PipelineFileError",
 "fingerprint",
 "fingerprints",
 "load_pipeline",
 "pipeline_from_dict",
]
