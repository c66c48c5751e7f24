"""The download stage against a loopback file server: deadlines that hold however slowly a server
sends, the stage's bound across Prefect's retries, no refetch on retry, the LoRA cache, pose videos."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from records.media_checks import check_pose_video, check_safetensors
from s2v.errors import InputError, S2VError, TransientError
from s2v.settings import Settings, load_settings
from s2v.storage.fetch import FetchedInput, fetch_input
from s2v.storage.transient import is_transient
from tasks.download import download_inputs
from tests.conftest import EXAMPLES
from tests.servers import DRIP_BYTES, DRIP_SECONDS, PORTRAIT, SPEECH

# A dripping server would hold a download this long; a bounded one ends long before.
DRIP_FULL_SECONDS = DRIP_BYTES * DRIP_SECONDS


def make_settings(tmp_path: Path, **overrides) -> Settings:
    values = {"cache_dir": tmp_path / "cache", "allowed_hosts": ["127.0.0.1"], "download_timeout_s": 2.0}
    return load_settings(**{**values, **overrides})


def run_download(*args, **kwargs):
    """download_inputs as a Prefect task in a flow, retries without waiting."""
    from prefect import flow

    @flow
    def row():
        fast = download_inputs.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
        return fast(*args, **kwargs)

    return row()


@pytest.mark.parametrize("path", ["/drip.wav", "/drip-unsized.wav", "/drip-headers.wav"])
def test_a_trickling_server_is_cut_at_the_deadline(tmp_path, http_server, path):
    """One byte every 2 s never trips a read timeout; the deadline cuts the body, a body without a
    length (which a cut would make look complete) and headers that trickle."""
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"not finished within 2 s \(S2V_DOWNLOAD_TIMEOUT_S=2 s") as caught:
        fetch_input(http_server.url(path), tmp_path / "work", "audio", make_settings(tmp_path))
    assert time.monotonic() - started < DRIP_FULL_SECONDS / 4
    assert "S2V_DOWNLOAD_STAGE_TIMEOUT_S" in str(caught.value)
    assert [p.name for p in (tmp_path / "work").iterdir()] == [".incoming"]  # nothing half-stored
    assert list((tmp_path / "work" / ".incoming").iterdir()) == []


def test_a_trickling_row_fails_within_its_deadlines_and_retries(tmp_path, http_server, prefect_harness):
    http_server.files["face-1.jpg"] = PORTRAIT
    http_server.hits.pop("/drip.wav", None)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        run_download(http_server.url("/files/face-1.jpg"), http_server.url("/drip.wav"), tmp_path / "w",
                     make_settings(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and "audio http://127.0.0.1" in message and "S2V_DOWNLOAD_TIMEOUT_S=2 s" in message
    assert http_server.hits["/drip.wav"] == 4  # the first try and three retries, each cut at 2 s
    assert http_server.hits["/files/face-1.jpg"] == 1  # fetched by the first try, reused by the retries
    assert time.monotonic() - started < DRIP_FULL_SECONDS


def test_the_stage_bound_stops_retries(tmp_path, http_server, prefect_harness):
    http_server.hits.pop("/drip-unsized.wav", None)
    settings = make_settings(tmp_path, download_timeout_s=2, download_stage_timeout_s=3)
    with pytest.raises(S2VError) as caught:
        run_download(http_server.url("/portrait.jpg"), http_server.url("/drip-unsized.wav"), tmp_path / "w", settings)
    message = str(caught.value)
    assert message.startswith("download stage stopped after") and "\n" not in message
    assert "S2V_DOWNLOAD_STAGE_TIMEOUT_S=3 s" in message and "S2V_DOWNLOAD_TIMEOUT_S=2 s" in message
    assert "not retried further; last error: audio http://127.0.0.1" in message
    assert not is_transient(caught.value)
    # 3 s of stage hold at most two 2-s tries (however slow the machine), not the four the policy allows
    assert 1 <= http_server.hits["/drip-unsized.wav"] <= 2


def test_a_retry_does_not_fetch_again_what_an_earlier_try_fetched(tmp_path, http_server, prefect_harness):
    http_server.files["face-2.jpg"] = PORTRAIT
    http_server.hits.pop("/flaky.wav", None)  # 503 on its first request, then the speech
    result = run_download(http_server.url("/files/face-2.jpg"), http_server.url("/flaky.wav"), tmp_path / "w",
                          make_settings(tmp_path))
    assert http_server.hits["/flaky.wav"] == 2
    assert http_server.hits["/files/face-2.jpg"] == 1
    assert result.image_path.read_bytes() == PORTRAIT and result.audio_path.read_bytes() == SPEECH
    assert result.lora_path is result.pose_video_path is result.lora_sha256 is result.pose_video_sha256 is None


# LoRA ---------------------------------------------------------------------------------------------------


def safetensors_bytes() -> bytes:
    from safetensors.numpy import save

    # A Wan DiT layer's name: with no checkpoint here, the header check matches names, not shapes.
    return save({"blocks.0.self_attn.q.lora_up.weight": np.zeros((8, 2), dtype=np.float32),
                 "blocks.0.self_attn.q.lora_down.weight": np.ones((2, 8), dtype=np.float32)})


def test_rows_sharing_a_lora_download_it_once(tmp_path, http_server):
    http_server.files["style.safetensors"] = safetensors_bytes()
    settings = make_settings(tmp_path)
    image, audio = http_server.url("/portrait.jpg"), http_server.url("/speech.wav")
    rows = [
        download_inputs.fn(image, audio, tmp_path / f"row-{n}", settings,
                           lora=http_server.url(f"/files/style.safetensors?X-Amz-Signature=sig{n}"))
        for n in range(3)  # the link is re-signed for each row: the same file all the same
    ]
    assert http_server.hits["/files/style.safetensors"] == 1
    assert len({row.lora_path for row in rows}) == 1 and rows[0].lora_path.is_absolute()
    assert rows[0].lora_path.is_relative_to(tmp_path / "cache" / "loras")
    assert rows[0].lora_path.read_bytes() == http_server.files["style.safetensors"]
    assert rows[0].lora_source.endswith("?X-Amz-Signature=REDACTED")
    assert rows[2].image_path.is_relative_to(tmp_path / "row-2")  # the row's own inputs stay in its folder


def test_a_file_that_is_not_safetensors_is_refused_and_not_cached(tmp_path, http_server):
    http_server.files["fake.safetensors"] = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64
    settings = make_settings(tmp_path)
    for _ in range(2):
        with pytest.raises(InputError, match=r"lora='http://.*/fake.safetensors': not a safetensors file"):
            download_inputs.fn(http_server.url("/portrait.jpg"), http_server.url("/speech.wav"), tmp_path / "w",
                               settings, lora=http_server.url("/files/fake.safetensors"))
    assert http_server.hits["/files/fake.safetensors"] == 2
    assert not (tmp_path / "cache" / "loras" / "by-uri").exists()


def test_lora_size_cap_and_local_rules(tmp_path, http_server):
    http_server.files["big.safetensors"] = safetensors_bytes()
    with pytest.raises(InputError, match=r"over the 0.0001 MB limit \(S2V_MAX_LORA_MB\)"):
        fetch_input(http_server.url("/files/big.safetensors"), tmp_path / "w", "lora",
                    make_settings(tmp_path, max_lora_mb=0.0001))
    local = tmp_path / "in" / "mine.safetensors"
    local.parent.mkdir()
    local.write_bytes(safetensors_bytes())
    image, audio = http_server.url("/portrait.jpg"), http_server.url("/speech.wav")
    with pytest.raises(InputError, match="S2V_INPUT_ROOTS"):
        download_inputs.fn(image, audio, tmp_path / "w", make_settings(tmp_path), lora=str(local))
    row = download_inputs.fn(image, audio, tmp_path / "w", make_settings(tmp_path, input_roots=[local.parent]),
                             lora=str(local))
    assert row.lora_path.read_bytes() == local.read_bytes() and row.lora_path != local


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x01\x02", "2 bytes, shorter than the 8-byte header length"),
        ((10**9).to_bytes(8, "little") + b"{}", "header length 1000000000 does not fit"),
        ((2).to_bytes(8, "little") + b"[]", "the header is not a JSON object"),
        ((2).to_bytes(8, "little") + b"{}", "it holds no tensors"),
        ((64).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 99]}}'.ljust(64),
         "tensor entry 'w' is malformed or points outside the file"),
    ],
)
def test_safetensors_header_check_names_the_field(tmp_path, content, reason):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"lora='https://h.example/x.safetensors': not a safetensors file \({reason}"):
        check_safetensors(fetched(path, "lora"))


# Pose video ------------------------------------------------------------------------------------------------


def fetched(path: Path, field: str) -> FetchedInput:
    return FetchedInput(field=field, source=f"https://h.example/{path.name}", path=path, sha256="0" * 64,
                        size_bytes=path.stat().st_size, fetch_s=0.0)


def write_video(path: Path, frames: int = 6) -> Path:
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(path), (32, 32), fps=8, macro_block_size=16)
    writer.send(None)
    for index in range(frames):
        writer.send(np.full((32, 32, 3), index * 30, dtype=np.uint8).tobytes())
    writer.close()
    return path


def test_pose_video_is_downloaded_and_checked(tmp_path, http_server):
    http_server.files["pose.mp4"] = write_video(tmp_path / "pose.mp4").read_bytes()
    row = download_inputs.fn(http_server.url("/portrait.jpg"), http_server.url("/speech.wav"), tmp_path / "w",
                             make_settings(tmp_path), pose_video=http_server.url("/files/pose.mp4"))
    assert row.pose_video_path.read_bytes() == http_server.files["pose.mp4"]
    assert row.pose_video_path.is_relative_to(tmp_path / "w") and len(row.pose_video_sha256) == 64
    with pytest.raises(InputError, match=r"over the 0.0001 MB limit \(S2V_MAX_POSE_VIDEO_MB\)"):
        download_inputs.fn(http_server.url("/portrait.jpg"), http_server.url("/speech.wav"), tmp_path / "w",
                           make_settings(tmp_path, max_pose_video_mb=0.0001), pose_video=http_server.url("/files/pose.mp4"))


def test_pose_video_check_refuses_files_without_a_video(tmp_path):
    assert check_pose_video(fetched(write_video(tmp_path / "ok.mp4"), "pose_video"))[:2] == (32, 32)
    for source, reason in ((EXAMPLES / "speech_hello.wav", "not a decodable video"),
                           (EXAMPLES / "portrait_anna.jpg", "has 1 frame")):
        copy = tmp_path / source.name
        copy.write_bytes(source.read_bytes())
        with pytest.raises(InputError, match=rf"pose_video='https://h.example/{source.name}': {reason}") as caught:
            check_pose_video(fetched(copy, "pose_video"))
        assert str(tmp_path) not in str(caught.value)
