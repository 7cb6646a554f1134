"""TLS with real certificates on a real grpc.aio server: server TLS, mutual TLS, and a stranger's certificate."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc._grpc import start_server
from vastrpc._tls import TlsFiles, ensure_local_ca, issue_certificate


def _pki(folder: Path, name: str) -> dict[str, Path]:
    ca, ca_key = ensure_local_ca(folder, name)
    server = issue_certificate(
        ca, ca_key, folder / "server.pem", folder / "server.key", common_name="server", hosts=["127.0.0.1", "localhost"]
    )
    client = issue_certificate(
        ca, ca_key, folder / "client.pem", folder / "client.key", common_name="client", hosts=[], client=True
    )
    return {"ca": ca, "server": server[0], "server_key": server[1], "client": client[0], "client_key": client[1]}


def test_local_ca_is_created_once_with_private_key_mode(tmp_path: Path) -> None:
    ca, key = ensure_local_ca(tmp_path / "tls")
    assert (key.stat().st_mode & 0o777) == 0o600
    assert ensure_local_ca(tmp_path / "tls") == (ca, key)
    assert ca.read_bytes() == ensure_local_ca(tmp_path / "tls")[0].read_bytes()


async def _check(address: str, credentials: grpc.ChannelCredentials) -> None:
    async with grpc.aio.secure_channel(address, credentials) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_server_tls_and_mutual_tls_with_real_certificates(tmp_path: Path) -> None:
    ours = _pki(tmp_path / "ours", "our CA")
    theirs = _pki(tmp_path / "theirs", "another CA")
    server_tls = TlsFiles(
        ca_file=ours["ca"], cert_file=ours["server"], key_file=ours["server_key"], require_client_cert=True
    )
    server, port, _ = await start_server("127.0.0.1:0", lambda s: [], authorize=lambda m, t: True, tls=server_tls)
    address = f"127.0.0.1:{port}"
    try:
        good = TlsFiles(ca_file=ours["ca"], cert_file=ours["client"], key_file=ours["client_key"])
        await _check(address, good.channel_credentials())

        # A client certificate from another CA fails at the handshake, at once, not after retries.
        stranger = TlsFiles(ca_file=ours["ca"], cert_file=theirs["client"], key_file=theirs["client_key"])
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _check(address, stranger.channel_credentials())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 3

        # Without a client certificate at all: refused too.
        with pytest.raises(grpc.aio.AioRpcError):
            await _check(address, TlsFiles(ca_file=ours["ca"]).channel_credentials())

        # A client that trusts another CA refuses our server.
        with pytest.raises(grpc.aio.AioRpcError):
            await _check(
                address,
                TlsFiles(
                    ca_file=theirs["ca"], cert_file=ours["client"], key_file=ours["client_key"]
                ).channel_credentials(),
            )
    finally:
        await server.stop(0)
