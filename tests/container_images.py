"""Builds the container tests' images locally, once (no registry is reachable): Debian bookworm, a variant, and trixie.

``localhost/vastrpc-test:one`` is ``debootstrap --variant=minbase --include=python3 bookworm``
(Python 3.11) imported with ``podman import``, with ``/etc/vastrpc-stage`` holding ``one``;
``localhost/vastrpc-test:two`` is the same tree with ``two`` there.
``localhost/vastrpc-test:trixie`` is the same for Debian trixie (Python 3.13, another version
than the host's), with ``trixie`` there. All are reused when present; the debootstrap trees
are kept under ``/var/tmp`` to build them again quickly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

IMAGE_ONE = "localhost/vastrpc-test:one"
IMAGE_TWO = "localhost/vastrpc-test:two"
IMAGE_TRIXIE = "localhost/vastrpc-test:trixie"
MARKER = "/etc/vastrpc-stage"
ROOTFS = Path(os.environ.get("VASTRPC_TEST_ROOTFS", "/var/tmp/vastrpc-test-rootfs"))
ROOTFS_TRIXIE = ROOTFS.with_name(ROOTFS.name + "-trixie")
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


def _import(rootfs: Path, image: str, stage: str) -> None:
    (rootfs / MARKER.lstrip("/")).write_text(stage + "\n")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-q", "-", image], stdin=tar.stdout, env=_env(), check=True, timeout=300)
    assert tar.wait() == 0


def _debootstrap(suite: str, rootfs: Path) -> None:
    if (rootfs / "usr" / "bin" / "python3").exists():
        return
    shutil.rmtree(rootfs, ignore_errors=True)
    if shutil.which("debootstrap") is None:
        raise RuntimeError("building the test images needs debootstrap: apt-get install debootstrap")
    subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3", suite, str(rootfs)],
        check=True,
        timeout=900,
        capture_output=True,
    )


def ensure_images() -> tuple[str, str]:
    """(IMAGE_ONE, IMAGE_TWO), built when missing (about 45 s the first time on this host)."""
    if _exists(IMAGE_ONE) and _exists(IMAGE_TWO):
        return IMAGE_ONE, IMAGE_TWO
    _debootstrap("bookworm", ROOTFS)
    _import(ROOTFS, IMAGE_ONE, "one")
    _import(ROOTFS, IMAGE_TWO, "two")
    return IMAGE_ONE, IMAGE_TWO


def ensure_trixie_image() -> str:
    """IMAGE_TRIXIE (Python 3.13), built when missing (about 45 s the first time on this host)."""
    if not _exists(IMAGE_TRIXIE):
        _debootstrap("trixie", ROOTFS_TRIXIE)
        _import(ROOTFS_TRIXIE, IMAGE_TRIXIE, "trixie")
    return IMAGE_TRIXIE
