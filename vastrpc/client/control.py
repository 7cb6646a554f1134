"""An authenticated client of the control service that raises vastrpc exceptions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc._errors import ControlUnavailableError
from vastrpc._grpc import bearer, channel, error_from_rpc, tls_failure
from vastrpc._payload import chunks
from vastrpc._tls import TlsFiles
from vastrpc.api.v1 import control_pb2, control_pb2_grpc
from vastrpc.config import ClientConfig

T = TypeVar("T")

# Unary control calls are small and local: anything slower than this is a fault.
_RPC_TIMEOUT = 60.0
# How often connect asks again while the control service is not listening yet.
_HEALTH_POLL = 0.1


class ControlClient:
    """One channel to the control service, presenting the API key on every call.

    Args:
        address: ``host:port`` of the control service.
        api_key: Its API key.
        tls: TLS files (the CA to trust; a client certificate for mutual TLS); plaintext when None.
            Workers are reached with the same credentials.

    Raises:
        ControlUnavailableError: A TLS file cannot be read.
    """

    def __init__(self, address: str, api_key: str, tls: TlsFiles | None = None) -> None:
        self.address = address
        self.api_key = api_key
        self.tls = tls
        self._metadata = bearer(api_key)
        try:
            # Read once: every worker channel reuses them.
            self.credentials = tls.channel_credentials() if tls is not None else None
        except OSError as exc:
            raise ControlUnavailableError(
                f"cannot read a TLS file for the control service at {address}: {exc}. Check VASTRPC_TLS_CA, "
                "VASTRPC_TLS_CERT and VASTRPC_TLS_KEY"
            ) from None
        self.channel = channel(address, self.credentials)
        self.stub = control_pb2_grpc.ControlServiceStub(self.channel)

    @classmethod
    async def connect(cls, config: ClientConfig) -> ControlClient:
        """Reach the configured control service, or start/reuse the embedded one, and check it answers.

        Raises:
            ControlUnavailableError: It does not answer within ``config.connect_timeout``, or
                (at once) a TLS handshake with it failed.
            AuthenticationError: It refused this client's certificate (mutual TLS).
        """
        address, api_key, tls = config.control_address, config.api_key, config.tls
        if address is None:
            from vastrpc.deploy.embedded import ensure_control

            local = await asyncio.to_thread(ensure_control, config.home)
            # The embedded service says what to trust; VASTRPC_TLS_* are for a service of your own.
            address, api_key, tls = local.address, api_key or local.api_key, local.tls
        if not api_key:
            raise ControlUnavailableError(
                f"no API key for the control service at {address}: set VASTRPC_API_KEY or pass Deployment(api_key=...)"
            )
        client = cls(address, api_key, tls)
        try:
            await client._check_health(config.connect_timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def _check_health(self, timeout: float) -> None:
        # Not wait_for_ready: a failed attempt comes back at once with its reason, so a TLS
        # mismatch (which retrying never heals) fails now; anything else (not listening yet)
        # is retried until the timeout.
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=max(remaining, 0.01), wait_for_ready=False)
                return
            except grpc.aio.AioRpcError as exc:
                if (tls_error := tls_failure(exc, self.address, self.tls)) is not None:
                    raise tls_error from None
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + _HEALTH_POLL >= deadline:
                    raise ControlUnavailableError(
                        f"cannot reach the control service at {self.address} within {timeout:g}s "
                        f"({exc.code().name}: {exc.details()}). Check VASTRPC_CONTROL_ADDRESS, or unset it to "
                        "use the embedded control service"
                    ) from None
            await asyncio.sleep(_HEALTH_POLL)

    async def close(self) -> None:
        await self.channel.close()

    async def _unary(self, rpc: Callable[..., Any], request: Any, timeout: float = _RPC_TIMEOUT) -> Any:
        try:
            return await rpc(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, target=self.address) from None

    async def register(self, spec: control_pb2.DeploymentSpec) -> control_pb2.RegisterDeploymentResponse:
        return await self._unary(self.stub.RegisterDeployment, control_pb2.RegisterDeploymentRequest(spec=spec))

    async def upload(
        self, digest: str, data: bytes, on_progress: Callable[[int], None] | None = None
    ) -> control_pb2.UploadBundleResponse:
        """Stream a bundle in 1 MiB chunks; the service verifies the digest before storing it.

        Args:
            digest: The bundle's SHA-256 (hex).
            data: The bundle.
            on_progress: Called with the bytes handed to gRPC so far, after each chunk.
        """

        def requests() -> Any:
            yield control_pb2.UploadBundleRequest(
                header=control_pb2.UploadBundleRequest.Header(digest=digest, size=len(data))
            )
            sent = 0
            for chunk, _more in chunks(data):
                yield control_pb2.UploadBundleRequest(chunk=chunk)
                sent += len(chunk)
                if on_progress is not None:
                    on_progress(sent)

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

    async def join(self, name: str, tag: str = "") -> control_pb2.JoinEndpointResponse:
        """Admit a worker started by hand to the endpoint ``name:tag``; returns its id and token."""
        return await self._unary(self.stub.JoinEndpoint, control_pb2.JoinEndpointRequest(name=name, tag=tag))

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
