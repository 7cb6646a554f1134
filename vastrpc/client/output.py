"""What a function printed or logged on its worker, delivered to the caller line by line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from vastrpc.api.v1 import worker_pb2

__all__ = ["LineSplitter", "RemoteOutput", "print_remote_output"]

_STREAMS: dict[int, str] = {worker_pb2.LOG_STREAM_STDOUT: "stdout", worker_pb2.LOG_STREAM_STDERR: "stderr"}


@dataclass(frozen=True)
class RemoteOutput:
    """One line a remote function wrote while running a call.

    Attributes:
        function: The function's name.
        worker_id: The worker that ran the call.
        stream: ``"stdout"`` (prints) or ``"stderr"`` (logging, warnings, tracebacks).
        line: The line, without its line end.
    """

    function: str
    worker_id: str
    stream: str
    line: str


def print_remote_output(output: RemoteOutput) -> None:
    """The default for ``logs=True``: each line on this process's stderr, prefixed with where it ran."""
    sys.stderr.write(f"[{output.function} {output.worker_id}] {output.line}\n")


class LineSplitter:
    """Turns a call's output chunks (split anywhere) into whole lines for a handler."""

    def __init__(self, function: str, worker_id: str, handler: Callable[[RemoteOutput], None]) -> None:
        self._function = function
        self._worker_id = worker_id
        self._handler = handler
        self._partial: dict[int, str] = {}

    def feed(self, stream: int, text: str) -> None:
        """Take a chunk written to ``stream`` (a LogStream value)."""
        *lines, rest = (self._partial.pop(stream, "") + text).split("\n")
        for line in lines:
            self._emit(stream, line)
        if rest:
            self._partial[stream] = rest

    def close(self) -> None:
        """Hand over what is left of an unterminated last line."""
        for stream, rest in sorted(self._partial.items()):
            self._emit(stream, rest)
        self._partial.clear()

    def _emit(self, stream: int, line: str) -> None:
        self._handler(RemoteOutput(self._function, self._worker_id, _STREAMS.get(stream, "stdout"), line))
