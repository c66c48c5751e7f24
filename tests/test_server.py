"""The model server as a real process on a Unix socket, with the tiny checkpoint on CPU.

One server serves the module (its load and first-clip warm-up cost more than a warm clip) and no test
stops it; the tests that stop, kill or auto-start servers get their own sockets and servers, so any
subset of this file runs alone and in any order.
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from model_runtime.client import ModelServerClient, ServerRuntime
from model_runtime.protocol import EXIT_ALREADY_RUNNING, MAX_LINE_BYTES, ErrorReply, GenerateCall, exception_from, server_files
from model_runtime.request import AudioFeatures, GenerationRequest, GenerationResult
from s2v.errors import GenerationError, GenerationTimeout, InputError, ModelServerError
from s2v.settings import Settings
from tests.conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.slow

PORTRAIT = EXAMPLES / "portrait_anna.jpg"
SPEECH = EXAMPLES / "speech_short.wav"
OOM_PROMPT = "raise a CUDA out-of-memory error"
READY_TIMEOUT_S = 180

# torch.cuda.OutOfMemoryError cannot happen on CPU, so the module's server is started through this
# launcher, which makes the runtime raise it for one magic prompt and changes nothing else.
_LAUNCHER = f"""
import sys
from model_runtime.service import InProcessRuntime
real_generate = InProcessRuntime.generate
def generate(self, request, *args, **kwargs):
    if request.prompt == {OOM_PROMPT!r}:
        import torch
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return real_generate(self, request, *args, **kwargs)
InProcessRuntime.generate = generate
from model_runtime.server import main
sys.exit(main(sys.argv[1:]))
"""


def _short_dir() -> Path:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="s2v-", dir="/tmp"))


def _server_env(settings: Settings) -> dict:
    env = dict(os.environ, S2V_CHECKPOINT=str(settings.checkpoint), S2V_CACHE_DIR=str(settings.cache_dir), S2V_DEVICE="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _raw(socket_path: Path, payload: bytes, timeout: float = 120) -> dict:
    """One raw exchange, as a client of the original server's protocol would do it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(socket_path))
        conn.sendall(payload)
        buffer = b""
        while b"\n" not in buffer:
            chunk = conn.recv(65536)
            assert chunk, "the server closed the connection without answering"
            buffer += chunk
    return json.loads(buffer.split(b"\n", 1)[0])


def _ask(socket_path: Path, message: dict, timeout: float = 120) -> dict:
    return _raw(socket_path, json.dumps(message).encode() + b"\n", timeout)


def _request(**overrides) -> GenerationRequest:
    return GenerationRequest.parse({"image_path": PORTRAIT, "audio_path": SPEECH, "sample_steps": 15, "seed": 0, **overrides})


@contextlib.contextmanager
def running_server(settings: Settings, log_path: Path, command: list[str] | None = None) -> Iterator[subprocess.Popen]:
    """A server on settings.model_server, started as an operator would (`s2v server`), ready; stopped after."""
    command = command or ["-m", "model_runtime.server"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, *command, "--socket", str(settings.model_server)],
            env=_server_env(settings), stdout=subprocess.DEVNULL, stderr=log,
        )
        try:
            _wait_ready(settings.model_server, process)
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            # A client that found this one dead would have started a detached one in its place.
            _stop_autostarted(ModelServerClient(settings.model_server, settings, autostart=False))


def _wait_ready(socket_path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with status {process.returncode}"
        try:
            if _ask(socket_path, {"action": "health"}, timeout=5)["status"] == "ready":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no ready server on {socket_path} within {READY_TIMEOUT_S} s")


def _stop_autostarted(client: ModelServerClient) -> None:
    """Stop the detached server on the client's socket, answering or not: its lock file names its pid."""
    with contextlib.suppress(ModelServerError):
        client.shutdown()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and client._lock_held():
        time.sleep(0.1)
    if client._lock_held():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(client.files.lock.read_text().split()[0]), signal.SIGKILL)


# ---- the module's server ------------------------------------------------------------------------

def module_server_settings(tiny_checkpoint: Path, tmp_path_factory, socket_name: str) -> Iterator[Settings]:
    """A test module's settings for its own server: the tiny checkpoint on CPU, its socket in a short folder
    that is removed after the module (a fixture's body: `yield from`)."""
    folder = _short_dir()
    yield Settings(
        checkpoint=tiny_checkpoint, device="cpu", cache_dir=tmp_path_factory.mktemp("cache"),
        model_server=folder / socket_name, server_load_timeout_s=READY_TIMEOUT_S,
    )
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(tiny_checkpoint, tmp_path_factory):
    yield from module_server_settings(tiny_checkpoint, tmp_path_factory, "s.sock")


@pytest.fixture(scope="module")
def server(settings, tmp_path_factory):
    """(process, socket path) of the module's server; no test may stop it."""
    with running_server(settings, tmp_path_factory.mktemp("log") / "server.log", ["-c", _LAUNCHER]) as process:
        yield process, settings.model_server


@pytest.fixture(scope="module")
def first_generation(server, tmp_path_factory):
    """The original server's generate example, word for word but for the paths, sent on a raw socket."""
    _, socket_path = server
    message = {
        "action": "generate",
        "image_path": str(PORTRAIT),
        "audio_path": str(SPEECH),
        "prompt": "A person speaking naturally",
        "resolution": "480p",
        "sample_steps": 15,  # the original example says 20; 15 keeps the CPU test short
    }
    return _ask(socket_path, message, timeout=600)


def test_health_reply_has_the_seed_fields(server):
    reply = _ask(server[1], {"action": "health"})
    assert reply == {"success": True, "model_loaded": True, "status": "ready"}


def test_status_reply_has_the_seed_fields_and_more(server, first_generation):
    reply = _ask(server[1], {"action": "status"})
    seed_fields = {"success": bool, "model_loaded": bool, "vram_allocated_gb": float, "generation_count": int}
    added = {"memory_kind": str, "uptime_s": float, "load_time": float, "load_count": int, "queue_length": int, "status": str}
    for name, kind in {**seed_fields, **added}.items():
        assert isinstance(reply[name], kind), (name, reply[name])
    assert "last_error" in reply
    assert reply["success"] and reply["model_loaded"] and reply["status"] == "ready"
    assert reply["memory_kind"] == "rss" and reply["vram_allocated_gb"] > 0.1  # CPU: resident memory
    assert reply["generation_count"] >= 1 and reply["load_count"] == 1
    assert reply["job_id"] is None and reply["queued_job_ids"] == []
    assert reply["seconds_per_dit_pass"]["480p"] > 0  # measured by the first generation


def test_generate_reply_carries_the_job_id_sent_or_one_made_by_the_server(server, first_generation, tmp_path):
    assert len(first_generation["job_id"]) == 32  # the original example sent none: the server made a uuid4 hex
    features = tmp_path / "f.safetensors"
    reply = _ask(server[1], {"action": "encode_audio", "audio_path": str(SPEECH), "output_path": str(features), "job_id": "enc-1"})
    assert reply["success"] is True and reply["job_id"] == "enc-1"


def test_a_request_too_long_for_its_limit_fails_up_front_with_the_estimate(server, first_generation, tmp_path):
    before = _ask(server[1], {"action": "status"})
    per_pass = before["seconds_per_dit_pass"]["480p"]
    needed = 8 * 15 * 2 * per_pass  # speech_news: 7.6 s is 8 tiny segments, 15 steps, 2 passes with guidance
    message = {"action": "generate", "image_path": str(PORTRAIT), "audio_path": str(EXAMPLES / "speech_news.flac"),
               "sample_steps": 15, "output_path": str(tmp_path / "long.mp4"), "timeout_s": needed / 2}
    reply = _ask(server[1], message)
    assert reply["success"] is False and reply["error_type"] == "InputError" and reply["field"] == "audio", reply
    assert "speech of 7.6 s needs 8 segment(s), estimated" in reply["reason"] and "the request's timeout_s" in reply["reason"]
    assert _ask(server[1], {"action": "status"})["generation_count"] == before["generation_count"]
    assert not (tmp_path / "long.mp4").exists()


def test_generate_reply_has_the_seed_fields_and_the_result_record(first_generation):
    reply = first_generation
    assert reply["success"] is True, reply
    for name, kind in {"video_path": str, "generation_time": float, "total_time": float, "video_size_mb": float}.items():
        assert isinstance(reply[name], kind), (name, reply[name])
    assert set(GenerationResult.model_fields) <= set(reply)
    result = GenerationResult.model_validate(reply)
    assert result.video_path.is_file() and result.video_size_mb > 0
    assert result.resolution == "480p" and result.sample_steps == 15 and result.warm_model is True
    assert result.total_time >= result.generation_time > 0


def test_socket_is_private(server):
    _, socket_path = server
    assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server_files(socket_path).lock).st_mode) == 0o600


def test_second_server_on_a_live_socket_refuses(server, settings):
    process, socket_path = server
    second = subprocess.run(
        [sys.executable, "-m", "model_runtime.server", "--socket", str(socket_path)],
        env=_server_env(settings), capture_output=True, text=True, timeout=120,
    )
    assert second.returncode == EXIT_ALREADY_RUNNING
    assert f"pid {process.pid}" in second.stderr and "already runs" in second.stderr
    assert _ask(socket_path, {"action": "health"})["status"] == "ready"


def test_warm_across_client_processes(server, settings, first_generation, tmp_path):
    """Each flow run is a new process; the second one finds the model loaded, loaded once."""
    code = (
        "import json, sys\n"
        "from model_runtime.client import ServerRuntime, runtime_for\n"
        "from model_runtime.request import GenerationRequest\n"
        "runtime = runtime_for()\n"
        "assert isinstance(runtime, ServerRuntime), runtime\n"
        "request = GenerationRequest.parse({'image_path': sys.argv[1], 'audio_path': sys.argv[2], 'sample_steps': 15})\n"
        "result = runtime.generate(request, sys.argv[3])\n"
        "assert 'torch' not in sys.modules\n"
        "print(json.dumps({'warm': result.warm_model, **runtime.client.status().model_dump()}))\n"
    )
    env = dict(_server_env(settings), S2V_MODEL_SERVER=str(server[1]))
    seen = []
    for n in range(2):
        out = tmp_path / f"run{n}.mp4"
        proc = subprocess.run([sys.executable, "-c", code, str(PORTRAIT), str(SPEECH), str(out)],
                              env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert out.is_file()
        seen.append(json.loads(proc.stdout))
    assert [s["warm"] for s in seen] == [True, True]
    assert seen[1]["model_loaded"] and seen[1]["load_count"] == 1
    assert seen[0]["pid"] == seen[1]["pid"] == server[0].pid
    assert seen[1]["generation_count"] == seen[0]["generation_count"] + 1


@pytest.fixture(scope="module")
def three_at_once(server, settings, first_generation, tmp_path_factory):
    """Three clients generate at once while this thread polls health and status."""
    out = tmp_path_factory.mktemp("three")
    before = _ask(server[1], {"action": "status"})["generation_count"]
    results, errors, statuses = [], [], []

    def one(n: int) -> None:
        try:
            results.append(ModelServerClient(server[1], settings, autostart=False).generate(_call(n, out)))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    busy_polls = 0
    polls = 0
    while any(t.is_alive() for t in threads):
        if _ask(server[1], {"action": "health"}, timeout=5)["status"] == "busy":
            busy_polls += 1
            if polls % 10 == 0:
                statuses.append(_ask(server[1], {"action": "status"}, timeout=5))
        polls += 1
        time.sleep(0.05)  # often enough to sample every generation, rarely enough not to slow it
    for t in threads:
        t.join()
    after = _ask(server[1], {"action": "status"})["generation_count"]
    return SimpleNamespace(results=results, errors=errors, busy_polls=busy_polls, statuses=statuses, generated=after - before)


def _call(n: int, out: Path) -> GenerateCall:
    return GenerateCall(request=_request(seed=n), output_path=out / f"clip{n}.mp4")


def test_three_clients_at_once_are_served_one_at_a_time(three_at_once):
    results = three_at_once.results
    assert not three_at_once.errors and len(results) == 3
    assert three_at_once.generated == 3
    spans = sorted((r.started_at, r.finished_at) for r in results)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, f"generations overlapped: {spans}"
    assert max(s["queue_length"] for s in three_at_once.statuses) >= 1  # the others waited, none was turned away
    assert all(r.video_path.is_file() for r in results)


def test_status_names_the_running_job_and_the_queued_ones(three_at_once):
    job_ids = {r.job_id for r in three_at_once.results}
    assert len(job_ids) == 3 and None not in job_ids  # the client named each job
    for status in three_at_once.statuses:
        assert status["job_id"] in job_ids, status
        assert set(status["queued_job_ids"]) <= job_ids - {status["job_id"]}
        assert status["queue_length"] == len(status["queued_job_ids"])
    assert any(s["queued_job_ids"] for s in three_at_once.statuses)


def test_health_answers_while_a_generation_runs(three_at_once):
    # A health request queued behind the jobs would only be answered between them, never as "busy".
    assert three_at_once.busy_polls >= 10


@pytest.mark.parametrize("payload, field, words", [
    (b'{"action": "generate", "image_path": \n', "request", "not valid JSON"),
    (b'[1, 2, 3]\n', "request", "JSON object"),
    (b'{"action": "dance"}\n', "action", "unknown action"),
    (b'{"action": "cancel"}\n', "job_id", "Field required"),
    (b'{"action": "cancel", "job_id": "a b"}\n', "job_id", "should match pattern"),
    (json.dumps({"action": "generate", "image_path": str(PORTRAIT), "audio_path": str(SPEECH), "sample_steps": 5}).encode() + b"\n",
     "sample_steps", "LoRA"),
    (json.dumps({"action": "generate", "image_path": str(PORTRAIT), "audio_path": str(SPEECH), "sample_step": 20}).encode() + b"\n",
     "sample_step", "Extra inputs"),
    (json.dumps({"action": "generate", "image_path": "portrait.jpg", "audio_path": str(SPEECH)}).encode() + b"\n",
     "image_path", "absolute path"),
    (b'{"action": "status", "pad": "' + b"x" * MAX_LINE_BYTES + b'"}\n', "request", f"at most {MAX_LINE_BYTES} bytes"),
])
def test_bad_request_gets_an_error_reply_and_the_server_keeps_serving(server, payload, field, words):
    reply = _raw(server[1], payload)
    assert reply["success"] is False and reply["field"] == field and words in reply["error"], reply
    assert reply["error_type"] == "InputError"
    assert _ask(server[1], {"action": "health"})["status"] == "ready"


def test_after_bad_requests_a_good_one_succeeds_on_the_same_connection(server, settings, tmp_path):
    features = tmp_path / "speech.safetensors"
    lines = b'{"action": nonsense\n' + b"y" * (MAX_LINE_BYTES + 10) + b"\n"
    lines += json.dumps({"action": "encode_audio", "audio_path": str(SPEECH), "output_path": str(features)}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(120)
        conn.connect(str(server[1]))
        conn.sendall(lines)
        buffer = b""
        while buffer.count(b"\n") < 3:
            chunk = conn.recv(65536)
            assert chunk
            buffer += chunk
    replies = [json.loads(line) for line in buffer.splitlines()]
    assert [r["success"] for r in replies] == [False, False, True]
    assert AudioFeatures.model_validate(replies[2]).path == features and features.is_file()


def test_error_replies_become_the_runtimes_exceptions(server, settings, tmp_path):
    runtime = ServerRuntime(settings)
    broken = tmp_path / "face.jpg"
    broken.write_text("not an image")
    with pytest.raises(InputError) as err:
        runtime.generate(_request(image_path=broken), tmp_path / "x.mp4")
    assert err.value.field == "image" and "not a decodable image" in str(err.value)
    features = runtime.encode_audio(SPEECH, tmp_path / "f.safetensors")
    assert isinstance(features, AudioFeatures) and features.path.is_file()


def test_out_of_memory_is_an_error_reply_and_the_server_stays_up(server, settings, tmp_path):
    runtime = ServerRuntime(settings)
    with pytest.raises(GenerationError, match="OutOfMemoryError: CUDA out of memory"):
        runtime.generate(_request(prompt=OOM_PROMPT), tmp_path / "oom.mp4")
    status = runtime.client.status()
    assert status.status == "ready" and "CUDA out of memory" in status.last_error
    assert runtime.encode_audio(SPEECH, tmp_path / "after.safetensors").path.is_file()


def test_generation_timeout_is_enforced_by_the_server(server, tmp_path):
    """The request's timeout_s stops the job in the server; read without a client-side limit.

    At 720p, which no other test here asks for: once a resolution has a measured time per step, a
    request that cannot finish in its limit fails up front instead (test_estimate.py)."""
    out = tmp_path / "late.mp4"
    message = {"action": "generate", "image_path": str(PORTRAIT), "audio_path": str(SPEECH), "sample_steps": 15,
               "resolution": "720p", "output_path": str(out), "timeout_s": 0.3}
    reply = _ask(server[1], message, timeout=600)
    assert reply["success"] is False and reply["error_type"] == "GenerationTimeout" and "limit" in reply["error"], reply
    assert isinstance(exception_from(ErrorReply.model_validate(reply)), GenerationTimeout)
    assert not out.exists()
    assert _ask(server[1], {"action": "health"})["status"] == "ready"


def test_generation_timeout_is_enforced_by_the_client_when_the_server_hangs(settings):
    """A server that answers health but never the job: the client gives up at its limit, and tells
    the server to cancel the job it gave up on."""
    folder = _short_dir()
    path = folder / "hung.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    requests, open_connections = [], []

    def hang() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            request = json.loads(conn.recv(65536))
            requests.append(request)
            if request["action"] == "health":
                conn.sendall(b'{"success": true, "model_loaded": true, "status": "ready"}\n')
                conn.close()
            else:  # keep the connection open and never answer
                open_connections.append(conn)

    threading.Thread(target=hang, daemon=True).start()
    runtime = ServerRuntime(settings.model_copy(update={"generation_timeout_s": 1.0}), socket_path=path)
    started = time.monotonic()
    try:
        with pytest.raises(GenerationTimeout, match="no result within 1 s") as err:
            runtime.generate(_request(), folder / "never.mp4")
        assert 1.0 <= time.monotonic() - started < 20
        job_id = next(r["job_id"] for r in requests if r["action"] == "generate")
        assert {"action": "cancel", "job_id": job_id} in requests and f"job {job_id} was cancelled" in str(err.value)
    finally:
        listener.close()
        for conn in open_connections:
            conn.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def own_server(settings, tmp_path):
    """(process, settings) of a server for one test alone: for a test that stops it."""
    folder = _short_dir()
    own = settings.model_copy(update={"model_server": folder / "own.sock"})
    try:
        with running_server(own, tmp_path / "own-server.log") as process:
            yield process, own
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_sigterm_finishes_the_current_job_fails_the_queued_and_exits_0(own_server, tmp_path):
    process, settings = own_server
    socket_path = settings.model_server
    outcomes: dict[str, object] = {}

    def generate(name: str) -> None:
        try:
            outcomes[name] = ServerRuntime(settings).generate(_request(), tmp_path / f"{name}.mp4")
        except Exception as exc:
            outcomes[name] = exc

    running = threading.Thread(target=generate, args=("running",))
    running.start()
    _wait_for(lambda: _ask(socket_path, {"action": "health"})["status"] == "busy")
    queued = threading.Thread(target=generate, args=("queued",))
    queued.start()
    _wait_for(lambda: _ask(socket_path, {"action": "status"})["queue_length"] == 1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0
    running.join(60)
    queued.join(60)
    assert isinstance(outcomes["running"], GenerationResult) and outcomes["running"].video_path.is_file()
    assert isinstance(outcomes["queued"], ModelServerError) and "shutting down" in str(outcomes["queued"])
    assert not socket_path.exists()


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ---- auto-start ---------------------------------------------------------------------------------

@pytest.fixture
def auto_settings(tiny_checkpoint, tmp_path):
    """Settings for a socket no server listens on yet, one per test; the clients start (and restart)
    one, detached, and this stops whatever runs there at the end."""
    folder = _short_dir()
    settings = Settings(
        checkpoint=tiny_checkpoint, device="cpu", cache_dir=tmp_path / "auto-cache",
        model_server=folder / "auto.sock", server_load_timeout_s=READY_TIMEOUT_S,
    )
    yield settings
    _stop_autostarted(ModelServerClient(settings.model_server, settings, autostart=False))
    shutil.rmtree(folder, ignore_errors=True)


def test_two_clients_starting_at_once_start_one_server(auto_settings):
    started = []
    barrier = threading.Barrier(2)

    def start() -> None:
        barrier.wait()
        started.append(ModelServerClient(auto_settings.model_server, auto_settings).ensure_running())

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(started) == [False, True]
    client = ModelServerClient(auto_settings.model_server, auto_settings)
    assert client.status().load_count == 1
    assert client.files.log.read_text().count("starts the model server") == 1
    assert stat.S_IMODE(os.stat(auto_settings.model_server).st_mode) == 0o600


def test_kill_9_mid_generation_then_the_next_request_starts_a_new_server(auto_settings, tmp_path):
    runtime = ServerRuntime(auto_settings)
    client = runtime.client
    client.ensure_running()
    old_pid = client.status().pid
    outcome: list[object] = []

    def generate() -> None:
        try:
            outcome.append(runtime.generate(_request(), tmp_path / "killed.mp4"))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=generate)
    thread.start()
    _wait_for(lambda: client.health().status == "busy")
    os.kill(old_pid, signal.SIGKILL)
    thread.join(60)
    assert isinstance(outcome[0], ModelServerError), outcome
    assert "closed the connection before answering" in str(outcome[0])
    # The dead server's socket file is still there: stale, and replaced by the next server.
    assert stat.S_ISSOCK(os.lstat(auto_settings.model_server).st_mode)

    result = runtime.generate(_request(), tmp_path / "after.mp4")
    assert result.video_path.is_file() and result.warm_model is False  # the model loaded for this request
    status = client.status()
    assert status.pid != old_pid and status.load_count == 1 and status.generation_count == 1
    assert stat.S_IMODE(os.stat(auto_settings.model_server).st_mode) == 0o600
    assert "replacing the stale socket" in client.files.log.read_text()


def test_a_server_that_cannot_load_is_reported_with_its_log(tmp_path):
    folder = _short_dir()
    settings = Settings(checkpoint=tmp_path / "no-such-checkpoint", device="cpu", cache_dir=tmp_path / "cache",
                        model_server=folder / "bad.sock", server_load_timeout_s=READY_TIMEOUT_S)
    try:
        with pytest.raises(ModelServerError) as err:
            ServerRuntime(settings).encode_audio(SPEECH, tmp_path / "f.safetensors")
        message = str(err.value)
        assert "could not load the model" in message and "no-such-checkpoint" in message
        assert "its log" in message and "model load failed" in message  # the log's tail came along
        # The client stopped the useless server, so a fixed configuration gets a fresh start.
        _wait_for(lambda: not settings.model_server.exists(), timeout=60)
    finally:
        _stop_autostarted(ModelServerClient(settings.model_server, settings, autostart=False))
        shutil.rmtree(folder, ignore_errors=True)


def test_client_and_protocol_import_without_torch():
    code = "import sys, model_runtime.client, model_runtime.protocol; assert 'torch' not in sys.modules, 'torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
