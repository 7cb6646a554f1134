"""Build steps on a container provider run inside the image: a derived image, committed once and reused."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from container_images import _env, ensure_images, podman_problem  # noqa: E402

from vastrpc import DeploymentError  # noqa: E402
from vastrpc.serve.image_build import REPOSITORY, BuildJob, build_steps  # noqa: E402

_host_had_tree = Path("/usr/bin/tree").exists()
PODMAN = {"args": ["--provider", "podman", "--heartbeat-interval", "0.5"]}


def _job(**changes: object) -> BuildJob:
    fields: dict[str, object] = {
        "base": "img",
        "base_id": "abc",
        "python": "python3",
        "steps": build_steps(["jq"], ["echo hi"]),
        "env": {"A": "1"},
        "secrets": {"TOKEN": "one"},
        "bundle": Path("/b/1"),
        "site": None,
        "timeout": 60.0,
    }
    fields.update(changes)
    return BuildJob(**fields)  # type: ignore[arg-type]


def test_apt_packages_come_first_then_each_command_in_order() -> None:
    steps = build_steps([" tree", "jq", "tree"], ["echo one", "echo two"])
    assert [label for label, _ in steps] == [
        "apt_get jq tree",
        "startup command 1 of 2 ('echo one')",
        "startup command 2 of 2 ('echo two')",
    ]
    assert "apt-get install -y --no-install-recommends jq tree" in steps[0][1]
    assert build_steps([], []) == []


def test_the_tag_follows_what_decides_the_images_contents_and_not_the_bundle_or_secrets() -> None:
    tag = _job().tag()
    assert tag.startswith(REPOSITORY + ":") and tag == _job().tag()
    assert _job(bundle=Path("/b/2"), secrets={"TOKEN": "two"}).tag() == tag  # another worker, a rotated secret
    for change in ({"base_id": "def"}, {"env": {"A": "2"}}, {"steps": build_steps([], ["echo hi"])}):
        assert _job(**change).tag() != tag, change
    assert _job(site=Path("/h/envs/k1/site")).tag() != _job(site=Path("/h/envs/k2/site")).tag()


MARKED = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
image = app.image("@IMAGE@", storage=1)
image.env(WHO="builder").secrets(TOKEN="s3cr3t").copy("./input.txt")
image.run_script("echo built-@NONCE@-$WHO-$(cat input.txt)-${{TOKEN#s3}} > /opt/marker")
@EXTRA@

@app.remote(benchmark_dataset=[{{}}])
async def marker() -> str:
    with open("/opt/marker") as f:
        text = f.read().strip()
    try:
        import subprocess
        tree = subprocess.run(["tree", "--version"], capture_output=True, text=True).stdout.split()[:2]
    except OSError:
        tree = []
    return " ".join([text, *tree])
"""


def _podman(*args: str) -> str:
    return subprocess.run(["podman", *args], env=_env(), capture_output=True, text=True, check=True).stdout


def _derived_tags(log: str) -> list[str]:
    """The derived images a worker's log says it built."""
    return [line.split("deriving ")[1].split()[0] for line in log.splitlines() if "build steps: deriving " in line]


def _derived_images() -> set[str]:
    return set(_podman("images", "-q", "--filter", f"reference={REPOSITORY}").split())


@pytest.fixture
def built() -> Iterator[None]:
    """Removes the derived images a test built, after its control service (and so its containers) stopped."""
    before = _derived_images() if podman_problem() is None else set()
    yield
    for image_id in _derived_images() - before:
        subprocess.run(["podman", "rmi", "-f", image_id], env=_env(), capture_output=True, check=False)


@pytest.fixture
def image() -> str:
    problem = podman_problem()
    if problem is not None:
        pytest.skip(f"podman cannot run here: {problem}")
    return ensure_images()[0]


def _deployment(project, image: str, nonce: str, extra: str = ""):  # noqa: ANN001, ANN202 - test helper
    mod = project(MARKED.replace("@IMAGE@", image).replace("@NONCE@", nonce).replace("@EXTRA@", extra))
    (Path(mod.__file__).parent / "input.txt").write_text("from-bundle")
    return mod


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("control_service", [PODMAN], indirect=True)
async def test_run_script_runs_in_the_image_once_and_the_next_deployment_reuses_it(
    built, image, project, control_service
) -> None:
    assert not Path("/opt/marker").exists(), "this test needs a host without /opt/marker"
    nonce = uuid.uuid4().hex[:12]
    two_workers = "app.configure_autoscaling(min_workers=2, max_workers=2)"
    first = _deployment(project, image, nonce, extra=two_workers)
    await first.app.ensure_ready()
    assert await first.marker() == f"built-{nonce}-builder-from-bundle-cr3t"
    assert not Path("/opt/marker").exists()  # ran in the container, not on the host
    logs = [await project.logs(w["worker_id"]) for w in await project.workers(first.app)]
    builder = [log for log in logs if "build steps: deriving " in log]
    assert len(logs) == 2 and len(builder) == 1, "two workers on one host build the derived image once"
    assert "build: build step 1 of 1: startup command 1 of 1" in builder[0] and " built in " in builder[0]
    (tag,) = _derived_tags(builder[0])
    assert any(f"build steps: reusing {tag}" in log for log in logs)
    created = _podman("image", "inspect", "--format", "{{.Created}}", tag)
    config = json.loads(_podman("image", "inspect", "--format", "{{json .Config}}", tag))
    assert "s3cr3t" not in json.dumps(config) and "builder" not in json.dumps(config)  # env never in the image

    second = _deployment(project, image, nonce)
    await second.app.ensure_ready()
    assert await second.marker() == f"built-{nonce}-builder-from-bundle-cr3t"
    (worker,) = await project.workers(second.app)
    log = await project.logs(worker["worker_id"])
    assert f"build steps: reusing {tag}" in log and "deriving" not in log
    assert _podman("image", "inspect", "--format", "{{.Created}}", tag) == created  # not rebuilt


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("control_service", [PODMAN], indirect=True)
async def test_a_failing_step_names_itself_its_exit_code_and_its_output(image, project, control_service) -> None:
    mod = project(
        MARKED.replace("@IMAGE@", image)
        .replace("@NONCE@", "x")
        .replace("@EXTRA@", 'image.run_script("echo about to fail; exit 7")')
    )
    (Path(mod.__file__).parent / "input.txt").write_text("from-bundle")
    with pytest.raises(DeploymentError) as info:
        await mod.app.ensure_ready()
    message = str(info.value)
    expected = "build step 2 of 2, startup command 2 of 2 ('echo about to fail; exit 7'), exited with code 7"
    assert f"build failed: {expected}" in message, message
    assert "about to fail" in message  # the step's output, in the log tail


@pytest.mark.e2e
@pytest.mark.timeout(400)
@pytest.mark.parametrize("control_service", [PODMAN], indirect=True)
async def test_apt_get_installs_into_the_image_from_its_distribution(built, image, project, control_service) -> None:
    nonce = uuid.uuid4().hex[:12]
    mod = _deployment(project, image, nonce, extra='image.apt_get("tree")')
    await mod.app.ensure_ready()
    assert await mod.marker() == f"built-{nonce}-builder-from-bundle-cr3t tree v2.1.0"
    assert not Path("/usr/bin/tree").exists() or _host_had_tree  # installed in the image, not on the host
