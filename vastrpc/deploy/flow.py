"""The deploy flow behind ``ensure_ready``: package, hash, register, upload, provision, wait for ready."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vastrpc._errors import DefinitionError
from vastrpc.api.v1 import common_pb2
from vastrpc.client.control import ControlClient
from vastrpc.client.router import Router
from vastrpc.deploy.spec import build_spec
from vastrpc.deploy.statcache import cached_bundle

if TYPE_CHECKING:
    from vastrpc.deployment import Deployment

__all__ = ["DeployResult", "Session", "ensure_ready"]

log = logging.getLogger("vastrpc.deploy")

_TIERS = {
    common_pb2.UPDATE_TIER_NONE: (0, "nothing changed — connected to the running workers"),
    common_pb2.UPDATE_TIER_SETTINGS: (1, "autoscaling settings changed — applied in place"),
    common_pb2.UPDATE_TIER_CODE: (2, "code changed — workers load the new bundle"),
    common_pb2.UPDATE_TIER_ENVIRONMENT: (3, "environment changed — workers restart into it"),
    common_pb2.UPDATE_TIER_NEW_ENDPOINT: (4, "new endpoint — fresh workers"),
}


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


def validate(app: Deployment) -> None:
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


async def ensure_ready(app: Deployment, session: Session | None) -> Session:
    """Bring ``app`` up on the control service and return a session connected to its ready workers."""
    started = time.perf_counter()
    validate(app)
    config = app.client_config()
    if session is not None and session.control is None:
        return session  # served in-process by vastrpc.testing: nothing to deploy
    control = session.control if session is not None and session.control is not None else None
    control = control or await ControlClient.connect(config)
    router: Router | None = None
    try:
        assert app.module_file is not None
        # The stat cache answers "did anything change?" without reading a file; the
        # tar itself is only built (or kept) for an upload.
        bundle = await asyncio.to_thread(
            cached_bundle,
            app.module_file,
            copies=app.image_spec.copies,
            cache_dir=config.home / "cache" / "bundles",
        )
        log.info(
            "package: %s — %d files, %d bytes, module %s%s",
            app.name,
            len(bundle.files),
            bundle.size,
            bundle.module,
            " (unchanged, from stat cache)" if bundle.from_cache else "",
        )
        spec = build_spec(app, bundle, control.api_key)
        log.info(
            "hash: bundle sha256 %s (code %.12s, environment %.12s)",
            bundle.digest,
            spec.digests.code,
            spec.digests.environment,
        )
        reg = await control.register(spec)
        tier, words = _TIERS.get(reg.tier, (-1, "unknown"))
        log.info(
            "register: %s:%s → endpoint %s revision %s; tier %d: %s",
            app.name,
            app.tag,
            reg.endpoint_id,
            reg.revision_id,
            tier,
            words,
        )
        if reg.upload_required:
            # Reading the files again (a cache hit) blocks: keep it off the event loop.
            data = await asyncio.to_thread(lambda: bundle.data)
            up = await control.upload(bundle.digest, data)
            log.info("upload: %d bytes streamed; the control service verified sha256 %.12s", up.size, up.digest)
        else:
            log.info("upload: skipped — the control service already holds %.12s", bundle.digest)
        prov = await control.provision(reg.endpoint_id, reg.revision_id)
        log.info("provision: endpoint %s, %d worker(s) started", reg.endpoint_id, prov.workers_started)
        if session is not None and session.router.endpoint_id == reg.endpoint_id:
            router = session.router
        else:
            if session is not None:
                await session.router.close()
            router = Router(control, reg.endpoint_id, config.balancer)
        state = await router.wait_ready(reg.revision_id, config.ready_timeout)
    except BaseException:
        if router is not None and (session is None or router is not session.router):
            await router.close()
        if session is None:
            await control.close()
        raise
    ready = sum(1 for w in state.workers if w.state == common_pb2.WORKER_STATE_READY)
    seconds = time.perf_counter() - started
    log.info("ready: %d worker(s) serve revision %s after %.2fs", ready, reg.revision_id, seconds)
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
    )
    return Session(asyncio.get_running_loop(), control, router, result)
