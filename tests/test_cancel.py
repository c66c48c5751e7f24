"""Stopping a generation: `cancel` on the model server, a client that leaves, should_stop and Ctrl-C.

On the tiny checkpoint a denoising step takes ~0.04 s and a segment (one second of speech) about a
second, so speech_news (8 segments) leaves time to stop a job after its first segment is reported.
"""
import json
import re
import socket
from pathlib import Path

import pytest

from model_runtime import interrupt
from model_runtime.client import ModelServerClient, ServerRuntime
from model_runtime.protocol import GenerateCall
from model_runtime.request import GenerationRequest
from s2v.errors import GenerationCancelled, InputError
from s2v.settings import Settings
from tests.conftest import EXAMPLES
from tests.test_server import _wait_for, module_server_settings, running_server

pytestmark = pytest.mark.slow

PORTRAIT = EXAMPLES / "portrait_anna.jpg"
LONG_SPEECH = EXAMPLES / "speech_news.flac"
SHORT_SPEECH = EXAMPLES / "speech_short.wav"


@pytest.fixture(scope="module")
def settings(tiny_checkpoint, tmp_path_factory):
    yield from module_server_settings(tiny_checkpoint, tmp_path_factory, "c.sock")


@pytest.fixture(scope="module")
def server(settings, tmp_path_factory):
    """(socket path, log path) of the module's server; the tests leave it serving."""
    log = tmp_path_factory.mktemp("log") / "server.log"
    with running_server(settings, log):
        yield settings.model_server, log


def _request(audio: Path = LONG_SPEECH, **overrides) -> GenerationRequest:
    return GenerationRequest.parse({"image_path": PORTRAIT, "audio_path": audio, "sample_steps": 15, "seed": 0, **overrides})


def _start_job(socket_path: Path, job_id: str, out: Path) -> tuple[socket.socket, "LineReader"]:
    """A raw client that sends a long generation with progress events and reads up to its first segment."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(120)
    conn.connect(str(socket_path))
    call = GenerateCall(request=_request(), output_path=out, progress=True, job_id=job_id)
    conn.sendall(json.dumps(call.to_wire()).encode() + b"\n")
    lines = LineReader(conn)
    event = lines.next()
    assert event == {"event": "segment", "segment": 1, "segments": 8, "job_id": job_id}, event
    return conn, lines


class LineReader:
    def __init__(self, conn: socket.socket):
        self.conn, self.buffer = conn, b""

    def next(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = self.conn.recv(65536)
            assert chunk, "the server closed the connection without answering"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def reply(self) -> dict:
        while "success" not in (message := self.next()):
            pass
        return message


def _stop_line(log: Path, job_id: str) -> re.Match:
    """The server's log line for a stopped job, once written."""
    pattern = re.compile(rf"job {job_id} stopped after (\d+) denoising step\(s\): (.*?)(?: \((\d+) step\(s\) began after the cancel\))?$", re.M)
    _wait_for(lambda: pattern.search(log.read_text()), timeout=120)
    return pattern.search(log.read_text())


def test_cancel_stops_a_running_generation_at_its_next_step_and_the_next_job_runs(server, settings, tmp_path):
    socket_path, log = server
    client = ModelServerClient(socket_path, settings, autostart=False)
    before = client.status().generation_count
    conn, lines = _start_job(socket_path, "cancel-running", tmp_path / "cancelled.mp4")
    with conn:
        assert client.status().job_id == "cancel-running"
        assert client.cancel("cancel-running").cancelled == "running"
        reply = lines.reply()
    assert reply["success"] is False and reply["error_type"] == "GenerationCancelled" and reply["job_id"] == "cancel-running", reply
    assert "job cancel-running was cancelled" in reply["error"]
    stopped = _stop_line(log, "cancel-running")
    assert int(stopped.group(3)) <= 1  # at most the step begun as the cancel arrived
    assert int(stopped.group(1)) < 8 * 15  # long before the last of its 8 x 15 steps
    assert not (tmp_path / "cancelled.mp4").exists()

    result = ServerRuntime(settings).generate(_request(SHORT_SPEECH), tmp_path / "next.mp4")
    assert result.video_path.is_file()
    status = client.status()
    assert status.generation_count == before + 1 and status.job_id is None and status.status == "ready"


def test_a_client_that_disconnects_mid_generation_stops_its_job(server, settings, tmp_path):
    socket_path, log = server
    client = ModelServerClient(socket_path, settings, autostart=False)
    before = client.status().generation_count
    conn, _ = _start_job(socket_path, "client-left", tmp_path / "orphan.mp4")
    conn.close()
    stopped = _stop_line(log, "client-left")
    assert stopped.group(2) == "its client disconnected" and int(stopped.group(1)) < 8 * 15
    _wait_for(lambda: client.status().job_id is None)
    assert client.status().generation_count == before and not (tmp_path / "orphan.mp4").exists()


def test_queued_jobs_cancelled_or_left_by_their_client_never_start(server, settings, tmp_path):
    socket_path, log = server
    client = ModelServerClient(socket_path, settings, autostart=False)
    running, running_lines = _start_job(socket_path, "q-running", tmp_path / "running.mp4")
    with running:
        queued = []
        for job_id in ("q-cancelled", "q-left"):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(120)
            conn.connect(str(socket_path))
            call = GenerateCall(request=_request(SHORT_SPEECH), output_path=tmp_path / f"{job_id}.mp4", job_id=job_id)
            conn.sendall(json.dumps(call.to_wire()).encode() + b"\n")
            queued.append(conn)
        _wait_for(lambda: sorted(client.status().queued_job_ids) == ["q-cancelled", "q-left"])  # two connections: either order
        with pytest.raises(InputError, match="job_id='q-left': is already queued or running"):
            client.generate(GenerateCall(request=_request(SHORT_SPEECH), job_id="q-left"))

        assert client.cancel("q-cancelled").cancelled == "queued"
        reply = LineReader(queued[0]).reply()  # answered at once, while the running job goes on
        assert reply["error_type"] == "GenerationCancelled" and reply["job_id"] == "q-cancelled", reply
        assert client.status().job_id == "q-running"
        queued[1].close()  # its client leaves while it waits
        assert client.cancel("q-running").cancelled == "running"
        assert running_lines.reply()["error_type"] == "GenerationCancelled"
    queued[0].close()
    _wait_for(lambda: "job q-left not started: its client disconnected" in log.read_text())
    text = log.read_text()
    assert "generate job q-cancelled started" not in text and "generate job q-left started" not in text
    assert client.cancel("q-running").cancelled == "unknown"  # finished: nothing left to cancel
    assert client.cancel("never-sent").cancelled == "unknown"


@pytest.mark.parametrize("how", ["should_stop", "interrupt"])
def test_server_runtime_cancels_its_job_when_asked_to_stop(server, settings, tmp_path, how):
    """ServerRuntime polls should_stop (or Ctrl-C's process-wide request) while it waits, and cancels."""
    socket_path, log = server
    segments_seen = []

    def on_segment(done: int, total: int) -> None:
        segments_seen.append(done)
        if how == "interrupt":
            interrupt.request_stop("interrupted (Ctrl-C)")

    should_stop = (lambda: "the flow run was cancelled" if segments_seen else None) if how == "should_stop" else None
    try:
        with pytest.raises(GenerationCancelled) as err:
            ServerRuntime(settings).generate(_request(), tmp_path / "stopped.mp4", on_segment=on_segment, should_stop=should_stop)
    finally:
        interrupt.clear()
    reason = "the flow run was cancelled" if how == "should_stop" else "interrupted (Ctrl-C)"
    job_id = re.search(r"job (\w+) was cancelled on the model server", str(err.value)).group(1)
    assert reason in str(err.value)
    stopped = _stop_line(log, job_id)
    assert stopped.group(2) == f"job {job_id} was cancelled" and int(stopped.group(1)) < 8 * 15
    assert segments_seen and max(segments_seen) < 8


def test_client_interrupted_while_waiting_cancels_its_job(server, settings, tmp_path):
    socket_path, log = server

    def on_segment(done: int, total: int) -> None:
        raise KeyboardInterrupt  # as Ctrl-C does to a client waiting on the main thread

    client = ModelServerClient(socket_path, settings, autostart=False)
    call = GenerateCall(request=_request(), output_path=tmp_path / "interrupted.mp4", job_id="kbd")
    with pytest.raises(KeyboardInterrupt):
        client.generate(call, on_segment=on_segment)
    stopped = _stop_line(log, "kbd")
    assert stopped.group(2) == "job kbd was cancelled"


def test_in_process_generation_stops_at_the_next_step_on_ctrl_c(tiny_checkpoint, tmp_path):
    from model_runtime.service import InProcessRuntime

    runtime = InProcessRuntime(Settings(checkpoint=tiny_checkpoint, device="cpu", cache_dir=tmp_path / "cache"))
    segments_seen = []

    def on_segment(done: int, total: int) -> None:
        segments_seen.append(done)
        interrupt.request_stop("interrupted (Ctrl-C)")  # what `s2v run`'s SIGINT handler does

    try:
        with pytest.raises(GenerationCancelled, match=r"generation stopped: interrupted \(Ctrl-C\)"):
            runtime.generate(_request(), tmp_path / "stopped.mp4", on_segment=on_segment)
    finally:
        interrupt.clear()
    assert segments_seen == [1] and not (tmp_path / "stopped.mp4").exists()
    with pytest.raises(GenerationCancelled, match="not started: the run is over"):
        runtime.encode_audio(SHORT_SPEECH, tmp_path / "f.safetensors", should_stop=lambda: "the run is over")
