"""The worker provider port: the interface every provider implements (where a worker's processes run)."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from vastrpc.api.v1 import control_pb2
from vastrpc.control.providers.requirements import spec_queries
from vastrpc.query import Query

__all__ = ["ENV_HOME", "ENV_WORKER_TOKEN", "ExitCallback", "Provider", "start_options"]

ENV_WORKER_TOKEN = "VASTRPC_WORKER_TOKEN"
ENV_HOME = "VASTRPC_HOME"

# Called with (worker_id, returncode) when a worker's process ends, whoever ended it.


class ExitCallback(Protocol):
    """Called when a worker process ends: its id, pid and return code (negative: the signal).

    ``reason`` says why in words when the provider knows more than the code (a Ray node lost).
    """

    def __call__(self, worker_id: str, pid: int, returncode: int, reason: str = "") -> Awaitable[None] | None: ...


def start_options(spec: bytes) -> dict[str, Any]:
    """The keyword arguments of ``Provider.start_worker`` for a revision's stored spec.

    The requirements only when the revision has some: providers that place nothing need
    not take them.
    """
    requirements = spec_queries(control_pb2.DeploymentSpec.FromString(spec).image)
    return {"requirements": requirements} if requirements else {}


class Provider(Protocol):
    """Places workers somewhere (local processes now, a cluster engine later).

    ``on_exit`` is called with ``(worker_id, pid, returncode)`` whenever a worker process
    the provider started (or adopted) ends, whether it crashed, exited or was stopped.

    ``remote_workers`` is True for a provider whose workers run on other machines (Ray): a
    worker's pid is not a process of this host, and the worker outlives the control service
    that placed it. The service its agent turns to (a ``--peer``) adopts it
    (``adopt_worker``); the providers whose workers are processes of this host leave it False.
    """

    on_exit: ExitCallback | None
    remote_workers: bool

    async def start_worker(
        self, worker_id: str, token: str, control_address: str, *, requirements: Sequence[Query] | None = None
    ) -> int:
        """Start a worker agent that reports to ``control_address``; returns its pid.

        ``requirements`` are the revision's queries (``Image.require``); the caller passes
        them only when there are some (``start_options``). A provider that places workers
        and cannot meet them raises DeploymentError, its ``step`` saying where (e.g.
        ``placement``); one that runs them anyway warns (``requirement_warnings``).
        """

    async def requirement_warnings(self, requirements: Sequence[Query]) -> list[str]:
        """What this provider runs despite ``requirements``, in words naming each query.

        The queries it does not meet but runs workers anyway (the local provider), and those
        it cannot check at all (not applicable); empty when every query is checked and met.
        """

    async def image_warnings(self, image: control_pb2.ImageSpec) -> list[str]:
        """What this provider does instead of what the image asks: the image itself, absolute copies, Python, ports.

        A provider that runs the image on a worker of its own honours all of them and says
        nothing; one that runs workers on a shared host's interpreter (local, Ray) says for
        each what it does instead (``vastrpc._hostimage.image_warnings``). Called at every
        provision.
        """

    async def stop_worker(self, worker_id: str, grace: float, *, pid: int = 0) -> bool:
        """Stop a worker (TERM, then KILL after ``grace`` seconds); False when it was not running."""

    def prestart(self) -> None:
        """Get ready for workers once the service serves (in its event loop); may do nothing.

        The local provider starts its spare agent (``vastrpc.serve.spare``) here.
        """

    async def stop_all(self, grace: float) -> None:
        """Stop every worker this provider runs."""

    def is_running(self, worker_id: str) -> bool:
        """Whether the provider runs that worker now."""

    def worker_gpus(self, worker_id: str) -> tuple[int, ...]:
        """The indices of its host's GPUs the worker holds (``CUDA_VISIBLE_DEVICES``); empty: none or unknown."""

    def adopt_worker(self, worker_id: str, pid: int, gpus: Iterable[int]) -> None:
        """A worker started by another (or an earlier) control service runs on with ``gpus``: take it over.

        Local providers give its GPUs to no other worker; called at the service's start for
        each worker it adopts, with the GPUs its row records. Remote ones (``remote_workers``)
        watch it from then on as if they had placed it; called when such a worker reports to
        this service rather than its own.
        """

    def log_path(self, worker_id: str) -> Path:
        """Where the worker's output goes."""

    def isolation_warnings(self) -> list[str]:
        """What a deployment's code could reach here beyond its own worker, in words; said at the service's start.

        Empty when workers are isolated from the service and from each other (their own
        user, or containers).
        """
