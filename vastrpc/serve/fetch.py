"""Fetches a bundle from a download URL (a presigned S3 GET) over HTTP(S), checking its size and digest."""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from vastrpc._errors import BundleError

__all__ = ["fetch_bundle", "public_part"]

log = logging.getLogger("vastrpc.worker")

_READ_SIZE = 1 << 20
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


def public_part(url: str) -> str:
    """The URL without its query: a presigned URL's query is its signature, which no log may hold."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in _TRANSIENT_STATUS
    # Refused or reset connections, timeouts, a body cut short.
    return isinstance(exc, urllib.error.URLError | OSError | http.client.HTTPException)


def _get(url: str, digest: str, size: int, timeout: float) -> bytes:
    parts: list[bytes] = []
    received = 0
    with urllib.request.urlopen(url, timeout=timeout) as response:
        while chunk := response.read(_READ_SIZE):
            received += len(chunk)
            if size and received > size:
                raise BundleError(
                    f"bundle {digest[:12]} from {public_part(url)} is larger than its registered {size} bytes: "
                    "the stored object was replaced; delete it from the bundle store and deploy again"
                )
            parts.append(chunk)
    return b"".join(parts)


def fetch_bundle(url: str, digest: str, size: int = 0, *, timeout: float = 60.0, attempts: int = 4) -> bytes:
    """GET the bundle at ``url`` (blocking: run it in a thread) and check it is ``digest``.

    Transient failures (a 5xx or 429, a refused or reset connection, a timeout) are tried
    again with backoff; other HTTP errors (403, 404) are not.

    Args:
        url: The download URL the control service handed out.
        digest: The SHA-256 the bundle was registered with.
        size: Its registered size in bytes (0: not checked).
        timeout: Seconds without progress before a try is given up.
        attempts: Tries in all.

    Raises:
        BundleError: The download failed, or what came is not that bundle; the message names
            both digests and what to do.
    """
    where = public_part(url)
    retrying = Retrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_random_exponential(multiplier=0.5, max=8.0),
        before_sleep=lambda state: log.warning(
            "download: %s: %s; trying again",
            where,
            state.outcome.exception() if state.outcome else "?",
        ),
        reraise=True,
    )
    try:
        data = retrying(_get, url, digest, size, timeout)
    except urllib.error.HTTPError as exc:
        hint = {
            403: "the URL expired or was refused: check that this worker's clock is right, and restart it "
            "to get a fresh URL",
            404: "the bundle is no longer stored: deploy again to upload it",
        }.get(exc.code, "check the bundle store")
        raise BundleError(
            f"cannot download bundle {digest[:12]} from {where}: HTTP {exc.code} {exc.reason}; {hint}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise BundleError(
            f"cannot download bundle {digest[:12]} from {where}: {exc}; the worker must reach the bundle store "
            "(for S3-compatible stores, the control service's --s3-endpoint-url)"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest or (size and len(data) != size):
        expected = f"{digest} ({size} bytes)" if size else digest
        raise BundleError(
            f"bundle digest mismatch: expected {expected}, the {len(data)} bytes downloaded from {where} hash to "
            f"{actual}: the stored object is corrupt or was replaced; delete it from the bundle store and "
            "deploy again to upload the bundle anew"
        )
    return data
