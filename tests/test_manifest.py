"""Manifest parsing: what a person's spreadsheet export really looks like, and what goes wrong in it."""
from __future__ import annotations

import pytest

from model_runtime.request import GenerationRequest
from records.manifest import ClipOptions, ClipRow, parse_manifest
from s2v.errors import InputError, ManifestError
from s2v.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", local_inputs=True)


def test_bom_quoted_commas_newlines_and_blank_lines(tmp_path, settings):
    path = tmp_path / "batch.csv"
    path.write_bytes(
        "\ufeffimage,audio,prompt\r\n"
        "\r\n"
        'a.jpg,a.wav,"Calm, warm voice\r\nsecond line"\r\n'
        ",,\r\n"
        "b.jpg,b.wav,\r\n".encode("utf-8")
    )
    manifest = parse_manifest(path, settings=settings)
    assert manifest.columns == ["image", "audio", "prompt"]
    assert [row.row for row in manifest.rows] == [3, 5]  # header row 1, blank row 2, empty row 4
    assert manifest.rows[0].prompt == "Calm, warm voice\r\nsecond line"
    assert manifest.rows[1].prompt == "A person speaking naturally"
    assert manifest.invalid == [] and manifest.warnings == []


def test_csv_text_is_accepted_directly(settings):
    manifest = parse_manifest("image,audio\nhttps://h.example/a.jpg,s3://bucket/a.wav\n", settings=settings)
    assert manifest.rows[0].image == "https://h.example/a.jpg" and manifest.rows[0].audio == "s3://bucket/a.wav"


def test_missing_required_column_lists_expected_columns(settings):
    with pytest.raises(ManifestError, match=r"missing column\(s\) audio; expected columns: image, audio \(required\)"):
        parse_manifest("image,prompt\na.jpg,hello\n", settings=settings)


def test_unreadable_manifest_is_a_manifest_error(tmp_path, settings):
    with pytest.raises(ManifestError, match="file not found"):
        parse_manifest(tmp_path / "nope.csv", settings=settings)
    with pytest.raises(ManifestError, match="not valid CSV"):
        parse_manifest('image,audio\na.jpg,"b.wav\n', settings=settings)
    with pytest.raises(ManifestError, match="no rows, only a header"):
        parse_manifest("image,audio\n", settings=settings)


def test_spreadsheet_exports_keep_their_accents(tmp_path, settings, caplog):
    """Excel's "CSV" (Windows-1252) and "Unicode text" (UTF-16 with BOM, tab-separated) exports."""
    cp1252 = tmp_path / "excel.csv"
    cp1252.write_bytes("image,audio,prompt\na.jpg,a.wav,Café – déjà vu\n".encode("cp1252"))
    assert parse_manifest(cp1252, settings=settings).rows[0].prompt == "Café – déjà vu"
    assert "read as Windows-1252" in caplog.text
    unicode_text = tmp_path / "excel.txt"
    unicode_text.write_bytes("image\taudio\tprompt\na.jpg\ta.wav\tŁódź, naïve\n".encode("utf-16"))
    row = parse_manifest(unicode_text, settings=settings).rows[0]
    assert (row.image, row.prompt) == ("a.jpg", "Łódź, naïve")


def test_unknown_columns_warn_and_are_logged(settings, caplog):
    manifest = parse_manifest("image,audio,speaker,Mood\na.jpg,a.wav,ann,calm\n", settings=settings)
    assert len(manifest.rows) == 1
    assert manifest.warnings and "speaker, mood are not used" in manifest.warnings[0]
    assert "speaker, mood are not used" in caplog.text


def test_duplicate_clip_id_names_both_rows(settings):
    with pytest.raises(ManifestError, match=r"clip_id 'intro' appears in rows 2 and 4"):
        parse_manifest("image,audio,clip_id\na.jpg,a.wav,intro\nb.jpg,b.wav,outro\nc.jpg,c.wav,intro\n", settings=settings)
    with pytest.raises(ManifestError, match=r"rows 2 and 3 have the same image, audio and options"):
        parse_manifest("image,audio\na.jpg,a.wav\na.jpg,a.wav\n", settings=settings)


def test_bad_values_fail_only_their_row(settings):
    text = (
        "image,audio,resolution,sample_steps,seed,guidance_scale,clip_id\n"
        "a.jpg,a.wav,480p,20,1,4.5,good\n"
        "b.jpg,b.wav,1080p,,,,bad-resolution\n"
        "c.jpg,c.wav,,60,,,bad-steps\n"
        "d.jpg,,,,,,no-audio\n"
        "ftp://u:pw@h/e.jpg,e.wav,,,,,bad-scheme\n"
        "f.jpg,f.wav,,,,4;5,bad-guidance\n"
    )
    manifest = parse_manifest(text, settings=settings)
    assert [row.clip_id for row in manifest.rows] == ["good"]
    errors = {bad.clip_id: bad.error for bad in manifest.invalid}
    assert {bad.clip_id: bad.row for bad in manifest.invalid} == {
        "bad-resolution": 3, "bad-steps": 4, "no-audio": 5, "bad-scheme": 6, "bad-guidance": 7,
    }
    assert all(isinstance(error, InputError) and error.row is not None for error in errors.values())
    assert (errors["bad-resolution"].field, errors["bad-resolution"].value) == ("resolution", "1080p")
    assert (errors["bad-steps"].field, errors["bad-steps"].value) == ("sample_steps", "60")
    assert "row 4: sample_steps='60'" in str(errors["bad-steps"])
    assert errors["no-audio"].field == "audio"
    assert "pw" not in str(errors["bad-scheme"]) and "unsupported scheme" in str(errors["bad-scheme"])
    assert errors["bad-guidance"].field == "guidance_scale"


def test_row_values_override_flow_defaults(settings):
    defaults = ClipOptions(prompt="Studio portrait", resolution="720p", sample_steps=30, seed=7)
    manifest = parse_manifest(
        "image,audio,prompt,sample_steps,seed\na.jpg,a.wav,,25,\nb.jpg,b.wav,Outdoors,,11\n",
        defaults=defaults, settings=settings,
    )
    first, second = manifest.rows
    assert (first.prompt, first.resolution, first.sample_steps, first.seed) == ("Studio portrait", "720p", 25, 7)
    assert (second.prompt, second.resolution, second.sample_steps, second.seed) == ("Outdoors", "720p", 30, 11)
    assert first.options_hash != second.options_hash
    from_dict = parse_manifest("image,audio\na.jpg,a.wav\n", defaults={"sample_steps": 40}, settings=settings)
    assert from_dict.rows[0].sample_steps == 40
    with pytest.raises(ManifestError, match="default options are invalid"):
        parse_manifest("image,audio\na.jpg,a.wav\n", defaults={"sample_steps": 5}, settings=settings)


def test_clip_ids_are_stable_and_follow_content(settings):
    def only_row(text: str) -> ClipRow:
        return parse_manifest(text, settings=settings).rows[0]

    base = only_row("image,audio\nhttps://h.example/a.jpg?X-Amz-Signature=one,a.wav\n")
    resigned = only_row("image,audio,prompt\nhttps://h.example/a.jpg?X-Amz-Signature=two,a.wav,\n")
    assert base.clip_id == resigned.clip_id and base.clip_id.startswith("clip-")
    assert base.options_hash == resigned.options_hash
    other_prompt = only_row("image,audio,prompt\nhttps://h.example/a.jpg,a.wav,Smiling\n")
    assert other_prompt.clip_id != base.clip_id and other_prompt.options_hash != base.options_hash
    other_audio = only_row("image,audio\nhttps://h.example/a.jpg,b.wav\n")
    assert other_audio.clip_id != base.clip_id and other_audio.options_hash == base.options_hash


def test_options_follow_the_generation_request_limits(settings):
    row = parse_manifest("image,audio,sample_steps,seed\na.jpg,a.wav,15,0\n", settings=settings).rows[0]
    request = GenerationRequest(image_path="a.jpg", audio_path="a.wav", **row.options().model_dump())
    assert (request.sample_steps, request.seed) == (15, 0)
    assert ClipOptions.model_json_schema()["properties"]["sample_steps"]["maximum"] == 50  # the form: no None switch
    assert "a.wav" not in repr(row)


def test_output_names_must_be_safe_and_unique(settings):
    manifest = parse_manifest("image,audio,output_name\na.jpg,a.wav,../x.mp4\nb.jpg,b.wav,ok/b.mp4\n", settings=settings)
    assert manifest.rows[0].output_name == "ok/b.mp4"
    assert manifest.invalid[0].error.field == "output_name" and manifest.invalid[0].row == 2
    with pytest.raises(ManifestError, match=r"output_name 'x.mp4' appears in rows 2 and 3"):
        parse_manifest("image,audio,output_name\na.jpg,a.wav,x.mp4\nb.jpg,b.wav,x.mp4\n", settings=settings)
