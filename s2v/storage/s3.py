"""The one S3 stack: s3fs, with settings that both AWS S3 and Cloudflare R2 accept."""
from __future__ import annotations

from typing import Any

from s2v.settings import Settings

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # a SigV4 link cannot outlive 7 days; S3 and R2 refuse longer ones


def s3_config_kwargs(settings: Settings) -> dict[str, Any]:
    """botocore settings: SigV4, checksums only when an operation requires them, no retries of its own.

    boto3 >= 1.36 sends CRC checksums on every upload by default, which Cloudflare R2 rejects. Retries
    belong to Prefect's task policy alone; botocore's would multiply them.
    """
    return {
        "signature_version": "s3v4",  # R2 accepts only SigV4, also for presigned links
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "connect_timeout": settings.download_timeout_s,
        "read_timeout": settings.download_timeout_s,
        "retries": {"mode": "standard", "total_max_attempts": 1},  # one attempt: no retry here
    }


def s3_storage_options(settings: Settings) -> dict[str, Any]:
    """fsspec storage options of an s3:// location for `settings.s3_endpoint_url` (R2 or any S3 store)."""
    return {
        "endpoint_url": settings.s3_endpoint_url,
        # Existence checks (resume) must see deletions made since the last look.
        "use_listings_cache": False,
        "config_kwargs": s3_config_kwargs(settings),
    }


def s3_filesystem(settings: Settings) -> Any:
    import s3fs

    return without_own_retries(s3fs.S3FileSystem(**s3_storage_options(settings)))


def without_own_retries(fs: Any) -> Any:
    """s3fs retries 5 times on its own (a class attribute); see s3_config_kwargs for why not."""
    if hasattr(fs, "retries"):
        fs.retries = 1
    return fs
