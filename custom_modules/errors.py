"""Errors a person can act on, and the one line a failed command ends with.

Every error this package raises for bad input names the file or config key and the problem in its message. MONAI's
config parser wraps an error raised inside a bundle expression in "Failed to evaluate/instantiate ..." errors, so
the cause would be printed 35-100 lines above the last line; :func:`install_last_line_hook` (installed when the
runtime layer is imported by a bundle run) ends every uncaught error with one line holding the root cause.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType

__all__ = ["ArtefactError", "CaseInputError", "RunFolderError", "install_last_line_hook", "last_line", "root_cause"]


class CaseInputError(ValueError):
    """One case of a dataset cannot be used; the message names the case, the file and the problem."""

    def __init__(self, case_id: str, problem: str) -> None:
        super().__init__(f"case {case_id}: {problem}")
        self.case_id, self.problem = case_id, problem

    def __reduce__(self):  # picklable across DataLoader workers with its two fields
        return type(self), (self.case_id, self.problem)


class ArtefactError(RuntimeError):
    """A model file is missing, corrupt, refused as unsafe, or stale (exported from other weights)."""


class RunFolderError(RuntimeError):
    """A run folder belongs to another run (other settings or data), or another process is writing in it."""


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s ``__cause__``/``__context__`` chain (``error`` itself if none)."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def last_line(error: BaseException) -> str:
    """One line for the end of a failed command: ``error: <root cause type>: <message>`` (first line kept short)."""
    cause = root_cause(error)
    message = " ".join(str(cause).split()) or repr(cause)
    return f"error: {type(cause).__name__}: {message}"


def _hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    traceback.print_exception(kind, value, tb)
    if not isinstance(value, KeyboardInterrupt):
        print(last_line(value), file=sys.stderr, flush=True)


def install_last_line_hook() -> None:
    """Make uncaught errors end with :func:`last_line`; leaves a hook someone else installed alone."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _hook
