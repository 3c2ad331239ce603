"""Agent tickets: a prompt sent to an OpenAI-compatible chat-completions endpoint.

This module owns the model call of a `prompt` ticket (`AgentWork.run`), the `{{ID}}`
templates (`template_refs`, `render`) and what a provider's answers mean for the pipeline.
It is the only module that imports `openai` (an import contract in pyproject.toml).

One attempt is one request through the official SDK (`openai.AsyncOpenAI`, its own retries
off: `max_retries=0`), to `AgentConfig.base_url`, with the messages `[system?, user]`:

- A reply: `WorkResult(output=<the whole reply text>, usage=<its usage>)`.
- HTTP 429: `PausePipeline` (the whole pipeline pauses; this ticket waits, spending no retry).
  The reason names the provider (the host of base_url) and the limit, from the error's
  message and the `x-ratelimit-limit-requests` / `-tokens` headers when present. It resumes by
  itself after `retry-after-ms` or `Retry-After` (seconds counted from the response's
  arrival, or an HTTP date); without either, after a backoff that grows on repeated 429s
  from the same endpoint: `BACKOFF_FIRST` * `BACKOFF_FACTOR` ** (n - 1) seconds for the n-th 429 in a row, at most
  `BACKOFF_MAX` (1, 2, 4, 8, ... 60 s). A 429 repeats the previous one only if its request
  was sent after the previous one was received: requests already in flight when a 429
  arrives (and answered 429 too) belong to the same event and do not grow the backoff. A
  success sent after the last 429 resets it. An exhausted quota (error code
  `insufficient_quota`) is no rate limit: it pauses until a person resumes.
- Everything else that goes wrong fails the attempt with one line (`WorkFailed`), and the
  ticket's `retries` apply: a timeout ("model call timed out after 600 s"; `AgentConfig.timeout`
  bounds the whole request), a connection error, any other HTTP error status ("model call
  failed: HTTP 503 from localhost:8080: ..."), a malformed reply ("malformed reply from ...:
  no choices"), a missing key variable.
- Cancelled (anyio), the request's connection is closed: the server sees the client go away.

Attempts in flight at once on one event loop share an SDK client (its connections), the last
closing it (`_Clients`).

The API key is read from the environment variable `AgentConfig.api_key_env` at each attempt
and never shown; without one, a placeholder is sent (local servers need no key).
"""

from __future__ import annotations

import email.utils
import functools
import math
import os
import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from anyio.lowlevel import current_token

from ._text import first_line
from .dag_engine import Ticket
from .workers import PausePipeline, Usage, WorkFailed, WorkResult, WorkSpec

if TYPE_CHECKING:
 # Imported where a request is made, not here: the SDK takes ~0.4 s to import, and every
 # `conductor` command (status, pause, validate, ...) imports this module through pipeline.
 import httpx2
 import openai

# `{{ID}}`, spaces allowed inside the braces.
_REF = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")

BACKOFF_FIRST = 1.0
"""Seconds the pipeline waits after a 429 without Retry-After (the first of a row)."""
BACKOFF_FACTOR = 2.0
"""How much each further 429 in a row, without Retry-After, multiplies the wait."""
BACKOFF_MAX = 60.0
"""The longest wait after a 429 without Retry-After, in seconds."""

NO_KEY = "no-key"
"""The key sent when `api_key_env` is not set (the SDK refuses an empty one)."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
 """Where agent tickets send their requests: `[pipeline.agent]` in a pipeline file."""

 base_url: str
 model: str | None = None
 api_key_env: str | None = None  # the variable the key is read from; never the key itself
 timeout: float = 600.0  # seconds for one request


@dataclass(frozen=True, slots=True)
class AgentWork(WorkSpec):
 """Send `prompt` (with `{{ID}}` replaced by dependency ID's whole output) to the model.

 See the module docstring for what each answer of the server means.
 """

 prompt: str
 agent: AgentConfig
 system: str | None = None
 model: str | None = None  # overrides agent.model
 # The templates split once, on first use (they are immutable, so a race computes the same
 # value twice, harmlessly).
 _templates: _Templates | None = field(default=None, init=False, repr=False, compare=False)

 def describe(self) -> str:
  return "prompt: " + " ".join(self.prompt.split())[:60]

 @property
 def inputs(self) -> tuple[str, ...]:
  return self._compiled().refs

 async def run(self, ticket: Ticket, /) -> WorkResult:
  """One attempt: one request. Raises `WorkFailed` or `PausePipeline` (module docstring)."""
  templates = self._compiled()
  outputs: Mapping[str, str] = ticket.inputs or {}
  missing = [ref for ref in templates.refs if ref not in outputs]
  if missing:  # the engine hands an attempt the outputs its `inputs` name: a bug
   raise RuntimeError(f"ticket {ticket.id!r}: ticket.inputs lacks the output of {missing[0]!r}")
  prompt = templates.prompt.render(outputs)
  system = templates.system.render(outputs) if templates.system is not None else None
  model = self.model if self.model is not None else self.agent.model
  if model is None:
   raise WorkFailed("no model to ask: set model in [pipeline.agent] or on the ticket")
  return await _call(self.agent, model, system, prompt)

 def _compiled(self) -> _Templates:
  templates = self._templates
  if templates is None:
   templates = _Templates.of(self.prompt, self.system)
   object.__setattr__(self, "_templates", templates)
  return templates


def template_refs(*texts: str) -> tuple[str, ...]:
 """The ids named by `{{ID}}` in `texts`, each once, in order of first appearance."""
 seen: dict[str, None] = {}
 for text in texts:
  for match in _REF.finditer(text):
   seen.setdefault(match.group(1), None)
 return tuple(seen)


def render(text: str, outputs: Mapping[str, str]) -> str:
 """`text` with each `{{ID}}` replaced by `outputs[ID]`, in one pass (an output containing
 `{{...}}` is not expanded again). A ref missing from `outputs` raises `KeyError`: the engine
 hands an attempt every output its work's `inputs` name, so a missing one is a bug."""
 return _Template.of(text).render(outputs)


# -- templates --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Template:
 """A text split at its refs: literal, ref, literal, ref, ..., literal."""

 literals: tuple[str, ...]
 refs: tuple[str, ...]  # len(literals) == len(refs) + 1

 @classmethod
 def of(cls, text: str) -> _Template:
  parts = _REF.split(text)  # the one group makes the refs land at the odd indexes
  return cls(tuple(parts[0::2]), tuple(parts[1::2]))

 def render(self, outputs: Mapping[str, str]) -> str:
  if not self.refs:
   return self.literals[0]
  pieces = [self.literals[0]]
  for ref, literal in zip(self.refs, self.literals[1:], strict=True):
   pieces.append(outputs[ref])
   pieces.append(literal)
  return "".join(pieces)


@dataclass(frozen=True, slots=True)
class _Templates:
 prompt: _Template
 system: _Template | None
 refs: tuple[str, ...]  # as template_refs(prompt, system)

 @classmethod
 def of(cls, prompt: str, system: str | None) -> _Templates:
  p = _Template.of(prompt)
  s = _Template.of(system) if system is not None else None
  refs = dict.fromkeys(p.refs + (s.refs if s is not None else ()))
  return cls(p, s, tuple(refs))


# -- the call ---------------------------------------------------------------------------------


async def _call(config: AgentConfig, model: str, system: str | None, prompt: str) -> WorkResult:
 import openai  # see the TYPE_CHECKING import above

 key = _api_key(config)
 messages: list[Any] = [{"role": "user", "content": prompt}]
 if system is not None:
  messages.insert(0, {"role": "system", "content": system})
 where = _host(config.base_url)
 sent = _backoff.epoch(config.base_url)
 lease = _clients.acquire(config, key)
 client = lease.client
 try:
  # The SDK's timeout bounds each phase (connect, each read); this bounds the whole request.
  with anyio.move_on_after(config.timeout) as deadline:
   try:
    completion = await client.chat.completions.create(model=model, messages=messages)
   except openai.APITimeoutError:
    raise WorkFailed(f"model call timed out after {config.timeout:g} s") from None
   except openai.RateLimitError as exc:
    raise _rate_limited(exc, config.base_url, where, sent) from None
   except openai.APIStatusError as exc:
    raise WorkFailed(_status_line(exc, where, config)) from None
   except openai.APIConnectionError as exc:
    raise WorkFailed(f"model call failed: cannot reach {where}: {_cause(exc)}") from None
   except (openai.APIResponseValidationError, ValueError) as exc:  # not JSON, bad types
    raise WorkFailed(f"malformed reply from {where}: {first_line(str(exc))}") from None
 finally:
  await _clients.release(lease)
 if deadline.cancelled_caught:
  raise WorkFailed(f"model call timed out after {config.timeout:g} s")
 text, usage = _reply(completion, where)
 _backoff.succeeded(config.base_url, sent)
 return WorkResult(output=text, usage=usage)


class _Lease:
 __slots__ = ("client", "key", "users")

 def __init__(self, key: tuple[object, ...], client: openai.AsyncOpenAI) -> None:
  self.key = key
  self.client = client
  self.users = 0


class _Clients:
 """The SDK clients in use: one per (event loop, endpoint, key, timeout), shared by the
 attempts in flight at once, closed by the last of them.

 Why shared: a client per attempt pays a new connection (and, on asyncio, a getaddrinfo in
 a thread) on every request, about 40% of a request's CPU on loopback. Why only while in
 use: a client outliving its attempts would need an owner to close it before its loop ends;
 closed by its last user, none leaks, on any loop. Sequential attempts (one worker) each get
 a new client: they wait for the model anyway.
 """

 __slots__ = ("_leases", "_lock")

 def __init__(self) -> None:
  self._lock = threading.Lock()  # guards _leases: the loops of several threads share it
  self._leases: dict[tuple[object, ...], _Lease] = {}

 def acquire(self, config: AgentConfig, api_key: str) -> _Lease:
  """A client for this attempt; give it back with `release`, whatever happens."""
  key = (current_token(), config.base_url, api_key, config.timeout)
  with self._lock:
   lease = self._leases.get(key)
   if lease is None:
    import openai

    client = openai.AsyncOpenAI(
     base_url=config.base_url,
     api_key=api_key,
     max_retries=0,  # conductor decides what a failure means
     timeout=config.timeout,
     http_client=openai.DefaultAsyncHttpxClient(
      verify=_tls_context(), event_hooks={"response": [_stamp]}
     ),
    )
    lease = self._leases[key] = _Lease(key, client)
   lease.users += 1
  return lease

 async def release(self, lease: _Lease) -> None:
  with self._lock:
   lease.users -= 1
   last = lease.users == 0
   if last:
    del self._leases[lease.key]
  if last:
   # Shielded: a cancelled attempt must still close the client's connections (no socket
   # leaks); closing is local and brief. A cancelled request's own connection is closed
   # by the SDK as the cancellation passes (the server sees the client go away).
   with anyio.CancelScope(shield=True):
    await lease.client.close()


_clients = _Clients()

_RECEIVED = "conductor.received"  # a response's extension: time.monotonic() of its headers


async def _stamp(response: httpx2.Response) -> None:
 response.extensions[_RECEIVED] = time.monotonic()


@functools.cache
def _tls_context() -> ssl.SSLContext:
 # Building a client's TLS context (reading the system's CA certificates) costs ~20 ms of CPU
 # on the event loop, and clients come and go with the attempts: build it once.
 # `functools.cache` may build it twice in a race, harmlessly; an SSLContext is thread-safe.
 import httpx2

 return httpx2.create_ssl_context()


def _api_key(config: AgentConfig) -> str:
 if config.api_key_env is None:
  return NO_KEY
 key = os.environ.get(config.api_key_env)
 if not key:
  state = "is not set" if key is None else "is empty"
  raise WorkFailed(
   f"the API key variable {config.api_key_env} {state}: set it in the runner's "
   "environment ([pipeline.agent] api_key_env names it)"
  )
 return key


def _reply(completion: object, where: str) -> tuple[str, Usage | None]:
 # The SDK builds its models without validating them: anything may be missing.
 choices = getattr(completion, "choices", None)
 if not isinstance(choices, list) or not choices:
  raise WorkFailed(f"malformed reply from {where}: no choices")
 message = getattr(choices[0], "message", None)
 content = getattr(message, "content", None)
 if not isinstance(content, str):
  refusal = getattr(message, "refusal", None)
  if isinstance(refusal, str) and refusal:
   raise WorkFailed(f"the model refused: {first_line(refusal)}")
  raise WorkFailed(f"malformed reply from {where}: no content")
 usage = getattr(completion, "usage", None)
 if usage is None:
  return content, None
 prompt_tokens = getattr(usage, "prompt_tokens", None)
 completion_tokens = getattr(usage, "completion_tokens", None)
 return content, Usage(
  prompt_tokens if isinstance(prompt_tokens, int) else 0,
  completion_tokens if isinstance(completion_tokens, int) else 0,
 )


def _rate_limited(
 exc: openai.RateLimitError, base_url: str, where: str, sent: int
) -> PausePipeline:
 headers = exc.response.headers
 limits = [
  f"{_thousands(headers[name])} {unit}"
  for name, unit in (
   ("x-ratelimit-limit-requests", "requests"),
   ("x-ratelimit-limit-tokens", "tokens"),
  )
  if headers.get(name)
 ]
 detail = _error_message(exc)
 if limits:
  detail += "; limit " + ", ".join(limits)
 if exc.code == "insufficient_quota":
  # Waiting does not refill a quota: only a person (after paying, say) resumes.
  return PausePipeline(f"quota exhausted at {where} (HTTP 429: {detail}); resume by hand")
 # Retry-After counts from the response; parsing it and raising took a while since.
 received = exc.response.extensions.get(_RECEIVED)
 age = time.monotonic() - received if isinstance(received, float) else 0.0
 after = retry_after(headers, age=age)
 backoff = _backoff.rate_limited(base_url, sent)
 return PausePipeline(
  f"rate limited by {where} (HTTP 429: {detail})", after if after is not None else backoff
 )


def retry_after(
 headers: Mapping[str, str], *, age: float = 0.0, now: float | None = None
) -> float | None:
 """Seconds to wait from now, from a response's `retry-after-ms` or `Retry-After`, at least
 0; None when neither is there or readable. A number of seconds counts from the response,
 received `age` seconds ago; an HTTP date is compared with `now` (default `time.time()`)."""
 for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
  value = headers.get(name)
  if value is None:
   continue
  try:
   seconds = float(value) * scale
  except ValueError:
   continue
  if math.isfinite(seconds):
   return max(0.0, seconds - age)
 value = headers.get("retry-after")
 if value is None:
  return None
 try:
  when = email.utils.parsedate_to_datetime(value)
 except (TypeError, ValueError, IndexError):
  return None
 if when.tzinfo is None:  # RFC 9110 dates are GMT
  return None
 return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Backoff:
 """The 429 backoff of each endpoint (see the module docstring). Thread-safe: agents of
 several runs (or threads) may share an endpoint."""

 __slots__ = ("_lock", "_state")

 def __init__(self) -> None:
  self._lock = threading.Lock()  # guards _state
  # base_url -> (429s in a row, epoch). The epoch counts the 429s that grew the backoff; a
  # request remembers the epoch it was sent in, so its answer knows whether a 429 came
  # in between.
  self._state: dict[str, tuple[int, int]] = {}

 def epoch(self, base_url: str) -> int:
  with self._lock:
   return self._state.get(base_url, (0, 0))[1]

 def rate_limited(self, base_url: str, sent: int) -> float:
  """A 429 for a request sent in epoch `sent`: the seconds to wait."""
  with self._lock:
   row, epoch = self._state.get(base_url, (0, 0))
   if sent == epoch or row == 0:  # sent after the last 429: a repeat
    row, epoch = row + 1, epoch + 1
    self._state[base_url] = (row, epoch)
  # The exponent stops growing long before a float would overflow (days of 429s).
  return min(BACKOFF_MAX, BACKOFF_FIRST * BACKOFF_FACTOR ** min(row - 1, 64))

 def succeeded(self, base_url: str, sent: int) -> None:
  with self._lock:
   row, epoch = self._state.get(base_url, (0, 0))
   if row and sent == epoch:
    self._state[base_url] = (0, epoch)


_backoff = _Backoff()


def _host(base_url: str) -> str:
 parts = urlsplit(base_url)
 host = parts.hostname or base_url
 try:
  port = parts.port
 except ValueError:
  port = None
 return f"{host}:{port}" if port is not None else host


def _status_line(exc: openai.APIStatusError, where: str, config: AgentConfig) -> str:
 line = f"model call failed: HTTP {exc.status_code} from {where}: {_error_message(exc)}"
 if exc.status_code in (401, 403) and config.api_key_env is not None:
  line += f" (check the key in {config.api_key_env})"
 return line


def _error_message(exc: openai.APIStatusError) -> str:
 body = exc.body
 message = body.get("message") if isinstance(body, Mapping) else body
 if not isinstance(message, str) or not message.strip():
  message = exc.response.reason_phrase or "no message"
 return first_line(message)


def _cause(exc: BaseException) -> str:
 cause = exc.__cause__ or exc.__context__
 return first_line(str(cause) or type(cause).__name__) if cause else first_line(str(exc))


def _thousands(value: str) -> str:
 return f"{int(value):,}" if value.isdigit() else value


__all__ = [
 "BACKOFF_FACTOR",
 "BACKOFF_FIRST",
 "BACKOFF_MAX",
 "AgentConfig",
 "AgentWork",
 "render",
 "retry_after",
 "template_refs",
]
