"""Which failures are worth retrying: connection errors, timeouts, HTTP 5xx/408/429, S3 throttling.

The retrying itself is done once, by Prefect's task retries (tasks/io_retries.py); botocore and s3fs
are told not to retry on their own (s2v/storage/s3.py), so a failure is not retried 3 x 5 x 3 times.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import httpx
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from s2v.errors import S2VError, TransientError

# Error codes S3, R2 and their SDKs use for "slow down" or "try again".
_TRANSIENT_S3_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequests", "TooManyRequestsException", "RequestThrottled", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "BandwidthLimitExceeded",
    "PriorRequestNotComplete", "500", "502", "503", "504",
})


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying.

    Walks the exception's causes, because s3fs and boto3 wrap the service's error in their own.
    The project's deliberate errors (InputError, ManifestError, ...) are never transient.
    """
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, TransientError):
            return True
        if isinstance(err, S2VError):
            return False
        if isinstance(err, ClientError):
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = str(err.response.get("Error", {}).get("Code", ""))
            return transient_status(status) or code in _TRANSIENT_S3_CODES
        if isinstance(err, httpx.HTTPStatusError):
            return transient_status(err.response.status_code)
        if isinstance(err, (httpx.TransportError, BotoConnectionError, HTTPClientError, IncompleteReadError,
                            ConnectionError, TimeoutError)):
            return True
        if "aiohttp" in sys.modules:  # s3fs's transport; only loaded when S3 was used
            import aiohttp

            if isinstance(err, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
                return True
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return False


def transient_status(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


@contextlib.contextmanager
def transient_as(what: str) -> Iterator[None]:
    """Re-raise a transient failure of the block as TransientError("<what> failed: ..."), redacted."""
    from s2v.storage.redaction import scrub

    try:
        yield
    except S2VError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise TransientError(f"{what} failed: {type(exc).__name__}: {scrub(str(exc))}") from None
        raise


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task run only when its exception is transient.

    Prefect 3.9's engine hands over `Failed(data=exception)`; a state without an exception (a task
    that returned a Failed state itself) is not retried.
    """
    data = getattr(state, "data", None)
    return isinstance(data, BaseException) and is_transient(data)
