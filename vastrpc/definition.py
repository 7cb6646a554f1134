"""Plain descriptions of a deployment, as the decorators recorded it: what ``deploy/`` and ``serve/`` read.

``Deployment`` (the SDK's front) records a definition; ``Deployment.describe()`` hands
it over as a ``DeploymentDefinition``. The deploy steps (package, hash, register, upload)
and the serving process (contexts, benchmark, Invoke) take that description, never the
``Deployment`` object, so the SDK's modules depend one way: front → deploy/serve → here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vastrpc.image import Autoscaling, Image

if TYPE_CHECKING:
    from vastrpc.client.output import RemoteOutput

__all__ = [
    "DEFAULT_MAX_ARGUMENT_BYTES",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_TIME",
    "ContextDefinition",
    "DeploymentDefinition",
    "Describable",
    "FunctionDefinition",
    "FunctionOptions",
]

DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_MAX_QUEUE = 1000
DEFAULT_MAX_QUEUE_TIME = 30.0
DEFAULT_MAX_ARGUMENT_BYTES = 2 << 30


@dataclass(frozen=True)
class FunctionOptions:
    """What ``@app.remote`` recorded about one function."""

    name: str
    benchmark_dataset: tuple[Any, ...] | None
    benchmark_generator: Callable[[], Any] | None
    benchmark_runs: int
    max_concurrency: int
    timeout: float | None
    max_queue: int = DEFAULT_MAX_QUEUE
    max_queue_time: float = DEFAULT_MAX_QUEUE_TIME
    generator: bool = False
    retries: int = 0
    max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES
    # A call option only (never part of the deployment): where the function's output goes.
    logs: bool | Callable[[RemoteOutput], None] = False

    @property
    def has_benchmark(self) -> bool:
        return self.benchmark_dataset is not None or self.benchmark_generator is not None

    def output_handler(self) -> Callable[[RemoteOutput], None] | None:
        """What takes the lines a call prints or logs on its worker; None: they stay in the worker's log."""
        if self.logs is True:
            from vastrpc.client.output import print_remote_output

            return print_remote_output
        return self.logs or None


@dataclass(frozen=True)
class FunctionDefinition:
    """One ``@app.remote`` function: the user's ``async def`` and its options."""

    fn: Callable[..., Any]
    options: FunctionOptions

    @property
    def name(self) -> str:
        return self.options.name


@dataclass(frozen=True)
class ContextDefinition:
    """One ``@app.context`` class and the arguments its constructor gets on the worker."""

    cls: type
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentDefinition:
    """Everything a deployment declares, at the moment it was described.

    Attributes:
        name: The deployment's name.
        tag: Its endpoint's tag.
        version_label: A free-form label shown in listings ("" for none).
        ttl: Seconds without a client before teardown; None for never.
        module_file: The file the deployment was defined in (None when not in a file).
        module_name: That module's ``__name__``.
        image: The worker image and its setup.
        autoscaling: How many workers the endpoint runs.
        functions: The ``@app.remote`` functions by name, in declaration order.
        contexts: The ``@app.context`` classes with their constructor arguments, in declaration order.
    """

    name: str
    tag: str
    version_label: str
    ttl: float | None
    module_file: Path | None
    module_name: str
    image: Image
    autoscaling: Autoscaling
    functions: Mapping[str, FunctionDefinition]
    contexts: tuple[ContextDefinition, ...]


class Describable(Protocol):
    """Anything that describes a deployment (``Deployment`` does)."""

    name: str
    tag: str

    def describe(self) -> DeploymentDefinition:
        """The deployment as recorded so far."""
        ...
