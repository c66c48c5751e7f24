"""Opt-in: the real Wan2.2-S2V-14B checkpoint on a CUDA GPU. Set S2V_REAL_CHECKPOINT to its folder."""
import os
from pathlib import Path

import pytest

REAL = os.environ.get("S2V_REAL_CHECKPOINT")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not REAL, reason="S2V_REAL_CHECKPOINT is not set (real weights are opt-in)"),
]


def test_real_checkpoint_makes_a_480p_clip(tmp_path, portrait, short_speech):
    if not _cuda():
        pytest.skip("no CUDA GPU visible")
    from model_runtime.request import GenerationRequest
    from model_runtime.service import InProcessRuntime
    from model_runtime.video import probe
    from s2v.settings import Settings

    runtime = InProcessRuntime(Settings(checkpoint=Path(REAL), device="cuda"))
    request = GenerationRequest.parse({"image_path": portrait, "audio_path": short_speech, "sample_steps": 15, "seed": 0})
    result = runtime.generate(request, tmp_path / "real.mp4")
    info = probe(result.video_path)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert result.width * result.height <= 399_360 and not result.tiny_checkpoint
