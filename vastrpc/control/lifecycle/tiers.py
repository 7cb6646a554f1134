"""Where update tiers are decided: a new revision's digests against the live revision's."""

from __future__ import annotations

from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.control.stores.base import RevisionRow

__all__ = ["classify", "keep_bundle", "registered_tier", "same_spec", "same_workload"]


def classify(live: RevisionRow | None, digests: control_pb2.RevisionDigests) -> int:
    """The UpdateTier of a revision with ``digests`` over ``live`` (None: no live revision, or torn down).

    The digests are computed by the client (``vastrpc.deploy.spec``); the first that differs,
    in this order, decides: environment (tier 3), code (tier 2), settings (tier 1). The bundle
    digest itself is not compared: the code digest covers the bundle's files, except the
    values of the deployment file's in-place settings (``vastrpc.deploy.settings``), so a
    file that differs only there is a settings change.
    """
    if live is None:
        return common_pb2.UPDATE_TIER_NEW_ENDPOINT
    if live.environment_digest != digests.environment:
        return common_pb2.UPDATE_TIER_ENVIRONMENT
    if live.code_digest != digests.code:
        return common_pb2.UPDATE_TIER_CODE
    if live.autoscaling_digest != digests.autoscaling:
        return common_pb2.UPDATE_TIER_SETTINGS
    return common_pb2.UPDATE_TIER_NONE


def keep_bundle(spec: control_pb2.DeploymentSpec, live: RevisionRow) -> None:
    """Point ``spec`` at the live revision's bundle (a tier 0 or 1 registration keeps what workers run)."""
    spec.digests.bundle = live.bundle_digest
    spec.bundle_size = control_pb2.DeploymentSpec.FromString(live.spec).bundle_size


def same_workload(live: RevisionRow, revision: RevisionRow) -> bool:
    """Whether two revisions run the same bundle, code and environment (so only settings differ)."""
    return (
        live.bundle_digest == revision.bundle_digest
        and live.code_digest == revision.code_digest
        and live.environment_digest == revision.environment_digest
    )


def same_spec(stored: bytes, spec: control_pb2.DeploymentSpec) -> bool:
    """Whether two specs ask for the same thing (sealed secrets differ by their random nonces; their digests do not)."""
    a, b = control_pb2.DeploymentSpec.FromString(stored), control_pb2.DeploymentSpec()
    b.CopyFrom(spec)
    if set(a.image.sealed_secrets) != set(b.image.sealed_secrets):
        return False  # e.g. a torn-down revision whose secrets were forgotten
    for message in (a, b):
        message.image.ClearField("sealed_secrets")
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def registered_tier(revisions: list[RevisionRow], revision: RevisionRow) -> int:
    """The UpdateTier ``revision`` was registered with; for one stored before tiers were, what the digests tell.

    Args:
        revisions: The endpoint's revisions, oldest first (``Store.list_revisions``).
        revision: One of them.
    """
    if revision.tier:
        return revision.tier
    ids = [r.id for r in revisions]
    index = ids.index(revision.id) if revision.id in ids else -1
    if index <= 0:
        return common_pb2.UPDATE_TIER_NEW_ENDPOINT if index == 0 else common_pb2.UPDATE_TIER_UNSPECIFIED
    before = revisions[index - 1]
    if before.environment_digest != revision.environment_digest:
        return common_pb2.UPDATE_TIER_ENVIRONMENT
    if before.code_digest != revision.code_digest or before.bundle_digest != revision.bundle_digest:
        return common_pb2.UPDATE_TIER_CODE
    if before.autoscaling_digest != revision.autoscaling_digest:
        return common_pb2.UPDATE_TIER_SETTINGS
    # Nothing changed yet a revision was added: the same spec registered after a teardown.
    return common_pb2.UPDATE_TIER_NEW_ENDPOINT
