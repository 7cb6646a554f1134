"""Files and folders vastrpc keeps to its own user: folders 0700, files 0600, and a check of the home folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["exposed_home", "open_private_log", "private_file", "private_folder"]


def private_folder(path: Path) -> Path:
    """``path`` and its missing parents made 0700; an existing one of vastrpc's own is tightened to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask, and an older vastrpc made it 0755
    return path


def private_file(path: Path) -> Path:
    """``path`` created empty when missing, and 0600 either way (before anything secret is written to it)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    return path


def open_private_log(path: Path) -> BinaryIO:
    """``path`` opened for appending, created 0600 (an older one is tightened to 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def exposed_home(home: Path) -> str | None:
    """A warning when ``home`` exists and other users may enter it; None when it is private.

    vastrpc creates the home 0700 and what it puts there private, but it does not change
    the mode of a folder someone made before: it says so, and what to run.
    """
    try:
        mode = stat.S_IMODE(home.stat().st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"the vastrpc home {home} is open to other users (mode {mode:o}): files in it that an older "
        f"vastrpc or another program made readable (state, bundles, worker logs) are exposed to them; "
        f"run: chmod 700 {home}"
    )
