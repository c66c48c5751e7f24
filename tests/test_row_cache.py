"""A row run reads its one row of a kept manifest from its host's parse (records/kept_manifests.py,
`load_manifest_row`): a night hands thousands of rows of one manifest to each host, and parsing and
checking every row in every row run made 10^8 row checks of a 10,000-row night."""
import fcntl
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import records.kept_manifests as kept_manifests
from records.kept_manifests import COMPLETE, keep_manifest, load_manifest_row, parsed_manifest_folder
from records.manifest import ClipRow, InvalidRow, parse_manifest
from s2v.errors import ManifestError
from s2v.file_locks import open_lock_file
from s2v.settings import Settings
from tests.conftest import EXAMPLES

PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_hello.wav"
# A valid row, a row with a bad value, a row whose local image is missing (only a file check sees it),
# and a column the pipeline does not use (a warning of the manifest).
MANIFEST = (
    "clip_id,image,audio,sample_steps,mood\n"
    f"anna,{PORTRAIT},{SPEECH},,calm\n"
    f"steep,{PORTRAIT},{SPEECH},99,calm\n"
    f"ghost,{EXAMPLES / 'no-such-portrait.jpg'},{SPEECH},,calm\n"
)
DEFAULTS = {"prompt": "A person speaking", "seed": 7}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", local_inputs=True)


@pytest.fixture
def kept(tmp_path, settings):
    return keep_manifest(MANIFEST, DEFAULTS, str(tmp_path / "out"), settings)


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """The ids of the manifests parsed through load_manifest_row, one entry per parse."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs["manifest_id"])
        return parse_manifest(*args, **kwargs)

    monkeypatch.setattr(kept_manifests, "parse_manifest", counted)
    return calls


def _same(cached, parsed) -> bool:
    if isinstance(parsed, ClipRow):
        return cached == parsed
    # An InputError has no equality of its own: compare what the ledger gets from it.
    return isinstance(cached, InvalidRow) and _parts(cached) == _parts(parsed)


def _parts(bad: InvalidRow) -> tuple:
    return bad.row, bad.clip_id, bad.manifest, str(bad.error), bad.error.field, bad.error.value, bad.error.reason


def test_a_host_parses_a_manifest_once_and_warns_once(tmp_path, settings, kept, parses):
    warnings = []
    first = load_manifest_row(str(tmp_path / "out"), kept.id, "anna", settings, warn=warnings.append)
    second = load_manifest_row(str(tmp_path / "out"), kept.id, "steep", settings, warn=warnings.append)
    again = load_manifest_row(str(tmp_path / "out"), kept.id, "anna", settings, warn=warnings.append)
    assert parses == [kept.id]
    assert first == again and isinstance(second, InvalidRow)
    assert len(warnings) == 1 and "mood" in warnings[0]
    assert (parsed_manifest_folder(settings, kept.id) / COMPLETE).exists()


def test_every_row_is_what_the_full_parse_gave(tmp_path, settings, kept):
    full = parse_manifest(MANIFEST, DEFAULTS, settings, manifest_id=kept.id, warn=lambda _: None)
    assert [row.clip_id for row in full.rows] == ["anna", "ghost"] and [bad.clip_id for bad in full.invalid] == ["steep"]
    for parsed in (*full.rows, *full.invalid):
        cached = load_manifest_row(str(tmp_path / "out"), kept.id, parsed.clip_id, settings)
        assert _same(cached, parsed), (cached, parsed)
    assert "row 3: sample_steps=" in str(load_manifest_row(str(tmp_path / "out"), kept.id, "steep", settings).error)


def test_a_parse_without_its_marker_is_parsed_again(tmp_path, settings, kept, parses):
    expected = load_manifest_row(str(tmp_path / "out"), kept.id, "anna", settings)
    folder = parsed_manifest_folder(settings, kept.id)
    # A parse cut short: a torn row file, no marker.
    (folder / COMPLETE).unlink()
    (folder / "rows" / "anna.json").write_text('{"valid": {"row": 2, "clip_')
    assert load_manifest_row(str(tmp_path / "out"), kept.id, "anna", settings) == expected
    assert parses == [kept.id, kept.id]
    assert (folder / COMPLETE).exists()


@pytest.mark.parametrize("damage", ["emptied", "lost"])
def test_a_row_file_a_crash_damaged_is_parsed_again(tmp_path, settings, kept, parses, damage):
    expected = load_manifest_row(str(tmp_path / "out"), kept.id, "anna", settings)
    row_file = parsed_manifest_folder(settings, kept.id) / "rows" / "anna.json"
    row_file.write_text("") if damage == "emptied" else row_file.unlink()
    assert load_manifest_row(str(tmp_path / "out"), kept.id, "anna", settings) == expected
    assert parses == [kept.id, kept.id]


def test_an_unknown_clip_id_names_the_manifest_and_the_clip(tmp_path, settings, kept, parses):
    for clip_id in ("nobody", "../../rows/anna"):
        with pytest.raises(ManifestError, match=rf"manifest {kept.id} under .* has no row with clip_id '{clip_id}'"):
            load_manifest_row(str(tmp_path / "out"), kept.id, clip_id, settings)
    # Called unknown after a parse made then; an id no row can have is refused without one.
    assert parses == [kept.id]
    with pytest.raises(ManifestError, match=r"'\.\./x' is not the id of a manifest kept under"):
        load_manifest_row(str(tmp_path / "out"), "../x", "anna", settings)
    assert not (tmp_path / "cache" / "x").exists()


def test_row_runs_arriving_together_parse_once(tmp_path, settings, kept, monkeypatch):
    calls = []

    def slow(*args, **kwargs):
        calls.append(kwargs["manifest_id"])
        time.sleep(0.5)  # long enough for every other run to find the lock held
        return parse_manifest(*args, **kwargs)

    monkeypatch.setattr(kept_manifests, "parse_manifest", slow)
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda clip_id: load_manifest_row(str(tmp_path / "out"), kept.id, clip_id, settings),
                              ["anna", "steep", "ghost", "anna"]))
    assert calls == [kept.id]
    assert [row.clip_id for row in found] == ["anna", "steep", "ghost", "anna"]


def test_a_stuck_parse_is_not_waited_for_forever(tmp_path, settings, kept, parses, monkeypatch):
    monkeypatch.setattr(kept_manifests, "PARSE_LOCK_WAIT_S", 0.2)
    folder = parsed_manifest_folder(settings, kept.id)
    folder.parent.mkdir(parents=True)
    holder = open_lock_file(folder.with_name(f"{folder.name}.lock"))
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert load_manifest_row(str(tmp_path / "out"), kept.id, "anna", settings).clip_id == "anna"
    finally:
        os.close(holder)
    assert parses == [kept.id]


def test_a_gone_manifest_still_says_so(tmp_path, settings):
    with pytest.raises(ManifestError, match="the manifest of these rows is gone"):
        load_manifest_row(str(tmp_path / "out"), "0123456789abcdef", "anna", settings)


def test_the_parse_is_kept_per_version_of_the_parsing_code(tmp_path, settings, kept, parses, monkeypatch):
    load_manifest_row(str(tmp_path / "out"), kept.id, "anna", settings)
    monkeypatch.setattr(kept_manifests, "parser_fingerprint", lambda: "updated-parser")
    load_manifest_row(str(tmp_path / "out"), kept.id, "anna", settings)
    assert parses == [kept.id, kept.id]


def test_a_row_run_checks_the_local_files_of_its_row_only(tmp_path, kept, monkeypatch):
    import flows.row
    import records.manifest

    monkeypatch.setenv("S2V_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("S2V_LOCAL_INPUTS", "true")
    checked, executed = [], []

    def counted_check(uri, field, settings):
        checked.append((field, uri))
        return original_check(uri, field, settings)

    original_check = records.manifest.check_local_option_file
    monkeypatch.setattr(records.manifest, "check_local_option_file", counted_check)
    monkeypatch.setattr(flows.row, "execute_rows", lambda title, rows, invalid, settings, **_: executed.append((rows, invalid)))

    def run(clip_id, files=None):
        checked.clear()
        flows.row.row.fn(output=str(tmp_path / "out"), manifest=kept.id, clip_id=clip_id, files=files or {})
        return executed.pop()

    rows, invalid = run("anna")
    assert [row.clip_id for row in rows] == ["anna"] and invalid == []
    assert checked == [("image", str(PORTRAIT)), ("audio", str(SPEECH))]

    rows, invalid = run("ghost")
    assert rows == [] and [bad.clip_id for bad in invalid] == ["ghost"]
    assert "row 4: image=" in str(invalid[0].error) and len(checked) == 1

    # The row's own URLs (the parent's, credentials included) are the ones checked, never kept in the cache.
    other = EXAMPLES / "portrait_ben.png"
    rows, invalid = run("ghost", files={"image": str(other), "unknown": "x"})
    assert [row.image for row in rows] == [str(other)] and invalid == []
    assert checked[0] == ("image", str(other))
    assert str(other) not in (parsed_manifest_folder(Settings(cache_dir=tmp_path / "cache"), kept.id) / "rows" / "ghost.json").read_text()

    rows, invalid = run("steep")  # invalid in the manifest: recorded failed, nothing to check
    assert rows == [] and [bad.clip_id for bad in invalid] == ["steep"] and checked == []
