"""The running time-per-step figure (model_runtime/estimate.py) and the up-front failure it allows."""
import json
import subprocess
import sys

import pytest
import soundfile

from model_runtime import estimate
from model_runtime.request import GenerationOptions, GenerationRequest
from s2v.errors import InputError
from s2v.settings import Settings
from tests.conftest import EXAMPLES, ROOT, heavy_imports_after

CHECKPOINT = "/models/Wan2.2-S2V-14B"
H100 = "cuda:NVIDIA H100 80GB HBM3"


@pytest.fixture
def settings(tmp_path):
    return Settings(checkpoint=CHECKPOINT, cache_dir=tmp_path / "cache", device="cuda")


def _record(settings, seconds: float, *, warm: bool = True, device: str = H100, resolution: str = "480p", **overrides):
    values = dict(checkpoint=CHECKPOINT, device=device, frames_per_segment=80, resolution=resolution,
                  generation_seconds=seconds, segments=1, sample_steps=20, guidance_scale=4.5, warm=warm)
    return estimate.record(settings, **{**values, **overrides})


def _stored(settings) -> dict:
    return json.loads(estimate.timings_path(settings).read_text())


def test_segments_follow_the_model():
    assert estimate.segments_for(81.0) == 17  # ceil((1296 + 3) / 80)
    assert estimate.segments_for(4.8) == 1 and estimate.segments_for(4.85) == 2  # 77 + 3 frames fit one; 78 + 3 do not
    assert estimate.segments_for(81.0, frames_per_segment=16) == 82
    assert estimate.segments_for(81.0, max_segments=4) == 4
    assert (estimate.dit_passes(4.5), estimate.dit_passes(1.0)) == (2, 1)


def test_nothing_measured_means_no_estimate(settings):
    assert estimate.estimate_seconds(settings, 30.0, GenerationOptions()) is None
    assert estimate.figures(settings) == {}
    assert not estimate.timings_path(settings).exists()  # reading creates nothing


def test_figure_is_seconds_per_dit_pass_and_estimates_scale_with_the_work(settings):
    # 2 segments x 20 steps x 2 passes (guidance) = 80 passes in 40 s: 0.5 s per pass
    assert _record(settings, 40.0, segments=2) == pytest.approx(0.5)
    assert estimate.figures(settings) == {"480p": pytest.approx(0.5)}
    options = GenerationOptions(sample_steps=30, guidance_scale=4.5)
    assert estimate.estimate_seconds(settings, 81.0, options) == pytest.approx(17 * 30 * 2 * 0.5)
    no_guidance = GenerationOptions(sample_steps=30, guidance_scale=1.0)
    assert estimate.estimate_seconds(settings, 81.0, no_guidance) == pytest.approx(17 * 30 * 1 * 0.5)
    found = estimate.estimate(settings, 81.0, options, segments=3)  # audio features know the count exactly
    assert (found.segments, found.seconds, found.device) == (3, pytest.approx(3 * 30 * 2 * 0.5), H100)
    assert estimate.estimate_seconds(settings, 81.0, GenerationOptions(resolution="720p")) is None  # not measured
    # Unset steps and guidance are the mode's: standard 20 x 2 passes, fast 4 x 1 pass.
    assert estimate.estimate_seconds(settings, 81.0, GenerationOptions()) == pytest.approx(17 * 20 * 2 * 0.5)
    fast = GenerationOptions(mode="fast", lora="/loras/lightning.safetensors")
    assert estimate.estimate_seconds(settings, 81.0, fast) == pytest.approx(17 * 4 * 1 * 0.5)
    assert estimate.estimate_seconds(settings, 81.0, GenerationOptions(size="832*480")) is None  # its own figure


def test_max_segments_caps_the_estimate(settings):
    _record(settings, 40.0)
    assert estimate.estimate(settings, 81.0, GenerationOptions(max_segments=2)).segments == 2
    assert estimate.estimate(settings, 81.0, GenerationOptions(max_segments=2), segments=5).segments == 2


def test_running_figure_moves_by_the_smoothing_weight(settings):
    _record(settings, 40.0)  # 1.0 s per pass
    assert _record(settings, 80.0) == pytest.approx(1.0 + estimate.SMOOTHING * (2.0 - 1.0))
    entry = _stored(settings)["figures"][0]
    assert entry["checkpoint"] == CHECKPOINT and entry["device"] == H100
    assert entry["resolutions"]["480p"]["generations"] == 2


def test_cold_generations_only_seed_a_figure(settings):
    assert _record(settings, 400.0, warm=False) == pytest.approx(10.0)  # nothing else known: the first guess
    assert _record(settings, 800.0, warm=False) == pytest.approx(10.0)  # another cold one changes nothing
    assert _record(settings, 40.0) == pytest.approx(1.0)  # the first warm one replaces the first guess
    assert _record(settings, 4000.0, warm=False) == pytest.approx(1.0)


def test_device_kind_finds_the_measured_gpu_but_another_gpu_model_does_not(settings, tmp_path):
    _record(settings, 40.0)
    options = GenerationOptions(sample_steps=20)
    assert estimate.estimate_seconds(settings, 4.0, options) == pytest.approx(40.0)  # settings say "cuda"
    assert estimate.estimate_seconds(settings, 4.0, options, device="auto") == pytest.approx(40.0)
    assert estimate.estimate_seconds(settings, 4.0, options, device="cuda:NVIDIA H200") is None
    assert estimate.estimate_seconds(settings, 4.0, options, device="cpu") is None
    assert estimate.estimate_seconds(settings, 4.0, options, checkpoint=tmp_path / "other") is None


def test_check_within_limit_names_the_speech_the_estimate_and_the_limit(settings):
    _record(settings, 40.0)  # 1 s per pass: 81 s of speech is 17 x 20 x 2 = 680 s
    options = GenerationOptions(sample_steps=20)
    fits = estimate.check_within_limit(settings, "/in/speech.wav", 81.0, options, limit_s=1800, limit_name="S2V_GENERATION_TIMEOUT_S")
    assert fits.seconds == pytest.approx(680.0)
    with pytest.raises(InputError) as err:
        estimate.check_within_limit(settings, "/in/speech.wav", 81.0, options, limit_s=600, limit_name="S2V_GENERATION_TIMEOUT_S")
    assert err.value.field == "audio" and err.value.value == "/in/speech.wav"
    assert "speech of 81.0 s needs 17 segment(s), estimated 680 s on cuda:NVIDIA H100 80GB HBM3" in err.value.reason
    assert "the limit is 600 s (S2V_GENERATION_TIMEOUT_S)" in err.value.reason


@pytest.mark.parametrize("content", ["{half a file", '{"version": 1, "figures": [{"checkpoint": 3}]}', '{"version": 2}'])
def test_an_unusable_timings_file_is_ignored_and_replaced(settings, content):
    path = estimate.timings_path(settings)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert estimate.figures(settings) == {}
    assert estimate.estimate_seconds(settings, 30.0, GenerationOptions()) is None
    assert _record(settings, 40.0) == pytest.approx(1.0)
    assert _stored(settings)["version"] == 1


def test_two_processes_recording_at_once_lose_no_update(settings):
    code = (
        "import sys\n"
        "from model_runtime import estimate\n"
        "from s2v.settings import Settings\n"
        "settings = Settings(checkpoint=sys.argv[1], cache_dir=sys.argv[2])\n"
        "for _ in range(25):\n"
        "    estimate.record(settings, checkpoint=sys.argv[1], device='cpu', frames_per_segment=80, resolution='480p',\n"
        "                    generation_seconds=40.0, segments=1, sample_steps=20, guidance_scale=4.5, warm=True)\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", code, CHECKPOINT, str(settings.cache_dir)], cwd=ROOT) for _ in range(2)]
    assert [w.wait(120) for w in writers] == [0, 0]
    assert _stored(settings)["figures"][0]["resolutions"]["480p"]["generations"] == 50
    assert not list(settings.cache_dir.glob("*.part"))


def test_estimate_imports_without_torch():
    assert "torch" not in heavy_imports_after("import model_runtime.estimate, model_runtime.interrupt", timeout=120)


# ---- on the tiny model, in-process ------------------------------------------------------------

@pytest.mark.slow
def test_a_generation_updates_the_figure_and_a_row_too_long_for_the_limit_fails_before_the_model(
    tiny_checkpoint, tmp_path, monkeypatch,
):
    from model_runtime import generate
    from model_runtime.service import InProcessRuntime

    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", cache_dir=tmp_path / "cache")
    runtime = InProcessRuntime(settings)
    short = GenerationRequest.parse({"image_path": EXAMPLES / "portrait_anna.jpg", "audio_path": EXAMPLES / "speech_short.wav",
                                     "sample_steps": 15, "seed": 0})
    first = runtime.generate(short, tmp_path / "first.mp4")
    seconds = soundfile.info(str(short.audio_path)).duration
    assert first.segments == estimate.segments_for(seconds, frames_per_segment=16)  # the tiny model's segments
    per_pass = first.generation_time / (first.segments * 15 * 2)
    assert estimate.figures(settings, device="cpu") == {"480p": pytest.approx(per_pass, rel=1e-3)}

    runtime.generate(short, tmp_path / "second.mp4")
    assert _stored(settings)["figures"][0]["resolutions"]["480p"]["generations"] == 2

    calls = []
    real_generate_video = generate.generate_video
    monkeypatch.setattr(generate, "generate_video", lambda *a, **k: calls.append(a) or real_generate_video(*a, **k))
    news = short.model_copy(update={"audio_path": EXAMPLES / "speech_news.flac"})
    expected = estimate.estimate_seconds(settings, soundfile.info(str(news.audio_path)).duration, news, device="cpu")
    assert expected is not None
    tight = InProcessRuntime(settings.model_copy(update={"generation_timeout_s": expected / 2}))
    with pytest.raises(InputError) as err:
        tight.generate(news, tmp_path / "long.mp4")
    assert err.value.field == "audio" and "speech of 7.6 s needs 8 segment(s), estimated" in err.value.reason
    assert "(S2V_GENERATION_TIMEOUT_S)" in err.value.reason
    assert calls == [] and not (tmp_path / "long.mp4").exists()  # refused before the model was asked
