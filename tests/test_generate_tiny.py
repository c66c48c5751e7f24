"""The real DiffSynth S2V pipeline end to end on the tiny random-weight checkpoint, on CPU."""
import shutil
import threading

import pytest
import soundfile

from model_runtime import warm_cache
from model_runtime.request import FPS
from model_runtime.service import InProcessRuntime
from model_runtime.video import mux_speech, probe, write_silent_mp4
from s2v.errors import CheckpointError, GenerationTimeout, InputError, MuxError
from s2v.settings import Settings
from tests.conftest import tiny_request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime(own_settings):
    return InProcessRuntime(own_settings)


@pytest.fixture(scope="module")
def first_result(runtime, tmp_path_factory):
    from tests.conftest import EXAMPLES

    loads_before = warm_cache.load_count
    out = tmp_path_factory.mktemp("out") / "clip.mp4"
    result = runtime.generate(tiny_request(EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_hello.wav"), out)
    return result, warm_cache.load_count - loads_before


def test_video_has_h264_and_aac_and_matches_the_speech(first_result, speech):
    result, _ = first_result
    info = probe(result.video_path)
    assert (info.video_streams, info.audio_streams) == (1, 1)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    speech_seconds = soundfile.info(str(speech)).duration
    assert abs(info.duration - speech_seconds) <= 1 / FPS
    assert result.frames == round(speech_seconds * FPS)
    assert (info.width, info.height) == (result.width, result.height)
    # portrait_anna is 3:4; the tiny checkpoint's 480p preset is scaled down but keeps the aspect
    assert result.height > result.width and result.width % 16 == 0 and result.height % 16 == 0
    assert result.video_size_mb > 0 and result.tiny_checkpoint


def test_speech_longer_than_a_segment_makes_several_segments(first_result, tiny_checkpoint):
    import json

    per_segment = json.loads((tiny_checkpoint / "config.json").read_text())["s2v_tiny"]["frames_per_clip"]
    result, _ = first_result
    assert result.frames > per_segment
    assert result.segments == -(-(result.frames + 3) // per_segment)


def test_second_request_is_warm_and_does_not_reload(first_result, runtime, portrait, short_speech, tmp_path):
    result, loads = first_result
    assert loads == 1 and result.warm_model is False
    loads_before = warm_cache.load_count
    second = runtime.generate(tiny_request(portrait, short_speech), tmp_path / "b.mp4")
    assert second.warm_model is True
    assert warm_cache.load_count == loads_before


def test_concurrent_first_requests_load_once(tiny_checkpoint, tmp_path, monkeypatch):
    copy = tmp_path / "ckpt-copy"
    shutil.copytree(tiny_checkpoint, copy)
    settings = Settings(checkpoint=copy, device="cpu")
    loads_before = warm_cache.load_count
    got = []
    threads = [threading.Thread(target=lambda: got.append(warm_cache.get_model(copy, settings))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warm_cache.load_count - loads_before == 1
    assert len({id(model) for model, _ in got}) == 1
    assert sorted(warm for _, warm in got) == [False, True, True]


def test_audio_features_saved_then_used(runtime, portrait, short_speech, tmp_path):
    features = runtime.encode_audio(short_speech, tmp_path / "feat.safetensors")
    assert features.path.is_file() and features.segments >= 1
    result = runtime.generate(tiny_request(portrait, short_speech), tmp_path / "c.mp4", features=features)
    assert result.segments == features.segments and result.frames == features.frames


def test_undecodable_image(runtime, tmp_path, short_speech):
    bad = tmp_path / "face.jpg"
    bad.write_text("not an image")
    with pytest.raises(InputError) as err:
        runtime.generate(tiny_request(bad, short_speech), tmp_path / "x.mp4")
    assert err.value.field == "image" and "not a decodable image" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"this is text, not sound" * 50])
def test_empty_or_non_audio_file(runtime, tmp_path, portrait, content):
    bad = tmp_path / "speech.wav"
    bad.write_bytes(content)
    with pytest.raises(InputError) as err:
        runtime.generate(tiny_request(portrait, bad), tmp_path / "x.mp4")
    assert err.value.field == "audio"
    assert not (tmp_path / "x.mp4").exists()


def test_missing_checkpoint_file_fails_at_once(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    (copy / "wav2vec2-large-xlsr-53-english" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="wav2vec2-large-xlsr-53-english/model.safetensors"):
        warm_cache.get_model(copy, Settings(checkpoint=copy, device="cpu"))


def test_generation_timeout_is_enforced(own_settings, portrait, short_speech, tmp_path):
    # A cache of its own: a measured speed there would refuse this request up front instead.
    runtime = InProcessRuntime(own_settings.model_copy(update={"generation_timeout_s": 0.001, "cache_dir": tmp_path / "cache"}))
    with pytest.raises(GenerationTimeout, match="limit"):
        runtime.generate(tiny_request(portrait, short_speech), tmp_path / "late.mp4")
    assert not (tmp_path / "late.mp4").exists()


def test_failed_mux_is_an_error_never_a_silent_video(tmp_path, portrait):
    import numpy as np

    silent = tmp_path / "silent.mp4"
    write_silent_mp4(np.zeros((8, 64, 64, 3), np.uint8), silent, FPS)
    out = tmp_path / "out.mp4"
    with pytest.raises(MuxError):
        mux_speech(silent, portrait, out)  # an image is no speech track
    assert not out.exists()
