"""A stand-in for the worker agent in control service tests: plays the agent's side over real gRPC.

It registers with the worker token its provider writes to its stdin (``--token-stdin``), then
behaves as the spec's ``image.env`` says: ``FAKE_MODE`` ready (default: report READY, heartbeat
until told to stop), fail (report FAILED at install), exit (exit with code 3 while installing), hang (stay in
INSTALLING); ``FAKE_DUMP_DIR`` (write the token and the RegisterWorker answer there);
``FAKE_READY_DELAY`` (seconds before READY).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--control", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--token-stdin", action="store_true", required=True)
    args = parser.parse_args()
    token = sys.stdin.readline().strip()
    metadata = (("authorization", f"Bearer {token}"),)
    stub = control_pb2_grpc.ControlServiceStub(grpc.insecure_channel(args.control))
    reg = stub.RegisterWorker(
        control_pb2.RegisterWorkerRequest(worker_id=args.worker_id, pid=os.getpid()), metadata=metadata, timeout=10
    )
    env = dict(reg.spec.image.env)
    mode = env.get("FAKE_MODE", "ready")
    print(f"fake worker {args.worker_id} serving revision {reg.revision_id} in mode {mode}", flush=True)
    if dump := env.get("FAKE_DUMP_DIR"):
        answer = json_format.MessageToDict(reg, preserving_proto_field_name=True)
        answer.update(token=token, pid=os.getpid(), home=os.environ.get("VASTRPC_HOME", ""))
        tmp = Path(dump) / f".{args.worker_id}.json"
        tmp.write_text(json.dumps(answer))
        tmp.rename(Path(dump) / f"{args.worker_id}.json")

    def update(state: int, **fields: object) -> None:
        stub.UpdateWorker(
            control_pb2.UpdateWorkerRequest(
                worker_id=args.worker_id, state=state, revision_id=reg.revision_id, **fields
            ),
            metadata=metadata,
            timeout=10,
        )

    update(common_pb2.WORKER_STATE_DOWNLOADING)
    update(common_pb2.WORKER_STATE_INSTALLING)
    print("installing packages...", flush=True)
    if mode == "exit":
        print("fatal: something broke during install", flush=True)
        return 3
    if mode == "fail":
        update(
            common_pb2.WORKER_STATE_FAILED,
            failure=common_pb2.Failure(step="install", message="pip install failed: no such package"),
        )
        time.sleep(60)
        return 1
    if mode == "hang":
        time.sleep(600)
        return 0
    update(common_pb2.WORKER_STATE_LOADING)
    time.sleep(float(env.get("FAKE_READY_DELAY", "0")))
    # Printed first: whoever sees the worker ready finds the line in its log already.
    print("ready", flush=True)
    update(common_pb2.WORKER_STATE_READY, address="127.0.0.1:9", score=12.5, capacity=4)
    while True:
        response = stub.Heartbeat(
            control_pb2.HeartbeatRequest(worker_id=args.worker_id, calls_in_flight=0), metadata=metadata, timeout=10
        )
        if response.stop:
            print("told to stop", flush=True)
            return 0
        time.sleep(reg.heartbeat_interval or 1.0)


if __name__ == "__main__":
    sys.exit(main())
