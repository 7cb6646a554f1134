"""State stores: where the control service keeps deployments, endpoints, revisions and workers.

``base`` is the port (the ``Store`` interface and its rows); ``sqlite`` (one service, the
embedded default) and ``postgres`` (several services sharing one database) implement it.
``vastrpc.control.backends`` picks one from the configuration.
"""

from vastrpc.control.stores.base import (
    ACTIVE_WORKER_STATES,
    DeploymentRow,
    EndpointRow,
    LeaderLock,
    RevisionRow,
    Store,
    StoreError,
    WorkerRow,
)
from vastrpc.control.stores.sqlite import SqliteStore

__all__ = [
    "ACTIVE_WORKER_STATES",
    "DeploymentRow",
    "EndpointRow",
    "LeaderLock",
    "RevisionRow",
    "SqliteStore",
    "Store",
    "StoreError",
    "WorkerRow",
]
