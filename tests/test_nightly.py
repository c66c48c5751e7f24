"""The nightly flow's inbox handling, under Prefect's test harness. Handing the rows to GPU workers is
tests/test_fleet.py's subject (it needs a server with deployments and workers); here the fleet is a stand-in
that records what it was given."""
import pytest
from prefect.states import Completed

from flows import nightly as nightly_module
from flows.nightly import nightly
from records.inbox import Inbox
from s2v.settings import Settings
from tests.conftest import EXAMPLES

PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"


@pytest.mark.slow
def test_nightly_hands_each_waiting_manifest_to_the_fleet_once(prefect_harness, s2v_env, tmp_path, monkeypatch):
    handed = []

    def fleet(title, text, name, defaults, settings, limits, checkpoint, model_server, row_deployment):
        handed.append((name, settings.output, text.count("\n")))
        return Completed(data={"succeeded": text.count("\n") - 1, "failed": 0, "skipped": 0, "interrupted": 0})

    monkeypatch.setattr(nightly_module, "run_on_fleet", fleet)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    (inbox / "monday.csv").write_text(f"clip_id,image,audio\nmon,{PORTRAIT},{SPEECH}\n")
    (inbox / "tuesday.csv").write_text(f"clip_id,image,audio\ntue,{PORTRAIT},{SPEECH}\ntue2,{PORTRAIT},{SPEECH}\n")
    (inbox / "notes.txt").write_text("not a manifest")

    first = nightly(inbox=str(inbox), output=str(out))
    assert [(r["manifest"], r["succeeded"]) for r in first] == [("monday", 1), ("tuesday", 2)]
    assert [(name, output.rsplit("/", 1)[1]) for name, output, _ in handed] == [("monday.csv", "monday"), ("tuesday.csv", "tuesday")]
    assert sorted(p.name.split("-")[0] for p in (inbox / "done").iterdir()) == ["monday", "tuesday"]
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["notes.txt"]
    assert nightly(inbox=str(inbox), output=str(out)) == []  # nothing runs twice


@pytest.mark.slow
def test_an_unusable_manifest_goes_to_failed_and_the_others_still_run(prefect_harness, s2v_env, tmp_path, monkeypatch):
    from flows.scale_out import run_on_fleet as real

    def fleet(title, text, name, defaults, settings, *rest):
        if "picture" in text:
            return real(title, text, name, defaults, settings, *rest)  # parsing refuses it before any hand-out
        return Completed(data={"succeeded": 1, "failed": 0, "skipped": 0, "interrupted": 0})

    monkeypatch.setattr(nightly_module, "run_on_fleet", fleet)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "broken.csv").write_text("picture,sound\nx,y\n")
    (inbox / "fine.csv").write_text(f"clip_id,image,audio\nok,{PORTRAIT},{SPEECH}\n")
    results = {r["manifest"]: r for r in nightly(inbox=str(inbox), output=str(tmp_path / "out"))}
    assert "missing column" in results["broken"]["error"] and results["fine"]["succeeded"] == 1
    assert [p.name.split("-")[0] for p in (inbox / "failed").iterdir()] == ["broken"]


def test_interrupted_night_is_picked_up_again(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "processing").mkdir(parents=True)
    (inbox / "processing" / "sunday.csv").write_text("image,audio\n")
    (inbox / "monday.csv").write_text("image,audio\n")
    box = Inbox(str(inbox), Settings())
    assert [p.rsplit("/", 2)[-2:] for p in box.waiting()] == [["processing", "sunday.csv"], ["inbox", "monday.csv"]]
