"""Agent tickets: a prompt sent to an OpenAI-compatible chat-completions endpoint.

SKELETON written by the lead: the helper that owns this module fills it in (see its brief).
The two dataclasses below are the interface other modules code against; keep their names
and fields (adding fields with defaults is fine).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .dag_engine import Ticket
from .workers import WorkResult, WorkSpec

# `{{ID}}`, spaces allowed inside the braces.
_REF = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


@dataclass(frozen=True, slots=True)
class AgentConfig:
 """Where agent tickets send their requests: `[pipeline.agent]` in a pipeline file."""

 base_url: str
 model: str | None = None
 api_key_env: str | None = None  # the variable the key is read from; never the key itself
 timeout: float = 600.0  # seconds for one request


@dataclass(frozen=True, slots=True)
class AgentWork(WorkSpec):
 """Send `prompt` (with `{{ID}}` replaced by dependency ID's whole output) to the model."""

 prompt: str
 agent: AgentConfig
 system: str | None = None
 model: str | None = None  # overrides agent.model

 def describe(self) -> str:
  return "prompt: " + " ".join(self.prompt.split())[:60]

 @property
 def inputs(self) -> tuple[str, ...]:
  return template_refs(self.prompt, self.system or "")

 async def run(self, ticket: Ticket, /) -> WorkResult:
  raise NotImplementedError("agents.AgentWork.run: filled in by its helper")


def template_refs(*texts: str) -> tuple[str, ...]:
 """The ids named by `{{ID}}` in `texts`, each once, in order of first appearance."""
 seen: dict[str, None] = {}
 for text in texts:
  for match in _REF.finditer(text):
   seen.setdefault(match.group(1), None)
 return tuple(seen)


__all__ = ["AgentConfig", "AgentWork", "template_refs"]
