"""End to end: ensure_ready against a real control service process and real worker processes."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from pathlib import Path

import pytest

from vastrpc import ControlUnavailableError, Deployment, DeploymentError
from vastrpc.config import ClientConfig

pytestmark = pytest.mark.e2e

SQUARE = """
from vastrpc import Deployment, get_context

app = Deployment(name="{name}")

@app.context
class Table:
    async def __aenter__(self):
        self.table = {{i: i * i for i in range(100)}}
        return self
    async def __aexit__(self, *exc):
        pass

@app.remote(benchmark_dataset=[{{"x": 2}}, {{"x": 7}}])
async def square(x: int) -> int:
    return get_context(Table).table[x]
"""


async def test_deploy_steps_logged_then_tier0_touches_nothing(project, caplog) -> None:
    mod = project(SQUARE)
    # The steps are logged (at DEBUG while the deploy shows its progress on stderr).
    caplog.set_level(logging.DEBUG, logger="vastrpc.deploy")
    first = await mod.app.ensure_ready()
    names = ("package", "hash", "register", "upload", "provision", "ready")
    steps = [r.getMessage().split(":")[0] for r in caplog.records if r.name == "vastrpc.deploy"]
    assert [step for step in steps if step in names] == list(names)
    assert first.tier == 4 and first.uploaded and first.workers_started == 1
    assert await mod.square(5) == 25
    workers_before = await project.workers(mod.app)
    assert [w["state"] for w in workers_before] == ["READY"]

    caplog.clear()
    second = await mod.app.ensure_ready()
    assert second.tier == 0
    assert second.uploaded is False
    assert second.workers_started == 0
    assert second.revision_id == first.revision_id
    assert any("upload: skipped" in r.getMessage() for r in caplog.records)
    assert await project.workers(mod.app) == workers_before  # same worker ids and pids
    assert await mod.square(9) == 81


async def test_first_call_deploys(project) -> None:
    mod = project(SQUARE)
    assert await mod.square(3) == 9
    assert (await project.workers(mod.app))[0]["state"] == "READY"


async def test_contexts_are_entered_concurrently(project) -> None:
    mod = project("""
import asyncio, time
from vastrpc import Deployment, get_context

app = Deployment(name="{name}")

class Slow:
    async def __aenter__(self):
        self.start = time.monotonic()
        await asyncio.sleep(1.0)
        self.end = time.monotonic()
        return self
    async def __aexit__(self, *exc):
        pass

@app.context
class A(Slow):
    pass

@app.context
class B(Slow):
    pass

@app.remote(benchmark_dataset=[{{}}])
async def spans() -> list:
    a, b = get_context(A), get_context(B)
    return [a.start, a.end, b.start, b.end]
""")
    a_start, a_end, b_start, b_end = await mod.spans()
    # Each context sleeps 1 s; entered one after the other, one would start after the other ended.
    assert b_start < a_end and a_start < b_end
    assert max(a_end, b_end) - min(a_start, b_start) < 1.6


async def test_failed_pip_install_fails_promptly_with_step_and_log_tail(project) -> None:
    mod = project(SQUARE + '\napp.image("python:3.11-slim").pip_install("vastrpc-no-such-package-e2e==0.0.1")\n')
    started = time.monotonic()
    with pytest.raises(DeploymentError) as info:
        await mod.app.ensure_ready()
    assert time.monotonic() - started < 90
    assert info.value.step == "install"
    assert "vastrpc-no-such-package-e2e" in str(info.value)
    assert info.value.log_tail.strip()
    endpoint = await project.endpoint(mod.app)
    assert endpoint["state"] == "FAILED"


async def test_context_that_raises_fails_the_deployment(project) -> None:
    mod = project("""
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.context
class Broken:
    async def __aenter__(self):
        raise RuntimeError("model file is missing")
    async def __aexit__(self, *exc):
        pass

@app.remote(benchmark_dataset=[{{}}])
async def f() -> int:
    return 1
""")
    with pytest.raises(DeploymentError, match="model file is missing") as info:
        await mod.app.ensure_ready()
    err = info.value
    assert err.step == "contexts"
    # The first line names the step, the exception type, its message and what to do.
    headline = "Broken.__aenter__ raised RuntimeError: model file is missing — fix the context and deploy again"
    assert err.reason == headline
    assert str(err).splitlines()[0] == f"contexts failed: {err.reason}"
    # The traceback appears once, in the log tail below.
    assert str(err).count("Traceback (most recent call last)") == 1
    assert str(err).count('raise RuntimeError("model file is missing")') == 1


async def test_benchmark_that_raises_fails_the_deployment(project) -> None:
    mod = project("""
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{"x": 1}}])
async def f(x: int) -> int:
    raise ValueError(f"cannot handle {{x}}")
""")
    with pytest.raises(DeploymentError, match="cannot handle 1") as info:
        await mod.app.ensure_ready()
    assert info.value.step == "benchmark"
    assert "raised ValueError: cannot handle 1 — fix the function" in info.value.reason
    assert "\n" not in info.value.reason
    assert str(info.value).count("Traceback (most recent call last)") == 1


async def test_unreachable_control_address_fails_fast(tmp_path) -> None:
    app = Deployment(
        name="nowhere",
        config=ClientConfig(control_address="127.0.0.1:1", api_key="k", home=tmp_path, connect_timeout=2),
    )

    @app.remote(benchmark_dataset=[{}])
    async def f() -> None: ...

    started = time.monotonic()
    with pytest.raises(ControlUnavailableError, match="127.0.0.1:1"):
        await app.ensure_ready()
    assert time.monotonic() - started < 10


async def test_wrong_api_key_is_refused(project, control_service) -> None:
    from vastrpc import AuthenticationError

    mod = project(SQUARE, api_key="not-the-key")
    with pytest.raises(AuthenticationError, match=r"refused this client's API key .*VASTRPC_API_KEY"):
        await mod.app.ensure_ready()


def _gpu_less_inventory(tmp_path) -> list[str]:
    """A declared inventory without GPUs, so the test never depends on this machine's hardware."""
    path = tmp_path / "inventory.json"
    path.write_text('{"cpu_cores": 4, "cpu_cores_effective": 4, "ram_gb": 16, "disk_gb": 100, "cpu_arch": "amd64"}')
    return ["--inventory", str(path)]


@pytest.mark.parametrize("control_service", [{"setup": _gpu_less_inventory}], indirect=True)
async def test_unmet_requirements_on_the_local_provider_still_deploy_and_are_named_in_warnings(
    project, control_service, caplog
) -> None:
    mod = project(
        SQUARE.replace(
            'app = Deployment(name="{name}")',
            "from vastrpc.query import H100_SXM, cpu_cores, dph_total, gpu_name\n"
            'app = Deployment(name="{name}")\n'
            "app.image('python:3.11-slim').require(gpu_name == H100_SXM, cpu_cores >= 2, dph_total < 2)",
        )
    )
    caplog.set_level(logging.WARNING, logger="vastrpc.deploy")
    result = await mod.app.ensure_ready()
    assert result.ready_workers == 1 and await mod.square(4) == 16
    unmet = 'requirement not met on this machine, running anyway: gpu_name == "H100 SXM" (this machine: 0 GPUs)'
    assert result.warnings == (
        unmet,
        "requirement not checked: dph_total < 2 (not applicable here: dph_total is Vast's marketplace's to know)",
    )
    assert any(unmet in r.getMessage() for r in caplog.records)
    # The control service's log and the worker's own log name it too; the met query is not mentioned.
    assert unmet in control_service.log_text()
    (worker,) = await project.workers(mod.app)
    logs = await project.logs(worker["worker_id"])
    assert unmet in logs and "cpu_cores" not in logs
    # Same requirements again: nothing to do, and the same warnings.
    again = await mod.app.ensure_ready()
    assert again.tier == 0 and again.warnings == result.warnings


WITH_DATA = """
import os
from pathlib import Path
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").copy("data", "data")
VERSION = "@VERSION@"

@app.remote(benchmark_dataset=[{{"x": 1}}])
async def where(x: int) -> list:
    weights = os.stat(Path(__file__).parent / "data" / "weights.bin")
    return [VERSION, weights.st_ino, weights.st_size, oct(weights.st_mode & 0o777)]
"""


async def test_a_code_change_uploads_and_writes_only_the_changed_file(project, control_service, caplog) -> None:
    mod = project(WITH_DATA.replace("@VERSION@", "one"))
    weights = Path(mod.__file__).parent / "data" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(4 << 20))
    caplog.set_level(logging.DEBUG, logger="vastrpc.deploy")
    first = await mod.app.ensure_ready()
    version, inode, size, mode = await mod.where(1)
    assert (version, size, mode) == ("one", 4 << 20, "0o444")
    assert any("upload: 2 changed files" in r.getMessage() for r in caplog.records)

    caplog.clear()
    project.rewrite(mod, WITH_DATA.replace("@VERSION@", "two"))
    second = await mod.app.ensure_ready()
    assert second.tier == 2 and second.revision_id != first.revision_id
    # Only the edited module went up; the 4 MiB file was neither sent nor written again on the host.
    assert any("upload: 1 changed files" in r.getMessage() for r in caplog.records), caplog.text
    deadline = time.monotonic() + 30
    while (answer := await mod.where(1))[0] != "two":
        assert time.monotonic() < deadline, answer
    assert answer[1:] == [inode, 4 << 20, "0o444"]  # the same inode: a link to the host's file cache
    files = control_service.home / "cache" / "files"
    assert stat.S_IMODE(files.stat().st_mode) == 0o700
    cache = files / first.endpoint_id  # one cache per endpoint
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert (cache / hashlib.sha256(weights.read_bytes()).hexdigest()).stat().st_ino == inode

    # Another deployment with the very same file gets a copy of its own, never the same inode:
    # code that can write its files (a container's root) changes only its own deployment's.
    other = project(WITH_DATA.replace("@VERSION@", "other"))
    (Path(other.__file__).parent / "data").mkdir()
    (Path(other.__file__).parent / "data" / "weights.bin").write_bytes(weights.read_bytes())
    await other.app.ensure_ready()
    theirs = await other.where(1)
    assert theirs[0] == "other" and theirs[2] == 4 << 20 and theirs[1] != inode
