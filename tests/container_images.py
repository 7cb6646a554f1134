"""Builds the container tests' images locally, once (no registry is reachable): a Debian bookworm base and a variant.

``localhost/vastrpc-test:one`` is ``debootstrap --variant=minbase --include=python3 bookworm``
(Python 3.11) imported with ``podman import``, with ``/etc/vastrpc-stage`` holding ``one``;
``localhost/vastrpc-test:two`` is the same tree with ``two`` there. Both are reused when
present; the debootstrap tree is kept under ``/var/tmp`` to build them again quickly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

IMAGE_ONE = "localhost/vastrpc-test:one"
IMAGE_TWO = "localhost/vastrpc-test:two"
MARKER = "/etc/vastrpc-stage"
ROOTFS = Path(os.environ.get("VASTRPC_TEST_ROOTFS", "/var/tmp/vastrpc-test-rootfs"))
_CONF = "[containers]\ndefault_ulimits = []\n"


def podman_problem() -> str | None:
    """Why podman cannot run containers on this host, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed (CI installs it: apt-get install podman runc debootstrap)"
    if os.geteuid() != 0:
        return "the container tests run podman as root (as CI does)"
    return None


def _env() -> dict[str, str]:
    conf = ROOTFS.parent / "vastrpc-test-containers.conf"
    conf.write_text(_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def _exists(image: str) -> bool:
    return subprocess.run(["podman", "image", "exists", image], env=_env(), check=False).returncode == 0


def _import(image: str, stage: str) -> None:
    (ROOTFS / MARKER.lstrip("/")).write_text(stage + "\n")
    tar = subprocess.Popen(["tar", "-C", str(ROOTFS), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-q", "-", image], stdin=tar.stdout, env=_env(), check=True, timeout=300)
    assert tar.wait() == 0


def ensure_images() -> tuple[str, str]:
    """(IMAGE_ONE, IMAGE_TWO), built when missing (about 45 s the first time on this host)."""
    if _exists(IMAGE_ONE) and _exists(IMAGE_TWO):
        return IMAGE_ONE, IMAGE_TWO
    if not (ROOTFS / "usr" / "bin" / "python3").exists():
        shutil.rmtree(ROOTFS, ignore_errors=True)
        if shutil.which("debootstrap") is None:
            raise RuntimeError("building the test images needs debootstrap: apt-get install debootstrap")
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(ROOTFS)],
            check=True,
            timeout=900,
            capture_output=True,
        )
    _import(IMAGE_ONE, "one")
    _import(IMAGE_TWO, "two")
    return IMAGE_ONE, IMAGE_TWO
