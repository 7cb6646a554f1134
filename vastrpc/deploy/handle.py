"""A deployment's handle in deploy mode: deploys it when needed and routes its calls over a live session."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any

from vastrpc.client.router import CallInfo, Router
from vastrpc.config import ClientConfig
from vastrpc.definition import DeploymentDefinition, FunctionOptions
from vastrpc.deploy.flow import DeployResult, Session, ensure_ready

__all__ = ["Deploying", "DeploymentHandle"]


class DeploymentHandle:
    """Keeps one deployment's session (control client, router) and sends its calls through it.

    A session belongs to the event loop that made it: a new loop (a second ``asyncio.run``)
    starts a new one. A session whose endpoint was torn down (TTL) is brought back up by
    the next call.

    Args:
        name: The deployment's name (for messages).
        describe: Returns the deployment's definition as it stands (read at each deploy).
        config: Returns the client configuration to deploy and call with.
    """

    def __init__(
        self, name: str, describe: Callable[[], DeploymentDefinition], config: Callable[[], ClientConfig]
    ) -> None:
        self.name = name
        self._describe = describe
        self._config = config
        self.session: Session | None = None
        self._session_lock: asyncio.Lock | None = None

    async def ensure_ready(self) -> DeployResult:
        """Deploy (or reconnect) and return what the deploy did."""
        async with self._lock():
            self.session = await self._deploy(self.live_session())
            return self.session.result

    async def call(self, function: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: FunctionOptions) -> Any:
        return (await self.invoke(function, args, kwargs, options)).value

    async def invoke(
        self, function: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: FunctionOptions
    ) -> CallInfo:
        session = await self._ready_session()
        try:
            return await session.router.call(
                function, args, kwargs, options.timeout, options.retries, options.output_handler()
            )
        except Exception as exc:
            raise _without_our_frames(exc) from exc.__cause__

    async def stream(
        self, function: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: FunctionOptions
    ) -> AsyncIterator[Any]:
        session = await self._ready_session()
        try:
            async for value in session.router.stream(function, args, kwargs, options.timeout, options.output_handler()):
                yield value
        except Exception as exc:
            raise _without_our_frames(exc) from exc.__cause__

    async def router(self) -> Router:
        """The router of the live session, deploying (or reconnecting) first if needed."""
        return (await self._ready_session()).router

    async def close(self) -> None:
        """Close the session's connections (workers keep running)."""
        session, self.session = self.session, None
        if session is not None:
            await session.close()

    def live_session(self) -> Session | None:
        """The session of the running event loop, if there is one."""
        session = self.session
        if session is not None and session.loop is not asyncio.get_running_loop():
            self.session = session = None
        return session

    async def _ready_session(self) -> Session:
        session = self.live_session()
        if session is None or session.router.torn_down:
            async with self._lock():
                session = self.live_session()
                if session is None or session.router.torn_down:
                    # Never deployed from here, or torn down since (TTL): bring it (back) up.
                    self.session = session = await self._deploy(session)
        return session

    async def _deploy(self, session: Session | None) -> Session:
        app, config = self._describe(), self._config()
        if config.progress == "off" or (session is not None and session.control is None):  # off, or in-process
            return await ensure_ready(app, config, session)
        from vastrpc.deploy.progress import deploy_progress  # rich: imported only when shown

        with deploy_progress(config.progress, f"{app.name}:{app.tag}") as progress:
            return await ensure_ready(app, config, session, progress=progress)

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._session_lock is None or getattr(self._session_lock, "_vastrpc_loop", None) is not loop:
            self._session_lock = asyncio.Lock()
            self._session_lock._vastrpc_loop = loop  # type: ignore[attr-defined]
        return self._session_lock


class Deploying(Coroutine[Any, Any, DeployResult]):
    """What ``app.ensure_ready()`` returns inside a running event loop: the deploy, run when awaited.

    A coroutine (``await`` it, or hand it to ``asyncio.create_task``) that starts the deploy
    only when first run. One that is never run deploys nothing; instead of Python's "coroutine
    was never awaited", a RuntimeWarning says so and what to write.
    """

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, DeployResult]]) -> None:
        self._name = name
        self._run: Callable[[], Coroutine[Any, Any, DeployResult]] | None = run
        self._coro: Coroutine[Any, Any, DeployResult] | None = None

    def _started(self) -> Coroutine[Any, Any, DeployResult]:
        if self._coro is None:
            run, self._run = self._run, None
            if run is None:
                raise RuntimeError(f"app.ensure_ready() of {self._name!r} was closed; call it again to deploy")
            self._coro = run()
        return self._coro

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._started().throw(typ, val, tb)

    def close(self) -> None:
        self._run = None  # closed before it ran: nothing to warn about
        if self._coro is not None:
            self._coro.close()

    def __await__(self) -> Generator[Any, None, DeployResult]:
        return self._started().__await__()

    def __del__(self) -> None:
        if self._run is not None:
            warnings.warn(
                f"app.ensure_ready() of deployment {self._name!r} was called inside a running event loop and "
                "never awaited, so nothing was deployed: write `await app.ensure_ready()` there, or call "
                "app.ensure_ready() where no event loop runs (at the module level of the deployment file)",
                RuntimeWarning,
                stacklevel=2,
            )


def _without_our_frames(exc: Exception) -> Exception:
    """A remote function's exception without the router's frames: its remote traceback says where it raised."""
    return exc.with_traceback(None) if hasattr(exc, "remote_traceback") else exc
