"""TLS with real certificates: a real grpc.aio server (TLS, mutual TLS, a stranger's certificate), the local CA, env."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc._errors import DefinitionError
from vastrpc._grpc import start_server
from vastrpc._tls import TlsFiles, certificate_problems, ensure_local_ca, ensure_local_tls, issue_certificate
from vastrpc.config import ClientConfig, tls_from_env
from vastrpc.control.providers.local import LocalProcessProvider


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


def _usages(path: Path) -> set[str]:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    names = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return {names[u] for u in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value}


def test_one_certificate_can_serve_and_authenticate_a_client(tmp_path: Path) -> None:
    ca, ca_key = ensure_local_ca(tmp_path)
    both, _ = issue_certificate(
        ca, ca_key, tmp_path / "b.pem", tmp_path / "b.key", common_name="b", hosts=[], client=True, server=True
    )
    client, _ = issue_certificate(
        ca, ca_key, tmp_path / "c.pem", tmp_path / "c.key", common_name="c", hosts=[], client=True
    )
    server, _ = issue_certificate(ca, ca_key, tmp_path / "s.pem", tmp_path / "s.key", common_name="s", hosts=[])
    assert _usages(both) == {"serverAuth", "clientAuth"}
    assert _usages(client) == {"clientAuth"} and _usages(server) == {"serverAuth"}
    with pytest.raises(ValueError, match="at least one usage"):
        issue_certificate(ca, ca_key, tmp_path / "n.pem", tmp_path / "n.key", common_name="n", hosts=[], server=False)


def test_local_tls_is_generated_once_and_reissued_for_new_hosts(tmp_path: Path) -> None:
    tls = ensure_local_tls(tmp_path / "tls")
    assert (tls.ca_file, tls.cert_file, tls.key_file) == tuple(
        tmp_path / "tls" / n for n in ("ca.pem", "local.pem", "local.key")
    )
    assert _usages(tls.cert_file) == {"serverAuth", "clientAuth"}
    assert certificate_problems(tls.cert_file, client=True, hosts=["127.0.0.1", "localhost", "::1"]) == []
    first = tls.cert_file.read_bytes()
    assert ensure_local_tls(tmp_path / "tls").cert_file.read_bytes() == first  # reused
    again = ensure_local_tls(tmp_path / "tls", ["10.1.2.3"], require_client_cert=True)
    assert again.require_client_cert and again.cert_file.read_bytes() != first  # reissued to name the new host
    assert certificate_problems(again.cert_file, client=True, hosts=["10.1.2.3", "127.0.0.1"]) == []
    assert again.ca_file.read_bytes() == tls.ca_file.read_bytes()  # the CA is kept: clients keep trusting it


def test_certificate_problems_name_what_local_workers_lack(tmp_path: Path) -> None:
    ca, ca_key = ensure_local_ca(tmp_path)
    server, _ = issue_certificate(
        ca, ca_key, tmp_path / "s.pem", tmp_path / "s.key", common_name="s", hosts=["example.org"]
    )
    problems = certificate_problems(server, client=True, hosts=["127.0.0.1"])
    assert len(problems) == 2
    assert "does not name 127.0.0.1" in problems[0] and "clientAuth" in problems[1]
    assert certificate_problems(server, client=False, hosts=["example.org"]) == []
    assert "cannot be read" in certificate_problems(tmp_path / "missing.pem", client=False, hosts=[])[0]


def test_tls_from_env() -> None:
    assert tls_from_env({}) is None
    assert tls_from_env({"VASTRPC_TLS_CA": "/x/ca.pem"}) == TlsFiles(ca_file=Path("/x/ca.pem"))
    full = {"VASTRPC_TLS_CA": "/ca", "VASTRPC_TLS_CERT": "/c", "VASTRPC_TLS_KEY": "/k"}
    assert tls_from_env(full) == TlsFiles(Path("/ca"), Path("/c"), Path("/k"))
    assert tls_from_env({**full, "VASTRPC_TLS_REQUIRE_CLIENT_CERT": "1"}).require_client_cert
    assert ClientConfig.from_env(full).tls == TlsFiles(Path("/ca"), Path("/c"), Path("/k"))
    with pytest.raises(DefinitionError, match="VASTRPC_TLS_CERT and VASTRPC_TLS_KEY go together"):
        tls_from_env({"VASTRPC_TLS_CERT": "/c"})


async def test_the_local_provider_hands_workers_the_services_tls_and_nothing_inherited(tmp_path: Path) -> None:
    script = "import os, json; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('VASTRPC_TLS')}))"
    inherited = {**os.environ, "VASTRPC_TLS_CA": "/inherited.pem", "VASTRPC_TLS_KEY": "/inherited.key"}

    async def worker_env(tls: TlsFiles | None) -> dict[str, str]:
        exited = asyncio.Event()
        provider = LocalProcessProvider(
            tmp_path,
            argv_prefix=[sys.executable, "-c", script],
            environ=inherited,
            on_exit=lambda *_: exited.set(),
            worker_tls=tls,
        )
        await provider.start_worker("w-1", "tok", "127.0.0.1:5")
        await asyncio.wait_for(exited.wait(), 10)
        return json.loads(provider.log_path("w-1").read_text().splitlines()[-1])

    assert await worker_env(None) == {}
    tls = TlsFiles(Path("/ca.pem"), Path("/local.pem"), Path("/local.key"), require_client_cert=True)
    assert await worker_env(tls) == {
        "VASTRPC_TLS_CA": "/ca.pem",
        "VASTRPC_TLS_CERT": "/local.pem",
        "VASTRPC_TLS_KEY": "/local.key",
        "VASTRPC_TLS_REQUIRE_CLIENT_CERT": "1",
    }
