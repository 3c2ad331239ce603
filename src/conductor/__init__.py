"""conductor: a pausable DAG pipeline runner.

The pieces, each in its own module: `dag_engine` (the pure DAG), `multi_agent_conductor`
(`ConductorEngine`, the run with pause/resume), `workers`, `pipeline` (TOML files), `cli`,
`gui` (the dashboard). The scheduler underneath is the separate `scheduler` package.
"""

__version__ = "0.1.0"
