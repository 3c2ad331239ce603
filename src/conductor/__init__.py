"""conductor: a pausable DAG pipeline runner.

The flat API, for `from conductor import ...`: build tickets (`Ticket`, and a work spec:
`ShellWork`, `CallWork`, `SleepWork`) or load a TOML file (`load_pipeline`), put them in an
`ExecutionEngine` (the pure DAG) and run it with a `ConductorEngine` (pause/resume from any
thread, snapshots). `StateStore` keeps a run's state durable. Every error a user can cause is
a `PipelineError`, `PipelineFileError` or `StateError` with a one-line message.

The pieces, each in its own module: `dag_engine` (the pure DAG), `multi_agent_conductor`
(`ConductorEngine`, the run with pause/resume), `workers`, `pipeline` (TOML files), `store`
(the SQLite state), `control` (the owner lock and control socket), `cli`, `gui` (the
dashboard; only it imports imgui-bundle, and it is not imported here). The scheduler
underneath is the separate `scheduler` package.
"""

from .dag_engine import CycleError, ExecutionEngine, PipelineError, Status, Ticket
from .multi_agent_conductor import (
 ConductorEngine,
 Counts,
 MmaStatus,
 RunningWorker,
 Snapshot,
 TicketRow,
 Transition,
)
from .pipeline import Pipeline, PipelineFileError, load_pipeline
from .store import StateError, StateStore
from .workers import CallWork, ShellWork, SleepWork, Worker, WorkFailed, WorkResult, run_work

__version__ = "0.1.0"

__all__ = [
 "CallWork",
 "ConductorEngine",
 "Counts",
 "CycleError",
 "ExecutionEngine",
 "MmaStatus",
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
 "Transition",
 "WorkFailed",
 "WorkResult",
 "Worker",
 "__version__",
 "load_pipeline",
 "run_work",
]
