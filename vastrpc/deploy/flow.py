"""The deploy flow behind ``ensure_ready``: package, hash, register, upload, provision, wait for ready."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from vastrpc._errors import DefinitionError
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.client.control import ControlClient
from vastrpc.client.router import Router
from vastrpc.config import ClientConfig
from vastrpc.definition import DeploymentDefinition
from vastrpc.deploy.spec import build_spec
from vastrpc.deploy.statcache import cached_bundle

__all__ = ["DeployProgress", "DeployResult", "Session", "describe_tier", "ensure_ready"]

log = logging.getLogger("vastrpc.deploy")

# (endpoint id, warning) pairs already logged by this process.
_WARNED: set[tuple[str, str]] = set()

_TIERS: dict[int, tuple[int, str]] = {
    common_pb2.UPDATE_TIER_NONE: (0, "nothing changed — connected to the running workers"),
    common_pb2.UPDATE_TIER_SETTINGS: (1, "autoscaling settings changed — applied in place"),
    common_pb2.UPDATE_TIER_CODE: (2, "code changed — workers load the new bundle"),
    common_pb2.UPDATE_TIER_ENVIRONMENT: (3, "environment changed — workers restart into it"),
    common_pb2.UPDATE_TIER_NEW_ENDPOINT: (4, "new endpoint — fresh workers"),
}


def describe_tier(update_tier: int) -> tuple[int, str]:
    """An UpdateTier value as ``(tier number, words)``; ``(-1, "unknown")`` for one this client does not know."""
    return _TIERS.get(update_tier, (-1, "unknown"))


@dataclass(frozen=True)
class DeployResult:
    """What ``ensure_ready`` did.

    Attributes:
        tier: The update tier applied, 0 (nothing changed) to 4 (new endpoint).
        description: The tier in words.
        deployment_id: The deployment's id on the control service.
        endpoint_id: The endpoint (deployment name and tag) that serves the calls.
        revision_id: The revision now served.
        bundle_digest: SHA-256 of the bundle.
        uploaded: Whether the bundle was uploaded (False when the service had it).
        workers_started: Workers the control service started for this revision.
        ready_workers: Workers ready when ``ensure_ready`` returned.
        seconds: How long ``ensure_ready`` took.
        warnings: What the control service's provider runs despite the requirements
            (``Image.require``), naming each query: those this machine does not meet (the
            local provider runs the worker anyway) and those no provider can check.
    """

    tier: int
    description: str
    deployment_id: str
    endpoint_id: str
    revision_id: str
    bundle_digest: str
    uploaded: bool
    workers_started: int
    ready_workers: int
    seconds: float
    warnings: tuple[str, ...] = ()

    @classmethod
    def nothing(cls, description: str) -> DeployResult:
        """The result of an ``ensure_ready`` that deployed nothing, saying why."""
        return cls(0, description, "", "", "", "", False, 0, 0, 0.0)

    def __await__(self) -> Generator[Any, None, DeployResult]:
        """Awaiting a result gives it back: ``await app.ensure_ready()`` works wherever it already finished."""
        return self
        yield  # a generator that finishes at once


class DeployProgress:
    """Told how a deploy goes, step by step (``vastrpc deploy`` draws it); each method does nothing here.

    The steps, in order: ``package``, ``hash``, ``register``, ``upload``, ``provision``,
    ``ready``. Subclass and override what you show; pass an instance to ``ensure_ready``.
    """

    def step_started(self, step: str, total: int | None = None) -> None:
        """``step`` begins; ``total`` is its size when it has one (bytes for ``upload``)."""

    def step_done(self, step: str, summary: str) -> None:
        """``step`` is over; ``summary`` says what it did, in words."""

    def upload_progress(self, sent: int, total: int) -> None:
        """``sent`` of the bundle's ``total`` bytes were handed to the connection."""

    def workers(self, ready: int, wanted: int, states: Sequence[tuple[str, str]]) -> None:
        """While provisioning: ``ready`` of ``wanted`` workers serve the new revision;
        ``states`` is every worker's ``(worker_id, state)``, e.g. ``("w-1a2b", "installing")``."""


@dataclass
class Session:
    """A deployed app's live connection: control client, router, and the event loop they belong to."""

    loop: asyncio.AbstractEventLoop
    control: ControlClient | None  # None for an in-process session (vastrpc.testing)
    router: Router
    result: DeployResult

    async def close(self) -> None:
        await self.router.close()
        if self.control is not None:
            await self.control.close()


def validate(app: DeploymentDefinition) -> None:
    """Check what can only be checked once the whole module is defined."""
    if app.module_file is None:
        raise DefinitionError(f"deployment {app.name!r} was not defined in a module file; vastrpc bundles that file")
    if not app.functions:
        raise DefinitionError(f"deployment {app.name!r} declares no @app.remote function")
    if not any(f.options.has_benchmark for f in app.functions.values()):
        raise DefinitionError(
            f"deployment {app.name!r}: no function has a benchmark; give at least one "
            "@app.remote(benchmark_dataset=[...]) or benchmark_generator=... so workers can measure their score"
        )


def _done(progress: DeployProgress | None, step: str, summary: str) -> None:
    # Shown by the progress when there is one; a configured log then need not repeat it.
    log.log(logging.DEBUG if progress is not None else logging.INFO, "%s: %s", step, summary)
    if progress is not None:
        progress.step_done(step, summary)


def _upload_reporter(progress: DeployProgress | None) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return progress.upload_progress


def _tell_workers(progress: DeployProgress, update: control_pb2.WatchEndpointResponse, revision_id: str) -> None:
    workers = [w for w in update.workers if w.state != common_pb2.WORKER_STATE_STOPPED]
    ready = sum(1 for w in workers if w.state == common_pb2.WORKER_STATE_READY and w.revision_id == revision_id)
    states = [
        (w.worker_id, common_pb2.WorkerState.Name(w.state).removeprefix("WORKER_STATE_").lower()) for w in workers
    ]
    progress.workers(ready, max(update.desired_workers, ready), states)


async def _report_workers(control: ControlClient, endpoint_id: str, revision_id: str, progress: DeployProgress) -> None:
    """Tell ``progress`` about the endpoint's workers on every change, until cancelled."""
    try:
        async for update in control.watch(endpoint_id):
            _tell_workers(progress, update, revision_id)
    except Exception as exc:  # a display only: the deploy's own watch reports real failures
        log.debug("progress watch of %s ended: %s", endpoint_id, exc)


async def ensure_ready(
    app: DeploymentDefinition,
    config: ClientConfig,
    session: Session | None = None,
    *,
    progress: DeployProgress | None = None,
) -> Session:
    """Bring ``app`` up on the control service and return a session connected to its ready workers.

    Args:
        app: The deployment, as described.
        config: Where the control service is and how to talk to it.
        session: Its live session, reused when it serves the same endpoint.
        progress: Told about each step as it happens; None (the SDK's default) costs nothing.
    """
    started = time.perf_counter()
    validate(app)
    if session is not None and session.control is None:
        return session  # served in-process by vastrpc.testing: nothing to deploy
    control = session.control if session is not None and session.control is not None else None
    control = control or await ControlClient.connect(config)
    router: Router | None = None
    try:
        assert app.module_file is not None
        if progress is not None:
            progress.step_started("package")
        # The stat cache answers "did anything change?" without reading a file; the
        # files are read again only for an upload, and only those the service lacks.
        bundle = await asyncio.to_thread(
            cached_bundle,
            app.module_file,
            copies=app.image.copies,
            cache_dir=config.home / "cache" / "bundles",
        )
        cached = " (unchanged, from stat cache)" if bundle.from_cache else ""
        summary = f"{app.name} — {len(bundle.files)} files, {bundle.total_size} bytes, module {bundle.module}{cached}"
        _done(progress, "package", summary)
        spec = build_spec(app, bundle, control.api_key)
        digests = spec.digests
        summary = f"bundle sha256 {bundle.digest} (code {digests.code:.12}, environment {digests.environment:.12})"
        _done(progress, "hash", summary)
        if progress is not None:
            progress.step_started("register")
        reg = await control.register(spec)
        tier, words = describe_tier(reg.tier)
        summary = f"{app.name}:{app.tag} → endpoint {reg.endpoint_id} revision {reg.revision_id}; tier {tier}: {words}"
        _done(progress, "register", summary)
        if reg.upload_required:
            if progress is not None:
                progress.step_started("upload", bundle.total_size)
            up = await control.upload_bundle(bundle.manifest, bundle.read_chunks, _upload_reporter(progress))
            summary = (
                f"{up.files} changed files ({up.file_bytes} bytes) streamed of {len(bundle.files)}; "
                f"the control service verified each one and the manifest {bundle.digest:.12}"
            )
        else:
            summary = f"skipped — the control service already holds {bundle.digest:.12}"
        _done(progress, "upload", summary)
        if progress is not None:
            progress.step_started("provision")
        prov = await control.provision(reg.endpoint_id, reg.revision_id)
        for warning in prov.warnings:
            # Once per process: a Vast-style file deploys at import, and the client's own
            # event loop connects again; the same warning twice would read as two problems.
            if (reg.endpoint_id, warning) not in _WARNED:
                _WARNED.add((reg.endpoint_id, warning))
                log.warning("%s: %s", app.name, warning)
        noted = "".join(f"; {w}" for w in prov.warnings)
        _done(progress, "provision", f"endpoint {reg.endpoint_id}, {prov.workers_started} worker(s) started{noted}")
        if session is not None and session.router.endpoint_id == reg.endpoint_id:
            router = session.router
        else:
            if session is not None:
                await session.router.close()
            router = Router(control, reg.endpoint_id, config.balancer)
        watcher = None
        if progress is not None:
            progress.step_started("ready")
            watcher = asyncio.create_task(_report_workers(control, reg.endpoint_id, reg.revision_id, progress))
        try:
            state = await router.wait_ready(reg.revision_id, config.ready_timeout)
        finally:
            if watcher is not None:
                watcher.cancel()
                # Not awaited with the task's own CancelledError: one aimed at us still propagates.
                await asyncio.wait([watcher])
        if progress is not None:
            # The state the deploy ended on: the display's own watch may not have seen it yet.
            _tell_workers(progress, state, reg.revision_id)
    except BaseException:
        if router is not None and (session is None or router is not session.router):
            await router.close()
        if session is None:
            await control.close()
        raise
    ready = sum(1 for w in state.workers if w.state == common_pb2.WORKER_STATE_READY)
    seconds = time.perf_counter() - started
    _done(progress, "ready", f"{ready} worker(s) serve revision {reg.revision_id} after {seconds:.2f}s")
    result = DeployResult(
        tier=tier,
        description=words,
        deployment_id=reg.deployment_id,
        endpoint_id=reg.endpoint_id,
        revision_id=reg.revision_id,
        bundle_digest=bundle.digest,
        uploaded=reg.upload_required,
        workers_started=prov.workers_started,
        ready_workers=ready,
        seconds=seconds,
        warnings=tuple(prov.warnings),
    )
    return Session(asyncio.get_running_loop(), control, router, result)
