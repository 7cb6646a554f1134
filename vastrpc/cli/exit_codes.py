"""The ``vastrpc`` command's exit codes, the Failure a command raises, and the code each error exits with."""

from __future__ import annotations

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Failure",
    "exit_code",
]

# The exit codes (the table is in vastrpc.cli's docstring).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_INTERRUPTED = 130


class Failure(Exception):
    """A failure the command explains in one line.

    Args:
        message: What went wrong and what to do.
        code: The exit code (EXIT_FAILURE unless said otherwise).
    """

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def exit_code(exc: BaseException) -> int | None:
    """The exit code for an error the command explains; None for an unexpected exception."""
    from vastrpc._errors import AuthenticationError, ControlUnavailableError, NotFoundError, VastrpcError

    if isinstance(exc, Failure):
        return exc.code
    if isinstance(exc, (ControlUnavailableError, AuthenticationError)):
        return EXIT_UNREACHABLE
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, VastrpcError):
        return EXIT_FAILURE
    return None
