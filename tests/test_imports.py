"""No import cycles among the modules of `conductor` (nor of `scheduler`), found with grimp.

grimp is the graph library of import-linter (`lint-imports`, configured in pyproject.toml),
which states the same rule per package level. This test works on single modules, whatever
they are named, and names every import of each cycle with its file and line. It counts every
import statement grimp sees, a function-local (lazy) one included: a lazy import still makes
the two modules depend on each other, it only hides that until the function runs. Imports
under `if TYPE_CHECKING:` never run and are left out, as in the import-linter configuration.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping

import grimp
import pytest

PACKAGES = ("scheduler", "conductor")


def strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
 """Tarjan's components of `graph` with more than one node (each holds a cycle); O(V+E)."""
 index: dict[str, int] = {}
 low: dict[str, int] = {}
 stack: list[str] = []
 on_stack: set[str] = set()
 found: list[list[str]] = []
 for root in sorted(graph):
  if root in index:
   continue
  # Iterative: a recursive walk would be as deep as the longest import chain.
  work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph[root])))]
  index[root] = low[root] = len(index)
  stack.append(root)
  on_stack.add(root)
  while work:
   node, successors = work[-1]
   for nxt in successors:
    if nxt not in index:
     index[nxt] = low[nxt] = len(index)
     stack.append(nxt)
     on_stack.add(nxt)
     work.append((nxt, iter(sorted(graph[nxt]))))
     break
    if nxt in on_stack:
     low[node] = min(low[node], index[nxt])
   else:
    work.pop()
    if work:
     parent = work[-1][0]
     low[parent] = min(low[parent], low[node])
    if low[node] == index[node]:
     component = []
     while True:
      member = stack.pop()
      on_stack.discard(member)
      component.append(member)
      if member == node:
       break
     if len(component) > 1:
      found.append(sorted(component))
 return found


def one_cycle(graph: Mapping[str, set[str]], component: list[str]) -> list[str]:
 """The shortest cycle through the first module of `component`, as a closed path."""
 start, members = component[0], set(component)
 parent: dict[str, str] = {}
 queue = deque([start])
 while queue:
  node = queue.popleft()
  for nxt in sorted(graph[node] & members):
   if nxt == start:
    path = [node]
    while path[-1] != start:
     path.append(parent[path[-1]])
    return [*reversed(path), start]
   if nxt not in parent:
    parent[nxt] = node
    queue.append(nxt)
 raise AssertionError(f"no cycle through {start} in its own component")  # a bug here


def import_graph() -> tuple[grimp.ImportGraph, dict[str, set[str]]]:
 built = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
 graph = {
  module: set(built.find_modules_directly_imported_by(module)) - {module}
  for module in built.modules
 }
 return built, graph


def describe(built: grimp.ImportGraph, cycle: list[str]) -> str:
 """Each import of `cycle` on a line of its own, with where it is written."""
 steps = []
 for importer, imported in itertools.pairwise(cycle):
  details = built.get_import_details(importer=importer, imported=imported)
  where = ", ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details[:2])
  steps.append(f"  {importer} -> {imported}  ({where})")
 return "\n".join(steps)


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
 graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
 (component,) = strongly_connected(graph)
 assert component == ["a", "b", "c"]
 assert one_cycle(graph, component) == ["a", "b", "c", "a"]
 assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_of_the_package_takes_part_in_an_import_cycle(package: str) -> None:
 built, graph = import_graph()
 mine = {m: {n for n in targets if n.split(".")[0] == package} for m, targets in graph.items()}
 mine = {m: targets for m, targets in mine.items() if m.split(".")[0] == package}
 groups = strongly_connected(mine)
 report = "\n".join(
  f"{', '.join(group)}; for example:\n{describe(built, one_cycle(mine, group))}" for group in groups
 )
 assert not groups, f"{len(groups)} group(s) of {package} modules import each other: {report}"
