"""What of an environment a worker inherits (a short allow-list), and keeping a process's memory from its peers."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterable, Mapping

__all__ = ["INHERITED", "INHERITED_PREFIXES", "SERVING_EXTRA", "inherited_environ", "make_undumpable"]

# What a worker agent and its serving processes take from the environment they are started
# from: where programs and libraries are, language and time zone, proxies and CA bundles, and
# which GPUs are visible. Nothing else: the caller's and the control service's variables
# (credentials such as AWS_SECRET_ACCESS_KEY or HF_TOKEN, VASTRPC_HOME, VASTRPC_API_KEY) never
# reach a worker. A deployment that needs a value declares it (env=, secrets=).
INHERITED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
    }
)
INHERITED_PREFIXES = ("LC_",)
# What a serving process takes from its agent besides: vastrpc's path and unbuffered output,
# and where it runs (the address it serves on, its Ray node), for the deployment's own code.
SERVING_EXTRA = ("PYTHONPATH", "PYTHONUNBUFFERED", "VASTRPC_WORKER_HOST", "VASTRPC_RAY_NODE_ID")

_PR_SET_DUMPABLE = 4


def inherited_environ(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The variables of ``environ`` a worker inherits: ``INHERITED``, ``LC_*`` and the names in ``extra``."""
    wanted = INHERITED.union(extra)
    return {k: v for k, v in environ.items() if k in wanted or k.startswith(INHERITED_PREFIXES)}


def make_undumpable() -> bool:
    """Keep other processes of this user out of this one's ``/proc/<pid>/environ``, ``mem`` and ``fd`` (Linux).

    A worker agent holds its worker token and a serving process its deployment's secrets;
    deployments' code may run as the same user (one worker user for all, or the same user as
    the service where it cannot isolate). ``PR_SET_DUMPABLE=0`` makes those files root's
    and refuses ptrace to the same user; the process still reads its own. Returns whether
    it took effect (False off Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return bool(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
