"""The one exception type of the `tasks` package."""


class TaskError(ValueError):
    """A task or backbone cannot be built: the message names the problem and how to fix it."""
