"""Test a deployment in-process: contexts entered, calls through the real Invoke path, no subprocesses.

::

    from vastrpc.testing import serve_locally
    from deploy import app, square

    async def test_square():
        async with serve_locally(app):
            assert await square(5) == 25

Inside the block the app's functions run on an in-process grpc.aio server: arguments and results
are pickled and chunked, errors re-raised and deadlines enforced exactly as with a real worker,
but no control service, bundle or worker process is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import grpc

from vastrpc import _mode
from vastrpc._errors import DeploymentError
from vastrpc.client.connection import WorkerConnection
from vastrpc.client.router import Router
from vastrpc.definition import DeploymentDefinition
from vastrpc.deploy.flow import DeployResult, Session, validate
from vastrpc.deployment import Deployment
from vastrpc.serve.invoke import WorkerIdentity
from vastrpc.serve.output import capture_output
from vastrpc.serve.process import StepFailed, enter_contexts, exit_contexts, run_benchmark, start_worker_service

__all__ = ["serve_locally"]


@contextlib.asynccontextmanager
async def serve_locally(app: Deployment, *, benchmark: bool = True) -> AsyncIterator[Deployment]:
    """Serve ``app`` in this process for the duration of the block; its functions are called there.

    Args:
        app: The deployment to serve.
        benchmark: Run the benchmark first, as a worker does (a failing benchmark raises).
    """
    if app._handle.live_session() is not None:
        raise RuntimeError(f"{app.name} already has a session: close it (await app.close()) before serving it locally")
    definition = app.describe()
    validate(definition)
    holder = _mode.ServeRuntime()  # only a place for the contexts: the process stays in deploy mode
    with capture_output():  # so that logs=True calls get their output, as from a worker
        async with _served(app, definition, holder, benchmark):
            yield app


@contextlib.asynccontextmanager
async def _served(
    app: Deployment, definition: DeploymentDefinition, holder: _mode.ServeRuntime, benchmark: bool
) -> AsyncIterator[None]:
    try:
        entered = await enter_contexts(definition, holder)
    except StepFailed as exc:
        raise DeploymentError(str(exc), step=exc.step) from None
    _mode.use_local_contexts(holder.contexts)
    server: grpc.aio.Server | None = None
    try:
        try:
            score = (await run_benchmark(definition))[0] if benchmark else 1.0
        except StepFailed as exc:
            raise DeploymentError(str(exc), step=exc.step) from None
        token = secrets.token_urlsafe(32)
        identity = WorkerIdentity("local", "local", "local")
        servicer, server, port, _ = await start_worker_service(definition, identity, score, token)
        conn = WorkerConnection("local", f"127.0.0.1:{port}", token, score, servicer.capacity)
        router = Router(None, "local", workers=[conn])
        result = DeployResult(0, "served in-process (vastrpc.testing)", "local", "local", "local", "", False, 0, 1, 0.0)
        app._handle.session = Session(asyncio.get_running_loop(), None, router, result)
        yield
    finally:
        await app.close()
        if server is not None:
            await server.stop(None)
        _mode.use_local_contexts(None)
        await exit_contexts(entered)
