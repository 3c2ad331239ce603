"""Dashboard frame time with 10,000 tickets (or 100,000: `--tickets`), and click-to-paused
latency through the real GUI.

Starts the real `conductor gui` process with its test hook on, once per scenario:

- **idle loop**: 10,000 sleep tickets in layers (ticket i waits for ticket i-500), 16
  workers: tickets start and finish all the time and the table keeps changing, but the
  engine's loop mostly waits (a sleep ticket costs it almost nothing). With `--filter TEXT`
  the text is typed into the table's filter first (e.g. "layer 1": the table then filters
  every row again as they change);
- **busy loop**: `call` tickets whose async function holds the engine's loop in CPU slices
  (`--busy-slice-ms`, 20 ms by default, between two awaits), 4 at once: the loop is nearly
  always in the middle of one, as it is when tickets run Python on it.

and measures:

1. frame time (idle loop; reported for the busy one too, where the GIL is shared with a
   thread that never sleeps): the hook's frame clock times each frame from hello_imgui's
   `pre_new_frame` to `after_swap`: our Python, Dear ImGui, and the renderer (with software
   OpenGL the rasterising happens in the swap). The wait between frames is not counted (the
   GUI paces itself at 60 fps at most); the frame interval is reported beside it. Beside
   them, CPU times, which other processes on the machine do not inflate as they do the
   wall clock: the GUI thread's in a frame (not the renderer's own threads) and the
   dashboard's `draw` (our Python and the Dear ImGui calls it makes).
2. click to paused: the hook clicks Pause through Dear ImGui's test engine (it moves the
   mouse over the button, presses, releases: about ten frames in its fast mode), N times.
   Reported: click landed -> gate closed (the runner's `applied` stamp: taken once
   `ConductorEngine.pause()` has returned, after which no worker starts); the frames from
   the click's frame to the first frame that shows "paused" (0 = that same frame) and the
   time between them; the longest frame of each click; and the wall time from sending the
   click to a `GET /state` that reads "paused" (this one includes the test engine's mouse
   travel and two HTTP round trips).

Needs an X display; without one it runs itself again under xvfb-run when that is installed.

    python benchmarks/gui_frames.py [--tickets 10000] [--seconds 6] [--clicks 10]
                                    [--scenario idle busy] [--busy-slice-ms 20]
                                    [--filter TEXT] [--size 960x640] [--json PATH]

Exits 1 when a target from the issues is missed (idle loop: frame p99 >= 16 ms, a frame
>= 16 ms during a click; both loops: a click whose frame does not show "paused"), else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._common import (
 default_json_path,
 format_table,
 machine_info,
 machine_line,
 percentile,
 write_json,
)

FRAME_TARGET_MS = 16.0
XVFB_SCREEN = "-screen 0 1280x800x24"
GUI = (sys.executable, "-m", "conductor", "gui")
SCENARIOS = ("idle", "busy")
BUSY_TICKETS = 400  # enough work for the clicks: each ticket holds the loop about 0.5 s
BUSY_WORKERS = 4
BUSY_SLICES = 25  # CPU slices per busy ticket

# The busy tickets' function, imported from the pipeline's folder (`call = "hog:hog"`). It
# spins on purpose: CPU work that never awaits, as user code on the loop may.
HOG = """\
import time

import anyio


async def hog(ticket):
    for _ in range({slices}):
        end = time.perf_counter() + {slice_s}
        while time.perf_counter() < end:
            pass
        await anyio.sleep(0)
    return "ok"
"""


def write_pipeline(folder: Path, n: int, workers: int) -> Path:
 lines = [f'[pipeline]\nname = "synthetic-{n}"\nmax_workers = {workers}\n']
 for i in range(n):
  seconds = 0.05 + 0.05 * (i % 7)
  deps = f'depends_on = ["t{i - 500:05d}"]\n' if i >= 500 else ""
  lines.append(
   f'[[tickets]]\nid = "t{i:05d}"\nsleep = {seconds:.2f}\n{deps}'
   f'description = "synthetic ticket {i} of layer {i // 500}"\n'
  )
 path = folder / "synthetic.toml"
 path.write_text("\n".join(lines), encoding="utf-8")
 return path


def write_busy_pipeline(folder: Path, slice_ms: float) -> Path:
 (folder / "hog.py").write_text(
  HOG.format(slices=BUSY_SLICES, slice_s=slice_ms / 1000), encoding="utf-8"
 )
 lines = [f'[pipeline]\nname = "busy-loop"\nmax_workers = {BUSY_WORKERS}\n']
 for i in range(BUSY_TICKETS):
  lines.append(
   f'[[tickets]]\nid = "b{i:03d}"\ncall = "hog:hog"\n'
   f'description = "holds the loop {BUSY_SLICES} x {slice_ms:g} ms"\n'
  )
 path = folder / "busy.toml"
 path.write_text("\n".join(lines), encoding="utf-8")
 return path


class Hook:
 """The dashboard's test hook, from its port file (`{"port": N, "token": "..."}`)."""

 def __init__(self, port_file: Path) -> None:
  info = json.loads(port_file.read_text(encoding="utf-8"))
  self.base = f"http://127.0.0.1:{info['port']}"
  self.headers = {"Authorization": f"Bearer {info['token']}"}  # every request needs it

 def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
  data = json.dumps(body or {}).encode() if method == "POST" else None
  request = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)
  with urllib.request.urlopen(request, timeout=60) as response:
   return json.loads(response.read())


def start_gui(pipeline: Path, folder: Path, size: str) -> tuple[subprocess.Popen[bytes], Hook]:
 port_file = folder / "port"
 log = (folder / "gui.log").open("wb")
 proc = subprocess.Popen(
  [*GUI, str(pipeline), "--start", "--size", size, "--test-hook", str(port_file)],
  cwd=folder,
  stdout=log,
  stderr=subprocess.STDOUT,
 )
 log.close()  # the child has its own copy
 deadline = time.monotonic() + 60
 while not port_file.exists():
  if proc.poll() is not None or time.monotonic() > deadline:
   proc.kill()
   raise SystemExit(f"the dashboard did not start:\n{(folder / 'gui.log').read_text()}")
  time.sleep(0.05)  # waiting for another process to come up, bounded by the deadline
 return proc, Hook(port_file)  # renamed into place whole: never half written


def frame_stats(samples: list[list[float]]) -> dict[str, float]:
 # A sample: frame number, start (s), work, GUI thread CPU, draw CPU (ms); see _hook.py.
 # (A dashboard from before the CPU times sends the first three: NaN for those.)
 work = sorted(s[2] for s in samples)
 cpu = sorted(s[3] if len(s) > 3 else math.nan for s in samples)
 draw = sorted(s[4] if len(s) > 4 else math.nan for s in samples)
 starts = {int(s[0]): s[1] for s in samples}
 intervals = sorted((starts[n + 1] - starts[n]) * 1000 for n in sorted(starts) if n + 1 in starts)
 return {
  "frames": len(work),
  "work_p50_ms": percentile(work, 50),
  "work_p99_ms": percentile(work, 99),
  "work_max_ms": work[-1],
  "cpu_p50_ms": percentile(cpu, 50),
  "cpu_p99_ms": percentile(cpu, 99),
  "cpu_max_ms": cpu[-1],
  "draw_p50_ms": percentile(draw, 50),
  "draw_p99_ms": percentile(draw, 99),
  "draw_max_ms": draw[-1],
  "interval_p50_ms": percentile(intervals, 50),
  "interval_p99_ms": percentile(intervals, 99),
 }


def measure_clicks(hook: Hook, clicks: int) -> list[dict[str, Any]]:
 results = []
 for _ in range(clicks):
  sent = time.perf_counter()
  clicked = hook.call("POST", "/click", {"label": "Pause"})
  state = hook.call("GET", "/state")
  seen = time.perf_counter()
  if not clicked.get("acted") or state["mma_status"] != "paused":
   raise SystemExit(f"the Pause click did not pause: {clicked} / {state['mma_status']}")
  action = clicked["action"]
  effect = action["effect_frame"]
  results.append(
   {
    "frames_click_to_paused": None if effect is None else effect - action["frame"],
    "click_to_paused_ms": None if effect is None else (action["effect_at"] - action["at"]) * 1000,
    # The gate closed: ConductorEngine.pause() has returned (no worker starts from then on).
    "click_to_applied_ms": clicked.get("applied_ms"),
    "frames_request_to_click": clicked["action_frames"],
    "max_frame_ms_during_click": clicked["max_frame_ms"],
    "request_to_paused_ms": (seen - sent) * 1000,
   }
  )
  hook.call("POST", "/click", {"label": "Resume"})
  time.sleep(0.3)  # let workers start again, so the next Pause lands mid-run
 return results


def run_scenario(name: str, args: argparse.Namespace) -> dict[str, Any]:
 with tempfile.TemporaryDirectory(prefix="gui-frames-") as tmp:
  folder = Path(tmp)
  if name == "idle":
   pipeline = write_pipeline(folder, args.tickets, args.workers)
  else:
   pipeline = write_busy_pipeline(folder, args.busy_slice_ms)
  proc, hook = start_gui(pipeline, folder, args.size)
  try:
   if args.filter and name == "idle":
    typed = hook.call("POST", "/type", {"label": "##filter", "text": args.filter})
    if not typed.get("ok"):
     raise SystemExit(f"could not type the filter: {typed}")
   time.sleep(1.5)  # past the first frames (font atlas, shaders) and into the run
   hook.call("POST", "/frames/reset")
   time.sleep(args.seconds)
   sampled = hook.call("GET", "/frames")["samples"]
   during = hook.call("GET", "/state")
   clicks = measure_clicks(hook, args.clicks)
  finally:
   try:
    hook.call("POST", "/quit")
    proc.wait(timeout=30)
   except (OSError, subprocess.TimeoutExpired):
    proc.kill()
    proc.wait()
 return {
  "frames": frame_stats(sampled),
  "during": during["snapshot"]["counts"],
  "clicks": clicks,
  "status": during["mma_status"],
  "shown_rows": during["gui"]["shown_rows"],
 }


def click_rows(clicks: list[dict[str, Any]]) -> list[list[str]]:
 def row(label: str, values: list[float], digits: int) -> list[str]:
  values = sorted(values)
  return [
   label,
   f"{percentile(values, 50):.{digits}f}",
   f"{percentile(values, 99):.{digits}f}",
   f"{values[-1]:.{digits}f}",
   f"{len(values)}",
  ]

 applied = [c["click_to_applied_ms"] for c in clicks if c["click_to_applied_ms"] is not None]
 to_paused = [c["click_to_paused_ms"] for c in clicks if c["click_to_paused_ms"] is not None]
 if not applied or not to_paused:
  raise SystemExit(f"a Pause click did not report its effect: {clicks}")
 return [
  row("longest frame during a Pause click", [c["max_frame_ms_during_click"] for c in clicks], 2),
  row("click landed -> gate closed (pause() returned)", applied, 3),
  row("click landed -> a frame shows paused", to_paused, 3),
  row("click sent -> GET /state reads paused", [c["request_to_paused_ms"] for c in clicks], 1),
 ]


def frame_row(label: str, frames: dict[str, float], kind: str = "work") -> list[str]:
 return [
  label,
  f"{frames[f'{kind}_p50_ms']:.2f}",
  f"{frames[f'{kind}_p99_ms']:.2f}",
  f"{frames[f'{kind}_max_ms']:.2f}",
  f"{frames['frames']}",
 ]


def main(argv: list[str] | None = None) -> int:
 parser = argparse.ArgumentParser(
  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
 )
 parser.add_argument("--tickets", type=int, default=10_000, help="idle loop: sleep tickets")
 parser.add_argument("--workers", type=int, default=16, help="idle loop: max workers")
 parser.add_argument("--seconds", type=float, default=6.0, help="frame sampling window")
 parser.add_argument("--clicks", type=int, default=10, help="Pause clicks per scenario")
 parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
 parser.add_argument(
  "--busy-slice-ms", type=float, default=20.0, help="busy loop: CPU held between awaits"
 )
 parser.add_argument("--filter", default="", help="idle loop: text typed into the table's filter")
 parser.add_argument("--size", default="960x640", help="window size, WxH")
 parser.add_argument("--json", type=Path, default=default_json_path("gui_frames"))
 args = parser.parse_args(argv)

 if not os.environ.get("DISPLAY"):
  xvfb = shutil.which("xvfb-run")
  if xvfb is None:
   print("gui_frames: needs an X display (or xvfb-run to make one)", file=sys.stderr)
   return 2
  script = str(Path(__file__).resolve())
  os.execv(xvfb, [xvfb, "-a", "-s", XVFB_SCREEN, sys.executable, script, *sys.argv[1:]])

 results = {name: run_scenario(name, args) for name in args.scenario}

 machine = machine_info(["imgui-bundle", "anyio"])
 checks: dict[str, bool] = {}
 print(f"dashboard frames and Pause clicks · {args.size}")
 print(machine_line(machine))
 for name, result in results.items():
  counts, clicks = result["during"], result["clicks"]
  if name == "idle":
   title = f"idle loop: {args.tickets:,} sleep tickets, {args.workers} workers"
   if args.filter:
    title += f", filter {args.filter!r} ({result['shown_rows']:,} rows shown)"
  else:
   title = (
    f"busy loop: {BUSY_TICKETS} call tickets holding the loop {args.busy_slice_ms:g} ms "
    f"between awaits, {BUSY_WORKERS} workers"
   )
  print(f"\n{title}")
  print(
   f"while sampling: {result['status']}, {counts['completed']:,} completed, "
   f"{counts['in_progress']} running, {counts['todo']:,} todo\n"
  )
  frames = result["frames"]
  rows = [
   frame_row("frame time (pre_new_frame -> after_swap)", frames),
   frame_row("  GUI thread CPU time in it", frames, "cpu"),
   frame_row("  of which the dashboard's draw (Python)", frames, "draw"),
   [
    "frame interval (paced at 60 fps max)",
    f"{frames['interval_p50_ms']:.2f}",
    f"{frames['interval_p99_ms']:.2f}",
    "",
    "",
   ],
   *click_rows(clicks),
  ]
  print(format_table(["ms", "p50", "p99", "max", "n"], rows))
  click_frames = [c["frames_click_to_paused"] for c in clicks]
  to_click = sorted(c["frames_request_to_click"] for c in clicks)
  print(
   f"\nframes from the click's frame to one that shows paused: {click_frames} "
   f"(test engine mouse travel before the click lands: {to_click[0]}-{to_click[-1]} frames)"
  )
  checks[f"{name} loop: every click's own frame shows paused"] = all(f == 0 for f in click_frames)
  if name == "idle":
   longest = max(c["max_frame_ms_during_click"] for c in clicks)
   checks["idle loop: frame p99 < 16 ms"] = frames["work_p99_ms"] < FRAME_TARGET_MS
   checks["idle loop: no frame >= 16 ms during a click"] = longest < FRAME_TARGET_MS
 print()
 for name, ok in checks.items():
  print(f"{'PASS' if ok else 'FAIL'}  {name}")

 write_json(
  args.json,
  {
   "benchmark": "gui_frames",
   "machine": machine,
   "config": {
    "tickets": args.tickets,
    "workers": args.workers,
    "seconds": args.seconds,
    "clicks": args.clicks,
    "scenarios": args.scenario,
    "busy_slice_ms": args.busy_slice_ms,
    "filter": args.filter,
    "busy_tickets": BUSY_TICKETS,
    "busy_workers": BUSY_WORKERS,
    "size": args.size,
    "display": "Xvfb" if "xvfb" in os.environ.get("XAUTHORITY", "").lower() else "X",
   },
   "scenarios": {
    name: {"frames": r["frames"], "clicks": r["clicks"]} for name, r in results.items()
   },
   "checks": checks,
  },
 )
 print(f"\nJSON: {args.json}")
 return 0 if all(checks.values()) else 1


if __name__ == "__main__":
 sys.exit(main())
