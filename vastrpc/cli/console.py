"""What the ``vastrpc`` command shows: deploy progress, tables, the JSON documents for scripts, error lines."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vastrpc._errors import DeploymentError, VastrpcError
from vastrpc._hostimage import protocol_name
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.deploy.flow import DeployResult, describe_tier
from vastrpc.deploy.progress import PlainProgress, RichProgress, wants_terminal

__all__ = [
    "PlainProgress",
    "RichProgress",
    "console",
    "deploy_document",
    "deploy_summary",
    "duration",
    "ls_document",
    "print_json",
    "render_ls",
    "wants_terminal",
]

# Wide enough that a table piped to a file or grep keeps each row on one line.
_PIPE_WIDTH = 200


def console(stream: IO[str], terminal: bool) -> Console:
    """A rich console on ``stream``; without a terminal no colour, no cursor moves and wide lines."""
    if terminal:
        return Console(file=stream, force_terminal=True, highlight=False)
    return Console(file=stream, force_terminal=False, no_color=True, highlight=False, width=_PIPE_WIDTH)


def print_json(data: Any, stream: IO[str] | None = None) -> None:
    """``data`` as indented JSON, one document."""
    out = stream or sys.stdout
    out.write(json.dumps(data, indent=2) + "\n")
    out.flush()


def duration(seconds: float | None) -> str:
    """``seconds`` in the largest units that matter: ``45s``, ``12m05s``, ``3h20m``, ``2d04h``; ``-`` for None."""
    if seconds is None or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def deploy_document(name: str, tag: str, result: DeployResult) -> dict[str, Any]:
    """One deploy as ``vastrpc deploy --json`` prints it (the fields of DeployResult, with name and tag)."""
    return {
        "name": name,
        "tag": tag,
        "tier": result.tier,
        "tier_description": result.description,
        "deployment_id": result.deployment_id,
        "endpoint_id": result.endpoint_id,
        "revision_id": result.revision_id,
        "bundle_digest": result.bundle_digest,
        "uploaded": result.uploaded,
        "workers_started": result.workers_started,
        "ready_workers": result.ready_workers,
        "seconds": round(result.seconds, 3),
    }


def deploy_summary(out: Console, name: str, tag: str, result: DeployResult) -> None:
    """The few lines that say what a deploy did: tier in words, endpoint, revision, workers."""
    out.print(
        f"[bold]{escape(name)}:{escape(tag)}[/] [green]ready[/] — tier {result.tier} ({escape(result.description)})"
    )
    out.print(f"  endpoint {result.endpoint_id}")
    out.print(f"  revision {result.revision_id}")
    out.print(f"  workers  {result.ready_workers} ready, {result.workers_started} started by this deploy")
    out.print(f"  bundle   {result.bundle_digest[:12]} ({'uploaded' if result.uploaded else 'already stored'})")
    out.print(f"  took     {result.seconds:.2f}s")


# -- ls -----------------------------------------------------------------------------------------


def _state(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def _failure(failure: common_pb2.Failure | None) -> dict[str, str] | None:
    if failure is None or not (failure.step or failure.message):
        return None
    return {"step": failure.step, "message": failure.message, "log_tail": failure.log_tail}


def ls_document(response: control_pb2.ListDeploymentsResponse, now: float | None = None) -> list[dict[str, Any]]:
    """The listing as ``vastrpc ls --json`` prints it (see the ``ls`` command's help for its shape)."""
    now = time.time() if now is None else now
    deployments = []
    for d in response.deployments:
        endpoints = []
        for e in d.endpoints:
            workers = []
            for w in e.workers:
                activity = e.worker_activity.get(w.worker_id)
                started = activity.started_at if activity is not None and activity.started_at else None
                failed = w.state == common_pb2.WORKER_STATE_FAILED
                workers.append(
                    {
                        "worker_id": w.worker_id,
                        "state": _state(common_pb2.WorkerState, w.state),
                        "revision_id": w.revision_id,
                        "address": w.address,
                        "score": w.score,
                        "capacity": w.capacity,
                        "calls_in_flight": activity.calls_in_flight if activity is not None else 0,
                        "calls_queued": activity.calls_queued if activity is not None else 0,
                        "calls_started": activity.calls_started if activity is not None else 0,
                        "pid": w.pid,
                        "started_at": started,
                        # A failed worker runs no more: no uptime growing after its end.
                        "uptime_seconds": round(now - started, 3) if started and not failed else None,
                        "last_heartbeat": w.last_heartbeat or None,
                        "failure": _failure(w.failure if w.HasField("failure") else None),
                        "published_ports": [
                            {"port": p.port, "protocol": protocol_name(p.protocol), "address": p.address}
                            for p in w.published_ports
                        ],
                        "gpus": list(w.gpus),
                    }
                )
            tier, words = describe_tier(e.live_revision_tier)
            ready = sum(1 for w in e.workers if w.state == common_pb2.WORKER_STATE_READY)
            failed_count = sum(1 for w in e.workers if w.state == common_pb2.WORKER_STATE_FAILED)
            a = e.autoscaling
            endpoints.append(
                {
                    "endpoint_id": e.endpoint_id,
                    "tag": e.tag,
                    "state": _state(common_pb2.EndpointState, e.state),
                    "revision_id": e.revision_id,
                    "version_label": e.version_label or None,
                    "update_tier": tier if tier >= 0 else None,
                    "update": words if tier >= 0 else None,
                    "workers_ready": ready,
                    "workers_total": len(e.workers) - failed_count,  # the failed ones serve nothing
                    "workers_failed": failed_count,
                    "workers_desired": e.desired_workers,
                    "ttl_seconds": e.ttl or None,
                    "idle_seconds": round(now - e.last_client_seen, 3) if e.last_client_seen else None,
                    "autoscaling": {
                        "min_workers": a.min_workers,
                        "max_workers": a.max_workers,
                        "cold_workers": a.cold_workers,
                        "target_util": a.target_util,
                        "inactivity_timeout": a.inactivity_timeout,
                        "min_load": a.min_load,
                        "min_cold_load": a.min_cold_load,
                        "cold_mult": a.cold_mult,
                        "max_queue_time": a.max_queue_time,
                        "target_queue_time": a.target_queue_time,
                    },
                    "failure": _failure(e.failure if e.HasField("failure") else None),
                    "workers": workers,
                }
            )
        deployments.append(
            {"name": d.name, "deployment_id": d.deployment_id, "created_at": d.created_at, "endpoints": endpoints}
        )
    return deployments


_STYLES = {
    "ready": "green",
    "failed": "red",
    "stopped": "dim",
    "draining": "yellow",
    "deploying": "yellow",
    "waiting": "yellow",
}


def _short(state: str) -> Text:
    word = state.split("_STATE_")[-1].lower()
    return Text(word, style=_STYLES.get(word, "cyan"))


def render_ls(out: Console, document: list[dict[str, Any]]) -> None:
    """The listing as two tables: endpoints (one row each, per deployment), then their workers."""
    endpoints = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in ("ENDPOINT", "STATE", "REVISION", "LAST UPDATE", "WORKERS", "TTL", "IDLE", "ID"):
        endpoints.add_column(name, no_wrap=True)
    workers = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    # The PORTS column only where some worker publishes ports (Image.publish_port).
    with_ports = any(w.get("published_ports") for d in document for e in d["endpoints"] for w in e["workers"])
    # The GPUS column only where some worker holds GPUs (the local provider's CUDA_VISIBLE_DEVICES).
    with_gpus = any(w.get("gpus") for d in document for e in d["endpoints"] for w in e["workers"])
    columns: tuple[str, ...] = ("WORKER", "ENDPOINT", "STATE", "REVISION", "ADDRESS", "SCORE", "IN FLIGHT", "UPTIME")
    columns += ("GPUS",) if with_gpus else ()
    for name in (*columns, "PORTS") if with_ports else columns:
        workers.add_column(name, no_wrap=True, justify="right" if name in ("SCORE", "IN FLIGHT") else "left")
    failures: list[str] = []
    for d in document:
        if not d["endpoints"]:
            endpoints.add_row(d["name"], Text("no endpoints", style="dim"), *[""] * 6)
        for e in d["endpoints"]:
            label = f"{d['name']}:{e['tag']}"
            update = f"{e['update_tier']} {e['update'].split(' — ')[0]}" if e["update_tier"] is not None else "-"
            stopped = e["state"].endswith("_STOPPED")
            count = f"{e['workers_ready']}/{e['workers_total']} ready"
            if e["workers_desired"] != e["workers_total"] and not stopped:
                count += f" (want {e['workers_desired']})"
            if e["workers_failed"]:
                count += f", {e['workers_failed']} failed"
            ttl = duration(e["ttl_seconds"]) if e["ttl_seconds"] else "never"
            idle = duration(e["idle_seconds"])
            revision = e["revision_id"] or "-"
            if e["version_label"]:
                revision += f" ({e['version_label']})"
            row = (label, _short(e["state"]), revision, update, count, ttl, idle, e["endpoint_id"])
            endpoints.add_row(*row)
            # A torn-down endpoint's old failure is history: `vastrpc logs` still has it.
            if e["failure"] and e["state"].endswith("_WAITING"):
                # Not a failure: it lost its workers and places new ones as capacity allows.
                failures.append(_failure_line(label, e["failure"], "waits for capacity since"))
            elif e["failure"] and not stopped:
                failures.append(_failure_line(label, e["failure"]))
            for w in e["workers"]:
                in_flight = str(w["calls_in_flight"]) + (f" ({w['calls_queued']} queued)" if w["calls_queued"] else "")
                cells = [
                    w["worker_id"],
                    label,
                    _short(w["state"]),
                    w["revision_id"],
                    w["address"] or "-",
                    f"{w['score']:.1f}/s" if w["score"] else "-",
                    in_flight,
                    duration(w["uptime_seconds"]),
                ]
                if with_gpus:
                    cells.append(",".join(map(str, w.get("gpus") or [])) or "-")
                if with_ports:
                    ports = w.get("published_ports") or []
                    cells.append(", ".join(f"{p['port']}/{p['protocol']} {p['address'] or '-'}" for p in ports) or "-")
                workers.add_row(*cells)
                if w["failure"] and w["failure"] != e["failure"]:  # not the endpoint's line again
                    failures.append(_failure_line(w["worker_id"], w["failure"]))
    out.print(endpoints)
    if workers.row_count:
        out.print(workers)
    for line in failures:
        out.print(Text(line, style="red"))


def _failure_line(label: str, failure: dict[str, str], what: str = "failed at") -> str:
    """One line per failure; the traceback is in the worker's log (``vastrpc logs``)."""
    message = failure["message"].strip().splitlines()
    return f"{label} {what} {failure['step']}: {message[0] if message else 'no message'}"


def print_error(exc: Exception, code: int, *, json_output: bool) -> None:
    """``error: ...`` on stderr, in one line (a failed deploy adds its log tail); with ``json_output`` also
    ``{"error": {"code", "type", "message"}}`` on stdout."""
    if isinstance(exc, DeploymentError):
        line = f"{exc.step} failed: {exc.reason}" if exc.step else exc.reason
    else:
        line = str(exc)
    # One line: a multi-line message (a remote traceback) keeps its first.
    line = line.strip().splitlines()[0] if line.strip() else type(exc).__name__
    if json_output:
        # The vastrpc exception's name, or for the command's own checks what kind of error it was.
        kind = type(exc).__name__ if isinstance(exc, VastrpcError) else ("UsageError" if code == 2 else "Error")
        error = {"code": code, "type": kind, "message": str(exc)}
        print(json.dumps({"error": error}, indent=2))
    print(f"error: {line}", file=sys.stderr)
    if isinstance(exc, DeploymentError) and exc.log_tail.strip():
        # What the worker printed before it failed is the part that says what to fix.
        print("worker log (tail):", file=sys.stderr)
        for text in exc.log_tail.rstrip().splitlines():
            print(f"  {text}", file=sys.stderr)


def write_log(worker_id: str, text: str, *, prefixed: bool, as_json: bool, color: bool) -> None:
    """One FollowLogs message on stdout: as written, prefixed with the worker id, or as JSON lines."""
    if as_json:
        out = "".join(
            json.dumps({"worker_id": worker_id, "line": line.rstrip("\r\n")}) + "\n"
            for line in text.splitlines(keepends=True)
        )
    elif prefixed:
        tag = f"\x1b[36m{worker_id}\x1b[0m" if color else worker_id
        out = "".join(f"{tag} | {line}" for line in text.splitlines(keepends=True))
    else:
        out = text
    if out and not out.endswith("\n"):
        out += "\n"  # a log that ends without a newline: the next text starts a line of its own
    sys.stdout.write(out)
    sys.stdout.flush()


def print_status(status: dict[str, Any], home: Path) -> None:
    """``vastrpc control status`` for a running service: address, TLS, pid, start time, home."""
    started_at = float(status.get("started_at", 0))
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at))
    tls = f"TLS (trust {status.get('tls_ca') or 'the system roots'})" if status.get("tls") else "plaintext"
    if status.get("tls_client_cert"):
        tls += ", client certificates required"
    print("control service running")
    print(f"  address   {status['address']}")
    print(f"  security  {tls}")
    print(f"  pid       {status['pid']}")
    print(f"  started   {started} (up {duration(time.time() - started_at)})")
    if "leader" in status:
        print(f"  role      {'leader' if status['leader'] else 'follower (another service leads)'}")
    if status.get("metrics_address"):
        print(f"  metrics   http://{status['metrics_address']}/metrics")
    if status.get("dashboard_url"):
        print(f"  dashboard {status['dashboard_url']} (sign in with the API key in {home / 'api_key'})")
    print(f"  home      {home}")
