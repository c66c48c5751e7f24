"""The fleet's parent (flows/fleet.py) against a real Prefect API, with the GPU workers played by the test:
outcomes matched by flow-run id whatever a host's clock says, a crashed run's row handed out again, an
earlier parent's open runs watched instead of handed out again, and a pool with no worker given up within
the setting, its runs cancelled through Cancelling and its rows recorded failed after them.
(tests/test_fleet.py runs the same parent on real workers and hosts.)"""
from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from flows import fleet
from records.claims import RowClaims, read_newest_claim
from records.ledger import LedgerRecord, LedgerStore
from records.manifest import parse_manifest
from s2v.settings import Settings
from tests.conftest import EXAMPLES


@pytest.fixture(scope="module")
def row_deployment(prefect_harness):
    """A row deployment on its own process pool; no real worker ever takes its runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = f"gpu-test-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name("s2v-row")
        client.create_deployment(flow_id=flow_id, name=pool, work_pool_name=pool, entrypoint="flows/row.py:row")
    return f"s2v-row/{pool}", pool


@pytest.fixture(autouse=True)
def quick_loops(monkeypatch):
    monkeypatch.setattr(fleet, "POLL_S", 0.2)
    monkeypatch.setattr(fleet, "WORKERS_EVERY_S", 0.2)
    monkeypatch.setattr(fleet, "CANCEL_GRACE_S", 3.0)


def _rows(settings: Settings, count: int, tag: str):
    text = "clip_id,image,audio\n" + "".join(
        f"{tag}-{i},{EXAMPLES / 'portrait_anna.jpg'},{EXAMPLES / 'speech_short.wav'}\n" for i in range(count))
    return parse_manifest(text, {}, settings, manifest_id=f"m-{tag}-{uuid.uuid4().hex[:6]}").rows


def _settings(tmp_path, **overrides) -> Settings:
    return Settings(output=str(tmp_path / "out"), cache_dir=tmp_path / "cache", worker_name="control",
                    no_worker_timeout_s=overrides.pop("no_worker_timeout_s", 3600), **overrides)


def _hand_out(rows, settings, deployment, limits=fleet.FleetLimits()):
    from prefect import flow

    @flow(name="test-parent")
    def parent():
        return fleet.hand_out(rows, [], settings, row_deployment=deployment, limits=limits)

    return parent()


class PlayedWorker(threading.Thread):
    """Takes the deployment's scheduled runs as a GPU worker would; `act(run)` plays what the row run does."""

    def __init__(self, deployment: str, act):
        super().__init__(daemon=True)
        self.deployment, self.act, self.stop = deployment, act, threading.Event()
        self.taken: list = []

    def run(self):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterName,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        name = self.deployment.split("/")[1]
        with get_client(sync_client=True) as client:
            while not self.stop.is_set():
                for run in client.read_flow_runs(
                        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
                        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))):
                    self.taken.append(run)
                    self.act(client, run)
                time.sleep(0.2)


def _record(settings, run, status="succeeded", clock_skew=timedelta(0)) -> None:
    LedgerStore(settings.output, settings).append(LedgerRecord(
        clip_id=run.parameters["clip_id"], row=run.parameters["row"], status=status, flow_run_id=str(run.id),
        manifest=run.parameters["manifest"], worker="gpu-skewed", finished_at=datetime.now(timezone.utc) + clock_skew))


def test_outcomes_are_matched_by_run_id_whatever_the_hosts_clock_says(row_deployment, tmp_path):
    from prefect.states import Completed, Running

    deployment, _ = row_deployment
    settings = _settings(tmp_path)
    rows = _rows(settings, 3, "skew")

    def make(client, run):  # a GPU host whose clock is a day behind the control host's
        client.set_flow_run_state(run.id, Running(), force=True)
        _record(settings, run, clock_skew=-timedelta(days=1))
        client.set_flow_run_state(run.id, Completed(), force=True)

    worker = PlayedWorker(deployment, make)
    worker.start()
    try:
        result = _hand_out(rows, settings, deployment)
    finally:
        worker.stop.set()
    assert [(r.clip_id, r.status) for r in result.records] == [(f"skew-{i}", "succeeded") for i in range(3)]
    assert result.no_worker is None
    view = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(view) == 3  # the parent's refreshed view holds the rows' records


def test_a_crashed_runs_row_is_handed_out_again_and_its_second_run_counts(row_deployment, tmp_path):
    from prefect.states import Completed, Crashed, Running

    deployment, _ = row_deployment
    settings = _settings(tmp_path)
    rows = _rows(settings, 1, "crash")

    def crash_first(client, run):
        client.set_flow_run_state(run.id, Running(), force=True)
        if not run.name.endswith("-try2"):
            # The dead host's run recorded the row interrupted before it died; the second run's record wins.
            _record(settings, run, status="interrupted", clock_skew=timedelta(hours=1))
            client.set_flow_run_state(run.id, Crashed(message="no heartbeat"), force=True)
            return
        _record(settings, run)
        client.set_flow_run_state(run.id, Completed(), force=True)

    worker = PlayedWorker(deployment, crash_first)
    worker.start()
    try:
        result = _hand_out(rows, settings, deployment)
    finally:
        worker.stop.set()
    assert [r.status for r in result.records] == ["succeeded"]
    assert [run.name for run in worker.taken] == ["row-2-crash-0", "row-2-crash-0-try2"]


def test_an_earlier_parents_open_run_is_watched_not_handed_out_again(row_deployment, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    deployment, _ = row_deployment
    settings = _settings(tmp_path)
    rows = _rows(settings, 2, "adopt")
    with get_client(sync_client=True) as client:  # the dead parent had handed out row 2 and it still runs
        found = client.read_deployment_by_name(deployment)
        orphan = client.create_flow_run_from_deployment(
            found.id, parameters={"clip_id": "adopt-0", "row": 2, "manifest": rows[0].manifest, "output": settings.output},
            name="row-2-adopt-0", tags=fleet.row_run_tags(rows[0].manifest))
        client.set_flow_run_state(orphan.id, Running(), force=True)

    def make(client, run):
        _record(settings, run)
        client.set_flow_run_state(run.id, Completed(), force=True)

    def finish_orphan():
        with get_client(sync_client=True) as client:
            make(client, client.read_flow_run(orphan.id))

    worker = PlayedWorker(deployment, make)
    worker.start()
    threading.Timer(4, finish_orphan).start()
    try:
        result = _hand_out(rows, settings, deployment)
    finally:
        worker.stop.set()
    assert [r.status for r in result.records] == ["succeeded", "succeeded"]
    assert [run.name for run in worker.taken] == ["row-3-adopt-1"]  # no second run of row 2
    assert result.records[0].flow_run_id == str(orphan.id)


def test_with_no_gpu_worker_online_the_parent_gives_up_within_the_setting_naming_the_pool(row_deployment, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    deployment, pool = row_deployment
    settings = _settings(tmp_path, no_worker_timeout_s=2)
    rows = _rows(settings, 2, "nobody")
    # A row run that had claimed its row (its worker went away): the parent takes the row back from it.
    with RowClaims(settings, run_id="vanished-run") as held:
        assert held.claim("nobody-0", 2, rows[0].manifest) is None
        started = time.monotonic()
        result = _hand_out(rows, settings, deployment)
        assert time.monotonic() - started < 60
        assert held.taken_over("nobody-0") is not None  # the vanished run would stop before generating
    assert result.no_worker and repr(pool) in result.no_worker and "S2V_NO_WORKER_TIMEOUT_S" in result.no_worker
    assert [r.status for r in result.records] == ["failed", "failed"]
    assert all(pool in r.error for r in result.records)
    assert read_newest_claim(settings.output, "nobody-1", settings).released
    with get_client(sync_client=True) as client:  # scheduled runs went through Cancelling to Cancelled
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=fleet.row_run_tags(rows[0].manifest))))
    assert sorted(run.name for run in runs) == ["row-2-nobody-0", "row-3-nobody-1"]
    assert {run.state.type.value for run in runs} == {"CANCELLED"}


def test_a_timed_out_running_row_is_cancelled_through_cancelling_and_recorded_failed_after(row_deployment, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    deployment, _ = row_deployment
    settings = _settings(tmp_path)
    rows = _rows(settings, 1, "slow")

    def start_only(client, run):  # a generation that will not end before the parent's time limit
        client.set_flow_run_state(run.id, Running(), force=True)

    worker = PlayedWorker(deployment, start_only)
    worker.start()
    try:
        result = _hand_out(rows, settings, deployment, fleet.FleetLimits(max_wait_s=3))
    finally:
        worker.stop.set()
    assert [r.status for r in result.records] == ["failed"] and "max_wait_hours" in result.records[0].error
    with get_client(sync_client=True) as client:
        history = client.read_flow_run_states(worker.taken[0].id)
    # Cancelling is what makes a worker stop the run's process; nothing here did, so the parent ended it.
    assert [s.type.value for s in history][-2:] == ["CANCELLING", "CANCELLED"]


def test_a_scale_out_with_no_gpu_worker_ends_failed_naming_the_pool(row_deployment, tmp_path, monkeypatch):
    from flows.scale_out import scale_out

    deployment, pool = row_deployment
    monkeypatch.setenv("S2V_NO_WORKER_TIMEOUT_S", "2")
    monkeypatch.setenv("S2V_CACHE_DIR", str(tmp_path / "cache"))
    manifest = f"clip_id,image,audio\nlonely,{EXAMPLES / 'portrait_anna.jpg'},{EXAMPLES / 'speech_short.wav'}\n"
    started = time.monotonic()
    state = scale_out(manifest=manifest, output=str(tmp_path / "out"), row_deployment=deployment, return_state=True)
    assert time.monotonic() - started < 90
    assert state.is_failed() and f"GPU work pool {pool!r}" in state.message, state.message
    assert "Traceback" not in state.message
    records = LedgerStore(str(tmp_path / "out"), _settings(tmp_path)).read().records
    assert [(r.clip_id, r.status) for r in records] == [("lonely", "failed")]
