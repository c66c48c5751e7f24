"""The official generator's options on the real pipeline with the tiny checkpoint (CPU): official sizes,
max_segments, start_from_ref, pose video, and the fallback when compiling the DiT blocks fails."""
import logging

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from model_runtime import speed, warm_cache
from model_runtime.generate import DROP_FIRST_FRAMES, plan_segments
from model_runtime.pose import load_pose_frames
from model_runtime.request import FPS, Preset, output_size, size_preset
from model_runtime.service import InProcessRuntime
from model_runtime.tiny_checkpoint import FRAMES_PER_SEGMENT, SIZE_AREA_DIVISOR
from model_runtime.video import probe
from tests.conftest import tiny_request

pytestmark = pytest.mark.slow


def _write_video(path, colors, fps, size=(96, 48)):
    """A video whose frame i is one flat colour, so a sampled frame tells which source frame it was."""
    writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, codec="libx264", pix_fmt_out="yuv444p",
                                         quality=10, macro_block_size=16, ffmpeg_log_level="error")
    writer.send(None)
    for color in colors:
        writer.send(np.full((size[1], size[0], 3), color, np.uint8))
    writer.close()
    return path


def _colors(count):
    return [(10 + 12 * i, 200 - 8 * i, 60) for i in range(count)]


def _which(frame, colors):
    mean = np.asarray(frame, np.float32).reshape(-1, 3).mean(0)
    if mean.max() < 8:
        return "black"
    return int(np.argmin([np.abs(mean - np.array(c)).sum() for c in colors]))


def test_pose_video_is_resampled_to_16_fps_from_its_start_and_padded_black(tmp_path):
    colors = _colors(10)
    video = _write_video(tmp_path / "pose25.mp4", colors, fps=25)  # 0.4 s
    frames = load_pose_frames(video, 64, 80, count=12, fps=FPS)
    assert len(frames) == 12 and all(f.size == (64, 80) for f in frames)
    # Frame i shows the source frame at i/16 s (index round(i / 16 * 25)); after 0.4 s, black.
    expected = [round(i / 16 * 25) for i in range(7)] + ["black"] * 5
    assert [_which(f, colors) for f in frames] == expected


def test_pose_video_longer_than_the_speech_is_cut(tmp_path):
    colors = _colors(16)
    video = _write_video(tmp_path / "pose8.mp4", colors, fps=8)  # 2 s at half the rate: frames repeat
    frames = load_pose_frames(video, 64, 64, count=5, fps=FPS)
    assert [_which(f, colors) for f in frames] == [0, 0, 1, 2, 2]  # round(i / 2), numpy's half-to-even


@pytest.mark.parametrize("frames, ref, limit, expected", [
    (26, False, None, (2, 26)), (26, True, None, (2, 26)), (79, False, 2, (2, 2 * 16 - DROP_FIRST_FRAMES)),
    (79, True, 1, (1, 16)), (10, False, 3, (1, 10)),
])
def test_segment_plan(frames, ref, limit, expected):
    plan = plan_segments(frames, 16, start_from_ref=ref, max_segments=limit)
    assert (plan.segments, plan.frames) == expected
    assert plan.drop_first == (0 if ref else DROP_FIRST_FRAMES)


@pytest.fixture(scope="module")
def runtime(own_settings):
    return InProcessRuntime(own_settings)


def _frames(video):
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


@pytest.fixture(scope="module")
def one_segment(runtime, portrait_path, short_speech_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base.mp4"
    return runtime.generate(tiny_request(portrait_path, short_speech_path, max_segments=1), out)


@pytest.fixture(scope="module")
def portrait_path():
    from tests.conftest import EXAMPLES

    return EXAMPLES / "portrait_anna.jpg"


@pytest.fixture(scope="module")
def short_speech_path():
    from tests.conftest import EXAMPLES

    return EXAMPLES / "speech_short.wav"


def test_official_size_sets_the_area_and_the_image_sets_the_orientation(runtime, short_speech_path, tmp_path):
    landscape = tmp_path / "landscape.png"
    Image.new("RGB", (640, 360), (120, 90, 60)).save(landscape)
    result = runtime.generate(tiny_request(landscape, short_speech_path, size="480*832", max_segments=1), tmp_path / "s.mp4")
    official = size_preset("480*832")
    expected = output_size(640, 360, Preset(official.max_area // SIZE_AREA_DIVISOR, official.shift))
    assert (result.width, result.height) == expected and result.width > result.height
    assert (result.size, result.sample_shift, result.guidance_scale, result.sample_steps) == ("480*832", 3.0, 4.5, 15)
    info = probe(result.video_path)
    assert (info.width, info.height) == expected


def test_max_segments_stops_early(runtime, portrait_path, tmp_path):
    from tests.conftest import EXAMPLES

    result = runtime.generate(tiny_request(portrait_path, EXAMPLES / "speech_hello.wav", max_segments=2), tmp_path / "p.mp4")
    assert (result.segments, result.max_segments) == (2, 2)
    assert result.frames == 2 * FRAMES_PER_SEGMENT - DROP_FIRST_FRAMES  # the speech would need 6 segments
    info = probe(result.video_path)
    assert info.audio_codec == "aac" and abs(info.duration - result.frames / FPS) < 0.1  # speech cut to the preview


def test_start_from_ref_keeps_the_first_frames(one_segment, runtime, portrait_path, short_speech_path, tmp_path):
    result = runtime.generate(
        tiny_request(portrait_path, short_speech_path, max_segments=1, start_from_ref=True), tmp_path / "r.mp4"
    )
    assert one_segment.frames == FRAMES_PER_SEGMENT - DROP_FIRST_FRAMES
    assert result.frames == FRAMES_PER_SEGMENT and result.start_from_ref
    assert not np.array_equal(_frames(result.video_path)[-4:], _frames(one_segment.video_path)[-4:])


def test_pose_video_of_another_length_and_rate_drives_the_pose_branch(
    one_segment, runtime, portrait_path, short_speech_path, tmp_path
):
    pose = _write_video(tmp_path / "pose.mp4", _colors(9), fps=30, size=(120, 64))
    result = runtime.generate(tiny_request(portrait_path, short_speech_path, max_segments=1, pose_video=str(pose)),
                              tmp_path / "pose-driven.mp4")
    assert result.pose_video == str(pose) and result.frames == one_segment.frames
    assert not np.array_equal(_frames(result.video_path), _frames(one_segment.video_path))


def test_failed_compile_falls_back_to_eager_with_a_warning(
    own_settings, portrait_path, short_speech_path, tmp_path, monkeypatch, caplog
):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    assert not speed.resolve(own_settings, "cpu").compile  # auto never compiles on CPU
    assert speed.resolve(own_settings, "cuda").compile
    monkeypatch.setattr(speed, "COMPILE_BACKEND", broken_backend)
    compiled = own_settings.model_copy(update={"compile": "on"})
    model, _ = warm_cache.get_model(None, compiled)
    assert speed.blocks_compiled(model.pipe.dit)
    with caplog.at_level(logging.WARNING, logger="model_runtime.generate"):
        result = InProcessRuntime(compiled).generate(
            tiny_request(portrait_path, short_speech_path, max_segments=1), tmp_path / "eager.mp4"
        )
    assert result.frames > 0 and not speed.blocks_compiled(model.pipe.dit)
    assert any("torch.compile of the DiT blocks failed" in r.getMessage() for r in caplog.records)


def test_fp8_is_refused_where_it_cannot_run(own_settings):
    from s2v.errors import CheckpointError

    with pytest.raises(CheckpointError, match="S2V_FP8 is on but FP8 needs a CUDA GPU"):
        warm_cache.get_model(None, own_settings.model_copy(update={"fp8": True}))


def test_an_attention_library_that_is_not_installed_is_refused_at_load(own_settings):
    from s2v.errors import CheckpointError

    with pytest.raises(CheckpointError, match="S2V_ATTENTION=sage but that library is not installed"):
        warm_cache.get_model(None, own_settings.model_copy(update={"attention": "sage"}))
