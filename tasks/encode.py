"""audio-encode stage: wav2vec2 features of the speech, saved next to the inputs."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from prefect import task

from s2v.settings import Settings


@task(name="encode-audio", task_run_name="encode-audio-{clip_id}")
def encode_audio(clip_id: str, audio_path: Path, settings: Settings) -> dict:
    """Returns {"features": AudioFeatures record, "seconds": float}. No Prefect retries: the model (or its
    server, whose client has its own timeouts) fails for reasons a retry would not change."""
    from model_runtime.client import runtime_for

    started = time.perf_counter()
    # Beside the input, in a subfolder: the input's content folder holds the input file alone.
    checkpoint = hashlib.sha256(str(settings.checkpoint or "tiny").encode()).hexdigest()[:8]
    out = Path(audio_path).parent / "derived" / f"{Path(audio_path).name}.wav2vec2-{checkpoint}.safetensors"
    features = runtime_for(settings).encode_audio(Path(audio_path), out)
    return {"features": features, "seconds": time.perf_counter() - started}
