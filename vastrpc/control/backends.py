"""Opens the control service's backends (state store, bundle store, worker provider) named by its ControlConfig."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vastrpc._errors import DefinitionError
from vastrpc.config import ControlConfig
from vastrpc.control.blobs import BlobStore, LocalBlobStore
from vastrpc.control.provider import LocalProcessProvider, Provider
from vastrpc.control.store import SqliteStore, Store

__all__ = ["open_blobs", "open_provider", "open_store"]


def open_store(config: ControlConfig) -> Store:
    """The state store: SQLite under ``home`` unless ``config.store_url`` names another.

    Raises:
        DefinitionError: The URL's scheme is not one vastrpc knows.
    """
    url = config.store_url
    if not url:
        return SqliteStore(Path(config.home) / "state.db")
    raise DefinitionError(f"unsupported state store {url!r}: leave it unset for SQLite under the home folder")


def open_blobs(config: ControlConfig) -> BlobStore:
    """The bundle store: ``home/bundles`` unless ``config.blob_url`` names another.

    Raises:
        DefinitionError: The URL's scheme is not one vastrpc knows.
    """
    url = config.blob_url
    if not url:
        return LocalBlobStore(Path(config.home) / "bundles")
    raise DefinitionError(f"unsupported bundle store {url!r}: leave it unset for the home folder's bundles/")


def open_provider(config: ControlConfig, *, worker_command: Sequence[str] | None = None) -> Provider:
    """The worker provider named by ``config.provider``.

    Raises:
        DefinitionError: The provider is not one vastrpc knows.
    """
    if config.provider == "local":
        return LocalProcessProvider(Path(config.home), argv_prefix=worker_command, worker_tls=config.tls)
    raise DefinitionError(f"unknown provider {config.provider!r}: use 'local'")
