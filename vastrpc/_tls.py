"""TLS for every server and channel: certificates from files, or a local CA generated for the embedded default."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "ensure_local_ca", "issue_certificate"]

_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for one side of a TLS connection.

    Attributes:
        ca_file: The CA that signs the peer's certificate (servers: client certificates,
            for mutual TLS; clients: the server's).
        cert_file: This side's certificate chain (required for servers; for clients only
            under mutual TLS).
        key_file: The private key of ``cert_file``.
        require_client_cert: Servers only: refuse clients without a certificate signed by
            ``ca_file`` (mutual TLS).
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    require_client_cert: bool = False

    def _read(self, path: Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for a grpc server."""
        if self.cert_file is None or self.key_file is None:
            raise ValueError("a TLS server needs cert_file and key_file")
        pair = [(self._read(self.key_file), self._read(self.cert_file))]
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("mutual TLS needs ca_file: the CA that signs client certificates")
        return grpc.ssl_server_credentials(
            pair, root_certificates=self._read(self.ca_file), require_client_auth=self.require_client_cert
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a channel to a server whose certificate ``ca_file`` signs."""
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca_file),
            private_key=self._read(self.key_file),
            certificate_chain=self._read(self.cert_file),
        )


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ensure_local_ca(folder: Path, name: str = "vastrpc local CA") -> tuple[Path, Path]:
    """A CA under ``folder`` (``ca.pem``, ``ca.key``), created on first use; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue_certificate(
    ca_cert: Path,
    ca_key: Path,
    out_cert: Path,
    out_key: Path,
    *,
    common_name: str,
    hosts: list[str],
    client: bool = False,
) -> tuple[Path, Path]:
    """Sign a server (or, with ``client``, a client) certificate for ``hosts`` (DNS names or IPs)."""
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    _write_private(out_key, _key_pem(key))
    out_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out_cert, out_key
