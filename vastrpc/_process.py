"""Process helpers shared by the SDK and the control service: is a pid alive, where this vastrpc is imported from."""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

__all__ = ["module_argv", "package_pythonpath", "pid_alive"]


def module_argv(module: str, python: str = sys.executable) -> list[str]:
    """``python -P -m module``: how vastrpc starts its own processes (control service, agents, serving).

    Plain ``-m`` puts the working directory first on the import path, so a ``vastrpc/``
    folder there (a checkout, a project's own package) would be imported instead of this
    vastrpc. ``-P`` (Python 3.11+, which vastrpc requires) leaves it off; ``PYTHONPATH`` still
    counts, and a serving process puts its bundle on the path itself.
    """
    return [python, "-P", "-m", module]


def pid_alive(pid: int) -> bool:
    """Whether a process with that pid exists (and is not a zombie of ours)."""
    if pid <= 0:
        return False
    try:
        # Reap it if it is our exited child: a zombie still answers kill(pid, 0).
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Someone else's exited child (e.g. a service that the SDK process started) stays a
    # zombie until its parent reaps it; it is gone all the same.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def package_pythonpath(environ: Mapping[str, str]) -> str | None:
    """PYTHONPATH that lets ``python -m vastrpc`` find this very vastrpc, or None when it is installed.

    A checkout used without ``pip install`` is importable here only through the caller's
    sys.path; a child started elsewhere would not find it.
    """
    root = str(Path(__file__).resolve().parents[1])
    installed = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    if root in installed:
        return None
    current = environ.get("PYTHONPATH", "")
    if root in current.split(os.pathsep):
        return None
    return os.pathsep.join(p for p in (root, current) if p)
