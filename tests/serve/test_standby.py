"""The next serving process started ahead: a code update serves in it, with its own environment and secrets only."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.control.providers.test_workeruser import CALLER
from vastrpc._workerenv import fits_spare, serving_environ, without_bundle
from vastrpc.serve.serving import ServingProcess, prepare
from vastrpc.serve.standby import Standby

SECRET = "standby-secret-4e5f6a"
OTHER_SECRET = "other-secret-9d8c7b"

# Says what its serving process runs and sees: the code's version, its pid, its environment
# now and the one it started with.
SOURCE = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(MY_SETTING="mine-visible").secrets(MY_SECRET="SECRET_VALUE")

VERSION = {version}

@app.remote(benchmark_dataset=[dict()])
async def seen() -> dict:
    with open("/proc/self/environ", "rb") as f:
        started = f.read().decode(errors="replace")
    return dict(version=VERSION, pid=os.getpid(), environ=dict(os.environ), started=started)
"""

# Another deployment on the same control service, with a variable and a secret of its own.
OTHER = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(OTHER_SETTING="other-visible").secrets(OTHER_SECRET="SECRET_VALUE")

@app.remote(benchmark_dataset=[dict()])
async def other() -> str:
    return os.environ["OTHER_SECRET"]
"""

_AHEAD = re.compile(r"started the next revision's serving process ahead \(pid (\d+)\)")


async def _log_until(project, worker_id: str, pattern: re.Pattern[str], count: int, timeout: float = 30.0) -> str:
    """The worker's log once ``pattern`` occurs in it ``count`` times."""
    deadline = time.monotonic() + timeout
    while True:
        log = await project.logs(worker_id)
        if len(pattern.findall(log)) >= count or time.monotonic() > deadline:
            return log
        await asyncio.sleep(0.1)


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize("control_service", [{"env": CALLER}], indirect=True)
async def test_a_code_update_serves_in_the_process_started_ahead_with_only_its_own_environment(
    project, control_service
) -> None:
    other = project(OTHER.replace("SECRET_VALUE", OTHER_SECRET))
    assert await other.other() == OTHER_SECRET
    mod = project(SOURCE.replace("SECRET_VALUE", SECRET).replace("{version}", "1"))
    first = await mod.seen()
    assert first["version"] == 1
    (worker,) = await project.workers(mod.app)
    log = await _log_until(project, worker["worker_id"], _AHEAD, 1)
    ahead = int(_AHEAD.findall(log)[-1])
    assert ahead != first["pid"]

    project.rewrite(mod, SOURCE.replace("SECRET_VALUE", SECRET), version="2")
    result = await mod.app.ensure_ready()
    assert result.tier == 2
    seen = await mod.seen()
    assert seen["version"] == 2  # the new code runs
    assert seen["pid"] == ahead  # in the process started before the update
    log = await project.logs(worker["worker_id"])
    assert f"loading: in the pre-started serving process (pid {ahead})" in log
    assert log.index(f"ahead (pid {ahead})") < log.index("update in place")
    environ = seen["environ"]
    assert environ["MY_SECRET"] == SECRET and environ["MY_SETTING"] == "mine-visible"  # applied from its config
    # What it started with, waiting for its config: no secret, token or other deployment's value.
    assert SECRET not in seen["started"] and "VASTRPC_WORKER_TOKEN" not in seen["started"]
    bundle = Path(environ["PYTHONPATH"].split(os.pathsep)[0])
    assert (bundle / f"{mod.__name__}.py").read_text().count("VERSION = 2") == 1  # the new revision's folder
    for text in (repr(environ), seen["started"]):
        leaked = [v for v in (*CALLER.values(), OTHER_SECRET, "other-visible") if v in text]
        assert leaked == []
    for name in (*CALLER, "OTHER_SECRET", "OTHER_SETTING", "VASTRPC_WORKER_TOKEN", "VASTRPC_HOME"):
        assert name not in environ
    # The next one is waiting already, for the update after this one.
    log = await _log_until(project, worker["worker_id"], _AHEAD, 2)
    following = int(_AHEAD.findall(log)[-1])
    assert following not in (ahead, first["pid"]) and _alive(following)

    # A teardown stops the worker's agent, and the process waiting with it.
    client = await project._client()
    try:
        await client.teardown(mod.app.name)
    finally:
        await client.close()
    await _until(lambda: not _alive(following) and not _alive(ahead))


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize("control_service", [{"args": ["--no-spare-agent"]}], indirect=True)
async def test_no_spare_agent_starts_no_serving_process_ahead(project, control_service) -> None:
    mod = project(SOURCE.replace("SECRET_VALUE", SECRET).replace("{version}", "1"))
    first = await mod.seen()
    project.rewrite(mod, SOURCE.replace("SECRET_VALUE", SECRET), version="2")
    assert (await mod.app.ensure_ready()).tier == 2
    seen = await mod.seen()
    assert seen["version"] == 2 and seen["pid"] != first["pid"] and seen["environ"]["MY_SECRET"] == SECRET
    (worker,) = await project.workers(mod.app)
    await asyncio.sleep(0.5)  # what would follow the update's ready report
    log = await project.logs(worker["worker_id"])
    assert "ahead" not in log and "pre-started" not in log


# Its pip packages are a code change (tier 2): ``{pip}`` is empty, or a ``pip_install``.
WITH_PIP = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim"){pip}

VERSION = {version}

@app.remote(benchmark_dataset=[dict()])
async def six_version() -> dict:
    try:
        import six
    except ImportError:
        six = None
    return dict(version=VERSION, pid=os.getpid(), six=six.__version__ if six else None)
"""


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_an_update_with_new_pip_packages_starts_a_new_process_and_the_next_one_starts_with_them(
    project, control_service
) -> None:
    mod = project(WITH_PIP.replace("{pip}", "").replace("{version}", "1"))
    first = await mod.six_version()
    assert first["six"] != "1.16.0"  # none, or the interpreter's own
    (worker,) = await project.workers(mod.app)
    await _log_until(project, worker["worker_id"], _AHEAD, 1)

    project.rewrite(mod, WITH_PIP.replace("{pip}", '.pip_install("six==1.16.0")'), version="2")
    mod.app.image_spec.pip_install("six==1.16.0")  # as importing the file again would
    assert (await mod.app.ensure_ready()).tier == 2
    second = await mod.six_version()
    assert second["six"] == "1.16.0" and second["version"] == 2
    log = await project.logs(worker["worker_id"])
    assert "loading: a new serving process (the pre-started one cannot take this environment)" in log
    # The next one starts with the packages' folder on its path: the same packages fit it.
    log = await _log_until(project, worker["worker_id"], _AHEAD, 2)
    ahead = int(_AHEAD.findall(log)[-1])
    project.rewrite(mod, WITH_PIP.replace("{pip}", '.pip_install("six==1.16.0")'), version="3")
    assert (await mod.app.ensure_ready()).tier == 2
    third = await mod.six_version()
    assert third == dict(version=3, pid=ahead, six="1.16.0")


def test_a_process_started_ahead_fits_the_same_packages_only(tmp_path: Path) -> None:
    base = serving_environ({"PATH": "/bin", "PYTHONPATH": "/src", "LANG": "C.UTF-8"})
    old, new = tmp_path / "r-old", tmp_path / "r-new"
    site = "/envs/k/site"
    serving = {**base, "PYTHONPATH": f"{site}:{old}:/src", "MY_SETTING": "x", "VASTRPC_PORT_0": "4000"}
    started = without_bundle(serving, old)
    assert started["PYTHONPATH"] == f"{site}:/src"
    assert fits_spare({**serving, "PYTHONPATH": f"{site}:{new}:/src", "VASTRPC_PORT_0": "4001"}, started, new)
    assert not fits_spare({**serving, "PYTHONPATH": f"/envs/other/site:{new}:/src"}, started, new)  # new packages
    assert not fits_spare({**serving, "PYTHONPATH": f"{new}:/src"}, started, new)  # packages dropped
    assert not fits_spare({**serving, "PYTHONPATH": f"{site}:{new}:/src", "TZ": "UTC"}, started, new)
    assert "PYTHONPATH" not in without_bundle({"PYTHONPATH": str(old)}, old)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its agent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _path(*parts: object) -> str:
    return os.pathsep.join(str(p) for p in parts if p)


async def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_at_most_one_waits_it_is_replaced_when_it_dies_and_stopped_on_stop(tmp_path: Path) -> None:
    stopping = asyncio.Event()
    standby = Standby(stopping)
    env = serving_environ()
    await standby.start(env, tmp_path, sys.executable)
    first = standby.waiting
    assert first is not None and not first.exited.done()
    await standby.start(env, tmp_path, sys.executable)  # never two: the first one is stopped
    second = standby.waiting
    assert second is not None and second is not first and first.exited.done()

    os.kill(second.proc.pid, signal.SIGKILL)  # it dies while waiting: another takes its place
    await _until(lambda: standby.waiting is not None and standby.waiting is not second)
    third = standby.waiting
    assert third is not None

    taken = standby.take()  # the update's: no longer the standby's, and none started behind it
    assert taken is third and standby.waiting is None
    await asyncio.sleep(0.2)
    assert standby.waiting is None and not taken.exited.done()
    revision = {**env, "PYTHONPATH": _path(tmp_path, env.get("PYTHONPATH"))}
    prepared = await prepare(revision, tmp_path, sys.executable, taken)
    assert prepared is taken  # it fits the revision's environment
    await taken.stop(0)

    await standby.start(env, tmp_path, sys.executable)
    fourth = standby.waiting
    assert fourth is not None
    stopping.set()  # the agent stops: its process group is signalled, nothing is replaced
    fourth.proc.send_signal(signal.SIGTERM)
    await fourth.exited
    await asyncio.sleep(1.5)
    assert standby.waiting is None
    await standby.stop()


@pytest.mark.timeout(60)
async def test_one_started_with_other_packages_is_stopped_and_a_new_one_serves(tmp_path: Path) -> None:
    env = serving_environ()
    waiting = await ServingProcess.spawn({**env, "PYTHONPATH": _path("/envs/a/site", env.get("PYTHONPATH"))}, tmp_path)
    revision = {**env, "PYTHONPATH": _path("/envs/b/site", tmp_path, env.get("PYTHONPATH"))}
    prepared = await prepare(revision, tmp_path, sys.executable, waiting)
    try:
        assert prepared is not waiting and waiting.exited.done()
        assert prepared.env == revision
    finally:
        await prepared.stop(0)
