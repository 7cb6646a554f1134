"""Worker providers: where a worker's agent and serving processes run.

``base`` is the port (the ``Provider`` interface); ``local`` (processes on this host, the
embedded default) and ``ray`` (Ray actors on a cluster, placed by ``placement`` from the
deployment's search filters) implement it. ``vastrpc.control.backends`` picks one from the
configuration.
"""

from vastrpc.control.providers.base import ExitCallback, Provider, start_options
from vastrpc.control.providers.local import LocalProcessProvider

__all__ = ["ExitCallback", "LocalProcessProvider", "Provider", "start_options"]
