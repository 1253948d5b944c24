"""Kiln's Python exceptions."""


class KilnError(RuntimeError):
    """A call Kiln cannot serve as asked.

    Raised for bad inputs (the message names the input and the expected vs. actual
    property) and, with ``strict=True``, for anything that would otherwise fall back to
    eager PyTorch with a warning (an unsupported input, a failed capture or compile, the
    recompile limit).
    """


class KilnWarning(UserWarning):
    """Kiln fell back to eager PyTorch (or partly did); the message says why."""
