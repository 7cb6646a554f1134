"""The control service: state store, bundle store, providers, endpoint lifecycle and the gRPC servicer."""

from vastrpc.control.blobs import BlobStore, LocalBlobStore
from vastrpc.control.provider import LocalProcessProvider, Provider
from vastrpc.control.server import serve
from vastrpc.control.service import ControlService
from vastrpc.control.sqlitestore import SqliteStore
from vastrpc.control.store import Store

__all__ = [
    "BlobStore",
    "ControlService",
    "LocalBlobStore",
    "LocalProcessProvider",
    "Provider",
    "SqliteStore",
    "Store",
    "serve",
]
