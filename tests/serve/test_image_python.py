"""vastrpc's runtime in an image whose Python is not the host's: the probe's answer, the pins, a real trixie image."""

from __future__ import annotations

import re
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from container_images import ensure_trixie_image, podman_problem  # noqa: E402

from vastrpc import DeploymentError  # noqa: E402
from vastrpc.serve.image_python import _target, runtime_requirements  # noqa: E402

HOST = list(sys.version_info[:2])


def test_the_hosts_version_needs_no_runtime_and_another_gets_wheels_for_its_platform() -> None:
    assert _target("img", "python3", [HOST, "x86_64", ["glibc", "2.36"]]) is None
    target = _target("img", "python3", [[3, 13], "x86_64", ["glibc", "2.41"]])
    assert target is not None and target.label == "3.13" and target.uv_platform == "x86_64-manylinux_2_28"
    old_glibc = _target("img", "python3", [[3, 12], "aarch64", ["glibc", "2.27"]])
    assert old_glibc is not None and old_glibc.uv_platform == "aarch64-manylinux_2_17"


def test_an_old_python_or_a_musl_image_fails_at_the_image_step_saying_what_to_do() -> None:
    with pytest.raises(DeploymentError, match=r"has Python 3\.10 at python3; vastrpc needs CPython 3\.11 or newer"):
        _target("localhost/old:1", "python3", [[3, 10], "x86_64", ["glibc", "2.31"]])
    with pytest.raises(DeploymentError, match="use a glibc-based image") as info:
        _target("alpine:3", "python3", [[3, 13] if HOST != [3, 13] else [3, 12], "x86_64", ["", ""]])
    assert info.value.step == "image"


def test_the_runtime_is_vastrpcs_own_dependencies_at_the_hosts_versions() -> None:
    pins = runtime_requirements()
    names = {re.split(r"==", p)[0].lower() for p in pins}
    assert {"grpcio", "protobuf", "cloudpickle", "cryptography"} <= names
    assert "uv" not in names and "boto3" not in names and "pytest" not in names  # installer and extras left out
    assert f"grpcio=={metadata.version('grpcio')}" in pins


TRIXIE = """
import sys
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("@IMAGE@", storage=1).pip_install("six", "markupsafe")

@app.remote(benchmark_dataset=[{{}}])
async def where() -> dict:
    import markupsafe._speedups, six
    with open("/etc/os-release") as f:
        release = dict(line.strip().split("=", 1) for line in f if "=" in line)
    return {{
        "version": list(sys.version_info[:2]),
        "codename": release.get("VERSION_CODENAME"),
        "six": six.__version__,
        "speedups": markupsafe._speedups.__file__,
    }}
"""


@pytest.mark.e2e
@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    "control_service", [{"args": ["--provider", "podman", "--heartbeat-interval", "0.5"]}], indirect=True
)
async def test_a_trixie_image_serves_on_its_own_python_313_with_pip_packages_built_for_it(
    project, control_service
) -> None:
    problem = podman_problem()
    if problem is not None:
        pytest.skip(f"podman cannot run here: {problem}")
    image = ensure_trixie_image()
    mod = project(TRIXIE.replace("@IMAGE@", image))
    started = time.monotonic()
    await mod.app.ensure_ready()
    first = time.monotonic() - started
    seen = await mod.where()
    assert seen["version"] == [3, 13] and seen["codename"] == "trixie"
    assert seen["speedups"].endswith(".cpython-313-x86_64-linux-gnu.so")  # a compiled wheel, for the image's Python
    (worker,) = await project.workers(mod.app)
    log = await project.logs(worker["worker_id"])
    assert "vastrpc's runtime for Python 3.13 (x86_64-manylinux_2_28)" in log
    assert "installing pip packages for Python 3.13 (x86_64-manylinux_2_28, wheels only) with uv: markupsafe six" in log
    # A second deployment on the same host finds the runtime and the pip environment built.
    again = project(TRIXIE.replace("@IMAGE@", image))
    started = time.monotonic()
    await again.app.ensure_ready()
    second = time.monotonic() - started
    assert (await again.where())["version"] == [3, 13]
    (worker,) = await project.workers(again.app)
    log = await project.logs(worker["worker_id"])
    assert "pip packages already installed" in log and "installing pip packages" not in log
    print(f"trixie (3.13) cold start: first {first:.2f}s (runtime prepared), second {second:.2f}s (cached)")
