"""The quality checks inside the batch: the portrait refused before the GPU, every made clip checked,
the results in the ledger, and `retry --flagged` remaking flagged clips with a new seed."""
import pytest
from PIL import Image

from flows.batch import batch
from flows.retry_flagged import retry_flagged
from records.ledger import load_ledger
from s2v.settings import load_settings
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.slow
skimage_data = pytest.importorskip("skimage.data")


def test_refused_portrait_fails_up_front_and_a_noise_clip_is_flagged_then_remade(prefect_harness, s2v_env, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("S2V_FACE_CHECK", "refuse")
    astronaut, coffee = tmp_path / "astronaut.png", tmp_path / "coffee.png"
    Image.fromarray(skimage_data.astronaut()).save(astronaut)
    Image.fromarray(skimage_data.coffee()).save(coffee)
    speech = EXAMPLES / "speech_short.wav"
    manifest = f"clip_id,image,audio,sample_steps,seed\nface,{astronaut},{speech},15,7\ncup,{coffee},{speech},15,7\n"
    out = tmp_path / "out"

    state = batch(manifest=manifest, output=str(out), return_state=True)
    summary = state.result(raise_on_failure=False).summary  # one row refused: a Partial run, Failed with its summary
    latest = load_ledger(str(out), load_settings()).latest()
    cup, face = latest["cup"], latest["face"]
    assert cup.status == "failed" and cup.generate_s is None  # refused before any model work
    assert cup.error.startswith(f"row 3: image='{coffee}': no face found")
    assert cup.qc_portrait_faces is None  # a refused portrait has no record of a video's checks
    assert face.status == "succeeded" and (face.qc_portrait_faces, face.qc_portrait) == (1, None)
    # The tiny checkpoint makes coloured noise: no face in any frame, so the clip is flagged.
    assert face.qc_face_frames == 0.0 and face.qc_flags.startswith("a face in 0% of sampled frames")
    assert face.qc_s > 0 and face.qc_error is None
    assert [r["clip_id"] for r in summary["records"] if r.get("qc_flags")] == ["face"]

    retry_flagged(output=str(out))
    records = load_ledger(str(out), load_settings()).records
    remade = [record for record in records if record.clip_id == "face"]
    assert len(remade) == 2 and remade[-1].status == "succeeded" and remade[-1].seed != 7
    assert remade[-1].attempts == 2 and remade[-1].qc_flags  # still noise, still flagged


def test_the_clip_check_runs_beside_the_next_generation_not_before_it(prefect_harness, s2v_env, tmp_path,
                                                                      monkeypatch):
    """The first row's clip check holds until the second row's generation has started: were the check in
    the generations' path, the second would never start and the check would give up after its wait."""
    import threading

    from model_runtime.service import InProcessRuntime
    from s2v.quality import clip as clip_check

    second_generation = threading.Event()
    generations = []
    real_generate, real_check = InProcessRuntime.generate, clip_check.check_clip

    def counted_generate(self, request, out, **kwargs):
        generations.append(out)
        if len(generations) == 2:
            second_generation.set()
        return real_generate(self, request, out, **kwargs)

    def held_check(video, portrait=None):
        if "first" in str(video) and not second_generation.wait(timeout=240):
            raise RuntimeError("the next row's generation never started while this clip was checked")
        return real_check(video, portrait)

    monkeypatch.setattr(InProcessRuntime, "generate", counted_generate)
    monkeypatch.setattr(clip_check, "check_clip", held_check)
    speech = EXAMPLES / "speech_short.wav"
    portrait = EXAMPLES / "portrait_anna.jpg"
    manifest = f"clip_id,image,audio,sample_steps\nfirst,{portrait},{speech},15\nsecond,{portrait},{speech},15\n"
    batch(manifest=manifest, output=str(tmp_path / "out"))
    latest = load_ledger(str(tmp_path / "out"), load_settings()).latest()
    assert latest["first"].status == latest["second"].status == "succeeded"
    # The check ran to its end (no qc_error): the second generation started while the first clip was checked.
    assert latest["first"].qc_error is None and latest["first"].qc_face_frames is not None
    assert second_generation.is_set() and len(generations) == 2
