"""``vastrpc worker``: run a worker agent, as a provider starts it or joining a deployment by hand (``--join``)."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from vastrpc.cli.exit_codes import Failure

__all__ = ["add_commands"]

ENV_WORKER_TOKEN = "VASTRPC_WORKER_TOKEN"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], home: Path) -> None:
    """Add ``worker`` to the top-level ``commands``."""
    worker = commands.add_parser(
        "worker", help="run a worker agent: by hand with --join (e.g. on another host), or as a provider starts it"
    )
    worker.add_argument(
        "--control", required=True, help="host:port of the control service (a comma-separated list to fail over)"
    )
    identity = worker.add_mutually_exclusive_group(required=True)
    identity.add_argument(
        "--join",
        metavar="NAME[:TAG]",
        help="join this deployment's endpoint as one more worker (needs the API key; not counted in max_workers)",
    )
    identity.add_argument(
        "--worker-id", help="the id the control service gave this worker (providers pass it, with its token)"
    )
    worker.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the worker token from the first line of stdin (providers pass it so, off the environment)",
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


def _call(func: Any, *args: Any, **kwargs: Any) -> int:
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(result)  # type: ignore[arg-type]
    return result if isinstance(result, int) else 0


def _worker(args: argparse.Namespace) -> int:
    from vastrpc._workerenv import make_undumpable
    from vastrpc.config import tls_from_env
    from vastrpc.serve.agent import main as agent_main

    # Before it holds a token: the deployments' code may run as this user, and must not read it
    # from this process's /proc files.
    make_undumpable()
    # The provider that started this worker sets VASTRPC_TLS_* when the control service uses TLS.
    tls = tls_from_env()
    # The token never stays in the environment, where the serving processes would inherit it.
    token = os.environ.pop(ENV_WORKER_TOKEN, "")
    if args.token_stdin:
        token = sys.stdin.readline().strip()
    worker_id = args.worker_id
    if args.join:
        if tls is not None and tls.cert_file is None:
            raise Failure(
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
        raise Failure("--join needs the control service's API key: pass --api-key or set VASTRPC_API_KEY")
    name, _, tag = args.join.partition(":")
    # --control A,B: joined through the first that answers (they share the store), reported to in that order.
    config = ClientConfig(control_address=args.control, api_key=args.api_key, home=args.home, tls=tls)
    client = await ControlClient.connect(config)
    try:
        joined = await client.join(name, tag)
    finally:
        await client.close()
    return joined.worker_id, joined.worker_token
