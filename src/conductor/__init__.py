"""conductor: a pausable DAG pipeline runner.

The flat API, for `from conductor import ...`: build tickets (`Ticket`, and a work spec:
`ShellWork`, `CallWork`, `SleepWork`) or load a TOML file (`load_pipeline`), put them in an
`ExecutionEngine` (the pure DAG) and run it with a `ConductorEngine` (pause/resume from any
thread, snapshots; a worker may pause the whole pipeline by raising `PausePipeline`; a spent
token budget refuses a resume with `TokenBudgetSpent`). `StateStore` keeps a run's state
durable. Every error a user can cause is a `PipelineError`, `PipelineFileError`,
`CallTargetError` or `StateError` with a one-line message.

A run's listeners get a `Transition` for every change (its kind is a `Change`); a custom
worker is any async callable taking a `Ticket` (`Worker`), and its own work specs may
subclass `WorkSpec`.

The pieces, each in its own module (the README's "How it works" has the map):
`session` (where a durable run is assembled), `dag_engine` (the pure DAG: where a ticket's
status changes), `multi_agent_conductor` (`ConductorEngine`: control and the driver; where
pause happens), `journal` (the write-ahead journal: where durability happens, with `store`,
the SQLite state), `transitions`, `snapshots`, `workers`, `pipeline` (TOML files),
`control` (the control protocol and its client), `server` (a live run's side of it),
`locks`, `report`, `leftovers`, `cli` with `terminal_run`, `views` and `terminal` (the
command), `gui` (the dashboard; only it imports imgui-bundle, and it is not imported here).
The scheduler underneath is the separate `scheduler` package.
"""

from .dag_engine import CycleError, ExecutionEngine, PipelineError, Status, Ticket
from .multi_agent_conductor import ConductorEngine, TokenBudgetSpent
from .pipeline import Pipeline, PipelineFileError, load_pipeline
from .snapshots import Counts, MmaStatus, RunningWorker, Snapshot, TicketRow
from .store import StateError, StateStore
from .transitions import Change, Transition
from .workers import (
 CallTargetError,
 CallWork,
 PausePipeline,
 ShellWork,
 SleepWork,
 Usage,
 Worker,
 WorkFailed,
 WorkInterrupted,
 WorkResult,
 WorkSpec,
 run_work,
)

__version__ = "0.1.0"

__all__ = [
 "CallTargetError",
 "CallWork",
 "Change",
 "ConductorEngine",
 "Counts",
 "CycleError",
 "ExecutionEngine",
 "MmaStatus",
 "PausePipeline",
 "Pipeline",
 "PipelineError",
 "PipelineFileError",
 "RunningWorker",
 "ShellWork",
 "SleepWork",
 "Snapshot",
 "StateError",
 "StateStore",
 "Status",
 "Ticket",
 "TicketRow",
 "TokenBudgetSpent",
 "Transition",
 "Usage",
 "WorkFailed",
 "WorkInterrupted",
 "WorkResult",
 "WorkSpec",
 "Worker",
 "__version__",
 "load_pipeline",
 "run_work",
]
