"""A worker's serving process: imports the deployment in serve mode, enters contexts, benchmarks, serves Invoke.

Started by the worker agent as ``python -m vastrpc.serve.process EVENT_FD`` with its
configuration as JSON on stdin; it reports progress to the agent as JSON lines on EVENT_FD.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from vastrpc._grpc import start_server, tokens_equal
from vastrpc._mode import ServeRuntime, enter_serve_mode
from vastrpc._tls import TlsFiles
from vastrpc._workerenv import make_undumpable
from vastrpc.definition import DeploymentDefinition, FunctionDefinition
from vastrpc.serve.invoke import ServedFunction, WorkerIdentity, WorkerServicer
from vastrpc.serve.metrics import serve_worker_metrics
from vastrpc.serve.output import capture_output

log = logging.getLogger("vastrpc.serve")

Emit = Callable[..., None]


class StepFailed(Exception):
    """A serving step failed: ``step`` names it, the message is one line, ``detail`` holds the traceback.

    The one line goes into the deployment's failure record (the CLI's ``error:`` line, ``vastrpc ls``);
    the traceback goes to the worker log once, where the log tail shows it below that line.
    """

    def __init__(self, step: str, message: str, detail: str = "") -> None:
        self.step = step
        self.detail = detail
        super().__init__(message)


def _raised(what: str, exc: BaseException, todo: str) -> tuple[str, str]:
    """(one line naming ``what``, the exception's type and message and what to do; the traceback)."""
    message = str(exc).strip().replace("\n", " ")
    kind = type(exc).__name__
    headline = f"{what} raised {kind}: {message}" if message else f"{what} raised {kind}"
    return f"{headline} — {todo}", "".join(traceback.format_exception(exc)).rstrip()


def load_deployment(module: str, name: str, tag: str, runtime: ServeRuntime) -> DeploymentDefinition:
    """Import the deployment module in serve mode and find the deployment to serve."""
    try:
        importlib.import_module(module)
    except BaseException as exc:
        raise StepFailed("import", *_raised(f"importing {module}", exc, "fix the import and deploy again")) from exc
    matches = [d for d in runtime.deployments if d.name == name and d.tag == tag] or [
        d for d in runtime.deployments if d.name == name
    ]
    if not matches:
        found = ", ".join(f"{d.name}:{d.tag}" for d in runtime.deployments) or "none"
        raise StepFailed("import", f"module {module} defines no Deployment named {name!r} (found: {found})")
    return matches[0].describe()


async def enter_contexts(app: DeploymentDefinition, runtime: ServeRuntime) -> list[Any]:
    """Make and enter every ``@context`` concurrently; returns the entered objects, for exit_contexts."""
    objects: list[Any] = []
    failures: list[tuple[str, str]] = []
    todo = "fix the context and deploy again"
    for context in app.contexts:
        try:
            objects.append(context.cls(*context.args, **context.kwargs))
        except Exception as exc:
            failures.append(_raised(f"{context.cls.__name__}(...)", exc, todo))
    if failures:
        raise _contexts_failed(failures)
    results = await asyncio.gather(*(obj.__aenter__() for obj in objects), return_exceptions=True)
    entered = []
    for context, obj, result in zip(app.contexts, objects, results, strict=True):
        if isinstance(result, BaseException):
            failures.append(_raised(f"{context.cls.__name__}.__aenter__", result, todo))
        else:
            runtime.contexts[context.cls] = result
            entered.append(obj)
    if failures:
        await exit_contexts(entered)
        raise _contexts_failed(failures)
    return entered


def _contexts_failed(failures: list[tuple[str, str]]) -> StepFailed:
    headline = failures[0][0] if len(failures) == 1 else f"{failures[0][0]} (and {len(failures) - 1} more contexts)"
    return StepFailed("contexts", headline, "\n\n".join(detail for _, detail in failures))


async def exit_contexts(entered: list[Any]) -> None:
    """Exit entered contexts concurrently (as Vast does), logging (not raising) their errors."""
    results = await asyncio.gather(*(obj.__aexit__(None, None, None) for obj in entered), return_exceptions=True)
    for obj, result in zip(entered, results, strict=True):
        if isinstance(result, Exception):
            log.error("%s.__aexit__ raised", type(obj).__name__, exc_info=result)


def _benchmark_inputs(fn: FunctionDefinition) -> list[Any]:
    o = fn.options
    if o.benchmark_generator is not None:
        return [o.benchmark_generator() for _ in range(o.benchmark_runs)]
    assert o.benchmark_dataset is not None
    return list(itertools.islice(itertools.cycle(o.benchmark_dataset), o.benchmark_runs))


async def _apply(fn: FunctionDefinition, item: Any) -> None:
    args: tuple[Any, ...]
    if isinstance(item, dict):
        args, kwargs = (), item
    elif isinstance(item, (tuple, list)):
        args, kwargs = tuple(item), {}
    else:
        args, kwargs = (item,), {}
    if fn.options.generator:
        async for _ in fn.fn(*args, **kwargs):  # a generator's work is all of its values
            pass
    else:
        await fn.fn(*args, **kwargs)


async def run_benchmark(app: DeploymentDefinition) -> tuple[float, dict[str, float]]:
    """Throughput (calls per second at each function's concurrency) of every benchmarked function.

    The worker's score is the lowest of them: the rate it sustains whichever function is called.
    """
    scores = {}
    for fn in app.functions.values():
        if not fn.options.has_benchmark:
            continue
        try:
            inputs = _benchmark_inputs(fn)
        except Exception as exc:
            raise StepFailed(
                "benchmark", *_raised(f"benchmark_generator of {fn.name}", exc, "fix it and deploy again")
            ) from exc
        semaphore = asyncio.Semaphore(fn.options.max_concurrency)

        async def one(
            index: int, item: Any, fn: FunctionDefinition = fn, semaphore: asyncio.Semaphore = semaphore
        ) -> None:
            async with semaphore:
                try:
                    await _apply(fn, item)
                except Exception as exc:
                    what = f"{fn.name}({item!r}) in benchmark run {index}"
                    todo = "fix the function or its benchmark inputs and deploy again"
                    raise StepFailed("benchmark", *_raised(what, exc, todo)) from exc

        await one(0, inputs[0])  # warm-up, not timed: first calls pay for lazy imports and caches
        started = time.perf_counter()
        await asyncio.gather(*(one(i, item) for i, item in enumerate(inputs, 1)))
        elapsed = max(time.perf_counter() - started, 1e-9)
        scores[fn.name] = len(inputs) / elapsed
        log.info("benchmark: %s — %d runs, %.1f calls/s", fn.name, len(inputs), scores[fn.name])
    return min(scores.values()), scores


def _tls(config: dict[str, Any]) -> TlsFiles | None:
    """The TLS files the agent passed (its own certificate, shared with the control service), if any."""
    if not config.get("tls_cert"):
        return None
    return TlsFiles(
        ca_file=Path(config["tls_ca"]) if config.get("tls_ca") else None,
        cert_file=Path(config["tls_cert"]),
        key_file=Path(config["tls_key"]),
        require_client_cert=bool(config.get("tls_require_client_cert")),
    )


async def start_worker_service(
    app: DeploymentDefinition,
    identity: WorkerIdentity,
    score: float,
    token: str,
    *,
    bind_host: str = "127.0.0.1",
    enable_reflection: bool = True,
    tls: TlsFiles | None = None,
) -> tuple[WorkerServicer, grpc.aio.Server, int, Any]:
    """Serve ``app``'s functions on a WorkerService that requires ``token``; returns it, its server, port, health."""
    functions = {
        name: ServedFunction(
            f.fn,
            f.options.max_concurrency,
            max_queue=f.options.max_queue,
            max_queue_time=f.options.max_queue_time,
            generator=f.options.generator,
            max_argument_bytes=f.options.max_argument_bytes,
        )
        for name, f in app.functions.items()
    }
    servicer = WorkerServicer(identity, functions, score)

    def register(server: grpc.aio.Server) -> list[str]:
        servicer.add_to_server(server)
        return ["vastrpc.api.v1.WorkerService"]

    server, port, health = await start_server(
        f"{bind_host}:0",
        register,
        authorize=lambda _method, presented: tokens_equal(presented, token),
        enable_reflection=enable_reflection,
        tls=tls,
    )
    return servicer, server, port, health


async def serve(config: dict[str, Any], emit: Emit) -> int:
    """Bring the revision up, serve until SIGTERM, then drain. Returns the exit code."""
    runtime = enter_serve_mode()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bundle_dir = config["bundle_dir"]
    sys.path.insert(0, bundle_dir)
    os.chdir(bundle_dir)
    entered: list[Any] = []
    # This process may have started before the folder of the revision's pip packages existed
    # (the agent starts it during the install): the import system forgets that it found none.
    importlib.invalidate_caches()
    try:
        app = load_deployment(config["module"], config["name"], config["tag"], runtime)
        entered = await enter_contexts(app, runtime)
        emit("state", state="benchmarking")
        score, per_function = await run_benchmark(app)
    except StepFailed as exc:
        # The traceback goes to the worker log once; the failure record keeps the one line.
        print(f"vastrpc: {exc.step} failed: {exc}\n{exc.detail}".rstrip(), file=sys.stderr, flush=True)
        emit("failed", step=exc.step, message=str(exc))
        await exit_contexts(entered)
        return 1
    identity = WorkerIdentity(config["worker_id"], config["endpoint_id"], config["revision_id"])
    servicer, server, port, health = await start_worker_service(
        app,
        identity,
        score,
        config["endpoint_token"],
        bind_host=config.get("bind_host", "127.0.0.1"),
        enable_reflection=config.get("reflection", True),
        tls=_tls(config),
    )
    address = f"{config.get('advertise_host', '127.0.0.1')}:{port}"
    # Prometheus metrics when the agent asks (its control service serves metrics).
    metrics = await serve_worker_metrics(servicer, config) if config.get("metrics") else None
    metrics_address = metrics.address if metrics is not None else ""
    log.info("ready: serving %s on %s (score %.1f calls/s)", ", ".join(sorted(app.functions)), address, score)
    emit(
        "ready",
        address=address,
        score=score,
        capacity=servicer.capacity,
        scores=per_function,
        metrics_address=metrics_address,
    )
    await stop.wait()
    log.info("stopping: draining %d call(s) in flight", servicer.calls_in_flight)
    await servicer.drain()
    await health.enter_graceful_shutdown()
    await server.stop(config.get("grace", 10.0))
    if metrics is not None:  # served through the drain: the agent reads the last counts
        await metrics.close()
    await exit_contexts(entered)
    return 0


def _exit_with_agent() -> None:
    """Have the kernel SIGTERM this process (it drains and exits) when its agent dies (Linux).

    An agent stopped in order stops its serving process first; one that is killed outright
    (a cluster engine kills an actor's children with SIGKILL) would otherwise leave it serving.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m vastrpc.serve.process EVENT_FD`` with the JSON config on stdin."""
    # Another deployment's code may run as this user: it must not read this one's secrets
    # through /proc (environ, mem).
    make_undumpable()
    _exit_with_agent()
    args = sys.argv[1:] if argv is None else argv
    events = os.fdopen(int(args[0]), "w", buffering=1)
    config = json.loads(sys.stdin.read())
    # A pre-started process (``vastrpc.serve.spare``) began with its agent's base environment
    # and waited for its deployment: the deployment's environment replaces it now, before any
    # of the deployment's code runs (the agent checked that none of it is read at startup).
    if (environment := config.pop("env", None)) is not None:
        os.environ.clear()
        os.environ.update(environment)
    # The deployment's secrets come with the config, not in the environment this process was
    # started with (which /proc/<pid>/environ keeps showing): they join os.environ only now.
    os.environ.update(config.pop("secrets", None) or {})

    def emit(event: str, **fields: Any) -> None:
        events.write(json.dumps({"event": event, **fields}) + "\n")

    # Before logging is set up, so that its handler writes through the capture: a call's
    # logging reaches a caller that streams its logs, like its prints.
    with capture_output():
        logging.basicConfig(level=logging.INFO, format="%(asctime)s serve %(levelname)s %(message)s", stream=sys.stderr)
        try:
            return asyncio.run(serve(config, emit))
        finally:
            events.close()


if __name__ == "__main__":
    sys.exit(main())
