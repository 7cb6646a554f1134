"""vastrpc's runtime for an image's Python: which CPython the image has, and vastrpc's dependencies built for it.

A serving process in a container imports vastrpc from the host (mounted read-only); its
dependencies (grpcio, protobuf, cryptography: compiled for one CPython version) must match
the image's interpreter. ``probe`` asks the image once (cached by image id); for the host's
version the host's own site directories are mounted, for another the agent installs
vastrpc's dependencies at the versions the host runs, as wheels for the image's version
and platform, into a folder cached by (Python version, platform, pins) that every worker
on the host shares (``runtime_site``; built in a temporary folder and renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from vastrpc._errors import DeploymentError
from vastrpc.serve.container import ContainerEngine
from vastrpc.serve.install import Log, PythonTarget, ensure_pip_env

__all__ = ["MIN_PYTHON", "probe", "runtime_requirements", "runtime_site"]

MIN_PYTHON = (3, 11)
# Installers the agent uses, never the serving process: not part of the container's runtime.
_AGENT_ONLY = {"uv"}
_PROBE = (
    "import json, platform, sys; "
    "print(json.dumps([list(sys.version_info[:2]), platform.machine(), platform.libc_ver()]))"
)


def _target(image: str, python: str, answer: list[Any]) -> PythonTarget | None:
    """The probe's answer as the Python to install for; None for the host's version."""
    (major, minor), machine, (libc, libc_version) = answer
    version = (int(major), int(minor))
    if version < MIN_PYTHON:
        raise DeploymentError(
            f"the image {image!r} has Python {major}.{minor} at {python}; vastrpc needs CPython "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer in the image: use an image with a newer python3 (e.g. Debian "
            "bookworm or later, python:3.12-slim), or image.venv(...) pointing at one",
            step="image",
        )
    if version == sys.version_info[:2]:
        return None
    glibc = tuple(int(p) for p in re.findall(r"\d+", str(libc_version))[:2])
    if libc != "glibc" or len(glibc) < 2 or glibc < (2, 17):
        raise DeploymentError(
            f"the image {image!r} has Python {major}.{minor} on {libc or 'a libc other than glibc'} {libc_version}; "
            "vastrpc installs its runtime for another Python than the host's as manylinux wheels, which need "
            "glibc 2.17 or newer: use a glibc-based image (Debian, Ubuntu, python:3.X-slim) or one whose "
            f"Python is the host's {sys.version_info[0]}.{sys.version_info[1]}",
            step="image",
        )
    manylinux = "manylinux_2_28" if glibc >= (2, 28) else "manylinux_2_17"
    return PythonTarget(version=version, machine=str(machine), manylinux=manylinux)


async def probe(
    engine: ContainerEngine,
    image: str,
    image_id: str,
    python: str,
    *,
    cache_dir: Path,
    env: Mapping[str, str],
    worker_id: str,
) -> PythonTarget | None:
    """The image's Python, asked once per (image id, interpreter) and cached in ``cache_dir``.

    Args:
        engine: The container engine.
        image: The image's name (for messages).
        image_id: Its id in the engine: the cache key, with ``python``.
        python: The interpreter the serving process will run (``python3`` or a venv's).
        cache_dir: Where the answers are kept.
        env: The engine command's environment.
        worker_id: Labels the probe's container.

    Returns:
        The Python to install vastrpc's runtime for, or None when it is the host's version.

    Raises:
        DeploymentError: (step ``image``) the interpreter cannot run, is older than 3.11,
            or (another version than the host's) does not run on glibc.
    """
    key = hashlib.sha256(json.dumps([image_id, python]).encode()).hexdigest()
    answer_file = cache_dir / f"python-{key}.json"
    try:
        answer = _parse(answer_file.read_text())
    except OSError:
        answer = None
    if answer is None:
        name = f"vastrpc-{worker_id}-probe-{key[:8]}"
        argv = engine.run_options(name, worker_id)[1:]  # the engine's own argv, without its command
        code, out = await engine.run_command(*argv, image, python, "-c", _PROBE, env=env)
        lines = out.strip().splitlines()
        answer = _parse(lines[-1]) if code == 0 and lines else None
        if answer is None:
            raise DeploymentError(
                f"cannot run {python} in the image {image!r} (exit code {code}): the image needs a CPython "
                f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer as python3, or at image.venv(...)'s path",
                step="image",
                log_tail="\n".join(lines[-20:]),
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".probe-")
        with os.fdopen(fd, "w") as out_file:
            json.dump(answer, out_file)
        os.replace(tmp, answer_file)  # a whole answer or none, whoever writes it
    return _target(image, python, answer)


def _parse(line: str) -> list[Any] | None:
    try:
        answer = json.loads(line)
    except ValueError:
        return None
    return answer if isinstance(answer, list) and len(answer) == 3 else None


def runtime_requirements() -> list[str]:
    """vastrpc's own dependencies, pinned at the versions installed on this host (extras and installers left out)."""
    try:
        requires = metadata.requires("vastrpc") or []
    except metadata.PackageNotFoundError:
        raise DeploymentError(
            "vastrpc is not installed as a distribution on this host (no package metadata), so its dependencies "
            "cannot be installed for the image's Python: install vastrpc (pip install vastrpc, or -e for a checkout)",
            step="image",
        ) from None
    pins = []
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        match = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        if match is None or match.group(0).lower() in _AGENT_ONLY:
            continue
        name = match.group(0)
        pin = f"{name}=={metadata.version(name)}"
        pins.append(f"{pin}; {marker.strip()}" if marker.strip() else pin)
    return sorted(pins)


def runtime_site(target: PythonTarget, cache_dir: Path, *, log: Log, timeout: float = 600) -> Path:
    """vastrpc's dependencies installed for ``target``: a folder shared by the host's workers, built once.

    Blocking: run it in a thread.

    Raises:
        DeploymentError: (step ``image``) the install failed, e.g. a dependency has no
            wheel for that Python version and platform.
    """
    pins = runtime_requirements()
    log(f"vastrpc's runtime for Python {target.label} ({target.uv_platform}): {' '.join(pins)}")
    try:
        site = ensure_pip_env(pins, cache_dir, target=target, log=log, timeout=timeout)
    except DeploymentError as exc:
        raise DeploymentError(
            f"cannot prepare vastrpc's runtime for the image's Python {target.label}: {exc.reason}",
            step="image",
            log_tail=exc.log_tail,
        ) from None
    assert site is not None  # vastrpc has dependencies
    return site
