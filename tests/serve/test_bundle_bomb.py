"""A gzip bomb uploaded as a bundle: a real worker refuses it with the limit named, in bounded memory."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.client.control import ControlClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# Runs the worker agent as its child and, once it exits, writes its peak resident memory (KiB).
RSS_WRAPPER = """
import json, resource, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.terminate())
code = child.wait()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as f:
    json.dump({"returncode": code, "peak_kib": peak}, f)
sys.exit(code)
"""

# The worker agent's peak resident memory must stay under this while it refuses the bomb
# (it idles at about 60 MiB; inflating the bomb whole would take 9 GiB).
PEAK_BOUND_KIB = 200 << 10


def _setup(tmp_path: Path) -> list[str]:
    wrapper = tmp_path / "rss_wrapper.py"
    wrapper.write_text(textwrap.dedent(RSS_WRAPPER))
    command = [sys.executable, str(wrapper), str(tmp_path / "rss.json"), sys.executable, "-m", "vastrpc", "worker"]
    return ["--worker-command", " ".join(command)]


def _bomb() -> bytes:
    """9 MB of gzip whose tar header declares one 9 GiB member of zeros (and inflates to it)."""
    member = tarfile.TarInfo("weights.bin")
    member.size = 9 << 30
    zeros = gzip.compress(b"\0" * (64 << 20), compresslevel=9, mtime=0)
    return gzip.compress(member.tobuf(format=tarfile.PAX_FORMAT), mtime=0) + zeros * (member.size // (64 << 20))


@pytest.mark.parametrize("control_service", [{"setup": _setup}], indirect=True)
async def test_a_gzip_bomb_is_refused_by_the_worker_with_its_limit_in_bounded_memory(control_service, tmp_path) -> None:
    bomb = _bomb()
    assert len(bomb) < 10 << 20
    digest = hashlib.sha256(bomb).hexdigest()
    spec = control_pb2.DeploymentSpec(
        name="bomb",
        tag="default",
        module="deploy",
        autoscaling=control_pb2.AutoscalingSpec(min_workers=1, max_workers=1, target_util=0.8),
        functions=[control_pb2.FunctionSpec(name="square", max_concurrency=1, has_benchmark=True)],
        digests=control_pb2.RevisionDigests(bundle=digest, code="c", environment="e", autoscaling="a"),
    )
    client = ControlClient(control_service.address, control_service.api_key)
    try:
        reg = await client.register(spec)
        await client.upload(digest, bomb)
        await client.provision(reg.endpoint_id, reg.revision_id)
        async for update in client.watch(reg.endpoint_id):
            if update.state == common_pb2.ENDPOINT_STATE_FAILED:
                failure = update.failure
                break
    finally:
        await client.close()

    # The step that failed and why, naming the limit: not a MemoryError, not a dead worker.
    assert failure.step == "download", failure
    assert "more than 8589934592 bytes of files" in failure.message and "size limit" in failure.message
    assert "MemoryError" not in failure.log_tail and "exited with code" not in failure.message
    rss = tmp_path / "rss.json"
    for _ in range(400):  # the agent exits after reporting (or is stopped within the grace)
        if rss.exists():
            break
        await asyncio.sleep(0.05)
    measured = json.loads(rss.read_text())
    assert measured["peak_kib"] < PEAK_BOUND_KIB, measured
    print(f"worker agent peak RSS while refusing a 9 GiB bomb: {measured['peak_kib'] >> 10} MiB")
