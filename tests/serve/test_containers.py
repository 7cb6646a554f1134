"""End to end: the podman provider runs each serving process in a container of the deployment's image.

The images are built here once (``tests/container_images.py``: Debian bookworm by
debootstrap, two variants differing in ``/etc/vastrpc-stage``); no registry is reachable.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from container_images import IMAGE_ONE, IMAGE_TWO, MARKER, ensure_images, podman_problem  # noqa: E402

from tests.ports import free_port
from vastrpc import DeploymentError  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

_PROBLEM = podman_problem()
PODMAN = {"args": ["--provider", "podman", "--heartbeat-interval", "0.5"]}

INSPECT = """
import os, sys
from vastrpc import Deployment

app = Deployment(name="{name}")
image = app.image("@IMAGE@", storage=1)
image.env(GREETING="hello")
image.copy("./cfg.json", "/app/config.json")
image.publish_port(@PORT@, "tcp")
@EXTRA@

@app.remote(benchmark_dataset=[{{}}])
async def inspect() -> dict:
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as exc:
            return type(exc).__name__
    return {{
        "marker": read("@MARKER@"),
        "os_release": read("/etc/os-release"),
        "config": read("/app/config.json"),
        "python": sys.executable,
        "version": list(sys.version_info[:3]),
        "env": dict(os.environ),
        "host_home_visible": [p for p in ("@HOME@/api_key", "@HOME@/state.db", "@HOME@/bundles") if os.path.exists(p)],
        "pyenv_visible": os.path.exists(os.path.expanduser("~/.pyenv")),
    }}
"""

STAGE = """
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("@IMAGE@", storage=1)
app.configure_autoscaling(min_workers=2, max_workers=2)

@app.remote(benchmark_dataset=[{{}}])
async def stage() -> str:
    with open("@MARKER@") as f:
        return f.read().strip()
"""


@pytest.fixture(scope="session")
def images() -> tuple[str, str]:
    """The two test images, built once (reused when present)."""
    if _PROBLEM is not None:
        pytest.skip(f"podman cannot run here: {_PROBLEM}")
    return ensure_images()


def _source(template: str, **fields: object) -> str:
    """``template`` with each ``@FIELD@`` replaced (``{name}`` is left to the ``project`` fixture)."""
    for key, value in fields.items():
        template = template.replace(f"@{key.upper()}@", str(value))
    return template


@pytest.mark.parametrize("control_service", [PODMAN], indirect=True)
async def test_a_function_runs_in_the_image_with_only_what_its_deployment_declared(
    images, project, control_service
) -> None:
    assert not Path(MARKER).exists(), "this test needs a host without " + MARKER
    port = free_port()
    mod = project(_source(INSPECT, image=IMAGE_ONE, marker=MARKER, port=port, home=control_service.home, extra=""))
    (Path(mod.__file__).parent / "cfg.json").write_text('{"model": "tiny"}')
    started = time.monotonic()
    result = await mod.app.ensure_ready()
    assert result.ready_workers == 1 and result.warnings == ()
    seen = await mod.inspect()
    assert seen["marker"] == "one"  # the image's file: the host has none
    assert "bookworm" in seen["os_release"]
    assert seen["config"] == '{"model": "tiny"}'  # copy() to an absolute path, mounted there
    assert seen["python"] == "/usr/bin/python3" and seen["version"][:2] == [3, 11]
    assert not seen["host_home_visible"] and not seen["pyenv_visible"]
    env = seen["env"]
    assert env["GREETING"] == "hello" and env[f"VASTRPC_PORT_{port}"] == str(port)
    for name in ("VASTRPC_API_KEY", "VASTRPC_WORKER_TOKEN", "VASTRPC_HOME", "PYTEST_CURRENT_TEST"):
        assert name not in env
    (worker,) = await project.workers(mod.app)
    log = await project.logs(worker["worker_id"])
    assert f"publish_port {port}/tcp: 127.0.0.1:{port}" in log
    print(f"cold start in a container: {time.monotonic() - started:.2f}s")


@pytest.mark.parametrize("control_service", [PODMAN], indirect=True)
async def test_a_missing_image_fails_fast_naming_it(images, project, control_service) -> None:
    mod = project(_source(STAGE, image="localhost/vastrpc-no-such-image:1", marker=MARKER))
    started = time.monotonic()
    with pytest.raises(DeploymentError) as info:
        await mod.app.ensure_ready()
    assert time.monotonic() - started < 60
    message = str(info.value)
    assert "localhost/vastrpc-no-such-image:1" in message and "pull" in message, message


@pytest.mark.parametrize("control_service", [PODMAN], indirect=True)
async def test_a_tier3_update_re_images_each_worker_in_place_with_no_failed_call(
    images, project, control_service
) -> None:
    mod = project(_source(STAGE, image=IMAGE_ONE, marker=MARKER))
    result = await mod.app.ensure_ready()
    assert result.ready_workers == 2 and await mod.stage() == "one"
    answers: list[str] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            try:
                answers.append(await mod.stage())
            except Exception as exc:  # every call must succeed: collect, then assert
                failures.append(exc)
            await asyncio.sleep(0.01)

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    await asyncio.sleep(0.5)
    project.rewrite(mod, _source(STAGE, image=IMAGE_TWO, marker=MARKER))
    mod.app.image(IMAGE_TWO, storage=1)  # the client's module object too: the image is part of the spec
    started = time.monotonic()
    result = await mod.app.ensure_ready()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = await project.workers(mod.app)
        if len(workers) == 2 and all(w["state"] == "READY" and w["revision_id"] == result.revision_id for w in workers):
            break
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*callers)
    assert result.tier == 3
    assert not failures, failures[:3]
    assert "one" in answers and answers[-1] == "two"
    assert set(answers) == {"one", "two"}
    print(f"tier 3, two workers: {took:.2f}s, {len(answers)} calls, none failed")


@pytest.mark.parametrize("control_service", [PODMAN], indirect=True)
async def test_an_unmet_requirement_warns_as_on_the_local_provider(images, project, control_service) -> None:
    source = STAGE.replace(
        'app.image("@IMAGE@", storage=1)',
        'from vastrpc.query import H100_SXM, gpu_name\napp.image("@IMAGE@", storage=1).require(gpu_name == H100_SXM)',
    ).replace("min_workers=2, max_workers=2", "min_workers=1, max_workers=1")
    mod = project(_source(source, image=IMAGE_ONE, marker=MARKER))
    result = await mod.app.ensure_ready()
    assert await mod.stage() == "one"
    unmet = 'requirement not met on this machine, running anyway: gpu_name == "H100 SXM" (this machine: 0 GPUs)'
    assert result.warnings == (unmet,)
    assert unmet in control_service.log_text()


@pytest.mark.parametrize("control_service", [PODMAN], indirect=True)
async def test_storage_beyond_free_disk_fails_at_placement_naming_both(images, project, control_service) -> None:
    mod = project(_source(STAGE.replace("storage=1", "storage=1000000"), image=IMAGE_ONE, marker=MARKER))
    with pytest.raises(DeploymentError) as info:
        await mod.app.ensure_ready()
    message = str(info.value)
    assert "storage=1e+06 GB" in message and "GB is free" in message, message
