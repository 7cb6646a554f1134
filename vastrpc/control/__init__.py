"""The control service: the gRPC servicer, the endpoint lifecycle, and its three ports.

The ports, each a package holding its interface (``base``) beside its implementations:
``stores`` (state), ``bundles`` (uploaded bundles) and ``providers`` (where workers run).
``lifecycle`` holds what the service decides (tiers, rollouts, autoscaling, TTL,
leadership); ``service`` speaks the protocol; ``server`` runs the process; ``backends``
picks each port's implementation from the configuration.
"""

from vastrpc.control.bundles import BlobStore, LocalBlobStore
from vastrpc.control.providers import LocalProcessProvider, Provider
from vastrpc.control.server import serve
from vastrpc.control.service import ControlService
from vastrpc.control.stores import SqliteStore, Store

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
