"""Chooses the control service's backends (state store, bundle store, worker provider) from its ControlConfig.

Each port (``stores/``, ``bundles/``, ``providers/``) has one table below: a name (a URL
scheme, or a provider name) → the class that implements it, as ``module:Class``. A new
backend is one new module whose class has ``from_config(config, ...)``, and one line here.
Modules are imported only when chosen, so an optional dependency (psycopg, boto3, ray) is
needed only where its backend is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from vastrpc._errors import DefinitionError
from vastrpc.config import ControlConfig
from vastrpc.control.bundles.base import BlobStore
from vastrpc.control.providers.base import Provider
from vastrpc.control.stores.base import Store

__all__ = ["BUNDLE_STORES", "PROVIDERS", "STATE_STORES", "open_blobs", "open_provider", "open_store"]

# The URL scheme of --store ("" when unset) → its store.
STATE_STORES = {
    "": "vastrpc.control.stores.sqlite:SqliteStore",
    "postgresql": "vastrpc.control.stores.postgres:PgStore",
    "postgres": "vastrpc.control.stores.postgres:PgStore",
}
# The URL scheme of --blobs ("" when unset) → its bundle store.
BUNDLE_STORES = {
    "": "vastrpc.control.bundles.local:LocalBlobStore",
    "s3": "vastrpc.control.bundles.s3:S3BlobStore",
}
# --provider → its provider.
PROVIDERS = {
    "local": "vastrpc.control.providers.local:LocalProcessProvider",
    "ray": "vastrpc.control.providers.ray:RayProvider",
    "podman": "vastrpc.control.providers.containers:PodmanProvider",
    "docker": "vastrpc.control.providers.containers:DockerProvider",
}


def _chosen(table: dict[str, str], key: str) -> Any:
    module, _, name = table[key].partition(":")
    return getattr(importlib.import_module(module), name)


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme if sep else url


def open_store(config: ControlConfig) -> Store:
    """The state store: SQLite under ``home`` unless ``config.store_url`` names another.

    ``postgresql://user:password@host:port/dbname`` is a PostgreSQL database (migrated at
    once) that several control services may share.

    Raises:
        DefinitionError: The URL's scheme is not one vastrpc knows.
        StoreError: The PostgreSQL database cannot be reached, or psycopg is not installed.
    """
    scheme = _scheme(config.store_url or "")
    if scheme not in STATE_STORES:
        raise DefinitionError(
            f"unsupported state store {config.store_url!r}: use postgresql://user@host/dbname, "
            "or leave it unset for SQLite under the home folder"
        )
    store: Store = _chosen(STATE_STORES, scheme).from_config(config)
    return store


def open_blobs(config: ControlConfig) -> BlobStore:
    """The bundle store: ``home/bundles`` unless ``config.blob_url`` names another.

    ``s3://bucket/prefix`` (at ``config.s3_endpoint_url`` for an S3-compatible store) is
    checked at once: a missing bucket or refused credentials stop the service at startup.

    Raises:
        DefinitionError: The URL's scheme is not one vastrpc knows, or its bucket cannot be used.
    """
    scheme = _scheme(config.blob_url or "")
    if scheme not in BUNDLE_STORES:
        raise DefinitionError(
            f"unsupported bundle store {config.blob_url!r}: use s3://bucket/prefix, "
            "or leave it unset for the home folder's bundles/"
        )
    if config.s3_endpoint_url and scheme != "s3":
        raise DefinitionError("--s3-endpoint-url applies to an S3 bundle store: add --blobs s3://bucket/prefix")
    blobs: BlobStore = _chosen(BUNDLE_STORES, scheme).from_config(config)
    return blobs


def open_provider(config: ControlConfig, *, worker_command: Sequence[str] | None = None) -> Provider:
    """The worker provider named by ``config.provider``.

    ``"ray"`` places workers on the Ray cluster at ``config.ray_address``; the service joins
    it at the first worker it starts. ``"podman"`` and ``"docker"`` run each serving process in
    a container of the deployment's image.

    Raises:
        DefinitionError: The provider is not one vastrpc knows, ``ray`` lacks its address,
            Ray is not installed, or the container engine's command is missing.
    """
    if config.provider not in PROVIDERS:
        known = " or ".join(repr(name) for name in PROVIDERS)
        raise DefinitionError(f"unknown provider {config.provider!r}: use {known}")
    if config.ray_address and config.provider != "ray":
        raise DefinitionError("--ray-address applies to the Ray provider: add --provider ray")
    if config.container_runtime and config.provider != "podman":
        raise DefinitionError("--container-runtime applies to the Podman provider: add --provider podman")
    provider: Provider = _chosen(PROVIDERS, config.provider).from_config(config, worker_command=worker_command)
    return provider
