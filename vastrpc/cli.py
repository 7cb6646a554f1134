"""The ``vastrpc`` command line: run the control service, a worker agent, deploy, list, read logs, tear down.

Exit codes (also in ``vastrpc --help``):

====  ===========================================================================================
code  meaning
====  ===========================================================================================
0     success
1     the command failed: a deploy whose workers did not become ready, a file that does not
      import, the control service refusing a request
2     usage error: an unknown command or flag, a bad value, flags that go together given alone
3     the control service cannot be reached (not running, wrong address, TLS mismatch) or it
      refused this client (API key, client certificate)
4     not found: no such deployment, endpoint or worker
130   interrupted (Ctrl-C)
====  ===========================================================================================

An error is one line on stderr (``error: ...``; a failed deploy adds its worker's log tail);
with ``--json`` stdout also gets ``{"error": {"code": N, "type": "...", "message": "..."}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from vastrpc import _cli_remote as remote
from vastrpc._cli_remote import (
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from vastrpc._cli_remote import Failure as _Failure

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "main"]

EXIT_INTERRUPTED = 130

ENV_WORKER_TOKEN = "VASTRPC_WORKER_TOKEN"
ENV_WORKER_COMMAND = "VASTRPC_WORKER_COMMAND"

_EPILOG = """\
exit codes:
  0    success
  1    the command failed (e.g. a deploy whose workers did not become ready)
  2    usage error
  3    the control service cannot be reached, or refused the API key or certificate
  4    not found: no such deployment, endpoint or worker
  130  interrupted (Ctrl-C)

Errors are one line on stderr; with --json, stdout also gets {"error": {"code", "type", "message"}}.
"""

_LS_HELP = """\
Lists deployments, their endpoints (state, live revision, what its last update changed, workers
ready/total, TTL, idle time) and their workers (state, revision, address, benchmark score, calls in
flight, uptime). Stopped workers are not listed.

--json prints a JSON array, one object per deployment:
  {"name", "deployment_id", "created_at": unix seconds,
   "endpoints": [{"endpoint_id", "tag", "state": "ENDPOINT_STATE_READY" (the proto enum names),
     "revision_id", "update_tier": 0-4 or null, "update": the tier in words or null,
     "workers_ready", "workers_total", "workers_desired", "ttl_seconds": number or null (never),
     "idle_seconds": since a client was last heard from, or null,
     "autoscaling": {"min_workers", "max_workers", "cold_workers", "target_util", "inactivity_timeout"},
     "failure": null or {"step", "message", "log_tail"},
     "workers": [{"worker_id", "state": "WORKER_STATE_READY", "revision_id", "address", "score",
       "capacity", "calls_in_flight", "calls_queued", "calls_started", "pid", "started_at",
       "uptime_seconds", "last_heartbeat", "failure"}]}]}
Fields are only ever added.
"""

_LOGS_HELP = """\
TARGET is a worker id (w-...) or a deployment NAME (all its workers that are not stopped; every
worker when all are) or NAME:TAG (one endpoint's). With several workers, each line is prefixed
with its worker id. --follow prints new lines as they are written until Ctrl-C, or until the
worker (the deployment's endpoints) stops. --json prints one object per line:
{"worker_id": "w-...", "line": "text without its newline"}.
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with EXIT_USAGE and one ``error:`` line after the usage."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"error: {message}\n")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _parser(home: Path) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vastrpc",
        description="Run async Python functions on remote workers.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
    backends.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another control service on the same --store; its workers fail over to it (repeatable)",
    )
    serve.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics over HTTP on this port (0: any)"
    )
    # For tests: the command that starts a worker agent, instead of `python -m vastrpc worker`.
    serve.add_argument("--worker-command", default=os.environ.get(ENV_WORKER_COMMAND), help=argparse.SUPPRESS)
    serve.set_defaults(func=_control_serve)
    for name, func, text in (
        ("stop", _control_stop, "stop the control service running under the home folder"),
        ("status", _control_status, "show the control service running under the home folder (exit 3: none runs)"),
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
    cert.set_defaults(func=_control_issue_cert)

    worker = sub.add_parser(
        "worker", help="run a worker agent: by hand with --join (e.g. on another host), or as a provider starts it"
    )
    worker.add_argument(
        "--control", required=True, help="host:port of the control service (a comma-separated list to fail over)"
    )
    identity = worker.add_mutually_exclusive_group(required=True)
    identity.add_argument(
        "--join",
        metavar="NAME[:TAG]",
        help="join this deployment's endpoint as one more worker (needs the API key; counts toward max_workers)",
    )
    identity.add_argument(
        "--worker-id", help="the id the control service gave this worker (providers pass it, with its token)"
    )
    worker.add_argument(
        "--api-key", default=os.environ.get("VASTRPC_API_KEY"), help="the control service's API key (for --join)"
    )
    worker.add_argument(
        "--host",
        default=os.environ.get("VASTRPC_WORKER_HOST"),
        help="the address this worker serves calls on, which clients must reach (default 127.0.0.1)",
    )
    worker.set_defaults(func=_worker, home=home)

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
        p.add_argument("--json", action="store_true", help="print JSON for scripts")

    deploy = sub.add_parser(
        "deploy",
        help="deploy the Deployments defined in a Python file and wait until their workers are ready",
        description="Deploy the Deployments defined in FILE and wait until their workers are ready. Progress "
        "goes to stderr (drawn live on a terminal, one line per step otherwise), the summary to stdout. "
        "Without --control (or VASTRPC_CONTROL_ADDRESS) the embedded control service under --home is used, "
        "and started when none runs.",
    )
    deploy.add_argument("file", type=Path, help="the deployment file, e.g. deploy.py")
    deploy.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="draw live progress bars: auto (when stderr is a terminal, the default), always, never",
    )
    client_flags(deploy)
    deploy.set_defaults(func=_deploy)

    ls = sub.add_parser(
        "ls",
        help="list deployments, their endpoints and workers",
        description=_LS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("name", nargs="?", default="", help="only this deployment (exit 4 when there is none)")
    client_flags(ls)
    ls.set_defaults(func=remote.ls)

    logs = sub.add_parser(
        "logs",
        help="print or follow the logs of a worker or of a deployment's workers",
        description=_LOGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    logs.add_argument("target", metavar="TARGET", help="a worker id, a deployment NAME, or NAME:TAG")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines as they are written")
    logs.add_argument(
        "--tail",
        type=_non_negative,
        metavar="N",
        help="start with the last N lines of each log (default: all of it; 0 with -f: only new lines)",
    )
    client_flags(logs)
    logs.set_defaults(func=remote.logs)

    teardown = sub.add_parser("teardown", help="stop a deployment's workers and endpoints")
    teardown.add_argument("name")
    teardown.add_argument("--tag", default="", help="only this tag")
    client_flags(teardown)
    teardown.set_defaults(func=remote.teardown)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vastrpc`` command; returns its exit code (see the module docstring)."""
    from vastrpc.config import default_home

    args = _parser(default_home()).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`vastrpc logs -f | head`): stop quietly, without a flush error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        code = _exit_code(exc)
        if code is None:
            raise  # a bug: its traceback says where
        from vastrpc._console import print_error

        print_error(exc, code, json_output=getattr(args, "json", False))
        return code


def _exit_code(exc: BaseException) -> int | None:
    """The exit code for an error the command explains; None for an unexpected exception."""
    from vastrpc._errors import AuthenticationError, ControlUnavailableError, NotFoundError, VastrpcError

    if isinstance(exc, _Failure):
        return exc.code
    if isinstance(exc, (ControlUnavailableError, AuthenticationError)):
        return EXIT_UNREACHABLE
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, VastrpcError):
        return EXIT_FAILURE
    return None


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
    if args.peer and not (args.store or "").startswith(("postgresql:", "postgres:")):
        raise _Failure("--peer names control services that share this one's state: give --store postgresql://...")
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
        peers=tuple(args.peer),
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
    stopped = stop_control(home)
    if args.json:
        from vastrpc._console import print_json

        print_json({"stopped": stopped, "home": str(home)})
    elif stopped:
        print(f"stopped the control service under {home}")
    else:
        print(f"no control service is running under {home}")
    return EXIT_OK


def _control_status(args: argparse.Namespace) -> int:
    from vastrpc._console import print_json, print_status
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
        keys = ("address", "pid", "tls", "tls_ca", "tls_client_cert", "leader", "metrics_address", "started_at", "home")
        print_json({"running": True, **{k: status.get(k) for k in keys}})
        return EXIT_OK
    print_status(status, home)
    return EXIT_OK


def _control_issue_cert(args: argparse.Namespace) -> int:
    """A server-and-client certificate for ``--host`` addresses, signed by the CA ``--tls auto`` made."""
    import shutil

    from vastrpc._tls import issue_certificate

    folder = args.home.expanduser() / "tls"
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    if not (ca.exists() and ca_key.exists()):
        raise _Failure(
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


# -- worker and deploy -----------------------------------------------------------------------------


def _call(func: Any, *args: Any, **kwargs: Any) -> int:
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(result)  # type: ignore[arg-type]
    return result if isinstance(result, int) else 0


def _worker(args: argparse.Namespace) -> int:
    from vastrpc.config import tls_from_env
    from vastrpc.serve.agent import main as agent_main

    # The provider that started this worker sets VASTRPC_TLS_* when the control service uses TLS.
    tls = tls_from_env()
    worker_id, token = args.worker_id, os.environ.get(ENV_WORKER_TOKEN, "")
    if args.join:
        if tls is not None and tls.cert_file is None:
            raise _Failure(
                "the control service uses TLS, so this worker serves its calls with TLS too: it needs a certificate "
                "for --host signed by the CA clients trust (VASTRPC_TLS_CERT, VASTRPC_TLS_KEY); "
                "`vastrpc control issue-cert --host ADDRESS --out DIR` on the control service's machine makes one"
            )
        worker_id, token = asyncio.run(_join(args, tls))
        print(f"joined {args.join} as worker {worker_id}", file=sys.stderr, flush=True)
    return _call(agent_main, args.control, worker_id, token, home=args.home, tls=tls, bind_host=args.host)


async def _join(args: argparse.Namespace, tls: Any) -> tuple[str, str]:
    """Ask the control service to admit this worker to ``--join NAME[:TAG]``: its id and token."""
    from vastrpc.client.control import ControlClient
    from vastrpc.config import ClientConfig

    if not args.api_key:
        raise _Failure("--join needs the control service's API key: pass --api-key or set VASTRPC_API_KEY")
    name, _, tag = args.join.partition(":")
    first = args.control.split(",")[0]  # the others (--control A,B) are for failing over
    config = ClientConfig(control_address=first, api_key=args.api_key, home=args.home, tls=tls)
    client = await ControlClient.connect(config)
    try:
        joined = await client.join(name, tag)
    finally:
        await client.close()
    return joined.worker_id, joined.worker_token


def _deploy(args: argparse.Namespace) -> int:
    from vastrpc import _console
    from vastrpc.deploy.loader import deploy_app, load_deployments

    if not args.file.is_file():
        raise _Failure(f"no such file: {args.file}")
    # Progress is drawn by the reporter; the library's own step lines would repeat it.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    overrides = remote.client_overrides(args)
    terminal = _console.wants_terminal(args.progress, sys.stderr)
    err = _console.console(sys.stderr, terminal)
    out = _console.console(sys.stdout, _console.wants_terminal("auto", sys.stdout))
    apps = load_deployments(args.file)
    documents = []

    async def run() -> None:
        for app in apps:
            with ExitStack() as stack:
                if terminal:
                    err.print(f"deploying [bold]{app.name}:{app.tag}[/] from {args.file}")
                    reporter: Any = stack.enter_context(_console.RichProgress(err))
                else:
                    print(f"deploy: {app.name}:{app.tag} from {args.file}", file=sys.stderr, flush=True)
                    reporter = _console.PlainProgress(sys.stderr)
                result = await deploy_app(app, progress=reporter, overrides=overrides)
            if args.json:
                documents.append(_console.deploy_document(app.name, app.tag, result))
            else:
                _console.deploy_summary(out, app.name, app.tag, result)

    asyncio.run(run())
    if args.json:
        _console.print_json(documents)
    return EXIT_OK
