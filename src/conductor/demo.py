"""The built-in demo (`conductor demo`): a multi-agent-like pipeline of 31 simulated tickets.

It takes about 16 s on 4 workers: its longest chain of dependencies sleeps 15.3 s.
"""

from __future__ import annotations

from typing import Any

from .pipeline import Pipeline, pipeline_from_dict


def _t(
 tid: str, seconds: float, deps: tuple[str, ...] = (), description: str = ""
) -> dict[str, Any]:
 return {"id": tid, "sleep": seconds, "depends_on": list(deps), "description": description}


DEMO: dict[str, Any] = {
 "pipeline": {"name": "demo", "max_workers": 4, "auto_queue": True},
 "tickets": [
  _t("plan", 1.0, (), "Planner agent splits the feature into tasks"),
  _t("research-api", 1.5, ("plan",), "Read the API docs"),
  _t("research-ui", 1.2, ("plan",), "Survey the existing dashboard"),
  _t("research-db", 1.0, ("plan",), "Inspect the schema"),
  _t("design", 1.5, ("research-api", "research-ui", "research-db"), "Architect writes the design"),
  *[
   _t(f"impl-{part}", 1.0 + 0.3 * i, ("design",), f"Coder agent implements {part}")
   for i, part in enumerate(("models", "store", "engine", "cli", "gui", "docs"))
  ],
  *[
   _t(f"test-{part}", 0.8 + 0.2 * i, (f"impl-{part}",), f"Tester agent covers {part}")
   for i, part in enumerate(("models", "store", "engine", "cli", "gui"))
  ],
  *[
   _t(f"review-{part}", 0.7, (f"test-{part}",), f"Reviewer agent reads {part}")
   for part in ("models", "store", "engine", "cli", "gui")
  ],
  _t("lint", 0.6, tuple(f"impl-{p}" for p in ("models", "store", "engine", "cli", "gui")), "Lint"),
  _t("typecheck", 0.9, ("lint",), "Type checker"),
  _t(
   "integration",
   2.0,
   ("typecheck", *(f"review-{p}" for p in ("models", "store", "engine", "cli", "gui"))),
   "Integration tests",
  ),
  _t("benchmark", 1.5, ("integration",), "Benchmarks"),
  _t("changelog", 0.5, ("impl-docs", "integration"), "Write the changelog"),
  _t("package", 1.0, ("benchmark", "changelog"), "Build the wheel"),
  _t("smoke", 0.8, ("package",), "Smoke test the wheel"),
  _t("release-notes", 0.6, ("smoke",), "Draft release notes"),
  _t("publish", 0.5, ("release-notes",), "Publish"),
  _t("announce", 0.4, ("publish",), "Announce"),
 ],
}


def demo_pipeline() -> Pipeline:
 """A fresh copy of the demo pipeline (tickets are mutable run state)."""
 return pipeline_from_dict(DEMO, name="demo")
