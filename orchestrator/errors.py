"""The one exception type of the `orchestrator` package."""


class OrchestratorError(RuntimeError):
    """A run, store or config problem: the message names the offending file, key or value."""
