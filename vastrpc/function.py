"""RemoteFunction: what ``@app.remote`` returns, and every way to call it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any, Generic, ParamSpec, TypeVar

from vastrpc._errors import DefinitionError
from vastrpc._mode import serve_runtime
from vastrpc.client.output import RemoteOutput
from vastrpc.client.router import CallInfo
from vastrpc.definition import FunctionOptions
from vastrpc.deploy.handle import DeploymentHandle

__all__ = ["RemoteFunction"]

P = ParamSpec("P")
R = TypeVar("R")


class _Unset:
    """The type of an option not given to with_options (None is a value there)."""


_UNSET = _Unset()


class RemoteFunction(Generic[P, R]):
    """An ``async def`` (or async generator) under ``@app.remote``.

    ``await fn(...)`` deploys the app if needed (deploy mode) and runs the function on a
    worker; on the worker itself (serve mode) it runs the function in place. For an async
    generator, ``fn(...)`` (or ``fn.stream(...)``) is iterated with ``async for``.
    """

    def __init__(self, handle: DeploymentHandle, fn: Callable[P, Any], options: FunctionOptions) -> None:
        self._handle = handle
        self.fn = fn
        self.options = options
        functools.update_wrapper(self, fn)

    @property
    def name(self) -> str:
        return self.options.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        if serve_runtime() is not None:
            return self.fn(*args, **kwargs)  # type: ignore[no-any-return]
        if self.options.generator:
            return self.stream(*args, **kwargs)  # type: ignore[return-value]
        return self._handle.call(self.options.name, args, kwargs, self.options)

    async def call_with_info(self, *args: P.args, **kwargs: P.kwargs) -> CallInfo:
        """Call on a worker and return the result with where it ran (worker id, revision id)."""
        self._not_generator("call_with_info")
        return await self._handle.invoke(self.options.name, args, kwargs, self.options)

    def stream(self, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Any]:
        """Iterate an async generator's values as the worker produces them.

        Leaving the loop early (``break``, an exception, cancellation) stops the generator
        on the worker.
        """
        if not self.options.generator:
            raise DefinitionError(f"{self.name} is not an async generator: await it instead of streaming it")
        if serve_runtime() is not None:
            return self.fn(*args, **kwargs)  # type: ignore[no-any-return]
        return self._handle.stream(self.options.name, args, kwargs, self.options)

    async def map(self, *iterables: Iterable[Any], concurrency: int = 64, return_exceptions: bool = False) -> list[Any]:
        """Call the function once per item (``fn(a, b)`` for items of two iterables), results in input order.

        Args:
            iterables: One iterable per positional argument, zipped like ``map()``.
            concurrency: Calls in flight at once; the inputs are consumed lazily.
            return_exceptions: Put each failed call's exception in its place instead of
                raising the first one (the other calls are then cancelled).
        """
        self._not_generator("map")
        if concurrency < 1:
            raise DefinitionError("map: concurrency must be at least 1")
        items = enumerate(zip(*iterables, strict=False))
        results: dict[int, Any] = {}

        async def work() -> None:
            for index, args in items:
                try:
                    results[index] = await self(*args)  # type: ignore[arg-type, call-arg]
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    results[index] = exc

        workers = [asyncio.ensure_future(work()) for _ in range(concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return [results[i] for i in range(len(results))]

    def with_options(
        self,
        *,
        timeout: float | None | _Unset = _UNSET,
        logs: bool | Callable[[RemoteOutput], None] | _Unset = _UNSET,
    ) -> RemoteFunction[P, R]:
        """The same function with other call options, e.g. ``await fn.with_options(timeout=5)(x)``.

        Args:
            timeout: Seconds a call may take (None: no limit); the worker cancels it after.
            logs: ``True`` prints what the function prints or logs during the call on this
                process's stderr, each line prefixed with the function and worker; a callable
                gets each line as a :class:`~vastrpc.RemoteOutput` instead. Either way the
                output stays in the worker's log (``vastrpc logs``). Default False.
        """
        changes: dict[str, Any] = {}
        if not isinstance(timeout, _Unset):
            if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
                raise DefinitionError(f"with_options: timeout must be positive seconds or None, got {timeout!r}")
            changes["timeout"] = timeout
        if not isinstance(logs, _Unset):
            if not (isinstance(logs, bool) or callable(logs)):
                raise DefinitionError(f"with_options: logs must be True, False or a callable, got {logs!r}")
            changes["logs"] = logs
        return RemoteFunction(self._handle, self.fn, replace(self.options, **changes))

    def local(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function in this process, without a worker."""
        return self.fn(*args, **kwargs)

    def _not_generator(self, what: str) -> None:
        if self.options.generator:
            raise DefinitionError(f"{self.name} is an async generator: use `async for v in {self.name}.stream(...)`")

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._handle.name}.{self.name}>"
