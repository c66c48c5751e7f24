"""The Prefect side of row claims: whether a claim's flow run is over, and marking dead ones Crashed.

records/claims.py knows claims, not Prefect: it takes `flow_run_is_over` as its `run_is_over`.
"""
from __future__ import annotations

import logging

from records.claims import dead_claims
from s2v.settings import Settings

log = logging.getLogger(__name__)


def mark_dead_runs_crashed(output: str, settings: Settings) -> int:
    """Mark Crashed the flow runs that hold dead claims and still say Running (a kill -9 leaves them so);
    returns how many. Best effort: the rows are recorded either way."""
    from prefect import get_client
    from prefect.states import Crashed

    run_ids = {claim.flow_run_id for claim in dead_claims(output, settings) if claim.flow_run_id}
    marked = 0
    if not run_ids:
        return 0
    try:
        with get_client(sync_client=True) as client:
            for run_id in run_ids:
                try:
                    run = client.read_flow_run(run_id)
                except Exception:  # a run of another Prefect server (another machine's local API)
                    continue
                if run.state is not None and not run.state.is_final():
                    client.set_flow_run_state(run_id, Crashed(message="its process died mid-row (its row claim "
                                                                      "expired); the rows it held are interrupted"),
                                              force=True)
                    marked += 1
    except Exception as exc:
        log.warning("dead runs not marked Crashed (%s: %s)", type(exc).__name__, exc)
    return marked


def flow_run_is_over(flow_run_id: str) -> bool:
    """Whether Prefect says the flow run has ended (Crashed, Failed, Cancelled, Completed); False when it
    cannot say (another server's run, the API away): then the lease decides."""
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:
        return False
    return state is not None and state.is_final()
