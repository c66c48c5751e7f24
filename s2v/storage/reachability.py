"""Is a storage location reachable before a batch starts? Transient failures are retried a few times
(the same backoff shape as the I/O tasks', shorter: a person waits on it), then one error names the
location and the cause, instead of a flow that fails deep inside with a traceback."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from s2v.errors import StorageUnreachable, TransientError
from s2v.settings import Settings
from s2v.storage.redaction import redact, scrub

T = TypeVar("T")
START_TRIES = 3
START_BACKOFF_S = 1.0  # waits of up to 1 s, then 2 s (full jitter): a person waits on it


def with_start_retries(what: str, location: str, call: Callable[[], T], tries: int = START_TRIES) -> T:
    """`call()`, retried on TransientError; after the last try StorageUnreachable naming `location`."""
    import backoff

    retried = backoff.on_exception(backoff.expo, TransientError, max_tries=tries, factor=START_BACKOFF_S,
                                   jitter=backoff.full_jitter, logger=None)(call)
    try:
        return retried()
    except TransientError as exc:
        raise StorageUnreachable(f"cannot reach {what} {redact(location)} after {tries} tries: "
                                 f"{_cause(str(exc), location)}") from None


def check_output_reachable(settings: Settings) -> None:
    """Read one key under the output's kept manifests (absent is fine; nothing is written). A read, not
    an exists(): s3fs answers "no" to isfile() when the endpoint is down."""
    from s2v.storage.locations import output_location
    from s2v.storage.outputs import read_output_bytes

    location = output_location(settings.output, "manifests/s2v-reachability-probe")
    try:
        with_start_retries("the output", settings.output, lambda: read_output_bytes(location, settings))
    except OSError as exc:  # e.g. access denied: not worth a retry, still one line
        raise StorageUnreachable(f"cannot use the output {redact(settings.output)}: {scrub(str(exc) or type(exc).__name__)}") from None


def _cause(message: str, location: str) -> str:
    # transient_as says "<doing> <location> failed: <Class>: <detail>"; the detail is the cause.
    detail = message.split(" failed: ", 1)[-1]
    name, _, rest = detail.partition(": ")
    return scrub(rest if rest and name.isidentifier() else detail, location)

