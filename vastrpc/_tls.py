"""TLS for every server and channel: certificates from files, or a local CA generated for the embedded default."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "LOCAL_HOSTS",
    "TlsFiles",
    "certificate_problems",
    "ensure_local_ca",
    "ensure_local_tls",
    "issue_certificate",
]

_VALIDITY = datetime.timedelta(days=3650)
# A generated certificate this close to its end is replaced rather than reused.
_RENEW_BEFORE = datetime.timedelta(days=30)
# The names a local control service and its local workers are dialled by.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


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
    server: bool | None = None,
) -> tuple[Path, Path]:
    """Sign a certificate for ``hosts`` (DNS names or IPs) with ``ca_cert`` and ``ca_key``.

    Args:
        ca_cert: The signing CA's certificate.
        ca_key: Its private key.
        out_cert: Where the certificate goes (PEM).
        out_key: Where its private key goes (PEM, mode 0600).
        common_name: The certificate's subject CN.
        hosts: DNS names and IP addresses it is valid for (subjectAltName).
        client: Allow TLS client authentication (clientAuth).
        server: Allow TLS server authentication (serverAuth); by default only when not ``client``.
            ``client=True, server=True`` gives one certificate that both serves and
            authenticates as a client, as a local worker does.

    Returns:
        ``(out_cert, out_key)``.
    """
    if server is None:
        server = not client
    if not (client or server):
        raise ValueError("a certificate needs at least one usage: client, server, or both")
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
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
            x509.ExtendedKeyUsage(usages),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    _write_private(out_key, _key_pem(key))
    out_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out_cert, out_key


def _covers(cert: x509.Certificate, hosts: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    named = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    return all(str(ipaddress.ip_address(h)) in named if _is_ip(h) else h in named for h in hosts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ensure_local_tls(folder: Path, hosts: list[str] | None = None, *, require_client_cert: bool = False) -> TlsFiles:
    """TLS for a local control service and its local workers, generated under ``folder`` on first use.

    A local CA (``ca.pem``, ``ca.key``) signs one certificate (``local.pem``, ``local.key``)
    for ``hosts`` that carries both serverAuth and clientAuth: the control service serves
    with it, and local workers serve with it and present it to the control service under
    mutual TLS. The certificate is reissued when it does not name every host, no longer
    chains to the CA, or nears its end.

    Args:
        folder: Where the files live (e.g. ``home/tls``).
        hosts: The names and addresses clients dial; defaults to ``LOCAL_HOSTS``.
        require_client_cert: Refuse clients without a certificate from this CA.

    Returns:
        Server-side files: the local CA as ``ca_file``, the local certificate and key.
    """
    hosts = list(dict.fromkeys([*LOCAL_HOSTS, *(hosts or [])]))
    ca_cert, ca_key = ensure_local_ca(folder)
    cert_path, key_path = folder / "local.pem", folder / "local.key"
    if not _reusable(ca_cert, cert_path, key_path, hosts):
        issue_certificate(
            ca_cert, ca_key, cert_path, key_path, common_name="vastrpc local", hosts=hosts, client=True, server=True
        )
    return TlsFiles(ca_file=ca_cert, cert_file=cert_path, key_file=key_path, require_client_cert=require_client_cert)


def _reusable(ca_cert: Path, cert_path: Path, key_path: Path, hosts: list[str]) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    fresh = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > _RENEW_BEFORE
    return fresh and _covers(cert, hosts)


def certificate_problems(cert_file: Path, *, client: bool, hosts: list[str]) -> list[str]:
    """Why ``cert_file`` would not serve ``hosts`` (or, with ``client``, authenticate a client); empty when fine."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        return [f"it cannot be read as a PEM certificate ({exc})"]
    problems = []
    if not _covers(cert, hosts):
        problems.append(f"it does not name {', '.join(hosts)} (subjectAltName), which clients of local workers dial")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return problems  # no restriction: every usage is allowed
    if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        problems.append("it does not allow TLS server authentication (extendedKeyUsage serverAuth)")
    if client and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        problems.append(
            "it does not allow TLS client authentication (extendedKeyUsage clientAuth), which workers need "
            "to present it under mutual TLS"
        )
    return problems
