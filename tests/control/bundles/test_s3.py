"""Bundles in S3: S3BlobStore against a real S3-compatible HTTP server (moto's), and end to end through workers."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port
from vastrpc._errors import BundleError, DefinitionError, DeploymentError, NotFoundError
from vastrpc.config import ControlConfig
from vastrpc.control.backends import open_blobs
from vastrpc.control.bundles.s3 import DIGEST_METADATA, S3BlobStore, S3Error, is_transient
from vastrpc.serve.fetch import fetch_bundle

BUCKET = "vastrpc-test"
# Dummy credentials: moto accepts any. Given to the control service only, never set here.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
MiB = 1 << 20


# -- the S3-compatible server (moto's standalone server, a real HTTP server on loopback) ----------


@dataclass
class S3Server:
    """A ``python -m moto.server`` process answering S3 requests at ``endpoint``."""

    endpoint: str
    process: subprocess.Popen[bytes]

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        return client_for(self.endpoint)


def client_for(endpoint: str) -> Any:
    """A boto3 S3 client for the tests themselves (explicit dummy credentials, botocore retries off)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    config = Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"total_max_attempts": 1})
    return session.client("s3", endpoint_url=endpoint, config=config)


# The running server, for the control_service fixture's `setup` hook (it only gets tmp_path).
_RUNNING: dict[str, S3Server] = {}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with the bucket ``BUCKET`` created."""
    if importlib.util.find_spec("moto.server") is None or importlib.util.find_spec("flask") is None:
        pytest.fail("moto's server is not installed: pip install 'moto[server]' (part of the [test] extra)")
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    for _ in range(3):  # the free port may be taken between the probe and the bind
        port = free_port()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        if process.poll() is None:
            break
    else:
        pytest.fail(f"moto's S3 server did not start:\n{log_path.read_text()}")
    if process.poll() is not None or time.monotonic() >= deadline:
        process.kill()
        pytest.fail(f"moto's S3 server did not answer within 30s:\n{log_path.read_text()}")
    server = S3Server(endpoint, process)
    server.client().create_bucket(Bucket=BUCKET)
    _RUNNING["server"] = server
    try:
        yield server
    finally:
        _RUNNING.pop("server", None)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3(s3_server: S3Server) -> Any:
    """A test's own boto3 client of the server."""
    return s3_server.client()


def make_store(server: S3Server, prefix: str = "", **kwargs: Any) -> tuple[S3BlobStore, dict[str, int]]:
    """An S3BlobStore on a fresh prefix, and a count of the S3 operations it sent (every try)."""
    calls: dict[str, int] = {}
    client = server.client()

    def count(event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        calls[operation] = calls.get(operation, 0) + 1

    client.meta.events.register("before-send.s3.*", count)
    kwargs.setdefault("list_interval", 0)
    store = S3BlobStore(BUCKET, prefix or f"t-{uuid.uuid4().hex[:8]}", client=client, **kwargs)
    return store, calls


def blob(size: int) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).hexdigest()


def upload(store: S3BlobStore, data: bytes, digest: str | None = None, chunk: int = MiB) -> bool:
    with store.open_writer(digest or hashlib.sha256(data).hexdigest(), len(data)) as writer:
        for start in range(0, len(data), chunk):
            writer.write(data[start : start + chunk])
        return writer.commit()


def keys_and_uploads(s3: Any, prefix: str) -> tuple[list[str], list[str]]:
    """The objects under the prefix, and the multipart uploads still open there."""
    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    return [o["Key"] for o in objects], [u["Key"] for u in uploads]


# -- S3BlobStore against the server ------------------------------------------------------------


def test_write_has_size_read_and_presigned_download(s3_server: S3Server, s3: Any) -> None:
    store, calls = make_store(s3_server)
    data, digest = blob(300_000)
    assert not store.has(digest)
    before = time.time()
    assert upload(store, data, chunk=64 * 1024) is True
    assert calls.get("PutObject") == 1 and "UploadPart" not in calls  # small: one put, no parts
    assert store.has(digest) and store.size(digest) == len(data)
    assert b"".join(store.read_chunks(digest, 100_000)) == data
    head = s3.head_object(Bucket=BUCKET, Key=f"{store.prefix}/{digest}")
    assert head["Metadata"][DIGEST_METADATA] == digest
    assert list(store.stored()) == [digest] and store.stored()[digest] >= before - 2

    url = store.download_url(digest)
    # A presigned GET valid 15 minutes: a worker needs no credentials of its own to use it.
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=900" in url
    assert f"/{BUCKET}/{store.prefix}/{digest}?" in url
    assert fetch_bundle(url, digest, len(data)) == data
    with pytest.raises(NotFoundError):
        store.download_url("b" * 64)
    with pytest.raises(NotFoundError):
        store.read_chunks("b" * 64, 10)


@pytest.mark.timeout(60)
def test_a_large_bundle_is_uploaded_in_parts(s3_server: S3Server, s3: Any) -> None:
    store, calls = make_store(s3_server)
    data, digest = blob(17 * MiB + 123)
    assert upload(store, data) is True
    # 8 MiB parts: 8 + 8 + the rest; S3 marks a multipart object's ETag with its part count.
    assert calls.get("CreateMultipartUpload") == 1 and calls.get("UploadPart") == 3
    assert calls.get("CompleteMultipartUpload") == 1 and "PutObject" not in calls
    head = s3.head_object(Bucket=BUCKET, Key=store.key(digest))
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == len(data)
    assert store.has(digest) and hashlib.sha256(b"".join(store.read_chunks(digest, 4 * MiB))).hexdigest() == digest
    assert fetch_bundle(store.download_url(digest), digest, len(data)) == data
    assert keys_and_uploads(s3, store.prefix)[1] == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [200_000, 17 * MiB], ids=["single-put", "multipart"])
def test_a_digest_mismatch_aborts_and_leaves_nothing(s3_server: S3Server, s3: Any, size: int) -> None:
    store, calls = make_store(s3_server)
    data, digest = blob(size)
    with pytest.raises(BundleError, match="digest mismatch"):
        upload(store, data, digest="c" * 64)
    if size > store.part_size:
        assert calls.get("UploadPart", 0) >= 2 and calls.get("AbortMultipartUpload") == 1
    assert "PutObject" not in calls and "CompleteMultipartUpload" not in calls
    assert keys_and_uploads(s3, store.prefix) == ([], [])
    assert not store.has("c" * 64)


@pytest.mark.timeout(60)
def test_an_abandoned_or_oversized_upload_leaves_nothing(s3_server: S3Server, s3: Any) -> None:
    store, _ = make_store(s3_server)
    data, digest = blob(17 * MiB)
    with pytest.raises(KeyboardInterrupt), store.open_writer(digest, len(data)) as writer:
        writer.write(data[: 9 * MiB])  # one part sent
        assert writer.parts == 1
        raise KeyboardInterrupt  # a client that went away mid-stream
    with pytest.raises(BundleError, match="larger than"), store.open_writer(digest, 10) as writer:
        writer.write(data[:11])
    assert keys_and_uploads(s3, store.prefix) == ([], [])


def test_dedup_by_digest_and_an_object_not_written_by_a_store_is_replaced(s3_server: S3Server, s3: Any) -> None:
    store, calls = make_store(s3_server)
    data, digest = blob(50_000)
    # Something else wrote that key (no digest tag): not a stored bundle, and the upload replaces it.
    s3.put_object(Bucket=BUCKET, Key=store.key(digest), Body=b"not the bundle")
    assert not store.has(digest)
    with pytest.raises(NotFoundError):
        store.size(digest)
    assert upload(store, data) is True
    assert store.has(digest) and store.size(digest) == len(data)
    puts = calls["PutObject"]
    # A second upload of the same bytes (say, a concurrent one that lost) sends nothing.
    assert upload(store, data) is False
    assert calls["PutObject"] == puts
    other, _ = make_store(s3_server, prefix=store.prefix)
    assert other.has(digest)  # found by digest, by any store on the same prefix


def test_stored_lists_only_bundles_and_delete_removes_one(s3_server: S3Server, s3: Any) -> None:
    store, calls = make_store(s3_server)
    (a, da), (b, db) = blob(1000), blob(2000)
    upload(store, a)
    upload(store, b)
    s3.put_object(Bucket=BUCKET, Key=f"{store.prefix}/README", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=f"{store.prefix}/nested/{'d' * 64}", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=f"{store.prefix}-other/{'e' * 64}", Body=b"x")
    assert sorted(store.stored()) == sorted([da, db])
    assert store.delete(da) is True and store.delete(da) is False
    assert not store.has(da) and list(store.stored()) == [db]
    assert store.delete("../README") is False

    # The reaper asks every second: a listing is reused for list_interval, kept true to this store's deletes.
    cached, cached_calls = make_store(s3_server, prefix=store.prefix, list_interval=3600)
    assert list(cached.stored()) == [db]
    assert cached.delete(db) is True
    upload(store, a)  # by another control service: seen at the next listing
    assert cached.stored() == {} and cached_calls["ListObjectsV2"] == 1


def test_retries_throttling_and_server_errors_but_not_client_errors(s3_server: S3Server, s3: Any) -> None:
    from botocore.awsrequest import AWSResponse

    store, _ = make_store(s3_server, attempts=4, retry_wait=0.01, retry_wait_max=0.02)
    data, digest = blob(1000)
    upload(store, data)
    answers: list[tuple[int, str]] = []
    tries: list[str] = []

    class Body:
        def __init__(self, text: bytes) -> None:
            self.text = text

        def stream(self, **_: Any) -> Iterator[bytes]:
            yield self.text

    def fault(request: Any, **_: Any) -> AWSResponse | None:
        # Answer in the server's place while there are canned answers; then the server answers.
        tries.append(request.method)
        if not answers:
            return None
        status, code = answers.pop(0)
        xml = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, Body(xml))

    store._client.meta.events.register("before-send.s3.GetObject", fault)

    def get() -> bytes:
        return b"".join(store.read_chunks(digest, MiB))

    answers[:] = [(503, "SlowDown"), (500, "InternalError"), (400, "RequestTimeout")]
    assert get() == data and len(tries) == 4  # three transient failures, then the real answer

    tries.clear()
    answers[:] = [(503, "SlowDown")] * 4
    with pytest.raises(S3Error, match="SlowDown.*after 4 tries.*try again later"):
        get()
    assert len(tries) == 4

    for status, code, words in [
        (403, "AccessDenied", "denied.*allow the control service's AWS identity"),
        (403, "InvalidAccessKeyId", "refused the control service's AWS credentials"),
        (400, "InvalidRequest", "InvalidRequest"),
    ]:
        tries.clear()
        answers[:] = [(status, code)]
        with pytest.raises(S3Error, match=words):
            get()
        assert len(tries) == 1, code  # a client error is never tried again

    # A real 4xx from the server: the bucket is missing.
    missing, missing_calls = make_store(s3_server, attempts=4, retry_wait=0.01)
    missing.bucket = "no-such-bucket"
    with pytest.raises(S3Error, match="bucket 'no-such-bucket' does not exist: create it or fix --blobs"):
        missing.read_chunks(digest, MiB)
    assert missing_calls == {"GetObject": 1}


def test_an_unreachable_endpoint_is_retried_then_named(s3_server: S3Server) -> None:
    port = free_port()  # nothing listens there
    client = client_for(f"http://127.0.0.1:{port}")
    tries: list[str] = []
    client.meta.events.register("before-send.s3.*", lambda event_name, **_: tries.append(event_name))
    endpoint = f"http://127.0.0.1:{port}"
    store = S3BlobStore(BUCKET, "x", endpoint_url=endpoint, client=client, attempts=3, retry_wait=0.01)
    with pytest.raises(DefinitionError, match=rf"cannot reach the S3 store at http://127.0.0.1:{port}.*after 3 tries"):
        store.check()
    assert len(tries) == 3
    # The reaper lists every second: a failed listing is not tried again for list_interval.
    with pytest.raises(S3Error, match="cannot reach"):
        store.stored()
    assert store.stored() == {} and len(tries) == 6


def test_is_transient_classifies_botocore_errors() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    for code, status in [("SlowDown", 503), ("Throttling", 400), ("RequestLimitExceeded", 400), ("InternalError", 500)]:
        assert is_transient(client_error(code, status)), code
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://x"))
    for code, status in [("NoSuchBucket", 404), ("AccessDenied", 403), ("NoSuchKey", 404), ("InvalidRequest", 400)]:
        assert not is_transient(client_error(code, status)), code
    assert not is_transient(NoCredentialsError()) and not is_transient(ValueError("x"))


def test_open_blobs_checks_the_bucket_at_startup(s3_server: S3Server, tmp_path: Path, monkeypatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)  # boto3's default chain, as in the control service
    config = ControlConfig(home=tmp_path, blob_url=f"s3://{BUCKET}/p?url_expiry=60", s3_endpoint_url=s3_server.endpoint)
    store = open_blobs(config)
    assert isinstance(store, S3BlobStore) and (store.bucket, store.prefix, store.url_expiry) == (BUCKET, "p", 60)
    with pytest.raises(DefinitionError, match="bucket 'nope' does not exist"):
        open_blobs(ControlConfig(home=tmp_path, blob_url="s3://nope/p", s3_endpoint_url=s3_server.endpoint))
    for url, words in [("s3:///p", "expected s3://bucket/prefix"), (f"s3://{BUCKET}/p?ttl=1", "unknown option")]:
        with pytest.raises(DefinitionError, match=words):
            open_blobs(ControlConfig(home=tmp_path, blob_url=url, s3_endpoint_url=s3_server.endpoint))
    with pytest.raises(DefinitionError, match="--s3-endpoint-url applies to an S3 bundle store"):
        open_blobs(ControlConfig(home=tmp_path, s3_endpoint_url=s3_server.endpoint))


@pytest.mark.timeout(60)
def test_control_serve_with_a_missing_bucket_fails_fast_with_one_line(s3_server: S3Server, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(tmp_path / "home"), "--port", "0"]
    argv += ["--blobs", "s3://missing-bucket/bundles", "--s3-endpoint-url", s3_server.endpoint]
    started = time.monotonic()
    done = subprocess.run(argv, env={**os.environ, **AWS_ENV}, capture_output=True, text=True, timeout=45)
    assert done.returncode == 1 and time.monotonic() - started < 30, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    expected = f"error: bucket 'missing-bucket' does not exist at {s3_server.endpoint}: create it or fix --blobs"
    assert errors == [expected], done.stderr


def test_fetch_names_a_missing_object_and_a_wrong_size(s3_server: S3Server) -> None:
    store, _ = make_store(s3_server)
    data, digest = blob(5000)
    upload(store, data)
    url = store.download_url(digest)
    with pytest.raises(BundleError, match="larger than its registered 100 bytes"):
        fetch_bundle(url, digest, 100)
    with pytest.raises(BundleError, match=rf"digest mismatch: expected {digest} \(6000 bytes\), the 5000 bytes"):
        fetch_bundle(url, digest, 6000)
    store.delete(digest)
    with pytest.raises(BundleError, match="HTTP 404.*no longer stored") as caught:
        fetch_bundle(url, digest, len(data))
    assert "X-Amz-Signature" not in str(caught.value)  # a signature is never in a message or a log


# -- end to end: a real control service with --blobs s3://..., real workers -------------------------


def _s3_flags(tmp_path: Path) -> list[str]:
    server = _RUNNING["server"]  # started first: session fixtures are set up before function ones
    return ["--blobs", f"s3://{BUCKET}/{tmp_path.name}", "--s3-endpoint-url", server.endpoint]


with_s3_control = pytest.mark.parametrize("control_service", [{"setup": _s3_flags, "env": AWS_ENV}], indirect=True)

SOURCE = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{}}])
async def aws_variables() -> list:
    return sorted(name for name in os.environ if name.startswith("AWS_"))
"""


async def _teardown(project: Any, mod: Any) -> None:
    from vastrpc.client.control import ControlClient

    client = ControlClient(project.control.address, project.control.api_key)
    try:
        await client.teardown(mod.app.name)
    finally:
        await client.close()
    await mod.app.close()


async def _worker_log(project: Any, mod: Any) -> str:
    (worker,) = await project.workers(mod.app)
    return await project.logs(worker["worker_id"])


async def _until(check: Callable[[], Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.e2e
@pytest.mark.timeout(240)
@with_s3_control
async def test_deploy_stores_the_bundle_in_s3_and_workers_download_it_by_url(
    s3_server: S3Server, s3: Any, project: Any, control_service: Any
) -> None:
    prefix = control_service.home.parent.name
    mod = project(SOURCE)
    first = await mod.app.ensure_ready()
    assert first.uploaded
    assert await mod.aws_variables() == []  # the control service had AWS_*; its workers do not
    key = f"{prefix}/{first.bundle_digest}"
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"][DIGEST_METADATA] == first.bundle_digest
    assert not any((control_service.home / "bundles").glob("*"))  # nothing in the local store
    log = await _worker_log(project, mod)
    assert f"by URL from {s3_server.endpoint}/{BUCKET}/{key}" in log and "X-Amz-Signature" not in log

    # The same bundle again, on a fresh worker: found by digest, nothing uploaded, downloaded by URL again.
    await _teardown(project, mod)
    second = await mod.app.ensure_ready()
    assert (second.uploaded, second.bundle_digest) == (False, first.bundle_digest)
    assert s3.head_object(Bucket=BUCKET, Key=key)["LastModified"] == head["LastModified"]
    assert await mod.aws_variables() == []
    assert "by URL from" in await _worker_log(project, mod)
    assert "X-Amz-Signature" not in control_service.log_text()


@pytest.mark.e2e
@pytest.mark.timeout(240)
@with_s3_control
async def test_a_corrupted_object_fails_the_deploy_with_the_digests(
    s3_server: S3Server, s3: Any, project: Any, control_service: Any
) -> None:
    prefix = control_service.home.parent.name
    mod = project(SOURCE)
    first = await mod.app.ensure_ready()
    digest = first.bundle_digest
    key = f"{prefix}/{digest}"
    await _teardown(project, mod)
    # Bytes replaced in the bucket, the digest tag kept: only the worker's own check can tell.
    corrupt = b"these are not the bundle's bytes"
    s3.put_object(Bucket=BUCKET, Key=key, Body=corrupt, Metadata={DIGEST_METADATA: digest})
    started = time.monotonic()
    with pytest.raises(DeploymentError) as caught:
        await mod.app.ensure_ready()
    text = str(caught.value)
    assert "download failed" in text and "bundle digest mismatch" in text, text
    assert digest in text and hashlib.sha256(corrupt).hexdigest() in text and "delete it" in text
    assert time.monotonic() - started < 60
    await mod.app.close()

    # What the message says to do: delete the object and deploy again, which uploads it anew.
    s3.delete_object(Bucket=BUCKET, Key=key)
    again = await mod.app.ensure_ready()
    assert again.uploaded and await mod.aws_variables() == []
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] > len(corrupt)
