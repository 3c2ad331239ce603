"""Agent tickets' worker (`conductor.agents`): the real `openai` SDK against a real loopback
chat-completions server (tests/chat_server.py), on asyncio and trio. No patched client."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import anyio
import pytest
from chat_server import ChatServer, Hang, Malformed, RateLimited, Reply, ServerError

from conductor import agents
from conductor.agents import AgentConfig, AgentWork, render, retry_after, template_refs
from conductor.dag_engine import ExecutionEngine, Status, Ticket
from conductor.multi_agent_conductor import ConductorEngine
from conductor.transitions import Change, Transition
from conductor.workers import PausePipeline, Usage, WorkFailed, WorkResult

pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds any single wait may take before the test fails (not hangs)


@pytest.fixture
def server() -> Iterator[ChatServer]:
 with ChatServer() as chat:
  yield chat


@pytest.fixture(autouse=True)
def fresh_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
 # The backoff is per endpoint and process-wide; a later test's server may get an earlier
 # one's port.
 monkeypatch.setattr(agents, "_backoff", agents._Backoff())
 yield
 # Whatever happened, the last attempt using a client closed it.
 assert not agents._clients._leases


def agent_ticket(
 server: ChatServer,
 prompt: str = "hello world",
 *,
 inputs: dict[str, str] | None = None,
 timeout: float = 600.0,
 **fields: str,
) -> Ticket:
 config = AgentConfig(base_url=server.base_url, model="test-model", timeout=timeout)
 work = AgentWork(prompt=prompt, agent=config, **fields)
 return Ticket("t", work=work, inputs=inputs)


async def run(ticket: Ticket) -> WorkResult:
 assert isinstance(ticket.work, AgentWork)
 with anyio.fail_after(WAIT):
  return await ticket.work.run(ticket)


async def failure(ticket: Ticket) -> str:
 with pytest.raises(WorkFailed) as info:
  await run(ticket)
 return info.value.error


async def pause(ticket: Ticket) -> PausePipeline:
 with pytest.raises(PausePipeline) as info:
  await run(ticket)
 return info.value


# -- replies ----------------------------------------------------------------------------------


async def test_the_reply_is_the_output_and_its_usage_is_reported(server: ChatServer) -> None:
 result = await run(agent_ticket(server, "hello   world", system="be brief"))
 assert result == WorkResult(output="reply to: hello   world", usage=Usage(4, 4))
 (request,) = server.requests
 assert request.body["model"] == "test-model"
 assert request.body["messages"] == [
  {"role": "system", "content": "be brief"},
  {"role": "user", "content": "hello   world"},
 ]


async def test_the_whole_reply_is_kept_and_usage_comes_from_the_server(
 server: ChatServer,
) -> None:
 text = "line one\n" + "x" * 100_000 + "\nlast line"
 server.queue(Reply(text=text, usage=(1234, 5678)))
 result = await run(agent_ticket(server))
 assert result.output == text
 assert result.usage == Usage(1234, 5678)


async def test_a_reply_without_usage_reports_none(server: ChatServer) -> None:
 server.queue(Reply(text="ok", with_usage=False))
 assert await run(agent_ticket(server)) == WorkResult(output="ok", usage=None)


async def test_the_ticket_model_overrides_the_agent_model(server: ChatServer) -> None:
 await run(agent_ticket(server, model="other"))
 assert server.requests[0].body["model"] == "other"


async def test_no_model_anywhere_fails_with_one_line(server: ChatServer) -> None:
 work = AgentWork(prompt="hi", agent=AgentConfig(base_url=server.base_url))
 error = await failure(Ticket("t", work=work))
 assert error == "no model to ask: set model in [pipeline.agent] or on the ticket"
 assert server.requests == []


# -- templates --------------------------------------------------------------------------------


async def test_refs_are_replaced_by_the_dependencies_outputs(server: ChatServer) -> None:
 ticket = agent_ticket(
  server,
  "Review {{ plan }} against {{impl}}; again: {{  plan}}",
  system="You know {{spec}}.",
  inputs={"plan": "THE PLAN", "impl": "code {{plan}}", "spec": "S"},
 )
 assert isinstance(ticket.work, AgentWork)
 assert ticket.work.inputs == ("plan", "impl", "spec")
 await run(ticket)
 system, user = server.requests[0].body["messages"]
 # An output is inserted as is: its own `{{...}}` is not expanded again.
 assert user["content"] == "Review THE PLAN against code {{plan}}; again: THE PLAN"
 assert system["content"] == "You know S."


async def test_an_attempt_without_the_outputs_it_reads_is_a_bug(server: ChatServer) -> None:
 with pytest.raises(RuntimeError, match=r"ticket 't': ticket\.inputs lacks the output of 'plan'"):
  await run(agent_ticket(server, "use {{plan}}", inputs={"other": "x"}))
 assert server.requests == []


def test_template_refs_and_render() -> None:
 assert template_refs("a {{x}} b {{ y }}", "{{x}} {{z}}") == ("x", "y", "z")
 assert template_refs("no refs, { {x} }, {{}}") == ()
 assert render("{{ a }}+{{b}}={{a}}", {"a": "1", "b": "2"}) == "1+2=1"
 assert render("plain", {}) == "plain"
 with pytest.raises(KeyError):
  render("{{missing}}", {"other": "x"})


# -- rate limits ------------------------------------------------------------------------------


async def test_a_429_with_retry_after_seconds_pauses_for_that_long(server: ChatServer) -> None:
 limits = {"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "30000"}
 server.queue(RateLimited(retry_after=2.5, headers=limits))
 paused = await pause(agent_ticket(server))
 assert paused.resume_after is not None
 # Counted from the response's arrival: less the moments since spent reading it.
 assert 2.0 < paused.resume_after < 2.5
 assert paused.reason == (
  f"rate limited by 127.0.0.1:{server.port} (HTTP 429: Rate limit reached for requests; "
  "limit 500 requests, 30,000 tokens)"
 )


async def test_a_429_with_retry_after_ms_pauses_for_that_long(server: ChatServer) -> None:
 server.queue(RateLimited(retry_after_ms=1500, retry_after=9))
 resume_after = (await pause(agent_ticket(server))).resume_after
 assert resume_after is not None
 assert 1.0 < resume_after < 1.5


async def test_a_429_with_retry_after_as_a_date_pauses_until_then(server: ChatServer) -> None:
 date = email.utils.formatdate(time.time() + 30, usegmt=True)
 server.queue(RateLimited(retry_after=date))
 resume_after = (await pause(agent_ticket(server))).resume_after
 assert resume_after is not None
 assert 25 < resume_after <= 30  # the date has a one-second resolution


def test_retry_after_reads_seconds_dates_and_ignores_junk() -> None:
 now = 1_000_000_000.0
 date = email.utils.formatdate(now + 7, usegmt=True)
 assert retry_after({"retry-after": date}, now=now) == 7.0
 assert retry_after({"retry-after": email.utils.formatdate(now - 5, usegmt=True)}, now=now) == 0
 assert retry_after({"retry-after": "3"}) == 3.0
 assert retry_after({"retry-after": "3"}, age=0.5) == 2.5
 assert retry_after({"retry-after-ms": "300"}, age=0.5) == 0
 assert retry_after({"retry-after": date}, age=5, now=now) == 7.0  # a date is absolute
 assert retry_after({"retry-after": "soon"}) is None
 assert retry_after({}) is None


async def test_429s_without_retry_after_back_off_1_2_4_until_a_success(
 server: ChatServer,
) -> None:
 server.queue(RateLimited(), RateLimited(), RateLimited(), Reply(), RateLimited())
 waits = []
 for _ in range(3):
  waits.append((await pause(agent_ticket(server))).resume_after)
 assert waits == [1.0, 2.0, 4.0]
 await run(agent_ticket(server))  # a success resets the backoff
 assert (await pause(agent_ticket(server))).resume_after == 1.0


async def test_the_backoff_stops_growing_at_its_maximum(server: ChatServer) -> None:
 server.queue(*[RateLimited()] * 8)
 waits = [(await pause(agent_ticket(server))).resume_after for _ in range(8)]
 assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


async def test_429s_of_requests_in_flight_together_count_once(server: ChatServer) -> None:
 # Both requests were sent before either 429 arrived: one rate-limit event, not two.
 server.queue(Hang(then=RateLimited()), Hang(then=RateLimited()), RateLimited())
 waits: list[float | None] = []

 async def one() -> None:
  waits.append((await pause(agent_ticket(server))).resume_after)

 async with anyio.create_task_group() as tg:
  tg.start_soon(one)
  tg.start_soon(one)
  await anyio.to_thread.run_sync(server.wait_for_in_flight, 2, WAIT)
  server.release()
 assert waits == [1.0, 1.0]
 # The next request was sent after them: a repeat.
 assert (await pause(agent_ticket(server))).resume_after == 2.0


async def test_an_exhausted_quota_pauses_until_a_person_resumes(server: ChatServer) -> None:
 server.queue(RateLimited(message="You exceeded your current quota", code="q"))
 server.queue(RateLimited(message="You exceeded your current quota", code="insufficient_quota"))
 assert (await pause(agent_ticket(server))).resume_after == 1.0  # the backoff
 paused = await pause(agent_ticket(server))
 assert paused.resume_after is None
 assert paused.reason.startswith(f"quota exhausted at 127.0.0.1:{server.port} (HTTP 429: You")


# -- failures ---------------------------------------------------------------------------------


async def test_a_5xx_fails_the_attempt_with_one_line(server: ChatServer) -> None:
 server.queue(ServerError(503, "The server is overloaded"))
 error = await failure(agent_ticket(server))
 assert error == (
  f"model call failed: HTTP 503 from 127.0.0.1:{server.port}: The server is overloaded"
 )


async def test_another_4xx_fails_and_points_at_the_key(
 server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.setenv("H1_TEST_KEY", "sk-secret")
 server.queue(ServerError(401, "Incorrect API key provided"))
 config = AgentConfig(base_url=server.base_url, model="m", api_key_env="H1_TEST_KEY")
 error = await failure(Ticket("t", work=AgentWork(prompt="hi", agent=config)))
 assert error == (
  f"model call failed: HTTP 401 from 127.0.0.1:{server.port}: Incorrect API key provided "
  "(check the key in H1_TEST_KEY)"
 )
 assert "sk-secret" not in error
 assert server.requests[0].headers["authorization"] == "Bearer sk-secret"


async def test_without_a_key_variable_a_placeholder_is_sent(server: ChatServer) -> None:
 await run(agent_ticket(server))
 assert server.requests[0].headers["authorization"] == "Bearer " + agents.NO_KEY


async def test_a_missing_key_variable_fails_naming_it(
 server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
 monkeypatch.delenv("H1_MISSING_KEY", raising=False)
 config = AgentConfig(base_url=server.base_url, model="m", api_key_env="H1_MISSING_KEY")
 error = await failure(Ticket("t", work=AgentWork(prompt="hi", agent=config)))
 assert error.startswith("the API key variable H1_MISSING_KEY is not set: ")
 assert server.requests == []


@pytest.mark.parametrize(
 ("body", "detail"),
 [
  ('{"object": "chat.completion"}', "no choices"),
  ('{"choices": []}', "no choices"),
  ('{"choices": [{"message": {"role": "assistant"}}]}', "no content"),
  ("[1, 2]", "no choices"),
 ],
)
async def test_a_malformed_reply_fails_with_one_line(
 server: ChatServer, body: str, detail: str
) -> None:
 server.queue(Malformed(body))
 assert (
  await failure(agent_ticket(server)) == f"malformed reply from 127.0.0.1:{server.port}: {detail}"
 )


async def test_a_reply_that_is_not_json_fails_with_one_line(server: ChatServer) -> None:
 server.queue(Malformed("<html>bad gateway</html>"))
 error = await failure(agent_ticket(server))
 assert error.startswith(f"malformed reply from 127.0.0.1:{server.port}: ")
 assert "\n" not in error


async def test_an_unreachable_server_fails_with_one_line() -> None:
 with ChatServer() as gone:
  base_url = gone.base_url
 config = AgentConfig(base_url=base_url, model="m")
 error = await failure(Ticket("t", work=AgentWork(prompt="hi", agent=config)))
 assert error.startswith(f"model call failed: cannot reach 127.0.0.1:{gone.port}: ")


async def test_a_timeout_fails_the_attempt_and_closes_its_request(server: ChatServer) -> None:
 server.queue(Hang())
 assert await failure(agent_ticket(server, timeout=0.2)) == "model call timed out after 0.2 s"
 await anyio.to_thread.run_sync(server.wait_for_abandoned, 1, WAIT)


async def test_cancelling_an_attempt_closes_its_request(server: ChatServer) -> None:
 server.queue(Hang())
 async with anyio.create_task_group() as tg:
  tg.start_soon(run, agent_ticket(server))
  await anyio.to_thread.run_sync(server.wait_for_in_flight, 1, WAIT)
  tg.cancel_scope.cancel()
 await anyio.to_thread.run_sync(server.wait_for_abandoned, 1, WAIT)
 assert server.replied == 0


async def test_cancelling_one_of_two_attempts_sharing_a_client_closes_only_its_request(
 server: ChatServer,
) -> None:
 server.queue(Hang(), Hang(then=Reply(text="kept")))
 results: list[WorkResult] = []

 async def kept() -> None:
  results.append(await run(agent_ticket(server, "kept")))

 async with anyio.create_task_group() as tg:
  async with anyio.create_task_group() as doomed:
   doomed.start_soon(run, agent_ticket(server, "doomed"))
   await anyio.to_thread.run_sync(server.wait_for_in_flight, 1, WAIT)
   tg.start_soon(kept)
   await anyio.to_thread.run_sync(server.wait_for_in_flight, 2, WAIT)
   doomed.cancel_scope.cancel()
  await anyio.to_thread.run_sync(server.wait_for_abandoned, 1, WAIT)
  assert server.in_flight == 1
  server.release()
 assert results == [WorkResult(output="kept", usage=Usage(1, 1))]


async def test_the_server_sees_no_request_after_a_released_hang_completes(
 server: ChatServer,
) -> None:
 # The held request answers once released, and the attempt succeeds with that answer.
 server.queue(Hang(then=Reply(text="late")))
 async with anyio.create_task_group() as tg:
  results: list[WorkResult] = []

  async def one() -> None:
   results.append(await run(agent_ticket(server)))

  tg.start_soon(one)
  await anyio.to_thread.run_sync(server.wait_for_in_flight, 1, WAIT)
  server.release()
 assert results == [WorkResult(output="late", usage=Usage(2, 1))]
 (answer,) = await anyio.to_thread.run_sync(server.wait_for_answers, 1, WAIT)
 assert answer.status == 200
 assert (len(server.requests), server.abandoned) == (1, 0)


async def test_attempts_in_flight_together_share_connections(server: ChatServer) -> None:
 # While b is held, a runs and ends; c then reuses a's idle connection (a client per
 # attempt would open a new one).
 server.queue(Hang())
 async with anyio.create_task_group() as tg:
  tg.start_soon(run, agent_ticket(server, "b"))
  await anyio.to_thread.run_sync(server.wait_for_in_flight, 1, WAIT)
  await run(agent_ticket(server, "a"))
  await run(agent_ticket(server, "c"))
  server.release()
 b, a, c = server.requests
 assert [r.last_user_message for r in (b, a, c)] == ["b", "a", "c"]
 assert c.peer == a.peer != b.peer


# -- end to end, through the engine -----------------------------------------------------------


def chain(server: ChatServer) -> list[Ticket]:
 config = AgentConfig(base_url=server.base_url, model="m")
 return [
  Ticket("plan", work=AgentWork(prompt="plan it", agent=config)),
  Ticket("code", ("plan",), work=AgentWork(prompt="code {{ plan }}", agent=config)),
  Ticket("review", ("plan", "code"), work=AgentWork(prompt="{{plan}} / {{code}}", agent=config)),
 ]


async def test_outputs_flow_down_a_chain_of_agents(server: ChatServer) -> None:
 conductor = ConductorEngine(ExecutionEngine(chain(server)), max_workers=2)
 with anyio.fail_after(WAIT):
  snap = await conductor.run()
 assert all(row.status is Status.COMPLETED for row in snap.rows)
 prompts = [request.last_user_message for request in server.requests]
 assert prompts == [
  "plan it",
  "code reply to: plan it",
  "reply to: plan it / reply to: code reply to: plan it",
 ]
 assert conductor.output("code") == "reply to: code reply to: plan it"
 assert conductor.tokens_used == sum(2 * len(p.split()) + 2 for p in prompts)


async def test_a_429_pauses_the_pipeline_which_resumes_by_itself_and_finishes(
 server: ChatServer,
) -> None:
 server.queue(RateLimited(retry_after=0.05))
 conductor = ConductorEngine(ExecutionEngine(chain(server)), max_workers=2)
 seen: list[Transition] = []
 conductor.add_listener(seen.append)
 with anyio.fail_after(WAIT):
  snap = await conductor.run()
 assert all(row.status is Status.COMPLETED for row in snap.rows)
 changes = [(t.ticket, t.change) for t in seen if t.ticket in (None, "plan")]
 assert changes[:4] == [
  ("plan", Change.STARTED),
  (None, Change.PAUSED),
  ("plan", Change.INTERRUPTED),
  (None, Change.RESUMED),
 ]
 paused = next(t for t in seen if t.change is Change.PAUSED)
 assert not paused.by_person and paused.auto_resume_at is not None
 assert paused.detail is not None and paused.detail.startswith("rate limited by 127.0.0.1:")
 assert len(server.requests) == 4  # the 429, then the three tickets once each
