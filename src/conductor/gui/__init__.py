"""The MMA dashboard, a Dear ImGui desktop window (imgui-bundle): `conductor gui`, `demo --gui`.

Three threads, none waiting on another during a frame:

- the main thread belongs to GLFW: it draws `Dashboard` (_dashboard.py; its parts in
  _banner.py, _table.py and _side.py, what they share in _widgets.py) from the latest
  immutable `Snapshot` and the live `mma_status`, and trips the gate itself for Pause and Resume
  (`ConductorEngine.pause()` is thread-safe and never waits) and posts the other buttons'
  commands to the engine's loop;
- the engine thread (`PipelineRunner`, _runs.py) runs one event loop for as long as the
  window is open: it owns the pipeline's durable state (as `conductor run`: a re-opened
  window resumes where the last one stopped, and `conductor pause|resume|status` reach it),
  runs the pipeline on Start and wakes the GUI on every transition;
- with `--test-hook PORT_FILE` only, a loopback HTTP server (`TestHook`, _hook.py) lets tests
  read the state and click buttons through Dear ImGui's test engine; every request carries
  the random token written into the owner-only PORT_FILE.

SIGINT, SIGTERM and SIGHUP close the window as its close button does (`SignalClose`, _app.py).

This is the only package that imports imgui-bundle.
"""

from ._app import run_dashboard

__all__ = ["run_dashboard"]
