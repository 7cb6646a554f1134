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
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vastrpc.cli import control, deployments, endpoint, worker
from vastrpc.cli.exit_codes import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    exit_code,
)

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "main"]

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


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with EXIT_USAGE and one ``error:`` line after the usage."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"error: {message}\n")


def _parser(home: Path) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="vastrpc",
        description="Run async Python functions on remote workers.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from vastrpc import __version__

    parser.add_argument("--version", action="version", version=f"vastrpc {__version__}")
    # The commands' parsers are _Parsers too: argparse makes them of the class of the one they belong to.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    control.add_commands(commands, home)
    worker.add_commands(commands, home)
    deployments.add_commands(commands, home)
    endpoint.add_commands(commands, home)
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
        code = exit_code(exc)
        if code is None:
            raise  # a bug: its traceback says where
        from vastrpc.cli.console import print_error

        print_error(exc, code, json_output=getattr(args, "json", False))
        return code
