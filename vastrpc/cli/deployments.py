"""``vastrpc deploy``, ``ls``, ``logs`` and ``teardown``: the commands that talk to a control service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from vastrpc._errors import NotFoundError
from vastrpc.cli.connection import add_client_flags, client_overrides, control_stub
from vastrpc.cli.exit_codes import EXIT_OK, EXIT_USAGE, Failure

__all__ = ["add_commands"]

# Teardown waits for workers to stop (their grace period); everything else is quick.
_RPC_TIMEOUT = 30.0
_TEARDOWN_TIMEOUT = 120.0
_WORKER_ID = re.compile(r"w-[0-9a-f]{12}")

_LS_HELP = """\
Lists deployments, their endpoints (state, live revision, what its last update changed, workers
ready/total, TTL, idle time) and their workers (state, revision, address, benchmark score, calls in
flight, uptime, and the host:port of each published port). Stopped workers are not listed.

--json prints a JSON array, one object per deployment:
  {"name", "deployment_id", "created_at": unix seconds,
   "endpoints": [{"endpoint_id", "tag", "state": "ENDPOINT_STATE_READY" (the proto enum names),
     "revision_id", "update_tier": 0-4 or null, "update": the tier in words or null,
     "workers_ready", "workers_total" (not failed), "workers_failed", "workers_desired",
     "ttl_seconds": number or null (never), "idle_seconds": since a client was last heard from, or null,
     "autoscaling": {"min_workers", "max_workers", "cold_workers", "target_util", "inactivity_timeout",
       "min_load", "min_cold_load", "cold_mult", "max_queue_time", "target_queue_time"},
     "failure": null or {"step", "message", "log_tail"},
     "workers": [{"worker_id", "state": "WORKER_STATE_READY", "revision_id", "address", "score",
       "capacity", "calls_in_flight", "calls_queued", "calls_started", "pid", "started_at",
       "uptime_seconds", "last_heartbeat", "failure",
       "published_ports": [{"port": as published, "protocol": "tcp" or "udp", "address": "host:port"}],
       "gpus": [the indices of its host's GPUs it holds, as in its CUDA_VISIBLE_DEVICES]}]}]}
Fields are only ever added.
"""

_LOGS_HELP = """\
TARGET is a worker id (w-...) or a deployment NAME (all its workers that are not stopped; every
worker when all are) or NAME:TAG (one endpoint's). With several workers, each line is prefixed
with its worker id. --follow prints new lines as they are written until Ctrl-C, or until the
worker (the deployment's endpoints) stops. --json prints one object per line:
{"worker_id": "w-...", "line": "text without its newline"}.
"""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], home: Path) -> None:
    """Add ``deploy``, ``ls``, ``logs`` and ``teardown`` to the top-level ``commands``."""
    deploy = commands.add_parser(
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
    add_client_flags(deploy, home)
    deploy.set_defaults(func=_deploy)

    ls = commands.add_parser(
        "ls",
        help="list deployments, their endpoints and workers",
        description=_LS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("name", nargs="?", default="", help="only this deployment (exit 4 when there is none)")
    add_client_flags(ls, home)
    ls.set_defaults(func=_ls)

    logs = commands.add_parser(
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
    add_client_flags(logs, home)
    logs.set_defaults(func=_logs)

    teardown = commands.add_parser("teardown", help="stop a deployment's workers and endpoints")
    teardown.add_argument("name")
    teardown.add_argument("--tag", default="", help="only this tag")
    add_client_flags(teardown, home)
    teardown.set_defaults(func=_teardown)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _deploy(args: argparse.Namespace) -> int:
    from vastrpc.cli import console
    from vastrpc.cli.loader import deploy_app, load_deployments

    if not args.file.is_file():
        raise Failure(f"no such file: {args.file}")
    # Progress is drawn by the reporter; the library's own step lines would repeat it.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    overrides = client_overrides(args)
    terminal = console.wants_terminal(args.progress, sys.stderr)
    err = console.console(sys.stderr, terminal)
    out = console.console(sys.stdout, console.wants_terminal("auto", sys.stdout))
    apps = load_deployments(args.file)
    documents = []

    current: list[str] = []

    async def run() -> None:
        for app in apps:
            current[:] = [app.name, app.tag]
            with ExitStack() as stack:
                if terminal:
                    err.print(f"deploying [bold]{app.name}:{app.tag}[/] from {args.file}")
                    reporter: Any = stack.enter_context(console.RichProgress(err))
                else:
                    print(f"deploy: {app.name}:{app.tag} from {args.file}", file=sys.stderr, flush=True)
                    reporter = console.PlainProgress(sys.stderr)
                result = await deploy_app(app, progress=reporter, overrides=overrides)
            if args.json:
                documents.append(console.deploy_document(app.name, app.tag, result))
            else:
                console.deploy_summary(out, app.name, app.tag, result)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        if current:
            # The service carries on with what it was asked; leaving silently would hide that.
            name, tag = current
            print(
                f"\ninterrupted: the control service goes on deploying {name}:{tag} — `vastrpc ls {name}` shows it, "
                f"`vastrpc teardown {name}` stops it",
                file=sys.stderr,
            )
        raise
    if args.json:
        console.print_json(documents)
    return EXIT_OK


def _ls(args: argparse.Namespace) -> int:
    from vastrpc.api.v1 import control_pb2
    from vastrpc.cli import console

    with control_stub(args) as (stub, metadata):
        request = control_pb2.ListDeploymentsRequest(name=args.name)
        response = stub.ListDeployments(request, metadata=metadata, timeout=_RPC_TIMEOUT)
    if args.name and not response.deployments:
        raise NotFoundError(f"no deployment named {args.name!r}")
    document = console.ls_document(response)
    if args.json:
        console.print_json(document)
    elif not document:
        print("no deployments")
    else:
        console.render_ls(console.console(sys.stdout, console.wants_terminal("auto", sys.stdout)), document)
    return EXIT_OK


def _logs(args: argparse.Namespace) -> int:
    from vastrpc.api.v1 import control_pb2
    from vastrpc.cli.console import write_log

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


def _teardown(args: argparse.Namespace) -> int:
    from vastrpc.api.v1 import control_pb2
    from vastrpc.cli.console import print_json

    with control_stub(args) as (stub, metadata):
        request = control_pb2.TeardownRequest(name=args.name, tag=args.tag)
        response = stub.Teardown(request, metadata=metadata, timeout=_TEARDOWN_TIMEOUT)
    removed, stopped = response.endpoints_removed, response.workers_stopped
    if args.json:
        tag = args.tag or None  # every tag
        print_json({"name": args.name, "tag": tag, "endpoints_removed": removed, "workers_stopped": stopped})
        return EXIT_OK
    target = f"{args.name}:{args.tag}" if args.tag else args.name
    print(f"tore down {target}: {removed} endpoint(s) removed, {stopped} worker(s) stopped")
    return EXIT_OK
