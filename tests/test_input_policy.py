"""What `s2v check` passes, the batch makes (issue 18), tried from the user's side: the RunPod handler
and the CLI as processes, the batch flow under the session's Prefect harness.

Every field that names a file goes through one input policy; a LoRA is checked by its header against
this model's DiT and a pose video by its frames before any model loads; errors speak the manifest's
words; an unreachable output is one line; output that is not a terminal keeps every value whole.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from model_runtime import estimate
from model_runtime.layout import dit_parameter_shapes
from s2v.errors import ManifestError
from s2v.settings import Settings
from tests.conftest import EXAMPLES, ROOT

PORTRAIT, SPEECH, NEWS = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav", EXAMPLES / "speech_news.flac"
SECRET_TENSOR = "secret_weights_of_the_worker"


def _clean_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S2V_", "PREFECT_", "AWS_"))}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**env, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp"), "S2V_CACHE_DIR": str(tmp_path / "cache"),
            "S2V_OUTPUT": str(tmp_path / "out"), "S2V_DEVICE": "cpu", **extra}


def _lora_for(shapes: dict, path, rank: int = 2):
    """A kohya-style LoRA on the first attention layer of the DiT whose parameter shapes are given."""
    target = next(name for name in sorted(shapes) if name.endswith("self_attn.q.weight"))
    rows, columns = shapes[target]
    layer = "diffusion_model." + target.removesuffix(".weight")
    save_file({f"{layer}.lora_up.weight": np.zeros((rows, rank), np.float32),
               f"{layer}.lora_down.weight": np.zeros((rank, columns), np.float32),
               f"{layer}.alpha": np.array(float(rank), np.float32)}, str(path))
    return path


def _bad_loras(folder, shapes: dict) -> dict:
    folder.mkdir(exist_ok=True)
    jpeg = folder / "photo.safetensors"
    jpeg.write_bytes(PORTRAIT.read_bytes())
    plain = folder / "plain.safetensors"
    save_file({SECRET_TENSOR: np.zeros((4, 4), np.float32)}, str(plain))
    other = folder / "flux.safetensors"
    save_file({"transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": np.zeros((2, 8), np.float32),
               "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight": np.zeros((8, 2), np.float32)}, str(other))
    too_big = folder / "wan14b.safetensors"
    _lora_for({name: (shape[0] * 2, shape[1]) if len(shape) == 2 else shape for name, shape in shapes.items()}, too_big)
    return {"jpeg": jpeg, "no-lora-keys": plain, "other-model": other, "other-size": too_big}


# 1. One input policy on the RunPod handler ---------------------------------------------------------

_HANDLER_PROBE = """
import json, sys
secret = sys.argv[1]
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0]))
                 if event == "open" and str(args[0]).startswith(secret) else None)
from deployments.runpod.handler import handler
replies = [handler({"id": "job", "input": json.loads(job)})["error"] for job in sys.argv[2:]]
print(json.dumps({"replies": replies, "opened": opened}))
"""


def test_handler_replies_for_lora_and_pose_video_paths_are_one_and_read_nothing(tmp_path, tiny_checkpoint):
    secret = tmp_path / "worker-files"
    secret.mkdir()
    allowed = tmp_path / "allowed"
    plain = _bad_loras(allowed, dit_parameter_shapes(Settings(checkpoint=tiny_checkpoint)))["no-lora-keys"]
    save_file({SECRET_TENSOR: np.zeros((2, 2), np.float32)}, str(secret / "present.safetensors"))
    (secret / "present.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 worker's own video")
    base = {"image_url": str(PORTRAIT), "audio_url": str(SPEECH)}
    jobs = [{**base, field: str(secret / name)} for field, name in (
        ("lora", "present.safetensors"), ("lora", "absent.safetensors"),
        ("pose_video", "present.mp4"), ("pose_video", "absent.mp4"),
    )] + [{**base, "lora": str(plain)}]
    env = _clean_env(tmp_path, S2V_CHECKPOINT=str(tiny_checkpoint), S2V_INPUT_ROOTS=f"{EXAMPLES},{allowed}")
    proc = subprocess.run([sys.executable, "-c", _HANDLER_PROBE, str(secret), *map(json.dumps, jobs)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.splitlines()[-1])
    replies = [reply.replace(job.get("lora") or job["pose_video"], "<path>") for reply, job in zip(answer["replies"], jobs)]
    assert replies[0] == replies[1] == "lora='<path>': outside the allowed input folders (S2V_INPUT_ROOTS)"
    assert replies[2] == replies[3] == "pose_video='<path>': outside the allowed input folders (S2V_INPUT_ROOTS)"
    assert replies[4].startswith("lora='<path>': holds no LoRA tensors")  # a file it may read: still no names
    assert not any(SECRET_TENSOR in reply for reply in answer["replies"])
    assert answer["opened"] == []


# 2 + 6. `s2v check` as a process, piped ---------------------------------------------------------------

_CHECK = """
import sys
from cli.main import app
try:
    app(["check", sys.argv[1]])
finally:
    sys.stderr.write("heavy: " + ",".join(m for m in ("torch", "diffsynth") if m in sys.modules) + "\\n")
"""


def test_check_marks_bad_loras_a_bad_pose_video_and_too_long_speech_without_a_model(tmp_path, tiny_checkpoint):
    settings = Settings(checkpoint=tiny_checkpoint, cache_dir=tmp_path / "cache", device="cpu")
    shapes = dit_parameter_shapes(settings)
    bad = _bad_loras(tmp_path / "loras", shapes)
    good = _lora_for(shapes, tmp_path / "loras" / "good.safetensors")
    not_video = tmp_path / "pose.mp4"
    not_video.write_text("a pose video it is not")
    # A measured speed at which the short speech fits the limit and the news does not.
    estimate.record(settings, checkpoint=tiny_checkpoint, device="cpu", frames_per_segment=16, resolution="480p",
                    generation_seconds=2.0, segments=1, sample_steps=20, guidance_scale=4.5, warm=True)
    short, long = (estimate.estimate_seconds(settings, seconds, _options()) for seconds in (1.65, 7.6))
    long_id = "row-whose-clip-id-is-far-longer-than-eighty-columns-so-a-cut-table-would-hide-it-" + "x" * 40
    rows = [("good", PORTRAIT, SPEECH, good, ""), *((name, PORTRAIT, SPEECH, path, "") for name, path in bad.items()),
            ("bad-pose", PORTRAIT, SPEECH, "", not_video), ("too-long", PORTRAIT, NEWS, "", ""),
            (long_id, PORTRAIT, SPEECH, bad["jpeg"], "")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("clip_id,image,audio,lora,pose_video\n" + "".join(f"{','.join(map(str, row))}\n" for row in rows))
    env = _clean_env(tmp_path, S2V_CHECKPOINT=str(tiny_checkpoint), S2V_GENERATION_TIMEOUT_S=str((short + long) / 2))
    started = time.monotonic()
    with open(tmp_path / "check.log", "w") as log:  # not a terminal, as `s2v check m.csv > check.log`
        proc = subprocess.run([sys.executable, "-c", _CHECK, str(manifest)], cwd=tmp_path, env=env, stdout=log,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    seconds = time.monotonic() - started
    output = (tmp_path / "check.log").read_text()
    assert proc.returncode == 1, (output, proc.stderr)
    assert proc.stderr.splitlines()[-1] == "heavy: ", proc.stderr  # no torch: no model loaded
    verdicts = {line.split("\t")[1]: line.split("\t") for line in output.splitlines() if line[:1].isdigit() and "\t" in line}
    assert set(verdicts) == {row[0] for row in rows}  # every clip id whole, one line per row
    assert verdicts["good"][2] == "ok"
    for name in (*bad, "bad-pose", "too-long", long_id):
        assert verdicts[name][2] == "bad", verdicts[name]
    problems = {name: verdicts[name][-1] for name in verdicts}
    assert problems["jpeg"] == f"row 3: lora='{bad['jpeg']}': not a safetensors file (header length {_header_length(bad['jpeg'])} does not fit a {bad['jpeg'].stat().st_size}-byte file)"
    assert "holds no LoRA tensors" in problems["no-lora-keys"] and SECRET_TENSOR not in output
    assert "matches a layer of the Wan2.2-S2V DiT" in problems["other-model"]
    assert "other shapes than this Wan2.2-S2V DiT's" in problems["other-size"]
    assert problems["bad-pose"].startswith(f"row 7: pose_video='{not_video}': not a decodable video")
    assert problems["too-long"].startswith(f"row 8: audio='{NEWS}': speech of 7.6 s needs")
    assert "(S2V_GENERATION_TIMEOUT_S)" in problems["too-long"]
    assert "…" not in output and str(tmp_path / "tmp") not in output
    print(f"s2v check of {len(rows)} rows: {seconds:.1f} s")


def _options():
    from model_runtime.request import GenerationOptions

    return GenerationOptions()


def _header_length(path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


# 4. An unreachable output is one line --------------------------------------------------------------

def test_run_to_an_unreachable_s3_endpoint_is_one_line_and_no_traceback(tmp_path, tiny_checkpoint):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image,audio\n{PORTRAIT},{SPEECH}\n")
    env = _clean_env(tmp_path, S2V_CHECKPOINT=str(tiny_checkpoint), S2V_S3_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                     AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                     S2V_LOCAL_API_DIR=str(tmp_path / "no-api"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    proc = subprocess.run([sys.executable, "-c", "from cli.main import app; app()", "run", str(manifest), "--output", "s3://bucket/x"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot reach the output s3://bucket/x after 3 tries: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "no-api").exists()  # stopped before Prefect was asked for anything


# 5. Manifests read as what they are -----------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"", "the manifest is empty"),
    (b"\xef\xbb\xbf", "the manifest is empty"),
    (b"image,audio", "no rows, only a header"),
    (b"https://127.0.0.1:9/elsewhere.csv\n", "missing column(s) image, audio"),
])
def test_a_manifest_file_is_read_as_its_content_never_as_a_location(tmp_path, content, message):
    from pathlib import Path

    from records.manifest import parse_manifest

    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(ManifestError) as err:
        parse_manifest(Path(manifest), settings=Settings(cache_dir=tmp_path / "cache", local_inputs=True))
    assert message in str(err.value)


# 2 + 3. The batch: refused before the model, errors in the manifest's words ------------------------

@pytest.mark.slow
def test_batch_refuses_bad_files_and_long_speech_before_the_model_in_the_manifests_words(
    prefect_harness, s2v_env, tmp_path, monkeypatch, tiny_checkpoint, http_server,
):
    from flows.batch import batch
    from records.ledger import load_ledger

    settings = Settings(checkpoint=tiny_checkpoint, cache_dir=tmp_path / "cache", device="cpu")
    plain = _bad_loras(tmp_path / "loras", dit_parameter_shapes(settings))["no-lora-keys"]
    empty, noise = tmp_path / "empty.wav", tmp_path / "noise.wav"
    empty.write_bytes(b"")
    noise.write_bytes(os.urandom(4096))
    estimate.record(settings, checkpoint=tiny_checkpoint, device="cpu", frames_per_segment=16, resolution="480p",
                    generation_seconds=2.0, segments=1, sample_steps=20, guidance_scale=4.5, warm=True)
    monkeypatch.setenv("S2V_GENERATION_TIMEOUT_S", str(estimate.estimate_seconds(settings, 7.6, _options()) / 2))
    http_server.files["plain.safetensors"] = plain.read_bytes()
    monkeypatch.setenv("S2V_ALLOWED_HOSTS", "127.0.0.1")
    remote = http_server.url("/files/plain.safetensors?X-Amz-Signature=s3cr3t")
    rows = {"not-a-lora": (SPEECH, plain), "empty-wav": (empty, ""), "noise-wav": (noise, ""), "too-long": (NEWS, ""),
            "remote-not-a-lora": (SPEECH, remote)}
    manifest = "clip_id,image,audio,lora\n" + "".join(f"{name},{PORTRAIT},{audio},{lora}\n" for name, (audio, lora) in rows.items())
    batch(manifest=manifest, output=str(tmp_path / "out"), return_state=True)
    records = {record.clip_id: record for record in load_ledger(str(tmp_path / "out"), settings).latest().values()}
    assert set(records) == set(rows)
    for number, name in enumerate(rows, start=2):
        record = records[name]
        assert record.status == "failed" and record.error.startswith(f"row {number}: "), record.error
        assert str(tmp_path / "cache") not in record.error and "Error)" not in record.error, record.error
        assert record.encode_s is None  # refused before the encoder (and the model) was asked
    assert records["not-a-lora"].error == f"row 2: lora='{plain}': holds no LoRA tensors (lora_up/lora_down, lora_A/lora_B or .diff keys)"
    assert records["not-a-lora"].download_s is None  # the parse stage, not after the rows ahead of it
    assert records["empty-wav"].error == f"row 3: audio='{empty}': not decodable audio (the file is empty)"
    assert records["noise-wav"].error.startswith(f"row 4: audio='{noise}': not decodable audio (")
    assert records["too-long"].error.startswith(f"row 5: audio='{NEWS}': speech of 7.6 s needs")
    # Checked in the download stage, from the LoRA cache, and named by its URL without the signature.
    assert records["remote-not-a-lora"].error.startswith("row 6: lora='http://127.0.0.1:")
    assert "X-Amz-Signature=REDACTED'" in records["remote-not-a-lora"].error and "holds no LoRA tensors" in records["remote-not-a-lora"].error


@pytest.mark.slow
def test_nightly_with_its_output_down_leaves_every_manifest_in_the_inbox(prefect_harness, s2v_env, tmp_path, monkeypatch):
    from flows.nightly import nightly

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"S2V_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "monday.csv").write_text(f"clip_id,image,audio\nmon,{PORTRAIT},{SPEECH}\n")
    state = nightly(inbox=str(inbox), output="s3://videos/nightly", return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"^cannot reach the output s3://videos/nightly after 3 tries: Could not connect"):
        state.result()
    assert [path.name for path in inbox.iterdir()] == ["monday.csv"]  # not claimed, not failed/


# 7. Kept manifests hold no credentials ------------------------------------------------------------

@pytest.mark.slow
def test_kept_manifests_hold_no_credentials_and_a_retry_says_what_it_needs(prefect_harness, s2v_env, tmp_path):
    from flows.batch import batch, retry_failed
    from flows.row import row
    from records.ledger import load_ledger

    # Loopback is refused (not in S2V_ALLOWED_HOSTS): the rows fail at once, without the network.
    signed = "https://ann:hunter2@127.0.0.1:9/a.jpg?X-Amz-Signature=s3cr3t&X-Amz-Expires=60&variant=7"
    manifest = f"clip_id,image,audio\nsigned,{signed},{SPEECH}\n"
    out = tmp_path / "out"
    batch(manifest=manifest, output=str(out), return_state=True)
    kept = next((out / "manifests").glob("*.csv"))
    text = kept.read_text()
    assert "hunter2" not in text and "s3cr3t" not in text
    assert "https://***@127.0.0.1:9/a.jpg?X-Amz-Signature=REDACTED&X-Amz-Expires=REDACTED&variant=7" in text

    retry_failed(output=str(out), return_state=True)
    latest = load_ledger(str(out), Settings(cache_dir=tmp_path / "cache")).latest()["signed"]
    assert latest.error.startswith("row 2: image='https://***@127.0.0.1:9/a.jpg?X-Amz-Signature=REDACTED")
    assert "credentials were not kept" in latest.error and "s2v run" in latest.error

    # A row run of the fleet gets the row's URLs from its parent: it fetches them, not the kept copy.
    row(output=str(out), manifest=kept.stem, clip_id="signed", files={"image": signed}, return_state=True)
    latest = load_ledger(str(out), Settings(cache_dir=tmp_path / "cache")).latest()["signed"]
    assert "loopback" in latest.error and "credentials were not kept" not in latest.error
    assert "hunter2" not in latest.error and "s3cr3t" not in latest.error
