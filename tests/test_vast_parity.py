"""Deployment files written for Vast's Deployments SDK, run as their users run them: `python client.py`.

The files under tests/vast/ are Vast's documented examples with the import lines changed
(and stand-ins where the original needs a GPU or the internet). Each client imports its
deployment file, whose last line, ``app.ensure_ready()``, deploys it on the embedded
default, then calls the functions on its own event loop, as Vast's clients do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).resolve().parent / "vast"
pytestmark = pytest.mark.e2e


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a user on a fresh machine: a fresh home; the embedded service stopped after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_")}
    env["VASTRPC_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    yield env
    subprocess.run([sys.executable, "-m", "vastrpc", "control", "stop"], env=env, capture_output=True, timeout=60)


def _run(folder: Path, env: dict[str, str], script: str = "client.py") -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, script], cwd=folder, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def test_vasts_square_example_runs_unchanged(home: dict[str, str], tmp_path: Path) -> None:
    folder = shutil.copytree(EXAMPLES / "square", tmp_path / "square")
    run = _run(folder, home)
    assert [f"square({x}) = {x * x}" for x in range(1, 10)] == run.stdout.splitlines()
    # No GPU here: the embedded default deploys anyway and says which requirement it could not meet.
    assert "gpu_name" in run.stderr and "RTX 4090" in run.stderr
    assert "never awaited" not in run.stderr


def test_vasts_context_guide_runs_with_constructor_arguments_and_parallel_contexts(
    home: dict[str, str], tmp_path: Path
) -> None:
    folder = shutil.copytree(EXAMPLES / "contexts", tmp_path / "contexts")
    lines = _run(folder, home).stdout.splitlines()
    assert lines[0] == "engine(Qwen/Qwen3-0.6B, max_model_len=512): Hello"
    assert lines[1] == "three two one"
    entered = json.loads(lines[2].removeprefix("entered "))
    (tok_start, tok_ready), (model_start, model_ready) = entered["tokenizer"], entered["model"]
    # Entered in parallel: each took 1 s, and each started before the other was ready.
    assert tok_start < model_ready and model_start < tok_ready


def test_vasts_mnist_example_sized_for_a_cpu(home: dict[str, str], tmp_path: Path) -> None:
    folder = shutil.copytree(EXAMPLES / "mnist", tmp_path / "mnist")
    for _ in range(3):  # a random digit each run, as in Vast's client
        lines = _run(folder, home).stdout.splitlines()
        truth, predicted = (int(line.split(":")[1]) for line in lines[:2])
        assert predicted == truth, lines
        assert float(lines[2].split(":")[1]) > 0.5


def test_vasts_vllm_example_shape_with_a_stand_in_engine(home: dict[str, str], tmp_path: Path) -> None:
    folder = shutil.copytree(EXAMPLES / "vllm", tmp_path / "vllm")
    run = _run(folder, home)
    assert run.stdout.splitlines() == ["Response: sentence. one in computing quantum Explain"]
    # The image's own Python is for providers that run the image; here the deploy says so.
    assert "use_system_python" in run.stderr


TIERS_DEPLOY = """\
import os

from vastrpc import Deployment

app = Deployment(name="edited", tag="default", ttl=600)
app.image("python:3.11-slim", 16).env(STAGE="one")


@app.remote(benchmark_dataset=[{"x": 2}])
async def square(x):
    return x * x


@app.remote(benchmark_dataset=[{}])
async def where() -> list:
    return [os.getpid(), os.environ.get("STAGE")]


app.configure_autoscaling(max_workers=3)
result = app.ensure_ready()
"""

TIERS_CLIENT = """\
import asyncio
import json

import deploy


async def main():
    r = deploy.result
    print(json.dumps({"tier": r.tier, "uploaded": r.uploaded, "endpoint": r.endpoint_id,
                      "value": await deploy.square(5), "where": await deploy.where()}))


asyncio.run(main())
"""


def test_tiers_follow_edits_of_the_deployment_file(home: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "deploy.py").write_text(TIERS_DEPLOY)
    (folder / "client.py").write_text(TIERS_CLIENT)

    def deploy_after(old: str, new: str) -> dict:
        if old:
            text = (folder / "deploy.py").read_text()
            assert old in text
            (folder / "deploy.py").write_text(text.replace(old, new))
        return json.loads(_run(folder, home).stdout.splitlines()[-1])

    first = deploy_after("", "")
    assert (first["tier"], first["uploaded"], first["value"], first["where"][1]) == (4, True, 25, "one")
    pid = first["where"][0]
    assert deploy_after("", "")["tier"] == 0
    # Settings edited in the file: tier 1 — nothing uploaded, the same serving process.
    for old, new in [("max_workers=3", "max_workers=4"), ("ttl=600", "ttl=900")]:
        step = deploy_after(old, new)
        assert (step["tier"], step["uploaded"], step["where"][0]) == (1, False, pid), (old, step)
    # Anything else in the file is code: tier 2, a new serving process with the new code.
    code = deploy_after("return x * x", "return x * x + 1")
    assert (code["tier"], code["uploaded"], code["value"]) == (2, True, 26)
    assert code["where"][0] != pid
    comment = deploy_after("import os\n", "import os  # a comment is code too\n")
    assert comment["tier"] == 2
    env = deploy_after('STAGE="one"', 'STAGE="two"')
    assert (env["tier"], env["where"][1]) == (3, "two")
    tag = deploy_after('tag="default"', 'tag="canary"')
    assert tag["tier"] == 4 and tag["endpoint"] != first["endpoint"]
    assert re.fullmatch(r"[\w-]+", tag["endpoint"])
