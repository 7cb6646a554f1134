"""The S3 bundle store: bundles as objects ``<prefix>/<digest>`` in an S3 or S3-compatible bucket, through boto3.

Only the control service holds credentials (boto3's default chain: environment, AWS
config, instance role). Workers download through presigned GET URLs that expire soon, and
verify the digest themselves. Throttling and transient failures are retried (tenacity);
anything else, such as a missing bucket or refused credentials, fails at once and says what
to fix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from vastrpc._errors import BundleError, ControlServiceError, DefinitionError, NotFoundError
from vastrpc.config import ControlConfig
from vastrpc.control.bundles.base import VerifyingWriter, check_digest, is_digest

__all__ = ["S3BlobStore", "S3Error", "is_transient"]

log = logging.getLogger(__name__)

# S3 refuses parts under 5 MiB except the last one.
MIN_PART_SIZE = 5 << 20
DEFAULT_PART_SIZE = 8 << 20
DEFAULT_URL_EXPIRY = 900.0
# The longest a SigV4 presigned URL may be valid.
MAX_URL_EXPIRY = 7 * 24 * 3600.0
# Listing a bucket costs a request per thousand objects; the reaper asks every second.
DEFAULT_LIST_INTERVAL = 60.0
# Object metadata naming the digest the bytes were verified against before the upload:
# an object at a bundle's key without it (written by something else) is not that bundle.
DIGEST_METADATA = "vastrpc-sha256"

_THROTTLING = frozenset(
    "SlowDown Throttling ThrottlingException ThrottledException RequestThrottled RequestThrottledException "
    "RequestLimitExceeded TooManyRequestsException BandwidthLimitExceeded".split()
)
_TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException"})
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)
_OPTIONS = ("url_expiry", "region")


class S3Error(ControlServiceError):
    """An S3 request failed for good (not retried, or retries exhausted).

    Attributes:
        code: The S3 error code (``NoSuchBucket``, ``AccessDenied``, ``404``, ...); empty
            when no answer came (a connection error).
        status: The HTTP status; 0 when no answer came.
    """

    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


def _client_error(exc: BaseException) -> tuple[str, int] | None:
    """(code, HTTP status) of a botocore ClientError; None for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict) or "Error" not in response and "ResponseMetadata" not in response:
        return None
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_transient(exc: BaseException) -> bool:
    """Whether a failed S3 request is worth retrying: throttling, a 5xx, a timeout or a lost connection.

    A 4xx other than throttling (NoSuchBucket, AccessDenied, NoSuchKey) never is: the same
    request would fail the same way.
    """
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        code, status = _client_error(exc) or ("", 0)
        return code in _THROTTLING or code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS
    # Connection refused/reset, connect and read timeouts, a response cut short.
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def parse_s3_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``s3://bucket/prefix?option=value`` as (bucket, prefix, options).

    Raises:
        DefinitionError: Not an ``s3://`` URL with a bucket, or an unknown option.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or "@" in parts.netloc:
        raise DefinitionError(f"invalid S3 bundle store {url!r}: expected s3://bucket/prefix")
    options = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True, strict_parsing=False).items():
        if name not in _OPTIONS:
            raise DefinitionError(f"unknown option {name!r} in {url!r}: the options are {', '.join(_OPTIONS)}")
        options[name] = values[-1]
    return parts.netloc, parts.path.strip("/"), options


class S3BlobStore:
    """Bundles as objects ``<prefix>/<digest>`` in ``bucket``, each tagged with its verified digest.

    Args:
        bucket: The bucket; it must exist (``check()`` says so at startup).
        prefix: A key prefix ("folder") for the bundles, without a trailing slash.
        client: A boto3 S3 client; default: one from boto3's default credential chain.
        endpoint_url: The endpoint of an S3-compatible store (None: AWS S3). Workers must
            reach it too: their download URLs point there.
        region: The bucket's region (None: boto3's default, corrected by ``check()``).
        url_expiry: Seconds a worker's download URL stays valid.
        part_size: Bundles larger than this are uploaded in parts of this size (at least 5 MiB).
        attempts: Tries of one request when it fails transiently.
        retry_wait: Seconds of backoff: a try waits a random time up to ``retry_wait * 2**try`` (full jitter).
        retry_wait_max: The longest wait between two tries.
        list_interval: Seconds a listing of the bucket (``stored``) is reused.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        url_expiry: float = DEFAULT_URL_EXPIRY,
        part_size: int = DEFAULT_PART_SIZE,
        attempts: int = 5,
        retry_wait: float = 0.2,
        retry_wait_max: float = 5.0,
        list_interval: float = DEFAULT_LIST_INTERVAL,
    ) -> None:
        if not 1 <= url_expiry <= MAX_URL_EXPIRY:
            raise DefinitionError(f"url_expiry {url_expiry}: download URLs must be valid 1 s to 7 days")
        if part_size < MIN_PART_SIZE:
            raise DefinitionError(f"part_size {part_size}: S3 needs parts of at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.url_expiry = url_expiry
        self.part_size = part_size
        self.attempts = max(1, attempts)
        self.retry_wait = retry_wait
        self.retry_wait_max = retry_wait_max
        self.list_interval = list_interval
        self._own_client = client is None
        self._client = client if client is not None else self._new_client(region)
        self._listing: tuple[float, dict[str, float]] | None = None
        self._listing_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ControlConfig) -> S3BlobStore:
        """The store at ``config.blob_url`` (``s3://bucket/prefix``), checked at once: a missing bucket or
        refused credentials raise DefinitionError here, when the service starts."""
        store = cls.from_url(config.blob_url or "", endpoint_url=config.s3_endpoint_url)
        store.check()
        return store

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None, **kwargs: Any) -> S3BlobStore:
        """A store for ``s3://bucket/prefix``; options ``?url_expiry=SECONDS&region=NAME``.

        Raises:
            DefinitionError: The URL is malformed, or boto3 is not installed.
        """
        bucket, prefix, options = parse_s3_url(url)
        if "url_expiry" in options:
            try:
                kwargs["url_expiry"] = float(options["url_expiry"])
            except ValueError:
                raise DefinitionError(f"url_expiry in {url!r} must be a number of seconds") from None
        if options.get("region"):
            kwargs["region"] = options["region"]
        return cls(bucket, prefix, endpoint_url=endpoint_url, **kwargs)

    def _new_client(self, region: str | None) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise DefinitionError(
                "an s3:// bundle store needs boto3: pip install 'vastrpc[s3]' where the control service runs"
            ) from None
        config = Config(
            # tenacity retries, with the policy above; botocore's own retries would multiply them.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            signature_version="s3v4",
            # S3-compatible stores (MinIO, Ceph, an IP address) are addressed by path.
            s3={"addressing_style": "path"} if self.endpoint_url else {},
        )
        # A session of its own: the default session is not thread-safe, and requests run in threads.
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=self.endpoint_url, region_name=region, config=config)

    @property
    def location(self) -> str:
        """``s3://bucket/prefix``, for messages."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, digest: str) -> str:
        """The object key of the bundle with that digest."""
        return f"{self.prefix}/{digest}" if self.prefix else digest

    # -- requests -------------------------------------------------------------------------

    def _call(self, action: str, key: str, method: Callable[..., Any], /, **kwargs: Any) -> Any:
        """``method(**kwargs)``, retried while it fails transiently; S3Error or NotFoundError when it fails for good."""

        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "s3 %s %s: %s; try %d of %d", action, key or self.bucket, exc, state.attempt_number, self.attempts
            )

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.retry_wait, max=self.retry_wait_max),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(method, **kwargs)
        except Exception as exc:
            if type(exc).__module__.startswith("botocore") or _client_error(exc) is not None:
                raise self._error(exc, action, key) from None
            raise

    def _error(self, exc: BaseException, action: str, key: str) -> S3Error | NotFoundError:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        endpoint = f" at {self.endpoint_url}" if self.endpoint_url else ""
        found = _client_error(exc)
        if found is None:
            if isinstance(exc, NoCredentialsError | PartialCredentialsError):
                return S3Error(
                    f"no AWS credentials for the bundle store {self.location}: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) where the control service runs, or give it an "
                    "instance role"
                )
            if not is_transient(exc):
                return S3Error(f"s3 {action} {where} failed: {exc}")
            return S3Error(
                f"cannot reach the S3 store{endpoint or ' (AWS)'} for {action} {where} after {self.attempts} tries: "
                f"{exc}; check --s3-endpoint-url and the network"
            )
        code, status = found
        message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "") or "")
        if code == "NoSuchBucket" or (action == "check" and status == 404):
            return S3Error(
                f"bucket {self.bucket!r} does not exist{endpoint}: create it or fix --blobs",
                code=code,
                status=status,
            )
        if code in ("NoSuchKey", "NoSuchUpload") or status == 404:
            return NotFoundError(f"{where} does not exist ({code or status})")
        if code in _CREDENTIAL_CODES:
            return S3Error(
                f"the S3 store{endpoint} refused the control service's AWS credentials ({code}: {message}): "
                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role",
                code=code,
                status=status,
            )
        if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
            return S3Error(
                f"access to {where} denied ({code or status}{': ' + message if message else ''}): allow the "
                f"control service's AWS identity s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket "
                f"on {self.location}",
                code=code,
                status=status,
            )
        tries = f" after {self.attempts} tries (the store is throttling or failing: try again later)"
        return S3Error(
            f"s3 {action} {where} failed: {code or 'HTTP ' + str(status)}"
            f"{': ' + message if message else ''}{tries if is_transient(exc) else ''}",
            code=code,
            status=status,
        )

    def check(self) -> None:
        """Make sure the bucket exists and these credentials reach it (the control service's startup check).

        Raises:
            DefinitionError: It does not, or cannot be reached; the message says what to fix.
        """
        try:
            head = self._call("check", "", self._client.head_bucket, Bucket=self.bucket)
        except (S3Error, NotFoundError) as exc:
            raise DefinitionError(str(exc)) from None
        region = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        if self._own_client and not self.endpoint_url and region and region != self._client.meta.region_name:
            # Presigned URLs are signed for one region: they must name the bucket's own.
            log.info("bundle store %s is in %s; using that region", self.location, region)
            self._client = self._new_client(region)
        log.info("bundle store %s%s", self.location, f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._call("head", key, self._client.head_object, Bucket=self.bucket, Key=key)
        except NotFoundError:
            return None
        return head

    def _bundle_head(self, digest: str) -> dict[str, Any] | None:
        """The object's head when it holds the bundle ``digest``; None when missing or not written by a store."""
        if not is_digest(digest):
            return None
        head = self._head(self.key(digest))
        if head is None or head.get("Metadata", {}).get(DIGEST_METADATA) != digest:
            return None
        return head

    # -- the BlobStore protocol -----------------------------------------------------------

    def has(self, digest: str) -> bool:
        """Whether the bundle is stored: its object exists and carries the digest it was verified with.

        An object put there by something else (no digest tag) does not count: the next
        upload replaces it.
        """
        return self._bundle_head(digest) is not None

    def size(self, digest: str) -> int:
        """The stored bundle's size; NotFoundError when missing."""
        head = self._bundle_head(digest)
        if head is None:
            raise NotFoundError(f"no bundle with digest {digest[:80]!r} is stored in {self.location}")
        return int(head["ContentLength"])

    def open_writer(self, digest: str, size: int, *, sync: bool = True) -> _S3Writer:
        """Start storing a bundle that claims ``digest`` and ``size``; nothing is sent before the first full part.

        ``sync`` changes nothing: a completed object is durable.
        """
        if size < 0:
            raise BundleError(f"invalid bundle size {size}")
        return _S3Writer(self, check_digest(digest), size)

    def sync(self) -> None:
        """Nothing to do: S3 acknowledges an object once it is durable."""

    def read_chunks(self, digest: str, chunk_size: int) -> Iterator[bytes]:
        """The stored bundle in chunks; NotFoundError when missing (raised before the first chunk)."""
        if not is_digest(digest):
            raise NotFoundError(f"no bundle with digest {digest[:80]!r} is stored")
        key = self.key(digest)
        obj = self._call("get", key, self._client.get_object, Bucket=self.bucket, Key=key)
        return self._chunks(obj["Body"], chunk_size)

    @staticmethod
    def _chunks(body: Any, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def download_url(self, digest: str) -> str:
        """A presigned GET URL of the bundle, valid for ``url_expiry`` seconds; NotFoundError when missing."""
        if not self.has(digest):
            raise NotFoundError(f"no bundle with digest {digest[:80]!r} is stored in {self.location}")
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(digest)},
            ExpiresIn=int(self.url_expiry),
        )
        return url

    def stored(self) -> dict[str, float]:
        """Every stored bundle: digest to its LastModified (Unix seconds); listed at most every ``list_interval``."""
        with self._listing_lock:
            now = time.monotonic()
            if self._listing is not None and now - self._listing[0] < self.list_interval:
                return dict(self._listing[1])
            try:
                found = self._call("list", self.prefix, self._list)
            except (S3Error, NotFoundError):
                # Not tried again for list_interval (the reaper asks every second); nothing is
                # collected meanwhile.
                self._listing = (now, {})
                raise
            self._listing = (now, found)
            return dict(found)

    def _list(self) -> dict[str, float]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        found = {}
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                name = obj["Key"][len(prefix) :]
                # Only <prefix>/<digest>: anything else under the prefix is not a bundle.
                if is_digest(name):
                    found[name] = obj["LastModified"].timestamp()
        return found

    def delete(self, digest: str) -> bool:
        """Remove a stored bundle; False when it was not stored."""
        if not is_digest(digest):
            return False
        key = self.key(digest)
        if self._head(key) is None:
            self._forget(digest)
            return False
        self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=key)
        self._forget(digest)
        return True

    def _forget(self, digest: str, stored_at: float | None = None) -> None:
        """Keep a cached listing true to what this store did since."""
        with self._listing_lock:
            if self._listing is None:
                return
            if stored_at is None:
                self._listing[1].pop(digest, None)
            else:
                self._listing[1][digest] = stored_at


class _S3Writer(VerifyingWriter):
    """Streams an upload into S3: one PutObject when small, else a multipart upload in ``part_size`` parts.

    The digest is computed as the bytes go by and checked before the object is completed:
    a mismatch, an error or an abandoned upload aborts the multipart upload and leaves no object.
    """

    def __init__(self, store: S3BlobStore, digest: str, size: int) -> None:
        super().__init__(digest, size)
        self._store = store
        self._key = store.key(digest)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        # The service runs each call in a thread: an abort (a cancelled upload) waits for the
        # part in flight, so that no multipart upload is started after it.
        self._lock = threading.RLock()

    @property
    def parts(self) -> int:
        """Parts uploaded so far (0 until the upload needs more than one)."""
        return len(self._parts)

    def write(self, chunk: bytes) -> None:
        """Append a chunk; a full part goes to S3 at once. BundleError past the announced size."""
        with self._lock:
            self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        self._accept(chunk)
        self._buffer += chunk
        part_size = self._store.part_size
        try:
            # Strictly more than a part: whatever remains for commit() is never empty.
            while len(self._buffer) > part_size:
                self._upload_part(bytes(self._buffer[:part_size]))
                del self._buffer[:part_size]
        except BaseException:
            self.abort()
            raise

    def _upload_part(self, data: bytes) -> None:
        store = self._store
        if self._upload_id is None:
            created = store._call(
                "create multipart upload",
                self._key,
                store._client.create_multipart_upload,
                Bucket=store.bucket,
                Key=self._key,
                ContentType="application/octet-stream",
                Metadata={DIGEST_METADATA: self._digest},
            )
            self._upload_id = str(created["UploadId"])
        number = len(self._parts) + 1
        part = store._call(
            "upload part",
            self._key,
            store._client.upload_part,
            Bucket=store.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        self._parts.append({"PartNumber": number, "ETag": part["ETag"]})

    def commit(self) -> bool:
        """Verify size and digest, then complete the object; False when the bundle was already stored."""
        with self._lock:
            return self._commit()

    def _commit(self) -> bool:
        self._verify()
        store = self._store
        try:
            if store.has(self._digest):
                # A concurrent upload of the same content won; identical bytes, keep theirs.
                self.abort()
                return False
            if self._upload_id is None:
                store._call(
                    "put",
                    self._key,
                    store._client.put_object,
                    Bucket=store.bucket,
                    Key=self._key,
                    Body=bytes(self._buffer),
                    ContentType="application/octet-stream",
                    Metadata={DIGEST_METADATA: self._digest},
                )
            else:
                self._upload_part(bytes(self._buffer))
                self._complete()
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._buffer = bytearray()
        store._forget(self._digest, time.time())
        return True

    def _complete(self) -> None:
        store = self._store
        try:
            store._call(
                "complete multipart upload",
                self._key,
                store._client.complete_multipart_upload,
                Bucket=store.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except NotFoundError:
            # NoSuchUpload on a retry: the first try completed it, but its answer was lost.
            if not store.has(self._digest):
                raise
        self._upload_id = None  # completed: nothing left to abort

    def abort(self) -> None:
        """Discard what was written: abort the multipart upload, if one was started."""
        with self._lock:
            self._abort()

    def _abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        store, upload_id = self._store, self._upload_id
        self._upload_id = None
        try:
            store._call(
                "abort multipart upload",
                self._key,
                store._client.abort_multipart_upload,
                Bucket=store.bucket,
                Key=self._key,
                UploadId=upload_id,
            )
        except (S3Error, NotFoundError) as exc:
            # Its parts stay billed until a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes them.
            log.warning("could not abort the multipart upload of %s: %s", self._key, exc)

    def __enter__(self) -> _S3Writer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Whatever left the block early (an error, a cancelled upload) leaves nothing behind.
        self.abort()
