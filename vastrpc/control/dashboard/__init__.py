"""The control service's live web page: deployments, workers, call charts and worker logs, behind the API key.

``web`` answers HTTP (the page from ``static/``, the JSON API, log streams), ``views`` turns
the state store into what ``/api/deployments`` shows, and ``stats`` samples the calls the
workers' heartbeats report into the charts' ring buffers.
"""

from vastrpc.control.dashboard.stats import CallRates
from vastrpc.control.dashboard.web import Dashboard, start_dashboard

__all__ = ["CallRates", "Dashboard", "start_dashboard"]
