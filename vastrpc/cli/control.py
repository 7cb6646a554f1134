"""``vastrpc control``: serve, status, stop and issue-cert for the control service under a home folder."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from vastrpc.cli.exit_codes import EXIT_OK, EXIT_UNREACHABLE, Failure
from vastrpc.config import ENV_DASHBOARD_PORT

__all__ = ["add_commands"]

ENV_WORKER_COMMAND = "VASTRPC_WORKER_COMMAND"
# What this machine offers, declared (JSON): the local provider evaluates requirements against it.
ENV_INVENTORY = "VASTRPC_INVENTORY"
# Also how the embedded default (started by the SDK or CLI with the caller's environment) turns metrics on.
ENV_METRICS_PORT = "VASTRPC_METRICS_PORT"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], home: Path) -> None:
    """Add ``control`` and its actions (serve, stop, status, issue-cert) to the top-level ``commands``."""
    control = commands.add_parser("control", help="run or manage the control service")
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
    serve.add_argument(
        "--watch-keepalive",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a quiet endpoint watch goes without a message before a keepalive, at most 10 (default 10)",
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
        "--provider",
        choices=["local", "ray", "podman", "docker"],
        default="local",
        help="where workers run (default local; podman/docker: serving processes in containers of the image)",
    )
    backends.add_argument(
        "--container-runtime",
        metavar="NAME",
        help="--provider podman: the OCI runtime for containers (default runc where installed)",
    )
    backends.add_argument("--ray-address", metavar="HOST:PORT", help="the Ray cluster for --provider ray")
    backends.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another control service on the same --store; its workers fail over to it (repeatable)",
    )
    backends.add_argument(
        "--inventory",
        type=Path,
        default=os.environ.get(ENV_INVENTORY) or None,
        metavar="FILE",
        help="local provider: what this machine offers, as JSON, instead of probing it (CPUs, RAM, disk, GPUs)",
    )
    users = serve.add_mutually_exclusive_group()
    users.add_argument(
        "--worker-user",
        default="vastrpc-worker",
        metavar="NAME",
        help="local provider, run as root: run workers as this unprivileged user, created if missing "
        "(default vastrpc-worker)",
    )
    users.add_argument(
        "--no-worker-user",
        action="store_true",
        help="run workers as this service's user (it warns: their code can read this service's home)",
    )
    # Not one of the worker-user choices above: it combines with any of them.
    backends.add_argument(
        "--no-spare-agent",
        action="store_true",
        help=(
            "keep no worker agent pre-started (local provider; saves about 100 MB; cold starts take longer) and no "
            "serving process started ahead of each worker's next revision (about 50 MB each; updates take longer)"
        ),
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=os.environ.get(ENV_METRICS_PORT) or None,
        metavar="PORT",
        help=f"serve Prometheus metrics over HTTP on this port (0: any; default ${ENV_METRICS_PORT}, which also "
        "turns them on for the embedded service)",
    )
    serve.add_argument(
        "--dashboard-port",
        type=_port_or_off,
        default=os.environ.get(ENV_DASHBOARD_PORT) or None,
        metavar="PORT",
        help=f"serve the live web page on this port, on --host, the API key required (0: any; off: none; "
        f"default ${ENV_DASHBOARD_PORT}, else none; the embedded service defaults to 0)",
    )
    # For tests: the command that starts a worker agent, instead of `python -m vastrpc worker`.
    serve.add_argument("--worker-command", default=os.environ.get(ENV_WORKER_COMMAND), help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)
    for name, func, text in (
        ("stop", _stop, "stop the control service running under the home folder"),
        ("status", _status, "show the control service running under the home folder (exit 3: none runs)"),
    ):
        p = control_sub.add_parser(name, help=text)
        p.add_argument("--home", type=Path, default=home, help=f"state folder (default {home})")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
    cert = control_sub.add_parser(
        "issue-cert", help="sign a certificate for a worker on another host with the home's CA (--tls auto)"
    )
    cert.add_argument("--home", type=Path, default=home, help=f"state folder (default {home})")
    cert.add_argument(
        "--host", action="append", required=True, metavar="ADDRESS", help="an address the worker serves on (repeatable)"
    )
    cert.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write cert.pem, key.pem, ca.pem")
    cert.set_defaults(func=_issue_cert)


def _port_or_off(text: str) -> int | None:
    """A ``--dashboard-port`` value: a port number, or ``off`` for none."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give 0 to 65535 (0: any free port), or off")
    return int(text)


def _serve(args: argparse.Namespace) -> int:
    from vastrpc.config import ControlConfig
    from vastrpc.control.server import serve

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s control %(levelname)s %(name)s: %(message)s"
    )
    if args.reaper_interval <= 0 or args.bundle_grace < 0:
        raise Failure("--reaper-interval must be positive and --bundle-grace not negative")
    if args.autoscale_interval <= 0 or args.heartbeat_interval <= 0 or args.scale_down_delay < 0:
        raise Failure("--autoscale-interval and --heartbeat-interval must be positive, --scale-down-delay not negative")
    if not 0 < args.watch_keepalive <= 10:
        raise Failure("--watch-keepalive must be above 0 and at most 10 (clients watch again after 30 s of silence)")
    if args.peer and not (args.store or "").startswith(("postgresql:", "postgres:")):
        raise Failure("--peer names control services that share this one's state: give --store postgresql://...")
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
        watch_keepalive=args.watch_keepalive,
        tls=_server_tls(args, home),
        store_url=args.store,
        blob_url=args.blobs,
        s3_endpoint_url=args.s3_endpoint_url,
        provider=args.provider,
        ray_address=args.ray_address,
        metrics_port=args.metrics_port,
        dashboard_port=args.dashboard_port,
        peers=tuple(args.peer),
        inventory_file=Path(args.inventory).expanduser().resolve() if args.inventory else None,
        container_runtime=args.container_runtime or None,
        worker_user=None if args.no_worker_user else args.worker_user,
        spare_agent=not args.no_spare_agent,
    )
    command = shlex.split(args.worker_command) if args.worker_command else None
    try:
        asyncio.run(serve(config, worker_command=command))
    except OSError as exc:
        raise Failure(str(exc)) from None
    return 0


def _server_tls(args: argparse.Namespace, home: Path) -> Any:
    """The control service's TlsFiles from the --tls flags, generating the local CA for ``--tls auto``."""
    from vastrpc._tls import TlsFiles, ensure_local_tls

    files = (args.tls_cert, args.tls_key)
    if args.tls == "auto":
        if any(files) or args.tls_ca:
            raise Failure("--tls auto generates its own CA and certificate: drop --tls-cert, --tls-key and --tls-ca")
        # The certificate must also name the address clients dial when the service listens on one.
        extra = [] if args.host in ("", "0.0.0.0", "::") else [args.host.strip("[]")]
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        return ensure_local_tls(home / "tls", extra, require_client_cert=args.tls_require_client_cert)
    if not any(files):
        if args.tls_ca or args.tls_require_client_cert:
            raise Failure("--tls-ca and --tls-require-client-cert need TLS: add --tls auto or --tls-cert/--tls-key")
        return None
    if not all(files):
        raise Failure("--tls-cert and --tls-key go together: the certificate and its private key")
    if args.tls_require_client_cert and not args.tls_ca:
        raise Failure("--tls-require-client-cert needs --tls-ca: the CA that signs the client certificates")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-ca", args.tls_ca)):
        if path is not None and not path.expanduser().is_file():
            raise Failure(f"{flag} {path}: no such file")
    return TlsFiles(
        ca_file=args.tls_ca.expanduser().resolve() if args.tls_ca else None,
        cert_file=args.tls_cert.expanduser().resolve(),
        key_file=args.tls_key.expanduser().resolve(),
        require_client_cert=args.tls_require_client_cert,
    )


def _stop(args: argparse.Namespace) -> int:
    from vastrpc.deploy.embedded import stop_control

    home = args.home.expanduser()
    stopped = stop_control(home)
    if args.json:
        from vastrpc.cli.console import print_json

        print_json({"stopped": stopped, "home": str(home)})
    elif stopped:
        print(f"stopped the control service under {home}")
    else:
        print(f"no control service is running under {home}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from vastrpc.cli.console import print_json, print_status
    from vastrpc.deploy.embedded import control_status

    home = args.home.expanduser()
    status = control_status(home)
    if status is None:
        if args.json:
            print_json({"running": False, "home": str(home)})
        else:
            print(f"not running (home {home})")
        return EXIT_UNREACHABLE
    if args.json:
        keys = (
            "address",
            "pid",
            "tls",
            "tls_ca",
            "tls_client_cert",
            "leader",
            "metrics_address",
            "dashboard_url",
            "started_at",
            "home",
        )
        print_json({"running": True, **{k: status.get(k) for k in keys}})
        return EXIT_OK
    print_status(status, home)
    return EXIT_OK


def _issue_cert(args: argparse.Namespace) -> int:
    """A server-and-client certificate for ``--host`` addresses, signed by the CA ``--tls auto`` made."""
    import shutil

    from vastrpc._tls import issue_certificate

    folder = args.home.expanduser() / "tls"
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    if not (ca.exists() and ca_key.exists()):
        raise Failure(
            f"no CA in {folder}: it is made by `vastrpc control serve --tls auto` (with your own CA, sign there)"
        )
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = issue_certificate(
        ca,
        ca_key,
        out / "cert.pem",
        out / "key.pem",
        common_name="vastrpc worker",
        hosts=args.host,
        client=True,
        server=True,
    )
    shutil.copyfile(ca, out / "ca.pem")
    print(f"export VASTRPC_TLS_CA={out / 'ca.pem'} VASTRPC_TLS_CERT={cert} VASTRPC_TLS_KEY={key}")
    return EXIT_OK
