"""``vastrpc endpoint``: what a client of another language needs to call an endpoint, and a grpcurl line that does."""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from vastrpc._errors import NotFoundError
from vastrpc.cli.connection import add_client_flags, connect, control_stub
from vastrpc.cli.exit_codes import EXIT_OK, EXIT_USAGE, Failure

__all__ = ["add_commands", "grpcurl_invoke"]

_RPC_TIMEOUT = 30.0

_HELP = """\
Prints what a client needs to call an endpoint without the Python SDK: the endpoint token its
workers require (authorization: Bearer TOKEN), the ready workers' addresses, their functions, and
a grpcurl command that calls one of them with JSON arguments. The token is as secret as the API
key it was fetched with.

--json prints {"name", "tag", "endpoint_id", "state", "revision_id", "endpoint_token",
  "workers": [{"worker_id", "address", "state"}], "functions": [names], "grpcurl": "the command"}.
"""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], home: Path) -> None:
    """Add ``endpoint`` to the top-level ``commands``."""
    endpoint = commands.add_parser(
        "endpoint",
        help="print an endpoint's token, its workers and a ready-to-run grpcurl call",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    endpoint.add_argument("target", metavar="NAME[:TAG]", help="the deployment, and its tag (default: default)")
    endpoint.add_argument("--function", help="the function the grpcurl line calls (default: the first one)")
    endpoint.add_argument(
        "--args", default="[]", metavar="JSON", help='its positional arguments as a JSON list (default "[]")'
    )
    endpoint.add_argument(
        "--kwargs", default="{}", metavar="JSON", help='its keyword arguments as a JSON object (default "{}")'
    )
    add_client_flags(endpoint, home)
    endpoint.set_defaults(func=_endpoint)


def _json_arg(text: str, flag: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Failure(f"{flag} {text!r} is not JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(value, kind):
        raise Failure(f"{flag} must be a JSON {'list' if kind is list else 'object'}, not {text!r}", EXIT_USAGE)
    return value


def grpcurl_invoke(
    address: str, token: str, function: str, args: list[Any], kwargs: dict[str, Any], tls: Any = None
) -> str:
    """A shell command that calls ``function`` on the worker at ``address`` with grpcurl, JSON in and out.

    The result comes back base64-encoded in ``data`` (``"encoding": "ENCODING_JSON"``).
    """
    data = base64.b64encode(json.dumps({"args": args, "kwargs": kwargs}).encode()).decode()
    request = {"start": {"call_id": 1, "function": function, "encoding": "ENCODING_JSON", "data": data}}
    argv = ["grpcurl"]
    if tls is None:
        argv.append("-plaintext")
    else:
        if tls.ca_file:
            argv += ["-cacert", str(tls.ca_file)]
        if tls.cert_file:
            argv += ["-cert", str(tls.cert_file), "-key", str(tls.key_file)]
    argv += ["-H", f"authorization: Bearer {token}", "-d", json.dumps(request)]
    argv += [address, "vastrpc.api.v1.WorkerService/Invoke"]
    return shlex.join(argv)


def _endpoint(args: argparse.Namespace) -> int:

    from vastrpc._grpc import bearer, sync_channel
    from vastrpc.api.v1 import common_pb2, control_pb2, worker_pb2, worker_pb2_grpc
    from vastrpc.cli.console import print_json

    call_args = _json_arg(args.args, "--args", list)
    call_kwargs = _json_arg(args.kwargs, "--kwargs", dict)
    name, _, tag = args.target.partition(":")
    tag = tag or "default"
    _, _, tls = connect(args)
    with control_stub(args) as (stub, metadata):
        listing = stub.ListDeployments(
            control_pb2.ListDeploymentsRequest(name=name), metadata=metadata, timeout=_RPC_TIMEOUT
        )
        found = [e for d in listing.deployments for e in d.endpoints if e.tag == tag]
        if not found:
            raise NotFoundError(f"no endpoint {name}:{tag}: `vastrpc ls` lists what is deployed")
        watch = stub.WatchEndpoint(
            control_pb2.WatchEndpointRequest(endpoint_id=found[0].endpoint_id), metadata=metadata, timeout=_RPC_TIMEOUT
        )
        try:
            state = next(iter(watch))  # the first message is the endpoint as it is now
        finally:
            watch.cancel()
    ready = [w for w in state.workers if w.state == common_pb2.WORKER_STATE_READY]
    functions: list[str] = []
    if ready:
        credentials = tls.channel_credentials() if tls is not None else None
        with sync_channel(ready[0].address, credentials) as channel:
            info = worker_pb2_grpc.WorkerServiceStub(channel).GetWorkerInfo(
                worker_pb2.GetWorkerInfoRequest(), metadata=bearer(state.endpoint_token), timeout=_RPC_TIMEOUT
            )
        functions = sorted(info.functions)
    if args.function and functions and args.function not in functions:
        raise Failure(f"{name}:{tag} has no function {args.function!r}; it has: {', '.join(functions)}")
    function = args.function or (functions[0] if functions else "FUNCTION")
    address = ready[0].address if ready else "WORKER_ADDRESS"
    command = grpcurl_invoke(address, state.endpoint_token, function, call_args, call_kwargs, tls)
    state_name = common_pb2.EndpointState.Name(state.state).removeprefix("ENDPOINT_STATE_").lower()
    if args.json:
        workers = [
            {
                "worker_id": w.worker_id,
                "address": w.address,
                "state": common_pb2.WorkerState.Name(w.state),
            }
            for w in state.workers
        ]
        print_json(
            {
                "name": name,
                "tag": tag,
                "endpoint_id": state.endpoint_id,
                "state": common_pb2.EndpointState.Name(state.state),
                "revision_id": state.revision_id,
                "endpoint_token": state.endpoint_token,
                "workers": workers,
                "functions": functions,
                "grpcurl": command,
            }
        )
        return EXIT_OK
    print(f"endpoint   {name}:{tag} {state.endpoint_id} ({state_name}, revision {state.revision_id})")
    print(f"token      {state.endpoint_token}")
    for w in ready:
        print(f"worker     {w.worker_id} {w.address}")
    if not ready:
        print("worker     none ready yet: the grpcurl line below needs a worker's address", file=sys.stderr)
    print(f"functions  {', '.join(functions) or '-'}")
    print('call one with grpcurl (the result is base64 of JSON, in "data"):')
    print(f"  {command}")
    return EXIT_OK
