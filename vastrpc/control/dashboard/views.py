"""What the dashboard's ``/api/deployments`` answers: deployments, endpoints, revisions with their tiers, workers."""

from __future__ import annotations

import time
from typing import Any

from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.control.lifecycle.tiers import registered_tier
from vastrpc.control.stores.base import EndpointRow, RevisionRow, Store, WorkerRow

__all__ = ["MAX_REVISIONS", "deployments_json"]

# An endpoint's revision history shows at most this many, newest first: it grows with every deploy.
MAX_REVISIONS = 20
# What each tier means (docs/tiers.md numbers them one lower than the enum).
TIER_NAMES: dict[int, str] = {
    common_pb2.UPDATE_TIER_NONE: "nothing changed",
    common_pb2.UPDATE_TIER_SETTINGS: "settings",
    common_pb2.UPDATE_TIER_CODE: "code",
    common_pb2.UPDATE_TIER_ENVIRONMENT: "environment",
    common_pb2.UPDATE_TIER_NEW_ENDPOINT: "new endpoint",
}


def deployments_json(store: Store) -> dict[str, Any]:
    """Every deployment with its endpoints; each endpoint with its revisions and its workers that are not stopped."""
    deployments = []
    for deployment in store.list_deployments():
        endpoints = [_endpoint(store, e) for e in store.list_endpoints(deployment.id)]
        deployments.append(
            {"id": deployment.id, "name": deployment.name, "created_at": deployment.created_at, "endpoints": endpoints}
        )
    return {"now": time.time(), "deployments": deployments}


def _endpoint(store: Store, endpoint: EndpointRow) -> dict[str, Any]:
    revisions = store.list_revisions(endpoint.id)
    live = next((r for r in revisions if r.id == endpoint.live_revision_id), None)
    spec = control_pb2.DeploymentSpec.FromString(live.spec) if live is not None else control_pb2.DeploymentSpec()
    workers = store.list_workers(endpoint_id=endpoint.id, exclude_states=("stopped",))
    return {
        "id": endpoint.id,
        "tag": endpoint.tag,
        "state": endpoint.state,
        "live_revision_id": endpoint.live_revision_id or "",
        "desired_workers": endpoint.desired_workers,
        "version_label": spec.version_label,
        "ttl": spec.ttl,
        "failure": _failure(endpoint.failure_step, endpoint.failure_message),
        "last_client_seen": endpoint.last_client_seen,
        "revisions": [
            _revision(r, registered_tier(revisions, r), r.id == endpoint.live_revision_id)
            for r in reversed(revisions[-MAX_REVISIONS:])
        ],
        "revision_count": len(revisions),
        "workers": [_worker(w) for w in sorted(workers, key=lambda w: w.created_at)],
    }


def _revision(revision: RevisionRow, tier: int, live: bool) -> dict[str, Any]:
    return {
        "id": revision.id,
        "created_at": revision.created_at,
        # As docs/tiers.md numbers them: 0 nothing changed ... 4 new endpoint; None unknown.
        "tier": tier - 1 if tier else None,
        "tier_name": TIER_NAMES.get(tier, "unknown"),
        "bundle": revision.bundle_digest[:12],
        "live": live,
    }


def _worker(worker: WorkerRow) -> dict[str, Any]:
    host = worker.address.rsplit(":", 1)[0].strip("[]") if worker.address else ""
    return {
        "id": worker.id,
        "state": worker.state,
        "revision_id": worker.revision_id,
        "score": worker.score,
        "capacity": worker.capacity,
        "address": worker.address,
        "host": host,
        "gpus": list(worker.gpu_indices()),
        "pid": worker.pid,
        "calls_in_flight": worker.calls_in_flight,
        "calls_queued": worker.calls_queued,
        "last_heartbeat": worker.last_heartbeat,
        "started_at": worker.created_at,
        "failure": _failure(worker.failure_step, worker.failure_message),
    }


def _failure(step: str, message: str) -> dict[str, str] | None:
    return {"step": step, "message": message} if step or message else None
