"""How deploy, ls, logs and teardown reach a control service: their shared flags, and the address, key and TLS."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vastrpc._errors import AuthenticationError, ControlUnavailableError
from vastrpc.cli.exit_codes import EXIT_USAGE, Failure

__all__ = ["add_client_flags", "client_overrides", "client_tls", "connect", "control_stub"]


def add_client_flags(p: argparse.ArgumentParser, home: Path) -> None:
    """The flags that name the control service and how to reach it, and ``--json``."""
    p.add_argument(
        "--control",
        default=os.environ.get("VASTRPC_CONTROL_ADDRESS"),
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the control service, or several sharing one store (the first that answers is used; default "
        "$VASTRPC_CONTROL_ADDRESS)",
    )
    p.add_argument("--api-key", default=os.environ.get("VASTRPC_API_KEY"), help="the control service's API key")
    p.add_argument("--home", type=Path, default=home, help=f"home folder of the embedded service (default {home})")
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=os.environ.get("VASTRPC_TLS_CA"),
        metavar="FILE",
        help="TLS: the CA that signed the service's certificate (default $VASTRPC_TLS_CA; the embedded "
        "service's own CA when using it)",
    )
    p.add_argument(
        "--tls-cert",
        type=Path,
        default=os.environ.get("VASTRPC_TLS_CERT"),
        metavar="FILE",
        help="mutual TLS: this client's certificate (default $VASTRPC_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key",
        type=Path,
        default=os.environ.get("VASTRPC_TLS_KEY"),
        metavar="FILE",
        help="mutual TLS: its private key (default $VASTRPC_TLS_KEY)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def client_tls(args: argparse.Namespace) -> Any:
    from vastrpc._tls import TlsFiles

    if bool(args.tls_cert) != bool(args.tls_key):
        raise Failure(
            "--tls-cert and --tls-key (VASTRPC_TLS_CERT, VASTRPC_TLS_KEY) go together: set both or neither", EXIT_USAGE
        )
    if args.tls_ca or args.tls_cert:
        return TlsFiles(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)
    return None


def client_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ClientConfig fields ``deploy``'s flags set (their defaults are the environment's)."""
    overrides: dict[str, Any] = {"home": args.home.expanduser()}
    if args.control:
        overrides["control_address"] = args.control
    if args.api_key:
        overrides["api_key"] = args.api_key
    tls = client_tls(args)
    if tls is not None:
        overrides["tls"] = tls
    return overrides


def connect(args: argparse.Namespace) -> tuple[tuple[str, ...], str, Any]:
    """(addresses, api_key, tls) from the flags, the environment (flag defaults) or the embedded service's home."""
    from vastrpc._tls import TlsFiles
    from vastrpc.config import control_addresses
    from vastrpc.deploy.embedded import control_status, control_tls

    home = args.home.expanduser()
    addresses = control_addresses(args.control, source="--control (VASTRPC_CONTROL_ADDRESS)")
    tls = client_tls(args)
    if not addresses:
        # Only look: listing or tearing down must never start a service.
        status = control_status(home)
        if status is None:
            raise ControlUnavailableError(
                f"no control service is running under {home}: start one (`vastrpc control serve --home {home}`), "
                "or name a running one with --control HOST:PORT (or VASTRPC_CONTROL_ADDRESS)"
            )
        addresses = (status["address"],)
        local = control_tls(status, home)
        if local is not None and args.tls_cert:
            # The CA the running service names, with the certificate given here.
            local = TlsFiles(ca_file=local.ca_file, cert_file=args.tls_cert, key_file=args.tls_key)
        tls = local
    api_key = args.api_key
    if not api_key:
        try:
            api_key = (home / "api_key").read_text().strip()
        except OSError:
            api_key = ""
    if not api_key:
        raise AuthenticationError(f"no API key for {','.join(addresses)}: pass --api-key or set VASTRPC_API_KEY")
    return addresses, api_key, tls


# Seconds each control service gets to answer a health check before the next one is asked.
_HEALTH_TIMEOUT = 3.0


@contextmanager
def control_stub(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """``(stub, metadata)`` for the first control service the flags name that answers; failed RPCs inside
    become vastrpc errors."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from vastrpc._grpc import bearer, error_from_rpc, sync_channel, tls_failure
    from vastrpc.api.v1 import control_pb2_grpc

    addresses, api_key, tls = connect(args)
    try:
        credentials = tls.channel_credentials() if tls is not None else None
    except OSError as exc:
        raise ControlUnavailableError(f"cannot read a TLS file: {exc}") from None
    failures: dict[str, str] = {}
    for address in addresses:
        with sync_channel(address, credentials) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=_HEALTH_TIMEOUT)
            except grpc.RpcError as exc:
                if (problem := tls_failure(exc, address, tls)) is not None:
                    raise problem from None
                failures[address] = f"{exc.code().name}: {exc.details()}"
                continue
            try:
                yield control_pb2_grpc.ControlServiceStub(channel), bearer(api_key)
            except grpc.RpcError as exc:
                raise (tls_failure(exc, address, tls) or error_from_rpc(exc, target=address)) from None
            return
    reasons = "; ".join(f"{address}: {reason}" for address, reason in failures.items())
    if len(addresses) == 1:
        raise ControlUnavailableError(
            f"cannot reach the control service at {addresses[0]} ({reasons}). Check that it runs (`vastrpc control "
            "status` on its machine); if other control services share its store, name them too and the first that "
            f"answers is used: --control {addresses[0]},OTHER_HOST:PORT (or VASTRPC_CONTROL_ADDRESS)"
        )
    raise ControlUnavailableError(
        f"cannot reach any of the control services {', '.join(addresses)} ({reasons}). Check that at least one of "
        "them runs (`vastrpc control status` on its machine) and --control (VASTRPC_CONTROL_ADDRESS)"
    )
