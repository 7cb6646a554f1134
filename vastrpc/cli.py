"""The ``vastrpc`` command line: run the control service, a worker agent, deploy, list, read logs, tear down."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

ENV_WORKER_TOKEN = "VASTRPC_WORKER_TOKEN"
ENV_WORKER_COMMAND = "VASTRPC_WORKER_COMMAND"
# Teardown waits for workers to stop (their grace period); everything else is quick.
_RPC_TIMEOUT = 30.0
_TEARDOWN_TIMEOUT = 120.0


class _Failure(Exception):
    """A failure the command explains in one line (exit code 1)."""


def _parser(home: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vastrpc", description="Run async Python functions on remote workers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    control = sub.add_parser("control", help="run or manage the control service")
    control_sub = control.add_subparsers(dest="control_command", metavar="ACTION")
    control_sub.required = True
    serve = control_sub.add_parser("serve", help="run the control service in the foreground")
    serve.add_argument("--home", type=Path, default=home, help=f"state folder (default {home})")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default)")
    serve.add_argument("--no-reflection", action="store_true", help="do not serve gRPC server reflection")
    serve.add_argument(
        "--reaper-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often idle endpoints are checked against their ttl (default 1)",
    )
    serve.add_argument(
        "--bundle-grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep an unused bundle this long after it was stored or registered (default 60)",
    )
    serve.add_argument(
        "--autoscale-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often the autoscaler looks at every endpoint's load (default 1)",
    )
    serve.add_argument(
        "--scale-down-delay",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="stop workers only once fewer have sufficed this long (default 10)",
    )
    serve.add_argument(
        "--heartbeat-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often workers report that they are alive and their calls in flight (default 2)",
    )
    tls = serve.add_argument_group(
        "TLS", "plaintext unless --tls auto or --tls-cert/--tls-key; local workers use the same certificate"
    )
    tls.add_argument(
        "--tls",
        choices=["auto"],
        help="auto: serve TLS with a local CA and certificate for this host, created under HOME/tls/",
    )
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="the service's certificate chain (PEM)")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)")
    tls.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="the CA that signs client certificates (mutual TLS) and that local workers trust for --tls-cert",
    )
    tls.add_argument(
        "--tls-require-client-cert",
        action="store_true",
        help="mutual TLS: refuse clients (and workers) without a certificate signed by the CA",
    )
    backends = serve.add_argument_group("backends", "defaults: SQLite and bundles under HOME, local worker processes")
    backends.add_argument(
        "--store", metavar="URL", help="state store, e.g. postgresql://user@host/db (default SQLite in HOME/state.db)"
    )
    backends.add_argument("--blobs", metavar="URL", help="bundle store, e.g. s3://bucket/prefix (default HOME/bundles)")
    backends.add_argument("--s3-endpoint-url", metavar="URL", help="endpoint of an S3-compatible store")
    backends.add_argument(
        "--provider", choices=["local", "ray"], default="local", help="where workers run (default local)"
    )
    backends.add_argument("--ray-address", metavar="HOST:PORT", help="the Ray cluster for --provider ray")
    serve.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics over HTTP on this port (0: any)"
    )
    # For tests: the command that starts a worker agent, instead of `python -m vastrpc worker`.
    serve.add_argument("--worker-command", default=os.environ.get(ENV_WORKER_COMMAND), help=argparse.SUPPRESS)
    serve.set_defaults(func=_control_serve)
    for name, func, text in (
        ("stop", _control_stop, "stop the control service running under the home folder"),
        ("status", _control_status, "show the control service running under the home folder"),
    ):
        p = control_sub.add_parser(name, help=text)
        p.add_argument("--home", type=Path, default=home, help=f"state folder (default {home})")
        p.set_defaults(func=func)

    worker = sub.add_parser("worker", help="run a worker agent (started by a provider, not by hand)")
    worker.add_argument("--control", required=True, help="host:port of the control service")
    worker.add_argument("--worker-id", required=True, help="the id the control service gave this worker")
    worker.set_defaults(func=_worker, home=home)

    deploy = sub.add_parser("deploy", help="deploy the Deployment defined in a Python file and wait until ready")
    deploy.add_argument("file", type=Path, help="the deployment file, e.g. deploy.py")
    deploy.set_defaults(func=_deploy)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--control", default=os.environ.get("VASTRPC_CONTROL_ADDRESS"), help="host:port of the control service"
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

    ls = sub.add_parser("ls", help="list deployments, their endpoints and workers")
    ls.add_argument("name", nargs="?", default="", help="only this deployment")
    ls.add_argument("--json", action="store_true", help="print JSON")
    client_flags(ls)
    ls.set_defaults(func=_ls)

    logs = sub.add_parser("logs", help="print a worker's log")
    logs.add_argument("worker_id")
    logs.add_argument("--tail", type=int, default=0, metavar="N", help="only the last N lines")
    client_flags(logs)
    logs.set_defaults(func=_logs)

    teardown = sub.add_parser("teardown", help="stop a deployment's workers and endpoints")
    teardown.add_argument("name")
    teardown.add_argument("--tag", default="", help="only this tag")
    client_flags(teardown)
    teardown.set_defaults(func=_teardown)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vastrpc`` command; returns its exit code (0 ok, 1 failure, 2 usage)."""
    from vastrpc._errors import VastrpcError
    from vastrpc.config import default_home

    args = _parser(default_home()).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (_Failure, VastrpcError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- control ------------------------------------------------------------------------------


def _control_serve(args: argparse.Namespace) -> int:
    from vastrpc.config import ControlConfig
    from vastrpc.control.server import serve

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s control %(levelname)s %(name)s: %(message)s"
    )
    if args.reaper_interval <= 0 or args.bundle_grace < 0:
        raise _Failure("--reaper-interval must be positive and --bundle-grace not negative")
    if args.autoscale_interval <= 0 or args.heartbeat_interval <= 0 or args.scale_down_delay < 0:
        raise _Failure(
            "--autoscale-interval and --heartbeat-interval must be positive, --scale-down-delay not negative"
        )
    home = args.home.expanduser().resolve()
    config = ControlConfig(
        home=home,
        host=args.host,
        port=args.port,
        enable_reflection=not args.no_reflection,
        reaper_interval=args.reaper_interval,
        bundle_grace=args.bundle_grace,
        autoscale_interval=args.autoscale_interval,
        scale_down_delay=args.scale_down_delay,
        heartbeat_interval=args.heartbeat_interval,
        tls=_server_tls(args, home),
        store_url=args.store,
        blob_url=args.blobs,
        s3_endpoint_url=args.s3_endpoint_url,
        provider=args.provider,
        ray_address=args.ray_address,
        metrics_port=args.metrics_port,
    )
    command = shlex.split(args.worker_command) if args.worker_command else None
    try:
        asyncio.run(serve(config, worker_command=command))
    except OSError as exc:
        raise _Failure(str(exc)) from None
    return 0


def _server_tls(args: argparse.Namespace, home: Path) -> Any:
    """The control service's TlsFiles from the --tls flags, generating the local CA for ``--tls auto``."""
    from vastrpc._tls import TlsFiles, ensure_local_tls

    files = (args.tls_cert, args.tls_key)
    if args.tls == "auto":
        if any(files) or args.tls_ca:
            raise _Failure("--tls auto generates its own CA and certificate: drop --tls-cert, --tls-key and --tls-ca")
        # The certificate must also name the address clients dial when the service listens on one.
        extra = [] if args.host in ("", "0.0.0.0", "::") else [args.host.strip("[]")]
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        return ensure_local_tls(home / "tls", extra, require_client_cert=args.tls_require_client_cert)
    if not any(files):
        if args.tls_ca or args.tls_require_client_cert:
            raise _Failure("--tls-ca and --tls-require-client-cert need TLS: add --tls auto or --tls-cert/--tls-key")
        return None
    if not all(files):
        raise _Failure("--tls-cert and --tls-key go together: the certificate and its private key")
    if args.tls_require_client_cert and not args.tls_ca:
        raise _Failure("--tls-require-client-cert needs --tls-ca: the CA that signs the client certificates")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-ca", args.tls_ca)):
        if path is not None and not path.expanduser().is_file():
            raise _Failure(f"{flag} {path}: no such file")
    return TlsFiles(
        ca_file=args.tls_ca.expanduser().resolve() if args.tls_ca else None,
        cert_file=args.tls_cert.expanduser().resolve(),
        key_file=args.tls_key.expanduser().resolve(),
        require_client_cert=args.tls_require_client_cert,
    )


def _control_stop(args: argparse.Namespace) -> int:
    from vastrpc.deploy.embedded import stop_control

    home = args.home.expanduser()
    if stop_control(home):
        print(f"stopped the control service under {home}")
    else:
        print(f"no control service is running under {home}")
    return 0


def _control_status(args: argparse.Namespace) -> int:
    from vastrpc.deploy.embedded import control_status

    home = args.home.expanduser()
    status = control_status(home)
    if status is None:
        print(f"not running (home {home})")
        return 1
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.get("started_at", 0)))
    tls = f"TLS (trust {status.get('tls_ca') or 'the system roots'})" if status.get("tls") else "plaintext"
    print(f"running: address {status['address']}, {tls}, pid {status['pid']}, started {started}, home {home}")
    return 0


# -- worker and deploy -----------------------------------------------------------------------------


def _call(func: Any, *args: Any, **kwargs: Any) -> int:
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(result)  # type: ignore[arg-type]
    return result if isinstance(result, int) else 0


def _worker(args: argparse.Namespace) -> int:
    from vastrpc.config import tls_from_env
    from vastrpc.serve.agent import main as agent_main

    token = os.environ.get(ENV_WORKER_TOKEN, "")
    # The provider that started this worker sets VASTRPC_TLS_* when the control service uses TLS.
    return _call(agent_main, args.control, args.worker_id, token, home=args.home, tls=tls_from_env())


def _deploy(args: argparse.Namespace) -> int:
    from vastrpc.deploy import cli_deploy

    if not args.file.is_file():
        raise _Failure(f"no such file: {args.file}")
    return _call(cli_deploy, args.file)


# -- talking to the control service -------------------------------------------------------------


def _connect(args: argparse.Namespace) -> tuple[str, str, Any]:
    """(address, api_key, tls) from the flags, the environment (flag defaults) or the embedded service's home."""
    from vastrpc._tls import TlsFiles
    from vastrpc.deploy.embedded import control_status, control_tls

    home = args.home.expanduser()
    address = args.control
    if bool(args.tls_cert) != bool(args.tls_key):
        raise _Failure("--tls-cert and --tls-key (VASTRPC_TLS_CERT, VASTRPC_TLS_KEY) go together: set both or neither")
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = TlsFiles(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)
    if not address:
        # Only look: listing or tearing down must never start a service.
        status = control_status(home)
        if status is None:
            raise _Failure(f"no control service is running under {home}")
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
        raise _Failure(f"no API key for {address}: pass --api-key or set VASTRPC_API_KEY")
    return address, api_key, tls


def _rpc(args: argparse.Namespace, method: str, request: Any, timeout: float = _RPC_TIMEOUT) -> Any:
    import grpc

    from vastrpc._grpc import CHANNEL_OPTIONS, bearer, error_from_rpc, tls_failure
    from vastrpc.api.v1 import control_pb2_grpc

    address, api_key, tls = _connect(args)
    try:
        channel = (
            grpc.secure_channel(address, tls.channel_credentials(), options=list(CHANNEL_OPTIONS))
            if tls is not None
            else grpc.insecure_channel(address, options=list(CHANNEL_OPTIONS))
        )
    except OSError as exc:
        raise _Failure(f"cannot read a TLS file: {exc}") from None
    with channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        try:
            return getattr(stub, method)(request, metadata=bearer(api_key), timeout=timeout)
        except grpc.RpcError as exc:
            raise (tls_failure(exc, address, tls) or error_from_rpc(exc, target=address)) from None


def _ls(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from vastrpc.api.v1 import common_pb2, control_pb2

    response = _rpc(args, "ListDeployments", control_pb2.ListDeploymentsRequest(name=args.name))
    if args.json:
        data = json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        print(json.dumps(data.get("deployments", []), indent=2))
        return 0
    if not response.deployments:
        if args.name:
            raise _Failure(f"no deployment named {args.name!r}")
        print("no deployments")
        return 0

    def short(enum: Any, value: int, prefix: str) -> str:
        return enum.Name(value).removeprefix(prefix).lower()

    for deployment in response.deployments:
        for endpoint in deployment.endpoints:
            ready = sum(1 for w in endpoint.workers if w.state == common_pb2.WORKER_STATE_READY)
            state = short(common_pb2.EndpointState, endpoint.state, "ENDPOINT_STATE_")
            print(
                f"{deployment.name}:{endpoint.tag}  {state}  revision {endpoint.revision_id or '-'}  "
                f"{ready}/{len(endpoint.workers)} workers ready  ({endpoint.endpoint_id})"
            )
            if endpoint.HasField("failure"):
                print(f"  failed at {endpoint.failure.step}: {endpoint.failure.message}")
            for w in endpoint.workers:
                wstate = short(common_pb2.WorkerState, w.state, "WORKER_STATE_")
                where = f"  {w.address}" if w.address else ""
                score = f"  score {w.score:.1f}/s" if w.score else ""
                print(f"  {w.worker_id}  {wstate}  pid {w.pid}{where}{score}")
        if not deployment.endpoints:
            print(f"{deployment.name}  (no endpoints)")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from vastrpc.api.v1 import control_pb2

    if args.tail < 0:
        raise _Failure("--tail must not be negative")
    # Lines are cut here; ask for enough bytes to hold them.
    tail_bytes = 0 if args.tail == 0 else max(args.tail * 512, 64 << 10)
    response = _rpc(
        args, "GetWorkerLogs", control_pb2.GetWorkerLogsRequest(worker_id=args.worker_id, tail_bytes=tail_bytes)
    )
    text = response.text
    if args.tail:
        text = "\n".join(text.splitlines()[-args.tail :])
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def _teardown(args: argparse.Namespace) -> int:
    from vastrpc.api.v1 import control_pb2

    response = _rpc(
        args, "Teardown", control_pb2.TeardownRequest(name=args.name, tag=args.tag), timeout=_TEARDOWN_TIMEOUT
    )
    target = f"{args.name}:{args.tag}" if args.tag else args.name
    removed, stopped = response.endpoints_removed, response.workers_stopped
    print(f"tore down {target}: {removed} endpoint(s) removed, {stopped} worker(s) stopped")
    return 0
