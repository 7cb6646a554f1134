"""How the control service's handlers turn vastrpc errors into gRPC status codes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import grpc

from vastrpc import _errors as errors
from vastrpc._errors import VastrpcError

__all__ = ["abort", "unary"]

_CODES: tuple[tuple[type[VastrpcError], grpc.StatusCode], ...] = (
    (errors.AuthenticationError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.DefinitionError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.DeploymentError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.BundleError, grpc.StatusCode.DATA_LOSS),
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


async def abort(context: grpc.aio.ServicerContext, exc: VastrpcError) -> NoReturn:
    """End the call with the status code of ``exc``'s kind and its message."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            await context.abort(code, str(exc))
    await context.abort(grpc.StatusCode.INTERNAL, str(exc))
    raise AssertionError("unreachable")  # context.abort always raises


def unary(method: F) -> F:
    """Turn vastrpc exceptions raised by a unary-response handler into their status codes."""

    @wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except VastrpcError as exc:
            await abort(context, exc)

    return wrapper  # type: ignore[return-value]
