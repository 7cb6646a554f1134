"""The one place that decides whether a module is imported in deploy mode or serve mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from vastrpc._errors import ContextError

if TYPE_CHECKING:
    from vastrpc.definition import Describable

__all__ = ["ServeRuntime", "deploys_deferred", "deferring_deploys", "enter_serve_mode", "get_context", "serve_runtime"]


class ServeRuntime:
    """What a worker's serving process knows while it imports and runs a deployment module."""

    def __init__(self) -> None:
        self.deployments: list[Describable] = []
        self.contexts: dict[type, Any] = {}


_runtime: ServeRuntime | None = None
# Contexts entered in this process by vastrpc.testing, without switching it to serve mode.
_local_contexts: dict[type, Any] | None = None


def use_local_contexts(contexts: dict[type, Any] | None) -> None:
    """Let ``get_context`` answer from ``contexts`` in deploy mode (vastrpc.testing); None stops it."""
    global _local_contexts
    _local_contexts = contexts


_deferred = 0


@contextmanager
def deferring_deploys() -> Iterator[None]:
    """While a command imports a deployment file: its own ``app.ensure_ready()`` lines deploy nothing.

    ``vastrpc deploy FILE`` deploys what the file defines itself, with the command's flags;
    the file's module-level ``app.ensure_ready()`` (Vast's style) must not deploy first
    with the file's own settings.
    """
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1


def deploys_deferred() -> bool:
    """Whether ``ensure_ready`` should deploy nothing now (serve mode, or a command importing a file)."""
    return _runtime is not None or _deferred > 0


def enter_serve_mode() -> ServeRuntime:
    """Switch this process to serve mode (a worker does this before importing the user's module)."""
    global _runtime
    _runtime = ServeRuntime()
    return _runtime


def serve_runtime() -> ServeRuntime | None:
    """The serve-mode runtime, or ``None`` in deploy mode."""
    return _runtime


def get_context(cls: type) -> Any:
    """What ``cls.__aenter__`` returned on this worker.

    Args:
        cls: A class decorated with ``@app.context``.

    Raises:
        ContextError: Outside a worker, or for a class that is not a declared context.
    """
    contexts = _runtime.contexts if _runtime is not None else _local_contexts
    if contexts is None:
        raise ContextError(
            f"get_context({getattr(cls, '__name__', cls)}) only works inside a remote function running on a worker; "
            "to test locally use vastrpc.testing"
        )
    try:
        return contexts[cls]
    except KeyError:
        raise ContextError(
            f"{getattr(cls, '__name__', cls)} is not an entered context on this worker; decorate it with @app.context"
        ) from None
