"""The SDK's front: Deployment, and the decorators @app.remote and @app.context."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, overload

from vastrpc._errors import ContextError, DefinitionError
from vastrpc._mode import deploys_deferred, get_context, serve_runtime
from vastrpc.client.session import Session
from vastrpc.config import ClientConfig
from vastrpc.definition import (
    DEFAULT_MAX_ARGUMENT_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_TIME,
    ContextDefinition,
    DeploymentDefinition,
    FunctionDefinition,
    FunctionOptions,
)
from vastrpc.deploy.flow import DeployResult
from vastrpc.deploy.handle import Deploying, DeploymentHandle
from vastrpc.function import RemoteFunction
from vastrpc.image import Autoscaling, Image

__all__ = ["Deployment", "RemoteFunction"]

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_STORAGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:GB)?\s*$", re.IGNORECASE)


def _caller_module(depth: int) -> tuple[Path | None, str]:
    frame = sys._getframe(depth)
    module_file = frame.f_globals.get("__file__")
    return (Path(module_file).resolve() if module_file else None), frame.f_globals.get("__name__", "")


def _gigabytes(storage: object) -> float:
    """``storage`` as a positive number of GB: a number, or text such as ``"32"`` or ``"32GB"``."""
    value: object = storage
    if isinstance(storage, str):
        match = _STORAGE.match(storage)
        value = float(match.group(1)) if match else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise DefinitionError(f"image(): storage is GB of disk as a positive number, e.g. 32; got {storage!r}")
    return float(value)


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return "(" + ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())]) + ")"


class Deployment:
    """One deployable app: its functions, contexts, image and autoscaling settings.

    Args:
        name: The deployment's name; defaults to the deployment module's file name.
        tag: Which endpoint of the deployment to use; a new tag is a new endpoint (tier 4).
        version_label: A free-form label shown in listings.
        ttl: Seconds after the last client was heard from before the deployment is torn down.
        api_key: The control service's API key (default: ``VASTRPC_API_KEY``, else the embedded one).
        control_address: ``host:port`` of a control service, or several (``"a:1,b:2"`` or a
            list) sharing one PostgreSQL store, tried in order and failed over between
            (default: ``VASTRPC_CONTROL_ADDRESS``, else start or reuse the embedded one).
        config: Full client configuration; overrides the two arguments above.
    """

    def __init__(
        self,
        name: str | None = None,
        tag: str = "default",
        version_label: str | None = None,
        api_key: str | None = None,
        ttl: float | None = None,
        *,
        control_address: str | Sequence[str] | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        self.module_file, self.module_name = _caller_module(2)
        if name is None:
            if self.module_file is None:
                raise DefinitionError("Deployment(): pass name=... when not defined in a module file")
            name = self.module_file.stem
        for label, value in (("name", name), ("tag", tag)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise DefinitionError(
                    f"Deployment {label} {value!r} is invalid: use 1-63 letters, digits, '.', '_' or '-'"
                )
        if ttl is not None and ttl <= 0:
            raise DefinitionError(f"Deployment ttl must be a positive number of seconds, got {ttl!r}")
        self.name = name
        self.tag = tag
        self.version_label = version_label or ""
        self.ttl = ttl
        self._api_key = api_key
        self._control_address = control_address
        self._config = config
        self._image = Image()
        self.autoscaling = Autoscaling()
        self.functions: dict[str, RemoteFunction[Any, Any]] = {}
        self.contexts: list[type] = []
        self._context_arguments: dict[type, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._handle = DeploymentHandle(name, self.describe, self.client_config)
        runtime = serve_runtime()
        if runtime is not None:
            runtime.deployments.append(self)

    # ----- definition -------------------------------------------------------------------

    @property
    def image_spec(self) -> Image:
        """The image recorded so far (``app.image(...)`` replaces it)."""
        return self._image

    def image(self, from_image: str, storage: float = 50, *, startup_timeout: float = 600.0) -> Image:
        """Start the worker image from a base image; chain ``pip_install``, ``env``, ... on the result.

        Args:
            from_image: The base image, e.g. ``"python:3.11-slim"`` or ``"pytorch/pytorch:2.5.1-cuda12.4"``.
            storage: GB of disk each worker asks for (default 50), as in Vast's ``image(from_image, storage)``;
                ``"32GB"`` is read as 32.
            startup_timeout: Seconds the startup commands may take together.
        """
        if not isinstance(from_image, str) or not from_image.strip():
            raise DefinitionError("image(): from_image must be an image reference such as 'python:3.11-slim'")
        if not startup_timeout > 0:
            raise DefinitionError(f"image(): startup_timeout must be positive seconds, got {startup_timeout!r}")
        self._image = Image(from_image=from_image.strip(), storage=_gigabytes(storage), startup_timeout=startup_timeout)
        return self._image

    def configure_autoscaling(
        self,
        min_workers: int | None = None,
        max_workers: int | None = None,
        cold_workers: int | None = None,
        target_util: float | None = None,
        inactivity_timeout: float | None = None,
        *,
        min_load: float | None = None,
        min_cold_load: float | None = None,
        cold_mult: float | None = None,
        max_queue_time: float | None = None,
        target_queue_time: float | None = None,
    ) -> None:
        """Set how many workers the endpoint runs; see ``Autoscaling`` for each setting.

        Every setting is optional, and a call updates only those it names: the others keep
        what an earlier call set (or their default), as with Vast's ``configure_autoscaling``.

        Raises:
            DefinitionError: A value is out of range, or the settings together are
                inconsistent (``min_workers`` above ``max_workers``).
        """
        given: dict[str, Any] = {
            "min_workers": min_workers,
            "max_workers": max_workers,
            "cold_workers": cold_workers,
            "target_util": target_util,
            "inactivity_timeout": inactivity_timeout,
            "min_load": min_load,
            "min_cold_load": min_cold_load,
            "cold_mult": cold_mult,
            "max_queue_time": max_queue_time,
            "target_queue_time": target_queue_time,
        }
        self.autoscaling = dataclasses.replace(
            self.autoscaling, **{name: value for name, value in given.items() if value is not None}
        )

    @overload
    def remote(self, fn: Callable[P, Awaitable[R]], /) -> RemoteFunction[P, R]: ...

    @overload
    def remote(
        self,
        fn: None = None,
        /,
        *,
        benchmark_dataset: Iterable[Any] | None = None,
        benchmark_generator: Callable[[], Any] | None = None,
        benchmark_runs: int = 10,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_time: float = DEFAULT_MAX_QUEUE_TIME,
        timeout: float | None = None,
        retries: int = 0,
        max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
    ) -> Callable[[Callable[P, Awaitable[R]]], RemoteFunction[P, R]]: ...

    def remote(
        self,
        fn: Callable[P, Awaitable[R]] | None = None,
        /,
        *,
        benchmark_dataset: Iterable[Any] | None = None,
        benchmark_generator: Callable[[], Any] | None = None,
        benchmark_runs: int = 10,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_time: float = DEFAULT_MAX_QUEUE_TIME,
        timeout: float | None = None,
        retries: int = 0,
        max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
    ) -> RemoteFunction[P, R] | Callable[[Callable[P, Awaitable[R]]], RemoteFunction[P, R]]:
        """Declare an ``async def`` (or async generator) that runs on the deployment's workers.

        Args:
            benchmark_dataset: Keyword-argument dicts (or argument tuples) the worker's
                benchmark calls the function with; at least one function needs a benchmark.
            benchmark_generator: Instead of a dataset: a callable returning one input per call.
            benchmark_runs: How many benchmark calls a worker makes to measure its score.
            max_concurrency: Calls of this function one worker runs at once (default 64); the
                benchmark runs at this concurrency, so the score is the worker's throughput.
            max_queue: Calls that may wait for a slot on one worker (default 1000); more are
                refused as overloaded and go to another worker.
            max_queue_time: Seconds a call may wait for a slot (default 30) before it is refused
                the same way; when every worker refuses, the call raises ``OverloadedError``.
            timeout: Default seconds a call may take, queueing included; ``None`` for no
                limit. ``fn.with_options(timeout=...)`` changes it per call.
            retries: For an idempotent function: how many times a call whose worker died
                during it is repeated on another worker (jittered exponential backoff). The
                default 0 never runs a call twice; a call that never reached a worker is
                always sent elsewhere, whatever this says.
            max_argument_bytes: The largest encoded arguments a call may carry (default 2 GiB);
                a worker refuses a larger call with a ``SerializationError`` before decoding it.
        """
        if benchmark_dataset is not None and benchmark_generator is not None:
            raise DefinitionError("@remote: pass benchmark_dataset or benchmark_generator, not both")
        dataset = None if benchmark_dataset is None else tuple(benchmark_dataset)
        if dataset is not None and not dataset:
            raise DefinitionError("@remote: benchmark_dataset is empty; give at least one input")
        if benchmark_generator is not None and not callable(benchmark_generator):
            raise DefinitionError("@remote: benchmark_generator must be a callable returning one input")
        if not isinstance(benchmark_runs, int) or benchmark_runs < 1:
            raise DefinitionError(f"@remote: benchmark_runs must be a positive integer, got {benchmark_runs!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise DefinitionError(f"@remote: max_concurrency must be a positive integer, got {max_concurrency!r}")
        if timeout is not None and timeout <= 0:
            raise DefinitionError(f"@remote: timeout must be positive seconds or None, got {timeout!r}")
        if not isinstance(max_argument_bytes, int) or max_argument_bytes < 1:
            raise DefinitionError(f"@remote: max_argument_bytes must be a positive integer, got {max_argument_bytes!r}")
        if not isinstance(retries, int) or retries < 0:
            raise DefinitionError(f"@remote: retries must be a non-negative integer, got {retries!r}")
        if not isinstance(max_queue, int) or max_queue < 0:
            raise DefinitionError(f"@remote: max_queue must be a non-negative integer, got {max_queue!r}")
        if max_queue_time <= 0:
            raise DefinitionError(f"@remote: max_queue_time must be positive seconds, got {max_queue_time!r}")

        def decorate(func: Callable[P, Awaitable[R]]) -> RemoteFunction[P, R]:
            name = getattr(func, "__name__", repr(func))
            generator = inspect.isasyncgenfunction(func)
            if not generator and not inspect.iscoroutinefunction(func):
                raise DefinitionError(f"@remote: {name} must be declared with 'async def' (it is a plain function)")
            if name in self.functions:
                raise DefinitionError(f"@remote: a function named {name!r} is already declared in {self.name!r}")
            options = FunctionOptions(
                name,
                dataset,
                benchmark_generator,
                benchmark_runs,
                max_concurrency,
                timeout,
                max_queue=max_queue,
                max_queue_time=max_queue_time,
                generator=generator,
                retries=retries,
                max_argument_bytes=max_argument_bytes,
            )
            remote_fn: RemoteFunction[P, R] = RemoteFunction(self._handle, func, options)
            self.functions[name] = remote_fn
            return remote_fn

        return decorate if fn is None else decorate(fn)

    @overload
    def context(self, cls: C, /) -> C: ...

    @overload
    def context(self, *args: Any, **kwargs: Any) -> Callable[[C], C]: ...

    def context(self, *args: Any, **kwargs: Any) -> Any:
        """Declare a class whose ``__aenter__`` runs once per worker before it serves; returns the class unchanged.

        Three spellings: ``@app.context``, ``@app.context()``, and ``@app.context(*args, **kwargs)``, whose
        arguments go to the class's constructor on the worker (``@app.context("Qwen/Qwen3-0.6B", max_len=512)``).
        Every context is entered concurrently before the worker serves, and exited concurrently at shutdown.
        """
        # Bare ``@app.context`` passes the class itself; a class as the only constructor argument
        # would read the same, so pass it by keyword.
        if len(args) == 1 and not kwargs and isinstance(args[0], type):
            return self._add_context(args[0], (), {})
        return lambda cls: self._add_context(cls, args, kwargs)

    def _add_context(self, cls: C, args: tuple[Any, ...], kwargs: dict[str, Any]) -> C:
        if not isinstance(cls, type):
            raise DefinitionError("@context decorates a class with async __aenter__ and __aexit__")
        for method in ("__aenter__", "__aexit__"):
            if not inspect.iscoroutinefunction(getattr(cls, method, None)):
                raise DefinitionError(f"@context: {cls.__name__} needs 'async def {method}'")
        try:
            inspect.signature(cls).bind(*args, **kwargs)
        except TypeError as exc:
            raise DefinitionError(
                f"@context: {cls.__name__}{_arguments(args, kwargs)} does not fit its __init__: {exc}"
            ) from None
        except ValueError:
            pass  # no signature to check (a C-implemented __init__): the worker will say
        if cls not in self.contexts:
            self.contexts.append(cls)
        self._context_arguments[cls] = (args, dict(kwargs))
        return cls

    def get_context(self, cls: type) -> Any:
        """What ``cls.__aenter__`` returned on this worker (Vast's ``app.get_context``).

        Raises:
            KeyError: ``cls`` was never declared with ``@app.context``, or is not entered here
                (outside a worker, or before the worker entered it). The error is a
                ``ContextError``, which is both a ``KeyError`` and a ``VastrpcError``.
        """
        if cls not in self.contexts:
            raise ContextError(
                f"{getattr(cls, '__name__', cls)} is not a context of {self.name!r}: decorate it with @app.context"
            )
        return get_context(cls)

    # ----- deploy mode ------------------------------------------------------------------

    def client_config(self) -> ClientConfig:
        """The configuration this app uses: explicit arguments first, then the environment."""
        base = self._config or ClientConfig.from_env()
        return dataclasses.replace(
            base,
            control_address=self._control_address or base.control_address,
            api_key=self._api_key or base.api_key,
        )

    def describe(self) -> DeploymentDefinition:
        """What this deployment declares now, as the deploy steps and workers read it."""
        return DeploymentDefinition(
            name=self.name,
            tag=self.tag,
            version_label=self.version_label,
            ttl=self.ttl,
            module_file=self.module_file,
            module_name=self.module_name,
            image=self._image,
            autoscaling=self.autoscaling,
            functions={name: FunctionDefinition(f.fn, f.options) for name, f in self.functions.items()},
            contexts=tuple(ContextDefinition(cls, *self._context_arguments[cls]) for cls in self.contexts),
        )

    def ensure_ready(self) -> DeployResult | Deploying:
        """Package, upload if needed, provision, and wait until workers serve the current code.

        Called where no event loop runs (a deployment file's last line, as in Vast's examples),
        it blocks and returns the result. Inside a running loop it returns an awaitable:
        ``await app.ensure_ready()``. On a worker (serve mode) it does nothing. Either way
        ``await`` works on what it returns.

        Returns:
            What happened: the update tier applied, endpoint and revision ids, whether a
            bundle was uploaded, and how many workers were started.

        Raises:
            DefinitionError: The deployment declares something invalid.
            ControlUnavailableError: The control service cannot be reached.
            DeploymentError: Workers could not be brought up (with the failed step and log tail).
        """
        if deploys_deferred():
            return DeployResult.nothing("nothing deployed here (serve mode, or a command loading the file)")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._deploy_and_disconnect())
        return Deploying(self.name, self._handle.ensure_ready)

    async def _deploy_and_disconnect(self) -> DeployResult:
        # The session belongs to this short-lived loop: close it before the loop goes. The
        # caller's own loop connects again at its first call (tier 0, a few milliseconds).
        try:
            return await self._handle.ensure_ready()
        finally:
            await self._handle.close()

    def session(self, ttl: float = 300.0) -> Session:
        """A session: a series of calls pinned to one worker (Vast's serverless sessions).

        ``async with app.session(ttl=300) as s: await s.call(fn, *args)``. The first call
        goes to the worker the balancer picks; every later one of the session to that worker
        (a conversation whose KV cache lives there). Each call extends the session's life;
        ``ttl`` seconds without a call, or leaving the ``async with``, end it. While it is
        open, the autoscaler counts it as reserved capacity on its worker and retires that
        worker last. When the worker goes away, the session's calls raise
        :class:`~vastrpc.SessionLostError` rather than moving elsewhere.

        Args:
            ttl: Seconds of idleness that end the session.
        """
        return Session(self._handle.router, ttl)

    async def close(self) -> None:
        """Close this client's connections (workers keep running)."""
        await self._handle.close()

    def __repr__(self) -> str:
        return f"<Deployment {self.name}:{self.tag} functions={list(self.functions)}>"
