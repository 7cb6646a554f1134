"""Opens the control service's backends (state store, bundle store, worker provider) named by its ControlConfig."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vastrpc._errors import DefinitionError
from vastrpc.config import ControlConfig
from vastrpc.control.blobs import BlobStore, LocalBlobStore
from vastrpc.control.provider import LocalProcessProvider, Provider
from vastrpc.control.sqlitestore import SqliteStore
from vastrpc.control.store import Store

__all__ = ["open_blobs", "open_provider", "open_store"]


def open_store(config: ControlConfig) -> Store:
    """The state store: SQLite under ``home`` unless ``config.store_url`` names another.

    ``postgresql://user:password@host:port/dbname`` is a PostgreSQL database (migrated at
    once) that several control services may share.

    Raises:
        DefinitionError: The URL's scheme is not one vastrpc knows.
        StoreError: The PostgreSQL database cannot be reached, or psycopg is not installed.
    """
    url = config.store_url
    if not url:
        return SqliteStore(Path(config.home) / "state.db")
    if url.startswith(("postgresql://", "postgres://")):
        from vastrpc.control.pgstore import PgStore  # psycopg only where PostgreSQL is used

        return PgStore(url)
    raise DefinitionError(
        f"unsupported state store {url!r}: use postgresql://user@host/dbname, "
        "or leave it unset for SQLite under the home folder"
    )


def open_blobs(config: ControlConfig) -> BlobStore:
    """The bundle store: ``home/bundles`` unless ``config.blob_url`` names another.

    ``s3://bucket/prefix`` (at ``config.s3_endpoint_url`` for an S3-compatible store) is
    checked at once: a missing bucket or refused credentials stop the service at startup.

    Raises:
        DefinitionError: The URL's scheme is not one vastrpc knows, or its bucket cannot be used.
    """
    url = config.blob_url
    if url and url.startswith("s3://"):
        from vastrpc.control.s3blobs import S3BlobStore  # boto3 only where S3 is used

        s3 = S3BlobStore.from_url(url, endpoint_url=config.s3_endpoint_url)
        s3.check()
        return s3
    if config.s3_endpoint_url:
        raise DefinitionError("--s3-endpoint-url applies to an S3 bundle store: add --blobs s3://bucket/prefix")
    if not url:
        return LocalBlobStore(Path(config.home) / "bundles")
    raise DefinitionError(
        f"unsupported bundle store {url!r}: use s3://bucket/prefix, or leave it unset for the home folder's bundles/"
    )


def open_provider(config: ControlConfig, *, worker_command: Sequence[str] | None = None) -> Provider:
    """The worker provider named by ``config.provider``.

    ``"ray"`` places workers on the Ray cluster at ``config.ray_address``; the service joins
    it at the first worker it starts.

    Raises:
        DefinitionError: The provider is not one vastrpc knows, ``ray`` lacks its address,
            or Ray is not installed.
    """
    if config.provider == "local":
        if config.ray_address:
            raise DefinitionError("--ray-address applies to the Ray provider: add --provider ray")
        return LocalProcessProvider(Path(config.home), argv_prefix=worker_command, worker_tls=config.tls)
    if config.provider == "ray":
        if not config.ray_address:
            raise DefinitionError(
                "--provider ray needs --ray-address HOST:PORT: the address `ray start --head` printed"
            )
        from vastrpc.control.ray_provider import RayProvider  # ray only where it is used

        return RayProvider(
            config.ray_address,
            Path(config.home),
            control_host=config.host,
            argv_prefix=worker_command,
            worker_tls=config.tls,
        )
    raise DefinitionError(f"unknown provider {config.provider!r}: use 'local' or 'ray'")
