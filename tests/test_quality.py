"""The quality checks on real photographs that ship with scikit-image, and on clips made from them."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2v.errors import InputError
from s2v.quality.clip import MIN_MOUTH_SYNC, check_clip
from s2v.quality.portrait import check_picture, preflight_portrait
from s2v.settings import Settings
from s2v.storage.fetch import FetchedInput
from tests.conftest import EXAMPLES, run_python
from tests.talking_clips import astronaut, make_talking_clip

skimage_data = pytest.importorskip("skimage.data")


def test_astronaut_has_one_usable_face():
    result = check_picture(astronaut())
    assert (result.faces, result.face_cut, result.problem) == (1, False, None)
    # Her face box is about 93 x 93 pixels of 512 x 512.
    assert 0.02 < result.face_share < 0.06


@pytest.mark.parametrize("picture", ["coffee", "chelsea"])
def test_no_face_in_a_coffee_cup_or_a_cat(picture):
    result = check_picture(getattr(skimage_data, picture)())
    assert result.faces == 0 and result.face_share is None
    assert result.problem.startswith("no face found")


def test_face_cut_by_the_left_edge_is_flagged():
    result = check_picture(astronaut()[:, 180:])  # her face starts at x = 177
    assert result.faces == 1 and result.face_cut
    assert result.problem == "the face is cut by the left edge of the picture"


def test_two_people_are_flagged():
    twice = np.concatenate([astronaut(), astronaut()[:, ::-1]], axis=1)
    result = check_picture(twice)
    assert result.faces == 2 and result.problem == "2 faces found; the model animates one person"


def _fetched(tmp_path: Path, picture: np.ndarray) -> FetchedInput:
    path = tmp_path / "portrait.png"
    Image.fromarray(picture).save(path)
    return FetchedInput(field="image", source="https://cdn.example.com/coffee.png", path=path, sha256="0" * 64,
                        size_bytes=path.stat().st_size, fetch_s=0.0)


def test_refuse_fails_the_row_naming_the_image_as_given(tmp_path):
    fetched = _fetched(tmp_path, skimage_data.coffee())
    with pytest.raises(InputError) as caught:
        preflight_portrait(fetched, Settings(face_check="refuse", cache_dir=tmp_path))
    assert str(caught.value.at_row(3)).startswith("row 3: image='https://cdn.example.com/coffee.png': no face found")
    assert "S2V_FACE_CHECK=refuse" in str(caught.value)


def test_warn_keeps_the_reason_and_off_does_not_look(tmp_path):
    fetched = _fetched(tmp_path, skimage_data.coffee())
    warned = preflight_portrait(fetched, Settings(face_check="warn", cache_dir=tmp_path))
    assert warned.faces == 0 and warned.problem.startswith("no face found")
    assert preflight_portrait(fetched, Settings(face_check="off", cache_dir=tmp_path)) is None
    good = preflight_portrait(_fetched(tmp_path, astronaut()), Settings(face_check="refuse", cache_dir=tmp_path))
    assert good.faces == 1 and good.problem is None


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("portrait") / "astronaut.png"
    Image.fromarray(astronaut()).save(path)
    return path


def test_mouth_moving_with_the_speech_scores_clearly_higher_than_a_second_late(tmp_path, astronaut_png):
    speech = EXAMPLES / "speech_hello.wav"
    in_time = check_clip(make_talking_clip(tmp_path / "in_time.mp4", speech), astronaut_png)
    late = check_clip(make_talking_clip(tmp_path / "late.mp4", speech, shift_s=1.0), astronaut_png)
    assert in_time.face_frames == 1.0 and in_time.face_drift < 0.1
    assert in_time.mouth_sync >= MIN_MOUTH_SYNC and not in_time.flags
    assert late.mouth_sync < MIN_MOUTH_SYNC and in_time.mouth_sync - late.mouth_sync > 0.3
    assert late.flags == [f"the mouth does not move with the speech (score {late.mouth_sync:.2f} < {MIN_MOUTH_SYNC})"]


def test_a_still_portrait_with_speech_is_flagged_for_its_mouth(tmp_path, astronaut_png):
    from model_runtime.video import mux_speech, write_silent_mp4

    silent, clip = tmp_path / "silent.mp4", tmp_path / "still.mp4"
    write_silent_mp4(np.repeat(astronaut()[None], 26, axis=0), silent, 16)
    mux_speech(silent, EXAMPLES / "speech_short.wav", clip)
    result = check_clip(clip, astronaut_png)
    assert result.face_frames == 1.0 and result.mouth_sync == 0.0 and result.flags


def test_a_face_moved_off_its_place_is_flagged(tmp_path, astronaut_png):
    from model_runtime.video import mux_speech, write_silent_mp4

    moved = np.roll(astronaut(), 120, axis=1)  # the whole picture slides 120 px (1.3 face widths) right
    silent, clip = tmp_path / "silent.mp4", tmp_path / "moved.mp4"
    write_silent_mp4(np.repeat(moved[None], 26, axis=0), silent, 16)
    mux_speech(silent, EXAMPLES / "speech_short.wav", clip)
    result = check_clip(clip, astronaut_png)
    assert result.face_drift > 1.0
    assert any(flag.startswith("the face moved") for flag in result.flags)


@pytest.mark.slow  # loads the tiny model: about a minute here
def test_a_tiny_checkpoint_clip_of_noise_is_flagged_as_having_no_face(tiny_checkpoint, tmp_path, portrait):
    from model_runtime.request import GenerationRequest
    from model_runtime.service import InProcessRuntime

    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", cache_dir=tmp_path / "cache")
    request = GenerationRequest.parse({"image_path": portrait, "audio_path": EXAMPLES / "speech_short.wav",
                                       "sample_steps": 15, "seed": 0})
    made = InProcessRuntime(settings).generate(request, tmp_path / "noise.mp4")
    result = check_clip(Path(made.video_path), portrait)
    assert result.face_frames == 0.0 and result.face_drift is None and result.mouth_sync is None
    assert result.flags == ["a face in 0% of sampled frames (< 80%)"]


@pytest.mark.parametrize("mode", ["warn", "refuse"])
def test_check_shows_each_portraits_face_and_refuse_makes_a_faceless_row_bad(mode, tmp_path, astronaut_png):
    import io

    from rich.console import Console

    from cli.check import check_manifest

    coffee = tmp_path / "coffee.png"
    Image.fromarray(skimage_data.coffee()).save(coffee)
    speech = EXAMPLES / "speech_short.wav"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"clip_id,image,audio\nface,{astronaut_png},{speech}\ncup,{coffee},{speech}\n")
    shown = io.StringIO()
    settings = Settings(local_inputs=True, cache_dir=tmp_path / "cache", face_check=mode)
    bad = check_manifest(str(manifest), settings, Console(file=shown, width=300, no_color=True))
    # Off a terminal the table is plain lines, one per row, tab-separated: row, clip, check, face, ...
    lines = {line.split("\t")[1]: line for line in shown.getvalue().splitlines() if line.count("\t") > 3}
    assert "1 face, 3%" in lines["face"]
    assert ("no face found" if mode == "refuse" else "no face") in lines["cup"]
    assert bad == (1 if mode == "refuse" else 0)
    assert ("bad" in lines["cup"]) == (mode == "refuse")


def test_the_run_summary_shows_what_the_checks_flagged():
    import io

    from rich.console import Console

    from cli.batch import print_summary

    records = [
        {"row": 2, "clip_id": "face", "status": "succeeded", "url": "face.mp4", "error": None, "total_time": 9.0,
         "qc_flags": "a face in 0% of sampled frames (< 80%)"},
        {"row": 3, "clip_id": "two", "status": "succeeded", "url": "two.mp4", "error": None, "total_time": 9.0,
         "qc_portrait": "2 faces found; the model animates one person"},
        {"row": 4, "clip_id": "fine", "status": "succeeded", "url": "fine.mp4", "error": None, "total_time": 9.0},
    ]
    summary = {"succeeded": 3, "failed": 0, "skipped": 0, "interrupted": 0, "records": records, "output": "out",
               "estimated_cost_usd": 0.0}
    shown = io.StringIO()
    print_summary(Console(file=shown, width=300, no_color=True), summary)
    printed = shown.getvalue().splitlines()  # off a terminal: title, header, one tab-separated line per row
    assert printed[1].split("\t")[-1] == "flagged"
    cells = {line.split("\t")[1]: line.split("\t") for line in printed[2:5]}
    assert cells["face"][-1] == "a face in 0% of sampled frames (< 80%)"
    assert "portrait: 2 faces found" in cells["two"][-1]
    assert cells["fine"][-2:] == ["fine.mp4", ""]


def test_rows_checking_portraits_at_once_in_a_fresh_process_all_get_their_faces():
    """Two rows' downloads import OpenCV at the same moment in a new worker process."""
    code = (
        "import threading\nfrom skimage import data\nfrom s2v.quality.portrait import check_picture\n"
        "picture, found = data.astronaut(), []\n"
        "threads = [threading.Thread(target=lambda: found.append(check_picture(picture).faces)) for _ in range(4)]\n"
        "[thread.start() for thread in threads]\n[thread.join() for thread in threads]\n"
        "assert found == [1, 1, 1, 1], found\n"
    )
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
