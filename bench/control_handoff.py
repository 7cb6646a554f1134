"""A provider-started worker for the simulated fleet: hands its id and token over to a folder, then sleeps.

The control service runs it as its ``--worker-command`` (from a clean environment: the
standard library only), so that ``bench/control_sim.py`` speaks for the worker the provider
started beside the ones that joined.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--control", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--token-stdin", action="store_true", required=True)
    args = parser.parse_args()
    token = sys.stdin.readline().strip()
    # Written aside, then renamed: a reader never sees half a file.
    tmp = args.dir / f".{args.worker_id}.json"
    tmp.write_text(json.dumps({"worker_id": args.worker_id, "token": token}))
    tmp.rename(args.dir / f"{args.worker_id}.json")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
