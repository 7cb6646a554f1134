"""An authenticated client of the control service that raises vastrpc exceptions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc._errors import ControlUnavailableError
from vastrpc._grpc import CHANNEL_OPTIONS, bearer, error_from_rpc
from vastrpc._payload import chunks
from vastrpc.api.v1 import control_pb2, control_pb2_grpc
from vastrpc.config import ClientConfig

T = TypeVar("T")

# Unary control calls are small and local: anything slower than this is a fault.
_RPC_TIMEOUT = 60.0


class ControlClient:
    """One channel to the control service, presenting the API key on every call."""

    def __init__(self, address: str, api_key: str) -> None:
        self.address = address
        self.api_key = api_key
        self._metadata = bearer(api_key)
        self.channel = grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))
        self.stub = control_pb2_grpc.ControlServiceStub(self.channel)

    @classmethod
    async def connect(cls, config: ClientConfig) -> ControlClient:
        """Reach the configured control service, or start/reuse the embedded one, and check it answers."""
        address, api_key = config.control_address, config.api_key
        if address is None:
            from vastrpc.deploy.embedded import ensure_control

            address, embedded_key = await asyncio.to_thread(ensure_control, config.home)
            api_key = api_key or embedded_key
        if not api_key:
            raise ControlUnavailableError(
                f"no API key for the control service at {address}: set VASTRPC_API_KEY or pass Deployment(api_key=...)"
            )
        assert address is not None
        client = cls(address, api_key)
        try:
            await health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=config.connect_timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            await client.close()
            raise ControlUnavailableError(
                f"cannot reach the control service at {address} within {config.connect_timeout:g}s "
                f"({exc.code().name}: {exc.details()}). Check VASTRPC_CONTROL_ADDRESS, or unset it to use "
                "the embedded control service"
            ) from None
        return client

    async def close(self) -> None:
        await self.channel.close()

    async def _unary(self, rpc: Callable[..., Any], request: Any, timeout: float = _RPC_TIMEOUT) -> Any:
        try:
            return await rpc(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, target=self.address) from None

    async def register(self, spec: control_pb2.DeploymentSpec) -> control_pb2.RegisterDeploymentResponse:
        return await self._unary(self.stub.RegisterDeployment, control_pb2.RegisterDeploymentRequest(spec=spec))

    async def upload(self, digest: str, data: bytes) -> control_pb2.UploadBundleResponse:
        """Stream a bundle in 1 MiB chunks; the service verifies the digest before storing it."""

        def requests() -> Any:
            yield control_pb2.UploadBundleRequest(
                header=control_pb2.UploadBundleRequest.Header(digest=digest, size=len(data))
            )
            for chunk, _more in chunks(data):
                yield control_pb2.UploadBundleRequest(chunk=chunk)

        return await self._unary(self.stub.UploadBundle, requests(), timeout=600)

    async def provision(self, endpoint_id: str, revision_id: str) -> control_pb2.ProvisionResponse:
        return await self._unary(
            self.stub.Provision, control_pb2.ProvisionRequest(endpoint_id=endpoint_id, revision_id=revision_id)
        )

    async def wake(self, endpoint_id: str) -> int:
        """Ask for workers on an endpoint with none ready; returns how many were started."""
        resp = await self._unary(self.stub.WakeEndpoint, control_pb2.WakeEndpointRequest(endpoint_id=endpoint_id))
        return int(resp.workers_started)

    async def list_deployments(self, name: str = "") -> control_pb2.ListDeploymentsResponse:
        return await self._unary(self.stub.ListDeployments, control_pb2.ListDeploymentsRequest(name=name))

    async def worker_logs(self, worker_id: str, tail_bytes: int = 0) -> str:
        resp = await self._unary(
            self.stub.GetWorkerLogs, control_pb2.GetWorkerLogsRequest(worker_id=worker_id, tail_bytes=tail_bytes)
        )
        return resp.text

    async def teardown(self, name: str, tag: str = "") -> control_pb2.TeardownResponse:
        return await self._unary(self.stub.Teardown, control_pb2.TeardownRequest(name=name, tag=tag))

    async def watch(self, endpoint_id: str) -> AsyncIterator[control_pb2.WatchEndpointResponse]:
        """The endpoint's state, now and after every change, until the caller stops iterating."""
        call = self.stub.WatchEndpoint(
            control_pb2.WatchEndpointRequest(endpoint_id=endpoint_id), metadata=self._metadata
        )
        try:
            async for update in call:
                yield update
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, target=self.address) from None
        finally:
            call.cancel()
