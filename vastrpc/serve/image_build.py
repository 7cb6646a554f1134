"""Build steps (``apt_get``, ``run_script``, ``run_cmd``) on a container provider: a derived image, cached.

On a container provider the steps run inside the image, not on the host: the agent runs them
in one container of the base image, as root, with the bundle (its working directory) and the
pip environment mounted read-only, then commits that container to a local image tagged by a
digest of (base image id, interpreter, steps, env vars, pip environment). The serving
processes run in the derived image; the next worker, or the next deploy with the same steps,
finds the tag and builds nothing. A lock file per tag makes two workers on one host build
it once; the tag appears only when the commit completes. Env vars and secrets reach the
steps on the container's stdin, so none of them is written into the derived image.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import hashlib
import json
import shlex
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vastrpc._errors import DeploymentError
from vastrpc.serve.container import WORKER_LABEL, ContainerEngine
from vastrpc.serve.install import Log, lock_until

__all__ = ["BUILD_BOOTSTRAP", "BuildJob", "build_steps", "derived_image"]

REPOSITORY = "localhost/vastrpc-built"
# Where the bundle and the pip environment appear during a build (empty folders in the derived image).
_BUNDLE_MOUNT = "/vastrpc-build/bundle"
_SITE_MOUNT = "/vastrpc-build/site"
_TAIL_LINES = 40
# Bump when what a build does changes, so older derived images are not reused.
_FORMAT = 1

# Run as ``python -c BUILD_BOOTSTRAP`` with the job (env, working directory, steps) as JSON on
# stdin; the steps' output goes to stderr (the worker log), the outcome to stdout.
BUILD_BOOTSTRAP = """\
import json, os, subprocess, sys
events = os.dup(1)
os.dup2(2, 1)
job = json.loads(sys.stdin.read())
env = dict(os.environ, **job["env"])
steps = job["steps"]
for index, (label, script) in enumerate(steps, 1):
    print(f"build step {index} of {len(steps)}: {label}", flush=True)
    code = subprocess.run(["/bin/sh", "-c", script], cwd=job["cwd"], env=env, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        os.write(events, (json.dumps({"failed": index, "code": code}) + "\\n").encode())
        sys.exit(1)
os.write(events, b'{"done": true}\\n')
"""

_APT = (
    "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {packages}"
    " && rm -rf /var/lib/apt/lists/*"
)


def build_steps(apt_packages: Sequence[str], commands: Sequence[str]) -> list[tuple[str, str]]:
    """The image's build steps as (label, shell script): apt packages first, then each command, as on the host."""
    steps = []
    packages = sorted({p.strip() for p in apt_packages if p.strip()})
    if packages:
        steps.append((f"apt_get {' '.join(packages)}", _APT.format(packages=shlex.join(packages))))
    for index, command in enumerate(commands, 1):
        steps.append((f"startup command {index} of {len(commands)} ({command!r})", command))
    return steps


@dataclass(frozen=True)
class BuildJob:
    """What to build: the base image, its interpreter, the steps and what they see.

    Attributes:
        base: The base image's name.
        base_id: Its id in the engine (part of the derived image's tag).
        python: The image's interpreter that runs ``BUILD_BOOTSTRAP``.
        steps: (label, shell script) in order (``build_steps``).
        env: The deployment's env vars (part of the tag).
        secrets: Its secrets (seen by the steps; not part of the tag, never written to the image).
        bundle: The bundle folder, mounted read-only as the steps' working directory.
        site: The deployment's pip environment, mounted read-only on PYTHONPATH; None: none.
        timeout: Seconds allowed for the build (waiting on another worker's build included).
    """

    base: str
    base_id: str
    python: str
    steps: list[tuple[str, str]]
    env: Mapping[str, str]
    secrets: Mapping[str, str]
    bundle: Path
    site: Path | None
    timeout: float

    def tag(self) -> str:
        """The derived image's name: a digest of everything that decides its contents."""
        payload = {
            "format": _FORMAT,
            "base": self.base_id,
            "python": self.python,
            "steps": self.steps,
            "env": sorted(self.env.items()),
            "pip": self.site.parent.name if self.site is not None else "",
        }
        return f"{REPOSITORY}:{hashlib.sha256(json.dumps(payload).encode()).hexdigest()}"


async def derived_image(
    engine: ContainerEngine,
    job: BuildJob,
    *,
    lock_dir: Path,
    worker_id: str,
    env: Mapping[str, str],
    log: Log,
) -> str:
    """The image to serve in: ``job.base`` when there are no steps, else the derived image, built when missing.

    Args:
        engine: The container engine.
        job: What to build.
        lock_dir: Where the per-tag lock files live (shared by the host's workers).
        worker_id: Labels the build's container (the provider removes it if the agent dies).
        env: The engine command's environment.
        log: Receives progress and the steps' output, line by line.

    Raises:
        DeploymentError: (step ``build``) a step failed (which one, its exit code and its
            output's tail), the build timed out, or the commit failed.
    """
    if not job.steps:
        return job.base
    tag = job.tag()
    if await engine.image_id(tag, env):
        log(f"build steps: reusing {tag} (derived from {job.base} before, on this host)")
        return tag
    deadline = time.monotonic() + job.timeout
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{tag.rpartition(':')[2]}.lock", "a+b") as lock:
        waited = (
            f"timed out after {job.timeout:g} s waiting for another worker on this host to build the image "
            f"derived from {job.base}: raise image(..., startup_timeout=...)"
        )
        await asyncio.to_thread(lock_until, lock, deadline, DeploymentError(waited, step="build"))
        try:
            if await engine.image_id(tag, env):
                log(f"build steps: reusing {tag} (another worker on this host built it meanwhile)")
                return tag
            started = time.monotonic()
            log(f"build steps: deriving {tag} from {job.base} ({len(job.steps)} step(s), in a container)")
            await _build(engine, job, tag, deadline, worker_id, env, log)
            log(f"build steps: {tag} built in {time.monotonic() - started:.2f}s")
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return tag


async def _build(
    engine: ContainerEngine,
    job: BuildJob,
    tag: str,
    deadline: float,
    worker_id: str,
    env: Mapping[str, str],
    log: Log,
) -> None:
    name = f"vastrpc-{worker_id}-build-{uuid.uuid4().hex[:8]}"
    argv = [*engine.run_options(name, worker_id, remove=False), "--user", "0:0"]
    argv += ["--volume", f"{job.bundle}:{_BUNDLE_MOUNT}:ro"]
    paths = [_BUNDLE_MOUNT]
    if job.site is not None:
        argv += ["--volume", f"{job.site}:{_SITE_MOUNT}:ro"]
        paths.insert(0, _SITE_MOUNT)
    argv += [job.base, job.python, "-c", BUILD_BOOTSTRAP]
    inside = {**job.env, **job.secrets, "PYTHONPATH": ":".join(paths)}
    request = json.dumps({"env": inside, "cwd": _BUNDLE_MOUNT, "steps": job.steps}).encode()
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
        )
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                outcome = await _follow(proc, request, tail, log)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DeploymentError(
                f"the build steps in a container of {job.base} timed out after {job.timeout:g} s: make them faster "
                "or raise image(..., startup_timeout=...)",
                step="build",
                log_tail="\n".join(tail),
            ) from None
        if "failed" in outcome:
            label = job.steps[int(outcome["failed"]) - 1][0]
            raise DeploymentError(
                f"build step {outcome['failed']} of {len(job.steps)}, {label}, exited with code {outcome['code']} "
                f"in a container of {job.base}",
                step="build",
                log_tail="\n".join(tail),
            )
        if "done" not in outcome:
            raise DeploymentError(
                f"the build container of {job.base} ended with code {proc.returncode} before its steps finished "
                f"(can the image run {job.python}?)",
                step="build",
                log_tail="\n".join(tail),
            )
        await _commit(engine, job, name, tag, env)
    finally:
        await engine.remove(name, env)


async def _follow(
    proc: asyncio.subprocess.Process, request: bytes, tail: collections.deque[str], log: Log
) -> dict[str, Any]:
    """Send the job, log the steps' output, and return the outcome the bootstrap reported ({} when none)."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(request)
    with contextlib.suppress(ConnectionError):
        await proc.stdin.drain()
    proc.stdin.close()

    async def pump(stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            log(f"build: {line}")

    events, _ = await asyncio.gather(proc.stdout.read(), pump(proc.stderr))
    await proc.wait()
    lines = events.decode(errors="replace").strip().splitlines()
    try:
        outcome = json.loads(lines[-1]) if lines else {}
    except ValueError:
        outcome = {}
    return outcome if isinstance(outcome, dict) else {}


async def _commit(engine: ContainerEngine, job: BuildJob, name: str, tag: str, env: Mapping[str, str]) -> None:
    """Commit the build container to ``tag`` with the base image's user and command back (the build ran as root)."""
    code, out = await engine.run_command("image", "inspect", "--format", "{{json .Config}}", job.base, env=env)
    try:
        config = json.loads(out) if code == 0 else {}
    except ValueError:
        config = {}
    config = config if isinstance(config, dict) else {}
    changes = [
        f"USER {config.get('User') or 'root'}",
        f"CMD {json.dumps(config.get('Cmd') or [])}",
        f"LABEL {WORKER_LABEL}=",
        f"LABEL vastrpc.derived-from={job.base_id}",
    ]
    options = [arg for change in changes for arg in ("--change", change)]
    quiet = ["-q"] if engine.engine == "podman" else []
    code, out = await engine.run_command("commit", *quiet, *options, name, tag, env=env)
    if code != 0:
        raise DeploymentError(
            f"cannot commit the build container of {job.base} to {tag} with {engine.engine}: {out.strip()[-500:]}",
            step="build",
        )
