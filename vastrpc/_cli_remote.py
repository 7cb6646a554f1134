"""The ``vastrpc`` commands that ask a running control service: ls, logs, teardown; and how they reach it."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vastrpc._errors import AuthenticationError, ControlUnavailableError, NotFoundError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Failure",
    "client_overrides",
    "client_tls",
    "connect",
    "control_stub",
    "logs",
    "ls",
    "teardown",
]

# The exit codes (the table is in vastrpc.cli's docstring).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4

# Teardown waits for workers to stop (their grace period); everything else is quick.
_RPC_TIMEOUT = 30.0
_TEARDOWN_TIMEOUT = 120.0
_WORKER_ID = re.compile(r"w-[0-9a-f]{12}")


class Failure(Exception):
    """A failure the command explains in one line.

    Args:
        message: What went wrong and what to do.
        code: The exit code (EXIT_FAILURE unless said otherwise).
    """

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


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


def connect(args: argparse.Namespace) -> tuple[str, str, Any]:
    """(address, api_key, tls) from the flags, the environment (flag defaults) or the embedded service's home."""
    from vastrpc._tls import TlsFiles
    from vastrpc.deploy.embedded import control_status, control_tls

    home = args.home.expanduser()
    address = args.control
    tls = client_tls(args)
    if not address:
        # Only look: listing or tearing down must never start a service.
        status = control_status(home)
        if status is None:
            raise ControlUnavailableError(f"no control service is running under {home}")
        address = status["address"]
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
        raise AuthenticationError(f"no API key for {address}: pass --api-key or set VASTRPC_API_KEY")
    return address, api_key, tls


@contextmanager
def control_stub(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """``(stub, metadata)`` for the control service the flags name; failed RPCs inside become vastrpc errors."""
    import grpc

    from vastrpc._grpc import CHANNEL_OPTIONS, bearer, error_from_rpc, tls_failure
    from vastrpc.api.v1 import control_pb2_grpc

    address, api_key, tls = connect(args)
    try:
        channel = (
            grpc.secure_channel(address, tls.channel_credentials(), options=list(CHANNEL_OPTIONS))
            if tls is not None
            else grpc.insecure_channel(address, options=list(CHANNEL_OPTIONS))
        )
    except OSError as exc:
        raise ControlUnavailableError(f"cannot read a TLS file: {exc}") from None
    with channel:
        try:
            yield control_pb2_grpc.ControlServiceStub(channel), bearer(api_key)
        except grpc.RpcError as exc:
            raise (tls_failure(exc, address, tls) or error_from_rpc(exc, target=address)) from None


def ls(args: argparse.Namespace) -> int:
    from vastrpc import _console
    from vastrpc.api.v1 import control_pb2

    with control_stub(args) as (stub, metadata):
        request = control_pb2.ListDeploymentsRequest(name=args.name)
        response = stub.ListDeployments(request, metadata=metadata, timeout=_RPC_TIMEOUT)
    if args.name and not response.deployments:
        raise NotFoundError(f"no deployment named {args.name!r}")
    document = _console.ls_document(response)
    if args.json:
        _console.print_json(document)
    elif not document:
        print("no deployments")
    else:
        _console.render_ls(_console.console(sys.stdout, _console.wants_terminal("auto", sys.stdout)), document)
    return EXIT_OK


def logs(args: argparse.Namespace) -> int:
    from vastrpc._console import write_log
    from vastrpc.api.v1 import control_pb2

    request = control_pb2.FollowLogsRequest(follow=args.follow)
    if args.tail is not None:
        request.tail_lines = args.tail
    name, _, tag = args.target.partition(":")
    if not tag and _WORKER_ID.fullmatch(args.target):
        request.worker_id = args.target
    elif not name:
        raise Failure(f"{args.target!r} names no deployment: give a worker id, NAME or NAME:TAG", EXIT_USAGE)
    else:
        request.name, request.tag = name, tag
    prefixed = not request.worker_id
    color = not args.json and sys.stdout.isatty()
    with control_stub(args) as (stub, metadata):
        stream = stub.FollowLogs(request, metadata=metadata, timeout=None if args.follow else _RPC_TIMEOUT)
        try:
            for message in stream:
                write_log(message.worker_id, message.text, prefixed=prefixed, as_json=args.json, color=color)
        finally:
            # Ctrl-C (or a closed pipe) while waiting: end the stream on the service too.
            stream.cancel()
    return EXIT_OK


def teardown(args: argparse.Namespace) -> int:
    from vastrpc._console import print_json
    from vastrpc.api.v1 import control_pb2

    with control_stub(args) as (stub, metadata):
        request = control_pb2.TeardownRequest(name=args.name, tag=args.tag)
        response = stub.Teardown(request, metadata=metadata, timeout=_TEARDOWN_TIMEOUT)
    removed, stopped = response.endpoints_removed, response.workers_stopped
    if args.json:
        print_json({"name": args.name, "tag": args.tag, "endpoints_removed": removed, "workers_stopped": stopped})
        return EXIT_OK
    target = f"{args.name}:{args.tag}" if args.tag else args.name
    print(f"tore down {target}: {removed} endpoint(s) removed, {stopped} worker(s) stopped")
    return EXIT_OK
