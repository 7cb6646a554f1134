"""Helpers for control service tests: specs, an async gRPC client of the real service, the fake worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from vastrpc._grpc import CHANNEL_OPTIONS, bearer
from vastrpc._manifest import FileEntry, encode_manifest, parse_manifest
from vastrpc._secrets import seal
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc

FAKE_WORKER = [sys.executable, str(Path(__file__).with_name("fake_worker.py"))]
# Parametrize the control_service fixture so its workers are the fake worker.
with_fake_worker = pytest.mark.parametrize("control_service", [{"worker_command": FAKE_WORKER}], indirect=True)

READY = common_pb2.ENDPOINT_STATE_READY
FAILED = common_pb2.ENDPOINT_STATE_FAILED


# The content of every file a test bundle names, by SHA-256: Client.upload sends them first.
FILES: dict[str, bytes] = {}


def bundle(text: str = "print('hello')") -> tuple[bytes, str]:
    """A bundle's manifest (one file, ``deploy.py``, ``text`` ten times) and its digest."""
    content = text.encode() * 10
    sha = hashlib.sha256(content).hexdigest()
    FILES[sha] = content
    manifest = encode_manifest([FileEntry("deploy.py", 0o644, len(content), sha)])
    return manifest.data, manifest.digest


def make_spec(
    name: str = "hello",
    *,
    tag: str = "default",
    digest: str = "0" * 64,
    code: str = "code-1",
    environment: str = "env-1",
    autoscaling: str = "auto-1",
    min_workers: int = 1,
    max_workers: int = 1,
    env: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    api_key: str = "",
) -> control_pb2.DeploymentSpec:
    """A valid DeploymentSpec; the digests are whatever the test says; secrets sealed for ``api_key``."""
    return control_pb2.DeploymentSpec(
        name=name,
        tag=tag,
        module="deploy",
        image=control_pb2.ImageSpec(
            from_image="python:3.11-slim", env=env or {}, sealed_secrets=seal(api_key, secrets or {})
        ),
        autoscaling=control_pb2.AutoscalingSpec(min_workers=min_workers, max_workers=max_workers, target_util=0.8),
        functions=[control_pb2.FunctionSpec(name="square", max_concurrency=4, has_benchmark=True)],
        digests=control_pb2.RevisionDigests(bundle=digest, code=code, environment=environment, autoscaling=autoscaling),
    )


def pid_gone(pid: int) -> bool:
    """Whether no process has that pid (the control service reaps its workers)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until ``check()`` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await asyncio.sleep(0.05)


def read_dumps(folder: Path) -> dict[str, dict[str, Any]]:
    """What fake workers wrote to their FAKE_DUMP_DIR, by worker id."""
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("w-*.json")}


def sha(content: bytes) -> str:
    """The SHA-256 of ``content``, hex: a bundle file's digest."""
    return hashlib.sha256(content).hexdigest()


class Client:
    """An async client of the control service presenting ``token``."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))
        self.stub = control_pb2_grpc.ControlServiceStub(self.channel)
        self.metadata = bearer(token)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def register(self, spec: control_pb2.DeploymentSpec) -> control_pb2.RegisterDeploymentResponse:
        return await self.stub.RegisterDeployment(
            control_pb2.RegisterDeploymentRequest(spec=spec), metadata=self.metadata, timeout=10
        )

    async def upload_files(self, *contents: bytes) -> control_pb2.UploadFilesResponse:
        async def requests() -> AsyncIterator[control_pb2.UploadFilesRequest]:
            for content in contents:
                header = control_pb2.UploadFilesRequest.Header(
                    digest=hashlib.sha256(content).hexdigest(), size=len(content)
                )
                yield control_pb2.UploadFilesRequest(header=header)
                yield control_pb2.UploadFilesRequest(chunk=content)

        return await self.stub.UploadFiles(requests(), metadata=self.metadata, timeout=10)

    async def upload(self, data: bytes, digest: str, *, size: int | None = None) -> control_pb2.UploadBundleResponse:
        """Upload a manifest made by ``bundle`` (its files first), or any bytes as one."""
        try:
            named = [FILES[f.sha256] for f in parse_manifest(data).files if f.sha256 in FILES]
        except Exception:
            named = []
        if named:
            await self.upload_files(*named)

        async def requests() -> AsyncIterator[control_pb2.UploadBundleRequest]:
            header = control_pb2.UploadBundleRequest.Header(digest=digest, size=len(data) if size is None else size)
            yield control_pb2.UploadBundleRequest(header=header)
            for i in range(0, len(data), 1 << 16):
                yield control_pb2.UploadBundleRequest(chunk=data[i : i + (1 << 16)])

        return await self.stub.UploadBundle(requests(), metadata=self.metadata, timeout=10)

    async def download(self, digest: str) -> bytes:
        call = self.stub.DownloadBundle(
            control_pb2.DownloadBundleRequest(digest=digest), metadata=self.metadata, timeout=10
        )
        return b"".join([r.chunk async for r in call])

    async def download_files(self, bundle_digest: str, digests: list[str]) -> dict[str, bytes]:
        """The files of a stored bundle, by SHA-256 (DownloadFiles, streamed by the service)."""
        call = self.stub.DownloadFiles(
            control_pb2.DownloadFilesRequest(bundle=bundle_digest, digests=digests), metadata=self.metadata, timeout=10
        )
        files: dict[str, bytes] = {}
        async for response in call:
            files[response.digest] = files.get(response.digest, b"") + response.chunk
        return files

    async def provision(self, endpoint_id: str, revision_id: str) -> int:
        response = await self.stub.Provision(
            control_pb2.ProvisionRequest(endpoint_id=endpoint_id, revision_id=revision_id),
            metadata=self.metadata,
            timeout=10,
        )
        return response.workers_started

    async def deploy(
        self, spec: control_pb2.DeploymentSpec, data: bytes | None = None
    ) -> tuple[control_pb2.RegisterDeploymentResponse, int]:
        """Register, upload when asked, provision: what ensure_ready does."""
        reg = await self.register(spec)
        if reg.upload_required:
            assert data is not None, "the bundle is not stored yet"
            await self.upload(data, spec.digests.bundle)
        return reg, await self.provision(reg.endpoint_id, reg.revision_id)

    async def watch_until(
        self,
        endpoint_id: str,
        predicate: Callable[[control_pb2.WatchEndpointResponse], bool],
        timeout: float = 15.0,
    ) -> control_pb2.WatchEndpointResponse:
        """The first watch update that satisfies ``predicate``."""
        call = self.stub.WatchEndpoint(
            control_pb2.WatchEndpointRequest(endpoint_id=endpoint_id), metadata=self.metadata
        )
        last = None
        try:
            async with asyncio.timeout(timeout):
                async for update in call:
                    if update.keepalive:
                        continue
                    last = update
                    if predicate(update):
                        return update
        except TimeoutError:
            raise AssertionError(
                f"watch of {endpoint_id} did not satisfy the predicate in {timeout}s; last: {last}"
            ) from None
        finally:
            call.cancel()
        raise AssertionError(f"watch of {endpoint_id} ended early; last: {last}")

    async def wait_ready(
        self, endpoint_id: str, workers: int = 1, timeout: float = 15.0
    ) -> control_pb2.WatchEndpointResponse:
        """Wait until the endpoint is READY with ``workers`` ready workers."""

        def ok(u: control_pb2.WatchEndpointResponse) -> bool:
            if u.state == FAILED:
                raise AssertionError(f"endpoint failed: {u.failure}")
            ready = [w for w in u.workers if w.state == common_pb2.WORKER_STATE_READY]
            return u.state == READY and len(ready) == workers

        return await self.watch_until(endpoint_id, ok, timeout)

    async def list(self, name: str = "") -> control_pb2.ListDeploymentsResponse:
        return await self.stub.ListDeployments(
            control_pb2.ListDeploymentsRequest(name=name), metadata=self.metadata, timeout=10
        )

    async def teardown(self, name: str, tag: str = "") -> control_pb2.TeardownResponse:
        return await self.stub.Teardown(
            control_pb2.TeardownRequest(name=name, tag=tag), metadata=self.metadata, timeout=30
        )

    async def logs(self, worker_id: str, tail_bytes: int = 0) -> str:
        response = await self.stub.GetWorkerLogs(
            control_pb2.GetWorkerLogsRequest(worker_id=worker_id, tail_bytes=tail_bytes),
            metadata=self.metadata,
            timeout=10,
        )
        return response.text


async def joined_worker(client: Client, name: str) -> control_pb2.JoinEndpointResponse:
    """A worker admitted by JoinEndpoint, registered and ready (no process: the test speaks for it)."""
    joined = await client.stub.JoinEndpoint(
        control_pb2.JoinEndpointRequest(name=name), metadata=client.metadata, timeout=10
    )
    metadata = bearer(joined.worker_token)
    reg = await client.stub.RegisterWorker(
        control_pb2.RegisterWorkerRequest(worker_id=joined.worker_id, pid=1, hostname="test"),
        metadata=metadata,
        timeout=10,
    )
    await client.stub.UpdateWorker(
        control_pb2.UpdateWorkerRequest(
            worker_id=joined.worker_id,
            state=common_pb2.WORKER_STATE_READY,
            revision_id=reg.revision_id,
            address="127.0.0.1:9",
            score=1.0,
            capacity=1,
        ),
        metadata=metadata,
        timeout=10,
    )
    return joined


async def two_joined(
    client: Client,
) -> tuple[control_pb2.RegisterDeploymentResponse, control_pb2.JoinEndpointResponse, control_pb2.JoinEndpointResponse]:
    """A deployment of "hello" ready (its own worker the fake one) and two more workers joined to it."""
    data, digest = bundle()
    reg, _ = await client.deploy(make_spec(digest=digest, max_workers=4), data)
    await client.wait_ready(reg.endpoint_id)
    return reg, await joined_worker(client, "hello"), await joined_worker(client, "hello")
