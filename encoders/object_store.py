"""Object storage (`s3://`, `gs://`) as pyarrow filesystems, configured from the usual environment.

Credentials are never passed around: the AWS SDK finds AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
(or a profile, or an instance role) itself, and Google's client GOOGLE_APPLICATION_CREDENTIALS.
What an S3-compatible server (MinIO, Ceph, ...) needs besides is its endpoint, which the
standard variables AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL give, and AWS_REGION.
"""

from __future__ import annotations

import functools
import os
from urllib.parse import urlparse

REMOTE_SCHEMES = ("s3", "gs")


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme.lower() in REMOTE_SCHEMES


def s3_endpoint() -> str | None:
    """The S3-compatible server to use instead of AWS, e.g. `http://127.0.0.1:9000`."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def filesystem_for(uri: str):
    """(pyarrow filesystem, path in it) for a local path, `file://`, `s3://` or `gs://` URI."""
    from pyarrow import fs

    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in REMOTE_SCHEMES:
        # One filesystem per bucket and configuration, reused: each costs a client and a region lookup.
        return _remote_filesystem(scheme, parsed.netloc, s3_endpoint(), s3_region()), parsed.netloc + parsed.path
    return fs.FileSystem.from_uri(uri)


@functools.lru_cache(maxsize=64)
def _remote_filesystem(scheme: str, bucket: str, endpoint: str | None, region: str | None):
    from pyarrow import fs

    if scheme == "gs":
        return fs.GcsFileSystem()
    if endpoint:
        parsed = urlparse(endpoint)
        return fs.S3FileSystem(
            endpoint_override=parsed.netloc or parsed.path,
            scheme=parsed.scheme or "https",
            region=region or "us-east-1",
            connect_timeout=10,
            request_timeout=60,
        )
    return fs.S3FileSystem(region=region or fs.resolve_s3_region(bucket), connect_timeout=10, request_timeout=60)
