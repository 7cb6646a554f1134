"""An authenticated client of the control service that raises vastrpc exceptions."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc._errors import BundleError, ControlUnavailableError, DefinitionError, DeploymentError
from vastrpc._files import exposed_home
from vastrpc._grpc import bearer, channel, error_from_rpc, tls_failure
from vastrpc._manifest import PACK_FILE_BYTES, FileEntry, Manifest, pack_files
from vastrpc._packed import send_raw, upload_files_message
from vastrpc._payload import chunks
from vastrpc._tls import TlsFiles
from vastrpc._warn import warn_user
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc
from vastrpc.config import ClientConfig, control_addresses

log = logging.getLogger("vastrpc.client")

# Unary control calls are small and local: anything slower than this is a fault.
_RPC_TIMEOUT = 60.0
# How often connect asks again while the control service is not listening yet.
_HEALTH_POLL = 0.1
# With several control services, connect gives each at least this long per try before the next.
_HEALTH_TRY = 1.0
# An endpoint watch that carries nothing for this long (the service sends a keepalive after
# at most 10 s of quiet) is stuck somewhere between the service and us: watch again.
WATCH_SILENCE = 30.0
# A request every control service refused is tried again for this long, this often.
_RECONNECT_GRACE = 3.0
_RECONNECT_POLL = 0.25


@dataclass(frozen=True)
class BundleUpload:
    """What ``ControlClient.upload_bundle`` sent.

    Attributes:
        files: Files the service lacked, streamed (the others it already stored).
        file_bytes: Their bytes.
        stored: Whether the manifest was stored (False: the service already had it).
    """

    files: int
    file_bytes: int
    stored: bool


class ControlClient:
    """A channel to the control service, presenting the API key on every call.

    With several addresses (control services sharing one PostgreSQL store), one is used at a
    time: a call it leaves unanswered (UNAVAILABLE) goes to the next, and the client stays
    there. The endpoint watch follows the same switch (``Router``).

    Args:
        address: ``host:port`` of the control service, or several (a comma-separated string
            or a sequence), in order of preference.
        api_key: Its API key.
        tls: TLS files (the CA to trust; a client certificate for mutual TLS); plaintext when None.
            Workers are reached with the same credentials.

    Raises:
        ControlUnavailableError: A TLS file cannot be read.
        DefinitionError: An address is not ``host:port``, or none is given.
    """

    def __init__(self, address: str | Sequence[str], api_key: str, tls: TlsFiles | None = None) -> None:
        self.addresses = control_addresses(address)
        if not self.addresses:
            raise DefinitionError("ControlClient needs the host:port of a control service")
        self.api_key = api_key
        self.tls = tls
        self._metadata = bearer(api_key)
        try:
            # Read once: every worker channel reuses them.
            self.credentials = tls.channel_credentials() if tls is not None else None
        except OSError as exc:
            raise ControlUnavailableError(
                f"cannot read a TLS file for the control service at {self.addresses[0]}: {exc}. Check "
                "VASTRPC_TLS_CA, VASTRPC_TLS_CERT and VASTRPC_TLS_KEY"
            ) from None
        # One channel per address, made when first used and kept: a call still running on the
        # one left behind is not cut off, and a switch back reuses it.
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._use(0)

    def _use(self, index: int) -> None:
        self._index = index
        self.address = self.addresses[index]
        if self.address not in self._channels:
            self._channels[self.address] = channel(self.address, self.credentials)
        self.channel = self._channels[self.address]
        self.stub = control_pb2_grpc.ControlServiceStub(self.channel)
        # UploadFiles also sends messages serialised by hand (small files packed: vastrpc._packed).
        self.stub.UploadFiles = self.channel.stream_unary(
            "/vastrpc.api.v1.ControlService/UploadFiles",
            request_serializer=send_raw(control_pb2.UploadFilesRequest.SerializeToString),
            response_deserializer=control_pb2.UploadFilesResponse.FromString,
        )

    def switch(self, failed: str) -> bool:
        """Turn to the next control service after ``failed``, unless another caller already did.

        Returns:
            Whether there is another one to turn to.
        """
        if len(self.addresses) < 2:
            return False
        if self.address == failed:
            self._use((self._index + 1) % len(self.addresses))
            log.warning("control service %s stopped answering: using %s from now on", failed, self.address)
        return True

    @classmethod
    async def connect(cls, config: ClientConfig) -> ControlClient:
        """Reach a configured control service (the first of several that answers), or start/reuse the
        embedded one, and check it answers.

        Raises:
            ControlUnavailableError: None answers within ``config.connect_timeout``, or (at once)
                a TLS handshake failed.
            AuthenticationError: It refused this client's certificate (mutual TLS).
        """
        addresses: str | tuple[str, ...] = config.control_addresses
        api_key, tls = config.api_key, config.tls
        if not addresses:
            from vastrpc.deploy.embedded import ensure_control

            if (exposed := exposed_home(Path(config.home).expanduser())) is not None:
                warn_user(exposed)  # here, not in ensure_control's thread, to point at the caller's line
            local = await asyncio.to_thread(ensure_control, config.home)
            # The embedded service says what to trust; VASTRPC_TLS_* are for a service of your own.
            addresses, api_key, tls = local.address, api_key or local.api_key, local.tls
        if not api_key:
            raise ControlUnavailableError(
                f"no API key for the control service at {_names(control_addresses(addresses))}: set "
                "VASTRPC_API_KEY or pass Deployment(api_key=...)"
            )
        client = cls(addresses, api_key, tls)
        try:
            await client._check_health(config.connect_timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def _check_health(self, timeout: float) -> None:
        # Not wait_for_ready: a failed attempt comes back at once with its reason, so a TLS
        # mismatch (which retrying never heals) fails now; anything else (not listening yet)
        # is retried, on each address in turn, until the timeout.
        deadline = time.monotonic() + timeout
        per_try = timeout if len(self.addresses) == 1 else max(timeout / len(self.addresses), _HEALTH_TRY)
        failures: dict[str, str] = {}
        while True:
            for step in range(len(self.addresses)):
                index = (self._index + step) % len(self.addresses)
                address = self.addresses[index]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._use(index)
                health = health_pb2_grpc.HealthStub(self.channel)
                try:
                    await health.Check(
                        health_pb2.HealthCheckRequest(),
                        timeout=max(min(remaining, per_try), 0.01),
                        wait_for_ready=False,
                    )
                    return
                except grpc.aio.AioRpcError as exc:
                    if (tls_error := tls_failure(exc, address, self.tls)) is not None:
                        raise tls_error from None
                    failures[address] = f"{exc.code().name}: {exc.details()}"
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise self.unreachable(failures, f" within {timeout:g}s") from None
            if time.monotonic() + _HEALTH_POLL >= deadline:
                raise self.unreachable(failures, f" within {timeout:g}s")
            await asyncio.sleep(_HEALTH_POLL)

    def unreachable(self, failures: dict[str, str], within: str = "") -> ControlUnavailableError:
        """The error for control services that did not answer, each with its reason, saying what to do."""
        reasons = "; ".join(f"{address}: {reason}" for address, reason in failures.items())
        if len(self.addresses) == 1:
            (address,) = self.addresses
            return ControlUnavailableError(
                f"cannot reach the control service at {address}{within} ({reasons}). Check that it runs "
                "(`vastrpc control status`) and VASTRPC_CONTROL_ADDRESS, or unset it to use the embedded control "
                "service; if other control services share its store, name them too so that the client fails "
                f"over: VASTRPC_CONTROL_ADDRESS={address},OTHER_HOST:PORT"
            )
        return ControlUnavailableError(
            f"cannot reach any of the control services {_names(self.addresses)}{within} ({reasons}). Check that "
            "at least one of them runs (`vastrpc control status`), and VASTRPC_CONTROL_ADDRESS"
        )

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)

    async def _unary(self, method: str, request: Any, timeout: float = _RPC_TIMEOUT) -> Any:
        """Call ``method`` on the control service in use; one that does not answer hands the call to the next.

        ``request`` is a message, or a function making a fresh request iterator (a stream is
        sent again from its start on the next service).
        """
        started = time.monotonic()
        deadline = started + timeout
        failures: dict[str, str] = {}
        tried: set[str] = set()
        while True:
            address = self.address
            rpc = getattr(self.stub, method)
            try:
                message = request() if callable(request) else request
                return await rpc(message, metadata=self._metadata, timeout=max(deadline - time.monotonic(), 0.01))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise error_from_rpc(exc, target=address) from None
                failures[address] = exc.details() or "UNAVAILABLE"
                tried.add(address)
                now = time.monotonic()
                if now >= deadline:
                    raise self.unreachable(failures) from None
                # Every control service reads and writes the one store, so the next one can
                # answer the same request (each is idempotent: registering or provisioning the
                # same revision twice changes nothing more).
                if len(tried) < len(self.addresses) and self.switch(address):
                    continue
                # Every one refused: one that is restarting (or a channel between two reconnect
                # attempts) gets a short grace before the caller is told none answers.
                if now - started >= _RECONNECT_GRACE:
                    raise self.unreachable(failures) from None
                self.switch(address)
                tried.clear()
                await asyncio.sleep(_RECONNECT_POLL)

    async def register(self, spec: control_pb2.DeploymentSpec) -> control_pb2.RegisterDeploymentResponse:
        return await self._unary("RegisterDeployment", control_pb2.RegisterDeploymentRequest(spec=spec))

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

        return await self._unary("UploadBundle", requests, timeout=600)

    async def upload_bundle(
        self,
        manifest: Manifest,
        read: Callable[[FileEntry], Iterator[bytes]],
        on_progress: Callable[[int, int], None] | None = None,
    ) -> BundleUpload:
        """Upload what the service lacks of a bundle: the files it does not store, then the manifest.

        Args:
            manifest: The bundle's manifest.
            read: The content of a file of the manifest, in chunks (``Bundle.read_chunks``).
            on_progress: Called with the file bytes handed to gRPC so far and their total.

        Raises:
            BundleError: A file changed since it was hashed (the service found another digest).
        """
        files = file_bytes = 0
        for attempt in (1, 2):
            sent = await self._upload_missing(manifest, read, on_progress)
            files, file_bytes = files + sent[0], file_bytes + sent[1]
            try:
                up = await self.upload(manifest.digest, manifest.data)
                break
            except DeploymentError:
                # A file the service stored long ago, unused, was collected between the question
                # and the manifest (the reaper's grace had passed): ask again, once.
                if attempt == 2:
                    raise
        return BundleUpload(files=files, file_bytes=file_bytes, stored=up.stored)

    async def _upload_missing(
        self,
        manifest: Manifest,
        read: Callable[[FileEntry], Iterator[bytes]],
        on_progress: Callable[[int, int], None] | None,
    ) -> tuple[int, int]:
        """Stream the files of ``manifest`` the service lacks; returns how many and their bytes."""
        unique = manifest.by_digest()
        asked = await self._unary("MissingFiles", control_pb2.MissingFilesRequest(digests=list(unique)))
        missing = [unique[d] for d in asked.missing if d in unique]
        total = sum(f.size for f in missing)
        if not missing:
            return 0, 0

        # Small files first: a service older than packed files then refuses the first message
        # (it would take a packed message after a file's header for an empty chunk).
        ordered = sorted(missing, key=lambda e: e.size > PACK_FILE_BYTES)

        def requests(packed: bool = True) -> Iterator[control_pb2.UploadFilesRequest | bytes]:
            sent = 0
            for batch in pack_files(ordered, lambda e: e.size if packed else PACK_FILE_BYTES + 1):
                if isinstance(batch, list):
                    # Small files whole, several to a message: one gRPC write for many files.
                    files = [(e.sha256, b"".join(read(e))) for e in batch]
                    yield upload_files_message(files)
                    sent += sum(len(content) for _, content in files)
                    if on_progress is not None:
                        on_progress(sent, total)
                    continue
                header = control_pb2.UploadFilesRequest.Header(digest=batch.sha256, size=batch.size)
                yield control_pb2.UploadFilesRequest(header=header)
                for chunk in read(batch):
                    yield control_pb2.UploadFilesRequest(chunk=chunk)
                    sent += len(chunk)
                    if on_progress is not None:
                        on_progress(sent, total)

        try:
            try:
                await self._unary("UploadFiles", requests, timeout=3600)
            except DefinitionError as exc:
                if "UploadFiles got no header" not in str(exc):
                    raise
                # A control service older than packed files: each file as a header and chunks.
                await self._unary("UploadFiles", lambda: requests(packed=False), timeout=3600)
        except BundleError as exc:
            raise BundleError(
                f"a file of bundle {manifest.digest[:12]} changed after it was hashed ({exc}); "
                "run ensure_ready again to package the current files"
            ) from None
        return len(missing), total

    async def provision(self, endpoint_id: str, revision_id: str) -> control_pb2.ProvisionResponse:
        return await self._unary(
            "Provision", control_pb2.ProvisionRequest(endpoint_id=endpoint_id, revision_id=revision_id)
        )

    async def wake(self, endpoint_id: str) -> int:
        """Ask for workers on an endpoint with none ready; returns how many were started."""
        resp = await self._unary("WakeEndpoint", control_pb2.WakeEndpointRequest(endpoint_id=endpoint_id))
        return int(resp.workers_started)

    async def hold_session(self, endpoint_id: str, session_id: str, worker_id: str, ttl: float) -> bool:
        """Open or renew a session on a worker for ``ttl`` seconds (0 releases it); False if the worker is gone."""
        request = control_pb2.HoldSessionRequest(
            endpoint_id=endpoint_id, session_id=session_id, worker_id=worker_id, ttl_seconds=ttl
        )
        return bool((await self._unary("HoldSession", request)).worker_active)

    async def list_deployments(self, name: str = "") -> control_pb2.ListDeploymentsResponse:
        return await self._unary("ListDeployments", control_pb2.ListDeploymentsRequest(name=name))

    async def worker_logs(self, worker_id: str, tail_bytes: int = 0) -> str:
        resp = await self._unary(
            "GetWorkerLogs", control_pb2.GetWorkerLogsRequest(worker_id=worker_id, tail_bytes=tail_bytes)
        )
        return resp.text

    async def join(self, name: str, tag: str = "") -> control_pb2.JoinEndpointResponse:
        """Admit a worker started by hand to the endpoint ``name:tag``; returns its id and token."""
        return await self._unary("JoinEndpoint", control_pb2.JoinEndpointRequest(name=name, tag=tag))

    async def teardown(self, name: str, tag: str = "") -> control_pb2.TeardownResponse:
        return await self._unary("Teardown", control_pb2.TeardownRequest(name=name, tag=tag))

    async def watch(
        self, endpoint_id: str, silence: float = WATCH_SILENCE
    ) -> AsyncIterator[control_pb2.WatchEndpointResponse]:
        """The endpoint's state, now and after every change, until the caller stops iterating.

        When the control service stops answering, or the watch carries nothing (not even a
        keepalive) for ``silence`` seconds, the watch fails and the client turns to the next
        service, if any: watching again resumes there (they share the state).
        """
        address = self.address
        # Deltas after the first update (a service that predates them sends whole ones): each
        # is merged here, so the caller always gets the whole endpoint.
        call = self.stub.WatchEndpoint(
            control_pb2.WatchEndpointRequest(endpoint_id=endpoint_id, deltas=True), metadata=self._metadata
        )
        workers: dict[str, common_pb2.Worker] = {}
        try:
            while True:
                try:
                    async with asyncio.timeout(silence):
                        update = await call.read()
                except TimeoutError:
                    then = f"; turning to {self.address}" if self.switch(address) else ""
                    log.warning("the endpoint watch on %s was silent for %gs; watching again%s", address, silence, then)
                    raise ControlUnavailableError(
                        f"the endpoint watch on the control service at {address} carried nothing for {silence:g}s{then}"
                    ) from None
                if update is grpc.aio.EOF:
                    return
                if not update.keepalive:
                    yield merge_update(workers, update)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                then = f"; turning to {self.address}" if self.switch(address) else ""
                raise ControlUnavailableError(
                    f"the endpoint watch on the control service at {address} broke ({exc.details()}){then}"
                ) from None
            raise error_from_rpc(exc, target=address) from None
        finally:
            call.cancel()


def merge_update(
    workers: dict[str, common_pb2.Worker], update: control_pb2.WatchEndpointResponse
) -> control_pb2.WatchEndpointResponse:
    """The whole endpoint after ``update``, ``workers`` (by id, oldest first) brought up to date with it.

    A whole update replaces them; a delta (``WatchEndpointResponse.delta``) adds or replaces the
    workers it holds and drops those it names gone. A worker a delta left in place keeps the
    heartbeat time of the last whole update (a delta carries none).
    """
    if not update.delta:
        workers.clear()
        workers.update((w.worker_id, w) for w in update.workers)
        return update
    for worker_id in update.removed_worker_ids:
        workers.pop(worker_id, None)
    for worker in update.workers:
        workers[worker.worker_id] = worker
    whole = control_pb2.WatchEndpointResponse()
    whole.CopyFrom(update)
    whole.ClearField("delta")
    whole.ClearField("removed_worker_ids")
    del whole.workers[:]
    whole.workers.extend(workers.values())
    return whole


def _names(addresses: Sequence[str]) -> str:
    return ", ".join(addresses)
