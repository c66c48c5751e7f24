"""Row claims: one winner among racing runs, live claims respected, expired ones taken over, dead rows recorded."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from records.claims import RowClaims, dead_claims, read_newest_claim, record_dead_claims
from records.ledger import LedgerRecord, LedgerStore
from s2v.settings import Settings
from s2v.storage.locations import output_location
from s2v.storage.write_once import AlreadyWritten, create_output_text


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path) -> tuple[str, Settings]:
    """(output, settings) for a local folder and for moto's S3, each with a short lease."""
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        return (f"s3://ledgers/claims-{tmp_path.name}",
                Settings(cache_dir=tmp_path / "cache", s3_endpoint_url=endpoint, claim_lease_s=3,
                         output=f"s3://ledgers/claims-{tmp_path.name}"))
    out = str(tmp_path / "out")
    return out, Settings(cache_dir=tmp_path / "cache", claim_lease_s=3, output=out)


def test_write_once_refuses_the_second_writer(place):
    out, settings = place
    location = output_location(out, "claims/x/00000001.json")
    create_output_text(location, '{"first": true}', settings)
    with pytest.raises(AlreadyWritten):
        create_output_text(location, '{"second": true}', settings)


def test_of_many_runs_racing_for_a_row_exactly_one_wins(place):
    _, settings = place
    runs = [RowClaims(settings, run_id=f"run-{n}") for n in range(6)]
    outcomes: dict[str, object] = {}
    start = threading.Barrier(len(runs))

    def race(claims: RowClaims) -> None:
        start.wait()
        outcomes[claims.run_id] = claims.claim("clip", row=2, manifest="m1")

    threads = [threading.Thread(target=race, args=(claims,)) for claims in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [run_id for run_id, holder in outcomes.items() if holder is None]
    assert len(winners) == 1
    # Every loser was told who holds the row.
    assert {holder.run_id for holder in outcomes.values() if holder is not None} == set(winners)


def test_a_released_claim_lets_the_next_run_claim_and_the_holder_renews(place):
    _, settings = place
    with RowClaims(settings, run_id="first") as first:
        assert first.claim("clip") is None
        claimed = read_newest_claim(settings.output, "clip", settings)
        time.sleep(1.5)  # past a third of the 3 s lease: renewed once
        renewed = read_newest_claim(settings.output, "clip", settings)
        assert renewed.expires_at > claimed.expires_at
        assert RowClaims(settings, run_id="second").claim("clip").run_id == "first"
        first.release("clip")
    assert RowClaims(settings, run_id="second").claim("clip") is None
    assert read_newest_claim(settings.output, "clip", settings).slot == 2


def test_an_expired_claim_is_dead_recorded_interrupted_once_and_taken_over(place):
    _, settings = place
    dead = RowClaims(settings, run_id="killed", flow_run_id=None)
    assert dead.claim("clip", row=3, manifest="m1") is None  # never renewed nor released: its process "died"
    assert dead_claims(settings.output, settings) == []
    time.sleep(3.2)
    assert [claim.run_id for claim in dead_claims(settings.output, settings)] == ["killed"]
    assert [claim.clip_id for claim in record_dead_claims(settings.output, settings)] == ["clip"]
    assert record_dead_claims(settings.output, settings) == []  # recorded once
    records = LedgerStore(settings.output, settings).clip_records("clip")
    assert [(r.status, r.row, r.manifest) for r in records] == [("interrupted", 3, "m1")]
    assert "killed" in records[0].error and "s2v retry" in records[0].error
    assert RowClaims(settings, run_id="next").claim("clip") is None


def test_a_dead_claim_whose_row_ended_is_not_recorded_again(place):
    _, settings = place
    RowClaims(settings, run_id="ended").claim("clip")
    LedgerStore(settings.output, settings).append(LedgerRecord(
        clip_id="clip", status="succeeded", finished_at=datetime.now(timezone.utc) + timedelta(seconds=1)))
    time.sleep(3.2)
    assert record_dead_claims(settings.output, settings) == []


def test_work_folders_untouched_for_a_day_are_removed_and_fresh_ones_kept(tmp_path):
    import os

    from records.claims import remove_stale_work

    settings = Settings(cache_dir=tmp_path / "cache")
    rows = settings.cache_dir / "work" / "rows"
    old, fresh = rows / "killed-1234abcd", rows / "working-5678ef01"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "image.jpg").write_bytes(b"x")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    assert remove_stale_work(settings) == 1
    assert not old.exists() and fresh.is_dir()


def test_a_forced_exit_records_its_held_rows_interrupted_and_frees_them_for_a_rerun(tmp_path):
    from records.claims import abandon_held_claims

    out = str(tmp_path / "out")
    settings = Settings(cache_dir=tmp_path / "cache", output=out)
    with RowClaims(settings, run_id="leaving") as claims:
        assert claims.claim("clip", row=2, manifest="m1") is None
        assert abandon_held_claims("the Prefect API went away") == 1
    [record] = LedgerStore(out, settings).clip_records("clip")
    assert record.status == "interrupted" and "went away" in record.error and record.manifest == "m1"
    assert RowClaims(settings, run_id="rerun").claim("clip") is None  # released: not left to a dead run


def test_a_live_claim_of_a_run_prefect_says_is_over_is_taken_over(tmp_path):
    out = str(tmp_path / "out")
    settings = Settings(cache_dir=tmp_path / "cache", output=out)
    assert RowClaims(settings, run_id="crashed", flow_run_id="run-1").claim("clip") is None
    assert RowClaims(settings, run_id="alive-check").claim("clip").run_id == "crashed"  # its lease still runs
    rehanded = RowClaims(settings, run_id="rehanded", run_is_over=lambda flow_run_id: flow_run_id == "run-1")
    assert rehanded.claim("clip") is None


def test_the_flow_run_of_a_dead_claim_is_marked_crashed_once(prefect_harness, tmp_path):
    """kill -9 leaves the batch's flow run Running for ever; the next command's sweep marks it Crashed."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.dead_runs import mark_dead_runs_crashed

    @flow(name="s2v-test-killed-batch")
    def killed_batch() -> None:
        pass

    out = str(tmp_path / "out")
    settings = Settings(cache_dir=tmp_path / "cache", output=out, claim_lease_s=1)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(killed_batch, state=Running())
        assert RowClaims(settings, run_id="killed", flow_run_id=str(run.id)).claim("clip", row=2) is None
        assert mark_dead_runs_crashed(out, settings) == 0  # its lease still runs: not dead yet
        time.sleep(1.2)
        assert mark_dead_runs_crashed(out, settings) == 1
        assert client.read_flow_run(run.id).state.type.value == "CRASHED"
        assert mark_dead_runs_crashed(out, settings) == 0  # already final: left alone
