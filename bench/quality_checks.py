"""What the quality checks cost per clip on this machine's CPU (one thread, as they run beside the GPU).

It makes a talking clip of the astronaut (scikit-image) at the 480p preset's portrait size (480 x 832,
16 fps) whose mouth moves with the example speech, repeated to --seconds, then times, as medians of
--repeats runs: the portrait preflight (one picture) and the clip check (frames decoded, a face found
every half second, mouth motion against the loudness). Prints seconds per clip and per second of video.

    .venv/bin/python bench/quality_checks.py [--seconds 20] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from s2v.quality.clip import check_clip, speech_of  # noqa: E402
from s2v.quality.portrait import check_portrait  # noqa: E402
from tests.talking_clips import astronaut, make_talking_clip  # noqa: E402

SIZE = (480, 832)  # the 480p preset's area for a portrait picture (width, height)


def timed(work, repeats: int) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the clip checked")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s2v-bench-qc-") as folder:
        work = Path(folder)
        portrait = work / "portrait.png"
        picture = np.asarray(ImageOps.fit(Image.fromarray(astronaut()), SIZE))
        Image.fromarray(picture).save(portrait)
        speech = work / "speech.wav"
        one = speech_of(ROOT / "examples" / "speech_hello.wav")
        repeats = int(np.ceil(args.seconds * 16000 / len(one)))
        soundfile.write(speech, np.tile(one, repeats)[: int(args.seconds * 16000)], 16000)
        clip = make_talking_clip(work / "clip.mp4", speech, picture=picture)

        preflight_s, found = timed(lambda: check_portrait(portrait), args.repeats)
        check_s, result = timed(lambda: check_clip(clip, portrait), args.repeats)
    print(f"portrait preflight: {preflight_s:.3f} s per picture (found: {found.summary()})")
    print(f"clip check: {check_s:.2f} s per clip of {args.seconds:g} s at {SIZE[0]}x{SIZE[1]}, 16 fps "
          f"({check_s / args.seconds:.3f} s per second of video; median of {args.repeats})")
    print(f"  its verdict: face in {result.face_frames:.0%} of sampled frames, mouth score {result.mouth_sync}, "
          f"flags: {result.flags or 'none'}")


if __name__ == "__main__":
    main()
