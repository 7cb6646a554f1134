"""Bundle stores: where the control service keeps uploaded bundles, each named and checked by its SHA-256.

``base`` is the port (the ``BlobStore`` interface and the checks every writer makes);
``local`` (a folder, the embedded default) and ``s3`` (an S3 or S3-compatible bucket,
downloaded by workers through presigned URLs) implement it. ``vastrpc.control.backends``
picks one from the configuration.
"""

from vastrpc.control.bundles.base import BlobStore, BlobWriter, check_digest, is_digest
from vastrpc.control.bundles.local import LocalBlobStore

__all__ = ["BlobStore", "BlobWriter", "LocalBlobStore", "check_digest", "is_digest"]
