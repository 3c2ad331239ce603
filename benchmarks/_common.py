"""Small helpers the benchmark scripts share: percentiles, the machine, tables, JSON.

Nothing here measures anything; it only summarises and prints what a benchmark measured,
so that every script reports the same way.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def default_json_path(stem: str) -> Path:
 """Where a benchmark writes its JSON unless told otherwise: `benchmarks/results/<stem>.json`."""
 return RESULTS_DIR / f"{stem}.json"


def percentile(sorted_values: Sequence[float], q: float) -> float:
 """The nearest-rank `q`-th percentile (0 < q <= 100) of already sorted values.

 Nearest rank always returns a value that was really observed: with 20 samples p99 is the
 maximum, which is the honest answer for so few samples.
 """
 if not sorted_values:
  raise ValueError("percentile of no samples")
 rank = max(1, math.ceil(q / 100 * len(sorted_values)))
 return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class Summary:
 """p50 / p99 / max / mean of one set of timings, in microseconds."""

 n: int
 p50_us: float
 p99_us: float
 max_us: float
 mean_us: float

 @classmethod
 def from_ns(cls, samples_ns: Iterable[int]) -> Summary:
  values = sorted(s / 1000 for s in samples_ns)
  return cls(
   n=len(values),
   p50_us=percentile(values, 50),
   p99_us=percentile(values, 99),
   max_us=values[-1],
   mean_us=sum(values) / len(values),
  )

 def as_dict(self) -> dict[str, float]:
  return asdict(self)

 def cell(self, *, with_max: bool = True) -> str:
  """`p50 / p99 / max` for a table cell."""
  parts = [self.p50_us, self.p99_us, *([self.max_us] if with_max else [])]
  return " / ".join(format_us(v) for v in parts)


def format_us(us: float) -> str:
 """Microseconds, readable at a glance: `0.8`, `12.3`, `1,234`."""
 return f"{us:.1f}" if us < 100 else f"{us:,.0f}"


def machine_info(packages: Sequence[str] = ()) -> dict[str, object]:
 """The machine and software a result was measured on (no paths, no host names)."""
 info: dict[str, object] = {
  "platform": platform.platform(),
  "machine": platform.machine(),
  "cpu": _cpu_model() or platform.processor() or "unknown",
  "cpu_count": os.cpu_count(),
  "python": f"{platform.python_implementation()} {platform.python_version()}",
 }
 if hasattr(os, "sched_getaffinity"):
  info["cpus_usable"] = len(os.sched_getaffinity(0))
 for name in packages:
  try:
   info[name] = metadata.version(name)
  except metadata.PackageNotFoundError:
   info[name] = None
 return info


def machine_line(info: Mapping[str, object]) -> str:
 """One header line for a table: CPU, cores, Python, OS."""
 return f"{info['cpu']} · {info['cpu_count']} CPUs · Python {info['python']} · {info['platform']}"


def _cpu_model() -> str | None:
 # Linux names the CPU model only in /proc/cpuinfo; elsewhere platform.processor() serves.
 try:
  with open("/proc/cpuinfo", encoding="utf-8") as f:
   for line in f:
    if line.startswith("model name"):
     return line.partition(":")[2].strip()
 except OSError:
  pass
 return None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
 """A Markdown table with aligned columns: readable in a terminal, pastes into a README.

 The first `left` columns are left-aligned (labels), the rest right-aligned (numbers).
 """
 widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

 def line(cells: Sequence[str]) -> str:
  padded = [
   c.ljust(w) if i < left else c.rjust(w)
   for i, (c, w) in enumerate(zip(cells, widths, strict=True))
  ]
  return "| " + " | ".join(padded) + " |"

 rule = (
  "|"
  + "|".join(("-" * (w + 2)) if i < left else ("-" * (w + 1) + ":") for i, w in enumerate(widths))
  + "|"
 )
 return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def write_json(path: Path, payload: Mapping[str, object]) -> None:
 """Write `payload` as indented JSON, creating the folder."""
 path.parent.mkdir(parents=True, exist_ok=True)
 path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
