"""What of an environment workers and serving processes inherit (an allow-list); keeping their memory from peers."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "ENV_SPARE_SERVING",
    "INHERITED",
    "INHERITED_PREFIXES",
    "SERVING_EXTRA",
    "fits_spare",
    "inherited_environ",
    "make_undumpable",
    "serving_environ",
    "without_bundle",
]

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

# "0" in a worker agent's environment: it starts no serving process ahead for its next
# revision (``vastrpc.serve.standby``); a control service run with ``--no-spare-agent`` sets it.
ENV_SPARE_SERVING = "VASTRPC_SPARE_SERVING"

_PR_SET_DUMPABLE = 4


def inherited_environ(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The variables of ``environ`` a worker inherits: ``INHERITED``, ``LC_*`` and the names in ``extra``."""
    wanted = INHERITED.union(extra)
    return {k: v for k, v in environ.items() if k in wanted or k.startswith(INHERITED_PREFIXES)}


def serving_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The base environment of a serving process, before its deployment's: what it takes of the agent's.

    The allow-list of the agent's own environment and vastrpc's path, nothing else: not the
    token, the TLS files (the serving process gets its own in its config) or VASTRPC_HOME.
    """
    env = inherited_environ(os.environ if environ is None else environ, SERVING_EXTRA)
    # glibc gives every allocation over 32 MiB fresh pages and returns freed ones at once, so
    # each large argument or result pays page faults again (PERFORMANCE-NOTES: 66 ms → 12 ms
    # for 100 MB with these). A deployment's own env vars override them.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 << 20))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(128 << 20))
    return env


# What an interpreter, its C library and the loader read from the environment as they start
# (locale, time zone, temporary folder, PYTHON*, LD_*, MALLOC_*): a pre-started serving
# process cannot take a deployment's values of them later.
_READ_AT_START = frozenset({"LANG", "LANGUAGE", "TZ", "TMPDIR"})
_READ_AT_START_PREFIXES = ("PYTHON", "LD_", "MALLOC_", "LC_")


def fits_spare(env: Mapping[str, str], started: Mapping[str, str], bundle_dir: Path | str) -> bool:
    """Whether a serving process started with ``started`` can serve with ``env`` by applying it.

    ``started`` is what a waiting serving process began with: a spare agent's base
    ``serving_environ``, or the environment of the revision its agent serves now less that
    revision's own parts (``without_bundle``). True when ``env`` differs from it only in what
    is read after the start: the same ``PYTHONPATH`` once the revision's folder is left out
    (the serving process puts that folder first itself) — so the same pip packages' folder —
    and no ``LD_*``, ``PYTHON*``, ``MALLOC_*``, locale or time zone of its own.
    """

    def at_start(environ: Mapping[str, str]) -> dict[str, str]:
        return {
            k: v
            for k, v in environ.items()
            if (k in _READ_AT_START or k.startswith(_READ_AT_START_PREFIXES)) and k != "PYTHONPATH"
        }

    path = without_bundle(env, bundle_dir).get("PYTHONPATH", "")
    return path == started.get("PYTHONPATH", "") and at_start(env) == at_start(started)


def without_bundle(env: Mapping[str, str], bundle_dir: Path | str) -> dict[str, str]:
    """``env`` with the revision's folder ``bundle_dir`` left out of its ``PYTHONPATH`` (dropped when it empties)."""
    out = dict(env)
    if "PYTHONPATH" not in env:
        return out
    parts = [p for p in env["PYTHONPATH"].split(os.pathsep) if p != str(bundle_dir)]
    if parts:
        out["PYTHONPATH"] = os.pathsep.join(parts)
    else:
        out.pop("PYTHONPATH", None)
    return out


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
