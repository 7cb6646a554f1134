"""A bomb manifest (huge sizes, many files): the service refuses it; a worker refuses it in bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from vastrpc._errors import BundleError
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
# (it idles at about 60 MiB; fetching what the manifest declares would take 9 GiB).
PEAK_BOUND_KIB = 200 << 10


def _setup(tmp_path: Path) -> list[str]:
    wrapper = tmp_path / "rss_wrapper.py"
    wrapper.write_text(textwrap.dedent(RSS_WRAPPER))
    command = [sys.executable, str(wrapper), str(tmp_path / "rss.json"), sys.executable, "-m", "vastrpc", "worker"]
    return ["--worker-command", " ".join(command)]


def _bomb() -> bytes:
    """A manifest of 1,000 files of 9 MiB each, declared as 9 TiB in all by its last one: 100 KB."""
    files = [[f"part{i:04}.bin", 420, 9 << 20, hashlib.sha256(str(i).encode()).hexdigest()] for i in range(999)]
    files.append(["weights.bin", 420, 9 << 40, "0" * 64])
    document = {"files": files, "format": "vastrpc-manifest/1"}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


@pytest.mark.parametrize("control_service", [{"setup": _setup}], indirect=True)
async def test_a_bomb_manifest_is_refused_with_its_limit_in_bounded_memory(control_service, tmp_path) -> None:
    bomb = _bomb()
    assert len(bomb) < 1 << 20
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
        # The service checks a manifest before it stores it: uploaded, the bomb is refused with its limit.
        with pytest.raises(BundleError, match="more than 8589934592 bytes of files: it is over the size limit"):
            await client.upload(digest, bomb)
        # A bundle store written by other hands (or an older service) hands it to the worker anyway.
        (control_service.home / "bundles" / digest).write_bytes(bomb)
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
    cached = (control_service.home / "cache" / "files").rglob("*")
    assert not [p for p in cached if p.is_file() and p.name != ".swept"]  # nothing fetched
    rss = tmp_path / "rss.json"
    for _ in range(400):  # the agent exits after reporting (or is stopped within the grace)
        if rss.exists():
            break
        await asyncio.sleep(0.05)
    measured = json.loads(rss.read_text())
    assert measured["peak_kib"] < PEAK_BOUND_KIB, measured
    print(f"worker agent peak RSS while refusing a 9 TiB manifest: {measured['peak_kib'] >> 10} MiB")
