"""The exception tree: every error vastrpc raises derives from VastrpcError.

::

    VastrpcError
    ├── DefinitionError          a deployment file declares something invalid (at decoration or ensure_ready)
    ├── ControlServiceError      talking to the control service failed
    │   ├── ControlUnavailableError    it cannot be reached (wrong address, not running)
    │   └── AuthenticationError        the API key or token was refused
    ├── DeploymentError          a deployment could not be brought up (.step, .log_tail)
    ├── NotFoundError            no such deployment, endpoint, worker or bundle
    ├── BundleError              a bundle is invalid (digest mismatch, unsafe member, too large)
    ├── ContextError             get_context used outside a worker, or for an unknown context (also a KeyError)
    └── CallError                a call did not produce its result
        ├── FunctionNotFoundError      the worker has no function of that name
        ├── WorkerUnavailableError     no worker could take the call, or one went away mid-call
        │   ├── OverloadedError              every worker is at its limits (queue full or too long)
        │   └── SessionLostError             a session's worker went away (or the session ended): not re-routed
        ├── CallTimeoutError           the call ran past its timeout
        ├── SerializationError         arguments or result could not be (de)serialised
        └── RemoteError                the remote function raised an exception that cannot be rebuilt here

An exception raised by a remote function is re-raised in the caller as its own
type when it can be unpickled, with a ``RemoteTraceback`` as ``__cause__`` and
the remote traceback as a note; otherwise as ``RemoteError``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BundleError",
    "CallError",
    "CallTimeoutError",
    "ContextError",
    "ControlServiceError",
    "ControlUnavailableError",
    "DefinitionError",
    "DeploymentError",
    "FunctionNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "SessionLostError",
    "VastrpcError",
    "WorkerUnavailableError",
]


class VastrpcError(Exception):
    """Root of every error vastrpc raises."""


class DefinitionError(VastrpcError):
    """A deployment file declares something vastrpc cannot run."""


class ControlServiceError(VastrpcError):
    """A request to the control service failed."""


class ControlUnavailableError(ControlServiceError):
    """The control service cannot be reached."""


class AuthenticationError(ControlServiceError):
    """The API key or token was missing or refused."""


class NotFoundError(VastrpcError):
    """No such deployment, endpoint, worker or bundle."""


class BundleError(VastrpcError):
    """A bundle is invalid: digest mismatch, unsafe member, or over a limit."""


class ContextError(VastrpcError, KeyError):
    """``get_context`` was used outside a worker or for a context that was not declared.

    Also a ``KeyError``, as Vast documents for ``app.get_context``.
    """

    def __str__(self) -> str:
        # KeyError's own str() quotes its argument, as it would a missing key.
        return str(self.args[0]) if self.args else ""


class DeploymentError(VastrpcError):
    """A deployment could not be brought up.

    Attributes:
        reason: What went wrong, without the step and log tail.
        step: The step that failed (``"install"``, ``"contexts"``, ``"benchmark"``, ...).
        log_tail: The last lines of the failing worker's log, when there is one.
    """

    def __init__(self, message: str, *, step: str = "", log_tail: str = "") -> None:
        self.reason = message
        self.step = step
        self.log_tail = log_tail
        text = f"{step} failed: {message}" if step else message
        if log_tail:
            text += "\n--- worker log (tail) ---\n" + log_tail.rstrip()
        super().__init__(text)


class CallError(VastrpcError):
    """A call did not produce its result."""


class FunctionNotFoundError(CallError):
    """The worker has no function of that name."""


class WorkerUnavailableError(CallError):
    """No worker could take the call, or the worker went away during it."""


class OverloadedError(WorkerUnavailableError):
    """Every worker that could take the call is at its limits: its queue is full or too slow."""


class SessionLostError(WorkerUnavailableError):
    """A session's call cannot run where the session's state is: its worker went away, or the session ended.

    The call is never sent to another worker, since what the session built up there (a
    conversation's KV cache, say) is gone; open a new session to go on.

    Attributes:
        session_id: The session.
        worker_id: The worker it was pinned to ("" if it had none yet).
    """

    def __init__(self, message: str, *, session_id: str = "", worker_id: str = "") -> None:
        self.session_id = session_id
        self.worker_id = worker_id
        super().__init__(message)


class CallTimeoutError(CallError, TimeoutError):
    """The call ran past its timeout."""


class SerializationError(CallError):
    """Arguments or a result could not be serialised or deserialised."""


class RemoteError(CallError):
    """The remote function raised an exception that could not be rebuilt in the caller.

    Attributes:
        type_name: The remote exception's qualified type name.
        remote_message: Its message.
        remote_traceback: The formatted remote traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}\n\nRemote traceback:\n{remote_traceback}")


class RemoteTraceback(Exception):
    """Carries a remote traceback as the ``__cause__`` of a re-raised remote exception."""

    def __init__(self, tb: str) -> None:
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return f'\n"""\nRemote traceback:\n{self.tb}"""'
