"""The nightly flow over an inbox of manifests, under the Prefect harness, on the tiny checkpoint."""
import pytest

from flows.ledger import load_ledger
from flows.nightly import nightly
from flows.scale_out import shard_manifest, split_rows
from flows.manifest import parse_manifest
from tests.conftest import EXAMPLES

PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"


@pytest.mark.slow
def test_nightly_runs_each_waiting_manifest_once(prefect_harness, s2v_env, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    (inbox / "monday.csv").write_text(f"clip_id,image,audio,sample_steps\nmon,{PORTRAIT},{SPEECH},15\n")
    (inbox / "tuesday.csv").write_text(f"clip_id,image,audio,sample_steps\ntue,{PORTRAIT},{SPEECH},15\n")
    (inbox / "broken.csv").write_text("picture,sound\nx,y\n")
    (inbox / "notes.txt").write_text("not a manifest")

    first = nightly(inbox=str(inbox), output=str(out))
    by_name = {r["manifest"]: r for r in first}
    assert set(by_name) == {"monday", "tuesday", "broken"}
    assert by_name["monday"]["succeeded"] == by_name["tuesday"]["succeeded"] == 1
    assert "missing column" in by_name["broken"]["error"]
    assert load_ledger(str(out / "monday")).latest()["mon"].status == "succeeded"
    assert (out / "tuesday" / "tue.mp4").is_file()
    assert sorted(p.name.split("-")[0] for p in (inbox / "done").iterdir()) == ["monday", "tuesday"]
    assert [p.name.split("-")[0] for p in (inbox / "failed").iterdir()] == ["broken"]
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["notes.txt"]

    assert nightly(inbox=str(inbox), output=str(out)) == []  # nothing runs twice


def test_interrupted_night_is_picked_up_again(tmp_path):
    from flows.inbox import Inbox
    from s2v.settings import Settings

    inbox = tmp_path / "inbox"
    (inbox / "processing").mkdir(parents=True)
    (inbox / "processing" / "sunday.csv").write_text("image,audio\n")
    (inbox / "monday.csv").write_text("image,audio\n")
    box = Inbox(str(inbox), Settings())
    assert [p.rsplit("/", 2)[-2:] for p in box.waiting()] == [["processing", "sunday.csv"], ["inbox", "monday.csv"]]


def test_shards_split_round_robin_with_every_option_written_out(tmp_path):
    rows = "\n".join(f"c{i},{PORTRAIT},{SPEECH},{15 + i}" for i in range(5))
    parsed = parse_manifest(f"clip_id,image,audio,sample_steps\n{rows}\n", {"prompt": "studio"})
    parts = split_rows(parsed.rows, 2)
    assert [[r.clip_id for r in part] for part in parts] == [["c0", "c2", "c4"], ["c1", "c3"]]
    again = parse_manifest(shard_manifest(parts[1]))
    assert [(r.clip_id, r.sample_steps, r.prompt) for r in again.rows] == [("c1", 16, "studio"), ("c3", 18, "studio")]
    assert [r.options_hash for r in again.rows] == [r.options_hash for r in parts[1]]
    assert split_rows(parsed.rows[:1], 3) == [parsed.rows[:1]]
