"""Storage against real servers on loopback: a threaded http.server and moto's S3 server."""
from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from s2v.errors import InputError, TransientError
from s2v.settings import Settings, load_settings
from s2v.storage import http_guard
from s2v.storage.fetch import FetchedInput, fetch_input, read_text
from s2v.storage.outputs import filesystem, put_output
from s2v.storage.redaction import redact
from s2v.storage.s3 import s3_filesystem
from s2v.storage.transient import is_transient, retry_on_transient
from tests.conftest import EXAMPLES
from tests.servers import PORTRAIT, SECRET, SPEECH, FileServer


def make_settings(tmp_path: Path, **overrides) -> Settings:
    values = {"cache_dir": tmp_path / "cache", "allowed_hosts": ["127.0.0.1"], "download_timeout_s": 10.0,
              "local_inputs": True}
    return load_settings(**{**values, **overrides})


# Local paths -------------------------------------------------------------------------------------


def test_local_file_is_stored_once_under_its_content_hash(tmp_path):
    settings = make_settings(tmp_path)
    copy = tmp_path / "again.jpg"
    copy.write_bytes(PORTRAIT)
    first = fetch_input(str(EXAMPLES / "portrait_anna.jpg"), tmp_path / "work", "image", settings)
    second = fetch_input(f"file://{copy}", tmp_path / "work", "image", settings)
    digest = hashlib.sha256(PORTRAIT).hexdigest()
    assert first.sha256 == second.sha256 == digest
    assert first.path == second.path == tmp_path / "work" / digest[:16] / "portrait_anna.jpg"
    assert first.path.read_bytes() == PORTRAIT and first.size_bytes == len(PORTRAIT)
    assert [p.name for p in (tmp_path / "work" / ".incoming").iterdir()] == []


def test_local_paths_outside_input_roots_are_refused(tmp_path):
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir(), outside.mkdir()
    (inside / "a.jpg").write_bytes(PORTRAIT)
    (outside / "b.jpg").write_bytes(PORTRAIT)
    (inside / "escape.jpg").symlink_to(outside / "b.jpg")
    settings = make_settings(tmp_path, input_roots=[inside])
    assert fetch_input(str(inside / "a.jpg"), tmp_path / "work", "image", settings).size_bytes == len(PORTRAIT)
    for path in (outside / "b.jpg", inside / "escape.jpg", inside / ".." / "outside" / "b.jpg"):
        with pytest.raises(InputError, match="outside the allowed input folders"):
            fetch_input(str(path), tmp_path / "work", "image", settings)


def test_input_roots_restrict_local_paths_even_with_local_inputs(tmp_path):
    inside = tmp_path / "inside"
    inside.mkdir()
    settings = make_settings(tmp_path, input_roots=[inside], local_inputs=True)
    with pytest.raises(InputError, match="outside the allowed input folders"):
        fetch_input(str(EXAMPLES / "portrait_anna.jpg"), tmp_path / "work", "image", settings)


class FileAccess:
    """Records every open/stat/realpath of a path under `probe`, to prove a refusal touched nothing."""

    def __init__(self, monkeypatch, probe: str):
        import builtins
        import io

        self.calls: list[tuple[str, str]] = []
        for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat"),
                            (os.path, "realpath"), (os.path, "exists")):
            monkeypatch.setattr(owner, name, self._recording(name, getattr(owner, name), probe))

    def _recording(self, name, real, probe):
        def call(path, *args, **kwargs):
            if probe in str(path):
                self.calls.append((name, str(path)))
            return real(path, *args, **kwargs)

        return call


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_local_paths_are_refused_unless_allowed_without_touching_them(tmp_path, monkeypatch, scheme):
    settings = make_settings(tmp_path, local_inputs=False)
    existing, missing = f"{scheme}/etc/hostname", f"{scheme}/etc/no-such-file-s2v"
    access = FileAccess(monkeypatch, "/etc/")
    replies = []
    for uri in (existing, missing):
        with pytest.raises(InputError, match="S2V_INPUT_ROOTS") as caught:
            fetch_input(uri, tmp_path / "work", "image", settings)
        replies.append(str(caught.value).replace(uri, "<uri>"))
        with pytest.raises(InputError, match="S2V_INPUT_ROOTS"):
            read_text(uri, settings)
    assert replies[0] == replies[1]  # whether the file exists is not revealed
    assert access.calls == []


def test_local_inputs_accepts_local_paths_anywhere(tmp_path):
    settings = make_settings(tmp_path, local_inputs=True)
    assert fetch_input(str(EXAMPLES / "speech_hello.wav"), tmp_path / "w", "audio", settings).path.read_bytes() == SPEECH
    assert read_text(f"file://{EXAMPLES / 'manifest.csv'}", settings).startswith("clip_id,")


def test_missing_folder_and_oversized_local_files_are_input_errors(tmp_path):
    settings = make_settings(tmp_path, max_image_mb=0.001)
    with pytest.raises(InputError, match="file not found") as missing:
        fetch_input(str(tmp_path / "nope.jpg"), tmp_path / "work", "image", settings)
    assert missing.value.field == "image"
    with pytest.raises(InputError, match="is a folder"):
        fetch_input(str(tmp_path), tmp_path / "work", "image", settings)
    with pytest.raises(InputError, match=r"over the 0.001 MB limit \(S2V_MAX_IMAGE_MB\)"):
        fetch_input(str(EXAMPLES / "portrait_anna.jpg"), tmp_path / "work", "image", settings)


@pytest.mark.parametrize("uri", ["ftp://example.com/a.jpg", "gopher://example.com/a", "data:image/png;base64,AAAA"])
def test_other_schemes_are_refused(tmp_path, uri):
    with pytest.raises(InputError, match="unsupported scheme"):
        fetch_input(uri, tmp_path / "work", "image", make_settings(tmp_path))


# HTTP ------------------------------------------------------------------------------------------------


def test_http_download_and_relative_redirect(tmp_path, http_server):
    settings = make_settings(tmp_path)
    fetched = fetch_input(http_server.url("/redirect-relative"), tmp_path / "work", "image", settings)
    assert fetched.path.read_bytes() == PORTRAIT
    assert fetched.path.name == "redirect-relative"
    assert http_server.hits["/portrait.jpg"] >= 1


def test_http_404_is_an_input_error_and_not_retried(tmp_path, http_server):
    with pytest.raises(InputError, match=r"not found \(HTTP 404\)") as caught:
        fetch_input(http_server.url("/gone-404.jpg"), tmp_path / "work", "image", make_settings(tmp_path))
    assert not is_transient(caught.value)
    assert http_server.hits["/gone-404.jpg"] == 1


def test_http_503_is_transient(tmp_path, http_server):
    http_server.hits.pop("/flaky.wav", None)
    with pytest.raises(TransientError, match="HTTP 503"):
        fetch_input(http_server.url("/flaky.wav"), tmp_path / "work", "audio", make_settings(tmp_path))


def test_http_size_limit_uses_content_length_and_counts_unsized_bodies(tmp_path, http_server):
    settings = make_settings(tmp_path, max_audio_mb=1)
    with pytest.raises(InputError, match=r"3 MB is over the 1 MB limit"):
        fetch_input(http_server.url("/big.wav"), tmp_path / "work", "audio", settings)
    with pytest.raises(InputError, match=r"larger than the 1 MB limit \(S2V_MAX_AUDIO_MB\)"):
        fetch_input(http_server.url("/big-unsized.wav"), tmp_path / "work", "audio", settings)
    assert list((tmp_path / "work" / ".incoming").iterdir()) == []
    assert [p for p in (tmp_path / "work").iterdir() if p.name != ".incoming"] == []


def test_http_timeout_is_transient(tmp_path, http_server):
    settings = make_settings(tmp_path, download_timeout_s=0.5)
    with pytest.raises(TransientError, match=r"not finished within 0.5 s \(S2V_DOWNLOAD_TIMEOUT_S=0.5 s") as caught:
        fetch_input(http_server.url("/slow.wav"), tmp_path / "work", "audio", settings)
    assert is_transient(caught.value)


def test_connection_refused_is_transient_and_redacted(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://user:{SECRET}@127.0.0.1:{port}/a.wav?X-Amz-Signature={SECRET}"
    with pytest.raises(TransientError) as caught:
        fetch_input(uri, tmp_path / "work", "audio", make_settings(tmp_path))
    assert SECRET not in str(caught.value)
    assert is_transient(caught.value)


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("2130706433", "loopback"),  # 127.0.0.1 written as one number
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
    ],
)
def test_private_addresses_are_refused_without_contact(tmp_path, http_server, host, kind):
    before = sum(http_server.hits.values())
    with pytest.raises(InputError, match=f"resolves to a {kind}"):
        fetch_input(http_server.url("/portrait.jpg", host=host), tmp_path / "work", "image",
                    make_settings(tmp_path, allowed_hosts=[]))
    assert sum(http_server.hits.values()) == before


def test_allowlisted_host_works_and_redirect_to_private_host_is_refused(tmp_path, http_server):
    settings = make_settings(tmp_path, allowed_hosts=["127.0.0.1"])
    assert fetch_input(http_server.url("/portrait.jpg"), tmp_path / "w", "image", settings).size_bytes == len(PORTRAIT)
    with pytest.raises(InputError, match="resolves to a loopback"):
        fetch_input(http_server.url("/redirect-private"), tmp_path / "w", "image", settings)


def test_connection_goes_to_the_checked_address(tmp_path, http_server, monkeypatch):
    """DNS is asked once; the request is sent to that address with the original Host header, so a
    second, different DNS answer (rebinding) cannot redirect it."""
    real_getaddrinfo = socket.getaddrinfo
    lookups = []

    def fake_getaddrinfo(host, *args, **kwargs):
        if host == "media.example.test":
            lookups.append(host)
            return real_getaddrinfo("127.0.0.1", *args, **kwargs)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    # Treat loopback as public here: only this way can a pinned request reach a loopback server.
    monkeypatch.setattr(http_guard, "_non_public_kind", lambda address: None)
    fetched = fetch_input(http_server.url("/portrait.jpg", host="media.example.test"), tmp_path / "w", "image",
                          make_settings(tmp_path, allowed_hosts=[]))
    assert fetched.path.read_bytes() == PORTRAIT
    assert lookups == ["media.example.test"]
    assert http_server.hosts[-1] == f"media.example.test:{http_server.port}"


def test_credentials_never_reach_errors_or_records(tmp_path, http_server):
    settings = make_settings(tmp_path)
    signed = http_server.url("/signed.jpg").replace("http://", f"http://reader:{SECRET}@")
    signed += f"?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SECRET}"
    with pytest.raises(InputError, match="access denied") as caught:
        fetch_input(signed, tmp_path / "w", "image", settings)
    assert SECRET not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)
    assert "X-Amz-Signature=REDACTED" in str(caught.value)
    ok = http_server.url("/portrait.jpg").replace("http://", f"http://reader:{SECRET}@") + f"?token={SECRET}"
    record = fetch_input(ok, tmp_path / "w", "image", settings)
    assert SECRET not in record.model_dump_json()


def test_http_client_logs_are_redacted(tmp_path, http_server, caplog):
    caplog.set_level("INFO", logger="httpx")
    fetch_input(http_server.url("/portrait.jpg") + f"?X-Amz-Signature={SECRET}", tmp_path / "w", "image", make_settings(tmp_path))
    assert "HTTP Request: GET" in caplog.text and "X-Amz-Signature=REDACTED" in caplog.text
    assert SECRET not in caplog.text


def test_redact():
    assert redact(f"https://u:{SECRET}@h.example/a/b.jpg?X-Amz-Signature={SECRET}&v=2#frag") == (
        "https://***@h.example/a/b.jpg?X-Amz-Signature=REDACTED&v=REDACTED"
    )
    assert redact(f"https://h.example/a.jpg?{SECRET}") == "https://h.example/a.jpg?REDACTED"
    assert redact("/data/in/a.jpg") == "/data/in/a.jpg"
    assert redact("s3://bucket/key.wav") == "s3://bucket/key.wav"


def test_read_text_over_http_decodes_bom(tmp_path, http_server, monkeypatch):
    monkeypatch.setattr(FileServer, "route", lambda self, handler, path: self.send(handler, 200, "\ufeffimage,audio\n".encode()))
    assert read_text(http_server.url("/manifest.csv"), make_settings(tmp_path)) == "image,audio\n"


# Transient or not --------------------------------------------------------------------------------------


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_is_transient_classifies_wrapped_service_errors():
    assert is_transient(client_error("SlowDown", 503))
    assert is_transient(client_error("InternalError", 500))
    assert not is_transient(client_error("NoSuchKey", 404))
    assert not is_transient(client_error("AccessDenied", 403))
    wrapped = OSError(5, "InternalError")  # how s3fs reports a 500
    wrapped.__cause__ = client_error("InternalError", 500)
    assert is_transient(wrapped)
    try:
        try:
            raise client_error("SlowDown", 503)
        except ClientError:
            raise RuntimeError("Failed to upload") from None  # context suppressed: the wrapper decides
    except RuntimeError as exc:
        assert not is_transient(exc)
    assert is_transient(httpx.ConnectError("refused"))
    assert not is_transient(InputError("image", "x", "bad"))


def test_retry_condition_reads_the_failed_state():
    from prefect.states import Completed, Failed

    assert retry_on_transient(None, None, Failed(data=TransientError("HTTP 503")))
    assert not retry_on_transient(None, None, Failed(data=InputError("audio", "x", "not found")))
    assert not retry_on_transient(None, None, Completed(data=1))


# S3 / R2 ------------------------------------------------------------------------------------------------


def test_s3_inputs_are_read_with_the_endpoint(tmp_path, s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket="media-in", Key="clips/speech.wav", Body=SPEECH)
    settings = make_settings(tmp_path, s3_endpoint_url=s3_endpoint)
    fetched = fetch_input("s3://media-in/clips/speech.wav", tmp_path / "w", "audio", settings)
    assert fetched.sha256 == hashlib.sha256(SPEECH).hexdigest() and fetched.path.name == "speech.wav"
    with pytest.raises(InputError, match="not found"):
        fetch_input("s3://media-in/clips/none.wav", tmp_path / "w", "audio", settings)
    with pytest.raises(InputError, match="over the 0.01 MB limit"):
        fetch_input("s3://media-in/clips/speech.wav", tmp_path / "w", "audio", make_settings(
            tmp_path, s3_endpoint_url=s3_endpoint, max_audio_mb=0.01))
    with pytest.raises(TransientError, match="S2V_DOWNLOAD_TIMEOUT_S"):  # the deadline holds for S3 reads too
        fetch_input("s3://media-in/clips/speech.wav", tmp_path / "w", "audio", settings, deadline=time.monotonic())
    fs = s3_filesystem(settings)
    assert fs.s3.meta.config.request_checksum_calculation == "when_required"


def test_s3_client_carries_r2_checksum_settings_and_leaves_retries_to_prefect(tmp_path):
    fs = s3_filesystem(make_settings(tmp_path, s3_endpoint_url="https://acct.r2.cloudflarestorage.com"))
    fs.connect()
    client = fs.s3
    assert fs.retries == 1 and client.meta.config.retries["total_max_attempts"] == 1
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    assert client.meta.config.signature_version == "s3v4"
    assert client.meta.endpoint_url == "https://acct.r2.cloudflarestorage.com"


def test_put_output_to_s3_sets_content_type_and_presigns(tmp_path, s3_endpoint):
    sent_headers = []
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0\0\0\x18ftypmp42" + b"x" * 1000)
    settings = make_settings(tmp_path, s3_endpoint_url=s3_endpoint)
    fs, _ = filesystem("s3://media-out/batch-1", settings)  # fsspec hands put_output this same instance
    fs.connect()
    fs.s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent_headers.append(dict(request.headers)))
    url = put_output(video, "s3://media-out/batch-1", "clips/a.mp4", settings)
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(Bucket="media-out", Key="batch-1/clips/a.mp4")
    assert head["ContentType"] == "video/mp4"
    assert "X-Amz-Signature=" in url and url.startswith(f"{s3_endpoint}/media-out/batch-1/clips/a.mp4")
    assert httpx.get(url).content == video.read_bytes()
    # R2 rejects uploads with the checksums boto3 sends by default.
    assert sent_headers and not any(name.lower().startswith("x-amz-checksum") for name in sent_headers[0])


def test_put_output_refuses_unsafe_keys(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    for key in ("../escape.mp4", "/abs.mp4", "a/../../b.mp4", "", "a b.mp4"):
        with pytest.raises(InputError, match="relative path"):
            put_output(video, str(tmp_path / "out"), key, make_settings(tmp_path))


def test_big_outputs_go_multipart(tmp_path, s3_endpoint):
    video = tmp_path / "long.mp4"
    video.write_bytes(b"v" * (11 * 1024 * 1024))
    settings = make_settings(tmp_path, s3_endpoint_url=s3_endpoint, public_base_url="https://cdn.example.com")
    url = put_output(video, "s3://media-out/batch-2", "long.mp4", settings, part_bytes=5 * 1024 * 1024)
    assert url == "https://cdn.example.com/batch-2/long.mp4"
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(Bucket="media-out", Key="batch-2/long.mp4")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["ContentLength"] == video.stat().st_size and head["ContentType"] == "video/mp4"


def test_put_output_to_a_local_folder(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"video")
    url = put_output(video, str(tmp_path / "out"), "b1/clip.mp4", make_settings(tmp_path))
    assert url == str((tmp_path / "out" / "b1" / "clip.mp4").resolve())
    assert Path(url).read_bytes() == b"video"
    assert [p.name for p in (tmp_path / "out" / "b1").iterdir()] == ["clip.mp4"]
    public = make_settings(tmp_path, public_base_url="https://videos.example.com")
    assert put_output(video, str(tmp_path / "out"), "b1/clip.mp4", public) == "https://videos.example.com/b1/clip.mp4"


# Through Prefect's retry machinery -----------------------------------------------------------------------


def test_download_task_retries_503_once_then_succeeds(tmp_path, http_server, prefect_harness):
    from prefect import flow

    from tasks.download import download_inputs

    http_server.hits.pop("/flaky.wav", None)
    settings = make_settings(tmp_path)

    @flow
    def fetch_row():
        fast = download_inputs.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
        return fast(http_server.url("/portrait.jpg"), http_server.url("/flaky.wav"), tmp_path / "w", settings)

    result = fetch_row()
    assert http_server.hits["/flaky.wav"] == 2
    assert result.audio_path.read_bytes() == SPEECH
    assert result.image_width > 0 and result.audio_s == pytest.approx(4.925, abs=0.01)


def test_download_task_does_not_retry_404(tmp_path, http_server, prefect_harness):
    from prefect import flow

    from tasks.download import download_inputs

    settings = make_settings(tmp_path)

    @flow
    def fetch_row():
        fast = download_inputs.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
        return fast(http_server.url("/portrait.jpg"), http_server.url("/missing-speech.wav"), tmp_path / "w", settings)

    with pytest.raises(InputError, match="404"):
        fetch_row()
    assert http_server.hits["/missing-speech.wav"] == 1


def test_upload_task_returns_presigned_urls(tmp_path, s3_endpoint, prefect_harness):
    from prefect import flow

    from tasks.upload import upload_video

    video, poster = tmp_path / "clip.mp4", tmp_path / "clip.jpg"
    video.write_bytes(b"video bytes")
    poster.write_bytes(b"jpeg bytes")
    settings = make_settings(tmp_path, s3_endpoint_url=s3_endpoint)

    @flow
    def upload():
        return upload_video({"clip.mp4": (video, "video/mp4"), "clip.poster.jpg": (poster, "image/jpeg")},
                            output="s3://media-out/task", settings=settings)

    urls = upload()
    assert httpx.get(urls["clip.mp4"]).content == b"video bytes"
    assert httpx.get(urls["clip.poster.jpg"]).headers["content-type"] == "image/jpeg"


# Decode checks of the download stage ------------------------------------------------------------------------


def fetched(path: Path, field: str) -> FetchedInput:
    return FetchedInput(field=field, source=f"https://h.example/{path.name}", path=path, sha256="0" * 64,
                                size_bytes=path.stat().st_size, fetch_s=0.0)


def test_audio_checks_name_the_source_and_the_reason(tmp_path):
    import numpy as np
    import soundfile

    from records.media_checks import check_audio

    assert check_audio(fetched(EXAMPLES / "speech_news.flac", "audio"), 600) == (pytest.approx(7.573, abs=0.01), 16000)
    blip = tmp_path / "blip.wav"
    soundfile.write(blip, np.zeros(800, dtype="float32"), 16000)  # 0.05 s
    with pytest.raises(InputError, match=r"audio='https://h.example/blip.wav': audio is 0.05 s long"):
        check_audio(fetched(blip, "audio"), 600)
    with pytest.raises(InputError, match=r"the limit is 2 s \(S2V_MAX_AUDIO_SECONDS\)"):
        check_audio(fetched(EXAMPLES / "speech_hello.wav", "audio"), 2)
    noise = tmp_path / "noise.wav"
    noise.write_bytes(b"this is not audio at all" * 50)
    with pytest.raises(InputError, match="not decodable audio"):
        check_audio(fetched(noise, "audio"), 600)


def test_image_check_names_the_source(tmp_path):
    from records.media_checks import check_image

    assert check_image(fetched(EXAMPLES / "portrait_ben.png", "image"))[0] > 0
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"GIF89a but not really")
    with pytest.raises(InputError, match=r"image='https://h.example/fake.jpg': not a decodable image") as caught:
        check_image(fetched(fake, "image"))
    assert str(tmp_path) not in str(caught.value)  # the work-folder copy is internal; the source is named
