"""The one exception type of the `sea` package."""


class SeaError(ValueError):
    """Bad input to the SeA trainers: the message names the offending value and how to fix it."""
