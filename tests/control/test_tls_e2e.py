"""TLS end to end with real certificates: client → control, agent → control, client → worker, and refusals."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc import AuthenticationError, ControlUnavailableError
from vastrpc._tls import TlsFiles, ensure_local_ca, issue_certificate
from vastrpc.client.control import ControlClient
from vastrpc.config import ClientConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parents[2]
TLS_AUTO = {"args": ["--tls", "auto"]}
MUTUAL_AUTO = {"args": ["--tls", "auto", "--tls-require-client-cert"]}
# A failure that retrying cannot heal must come back well before any timeout in play (30 s here).
FAST = 3.0

SQUARE = """
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{"x": 2}}])
async def square(x: int) -> int:
    return x * x
"""


def _pki(folder: Path, name: str) -> dict[str, Path]:
    """A CA of its own with a client certificate."""
    ca, ca_key = ensure_local_ca(folder, name)
    cert, key = issue_certificate(
        ca, ca_key, folder / "client.pem", folder / "client.key", common_name=f"{name} client", hosts=[], client=True
    )
    return {"ca": ca, "ca_key": ca_key, "cert": cert, "key": key}


def _own_files(tmp_path: Path) -> list[str]:
    """Files from a CA of the operator's own (not --tls auto): one certificate that serves and authenticates."""
    pki = _pki(tmp_path / "own-pki", "own CA")
    cert, key = issue_certificate(
        pki["ca"],
        pki["ca_key"],
        tmp_path / "own-pki" / "service.pem",
        tmp_path / "own-pki" / "service.key",
        common_name="control",
        hosts=["127.0.0.1", "localhost"],
        client=True,
        server=True,
    )
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(pki["ca"])]
    return [*args, "--tls-require-client-cert"]


async def _health(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status of a health check on ``address`` (plaintext when ``credentials`` is None)."""
    channel = grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _config(control, tmp_path: Path, tls: TlsFiles | None) -> ClientConfig:
    return ClientConfig(
        control_address=control.address, api_key=control.api_key, home=tmp_path, connect_timeout=30, tls=tls
    )


async def _refused(config: ClientConfig, error: type[Exception], match: str) -> Exception:
    started = time.monotonic()
    with pytest.raises(error, match=match) as info:
        client = await ControlClient.connect(config)
        await client.close()
    assert time.monotonic() - started < FAST, "a TLS failure must not wait for the connect timeout"
    return info.value


@pytest.mark.parametrize("control_service", [TLS_AUTO], indirect=True)
async def test_a_deployment_is_served_over_tls_end_to_end(project, control_service) -> None:
    info = json.loads((control_service.home / "control.json").read_text())
    assert info["tls"] is True and info["tls_ca"] == str(control_service.home / "tls" / "ca.pem")
    raw = (control_service.home / "control.json").read_text()
    assert control_service.api_key not in raw and "PRIVATE KEY" not in raw
    assert (control_service.home / "tls" / "local.key").stat().st_mode & 0o777 == 0o600

    mod = project(SQUARE)
    # The control service speaks only TLS: the worker registered and reported ready over it
    # (agent → control), and this call went client → control → worker over TLS.
    assert await mod.square(7) == 49
    info = await mod.square.call_with_info(8)
    assert info.value == 64
    (worker,) = await project.workers(mod.app)
    assert worker["state"] == "READY"
    # The worker's serving process speaks only TLS, with a certificate our CA signed.
    assert await _health(worker["address"], None) == grpc.StatusCode.UNAVAILABLE
    assert await _health(worker["address"], control_service.tls.channel_credentials()) == grpc.StatusCode.OK
    assert await _health(worker["address"], TlsFiles().channel_credentials()) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("control_service", [TLS_AUTO], indirect=True)
async def test_a_plaintext_or_distrustful_client_fails_fast_and_clearly(control_service, tmp_path) -> None:
    err = await _refused(_config(control_service, tmp_path, None), ControlUnavailableError, "serves TLS")
    assert "VASTRPC_TLS_CA" in str(err)

    stranger = _pki(tmp_path / "stranger", "another CA")
    err = await _refused(
        _config(control_service, tmp_path, TlsFiles(ca_file=stranger["ca"])), ControlUnavailableError, "TLS handshake"
    )
    assert str(stranger["ca"]) in str(err)

    missing = TlsFiles(ca_file=tmp_path / "nope.pem")
    await _refused(_config(control_service, tmp_path, missing), ControlUnavailableError, "cannot read a TLS file")


async def test_a_tls_client_against_a_plaintext_service_fails_fast(control_service, tmp_path) -> None:
    ca = _pki(tmp_path / "pki", "some CA")["ca"]
    err = await _refused(
        _config(control_service, tmp_path, TlsFiles(ca_file=ca)), ControlUnavailableError, "TLS handshake"
    )
    assert "does not serve TLS" in str(err)


@pytest.mark.parametrize("control_service", [MUTUAL_AUTO], indirect=True)
async def test_mutual_tls_admits_our_certificates_and_refuses_others_fast(project, control_service, tmp_path) -> None:
    # The fixture's client certificate comes from the service's own CA: everything works,
    # including workers, which present the local certificate to the control service.
    mod = project(SQUARE)
    assert await mod.square(5) == 25
    (worker,) = await project.workers(mod.app)
    ours = control_service.tls
    assert await _health(worker["address"], ours.channel_credentials()) == grpc.StatusCode.OK
    # Workers require a client certificate too, like the control service.
    without_cert = TlsFiles(ca_file=ours.ca_file).channel_credentials()
    assert await _health(worker["address"], without_cert) == grpc.StatusCode.UNAVAILABLE

    # A client whose certificate another CA signed: a clear error at once, through ensure_ready.
    stranger = _pki(tmp_path / "stranger", "another CA")
    other = project(SQUARE)
    other.app._config = dataclasses.replace(
        other.app._config,
        connect_timeout=30,
        tls=TlsFiles(ca_file=ours.ca_file, cert_file=stranger["cert"], key_file=stranger["key"]),
    )
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="client certificate") as info:
        await other.app.ensure_ready()
    assert time.monotonic() - started < FAST
    assert str(stranger["cert"]) in str(info.value)

    # No client certificate at all: refused the same way.
    await _refused(
        _config(control_service, tmp_path, TlsFiles(ca_file=ours.ca_file)), AuthenticationError, "presents none"
    )


def _own_client_tls(tmp_path: Path) -> TlsFiles:
    """A client certificate from the operator's own CA (written by _own_files)."""
    ca, ca_key = tmp_path / "own-pki" / "ca.pem", tmp_path / "own-pki" / "ca.key"
    cert, key = tmp_path / "me.pem", tmp_path / "me.key"
    issue_certificate(ca, ca_key, cert, key, common_name="me", hosts=[], client=True)
    return TlsFiles(ca_file=ca, cert_file=cert, key_file=key)


@pytest.mark.parametrize("control_service", [{"setup": _own_files}], indirect=True)
async def test_mutual_tls_with_certificate_files_of_your_own(project, control_service, tmp_path) -> None:
    assert json.loads((control_service.home / "control.json").read_text())["tls_ca"] == str(
        tmp_path / "own-pki" / "ca.pem"
    )
    assert not (control_service.home / "tls").exists()  # nothing generated
    mod = project(SQUARE)
    mod.app._config = dataclasses.replace(mod.app._config, tls=_own_client_tls(tmp_path))
    assert await mod.square(9) == 81


def _cli(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_")}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env["VASTRPC_HOME"] = str(home)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vastrpc", *args], capture_output=True, text=True, env=full_env, timeout=45
    )


@pytest.mark.parametrize("control_service", [MUTUAL_AUTO], indirect=True)
def test_the_cli_reaches_a_tls_service(control_service) -> None:
    home = control_service.home
    status = _cli("control", "status", home=home)
    assert status.returncode == 0 and "TLS (trust" in status.stdout
    # Under the home: the CA from control.json, and the home's own certificate for mutual TLS.
    listing = _cli("ls", home=home)
    assert (listing.returncode, listing.stdout.strip()) == (0, "no deployments"), listing.stderr

    # From elsewhere: the CA and a client certificate from the environment, or a clear refusal.
    tls = control_service.tls
    target = {"VASTRPC_CONTROL_ADDRESS": control_service.address, "VASTRPC_API_KEY": control_service.api_key}
    refused = _cli("ls", home=home.parent / "elsewhere", env={**target, "VASTRPC_TLS_CA": str(tls.ca_file)})
    assert refused.returncode == 3 and "client certificate" in refused.stderr  # 3: cannot reach the service
    assert len(refused.stderr.strip().splitlines()) == 1
    env = {**target, "VASTRPC_TLS_CA": str(tls.ca_file), "VASTRPC_TLS_CERT": str(tls.cert_file)}
    env["VASTRPC_TLS_KEY"] = str(tls.key_file)
    listing = _cli("ls", home=home.parent / "elsewhere", env=env)
    assert (listing.returncode, listing.stdout.strip()) == (0, "no deployments"), listing.stderr


def test_control_serve_rejects_incomplete_tls_flags(tmp_path) -> None:
    for args, message in (
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-require-client-cert"], "need TLS"),
        (["--tls", "auto", "--tls-cert", "a", "--tls-key", "b"], "--tls auto generates"),
        (["--tls-cert", "a", "--tls-key", "b", "--tls-require-client-cert"], "needs --tls-ca"),
        (["--tls-cert", str(tmp_path / "a"), "--tls-key", str(tmp_path / "b")], "no such file"),
    ):
        result = _cli("control", "serve", "--home", str(tmp_path / "home"), *args, home=tmp_path)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
