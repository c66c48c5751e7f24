"""The one retry policy of the I/O stages: transient errors only, exponential backoff with jitter."""
from __future__ import annotations

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from s2v.storage.transient import retry_on_transient

IO_TASK_OPTIONS = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_on_transient,
    # Resume across runs is the ledger's job (content hashes + options); nothing to cache here.
    cache_policy=NO_CACHE,
)
