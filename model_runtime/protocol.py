"""The model server's wire format: JSON objects, one per line, over a Unix socket.

Kept compatible with the original server: `health`, `status` and `generate` with its fields, answered
with its fields. Additions: `encode_audio`, `shutdown`, `cancel`, more status fields, `error` /
`error_type` / `field` on failure, and opt-in `{"event": "segment", ...}` progress lines before a
generate's reply.

Jobs and cancel: every `generate` and `encode_audio` is a job with an id, the request's `job_id` (any
1-128 characters of letters, digits and `_.:-`, e.g. a uuid4 hex; one not already queued or running)
or, without one, an id the server makes. The job's reply (success or error) carries `job_id`, and so
do its progress events; `status` lists the running job's `job_id` and the queue's `queued_job_ids`.
`{"action": "cancel", "job_id": "..."}` is answered at once with
`{"success": true, "job_id": "...", "cancelled": "running" | "queued" | "unknown"}`:
- running: the generation stops before its next denoising step; its client gets an error reply with
  `error_type` "GenerationCancelled", and the next job starts;
- queued: the job is taken off the queue unstarted, and its client gets that error reply at once;
- unknown: no such job is queued or running (it finished already, or never existed).
A job whose client closes its connection is cancelled the same way: a queued one is never started, a
running one stops before its next denoising step. (Encoding audio has no steps: once running, it ends.)

Light on purpose (pydantic only): clients and the RunPod handler load it without torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import s2v.errors as errors
from model_runtime.request import AudioFeatures, GenerationRequest, GenerationResult, input_error_from
from s2v.errors import InputError, ModelServerError, S2VError

MAX_LINE_BYTES = 1 << 20  # a generate request is under 10 KiB; a longer line is a broken client
MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes with the terminating NUL on Linux
EXIT_ALREADY_RUNNING = 3  # `s2v server` exit status when a live server holds the socket

ServerState = Literal["loading", "ready", "busy", "failed"]
MemoryKind = Literal["vram_allocated", "rss"]
ACTIONS = ("health", "status", "generate", "encode_audio", "shutdown", "cancel")
JobId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
CancelOutcome = Literal["running", "queued", "unknown"]


class ServerFiles(NamedTuple):
    """Files beside the socket. The lock is held by the live server for its whole life, so a socket
    file without a lock holder is a dead server's; the start lock lets one client start a server."""

    lock: Path
    start_lock: Path
    log: Path


def server_files(socket_path: Path) -> ServerFiles:
    name = socket_path.name
    return ServerFiles(*(socket_path.with_name(name + suffix) for suffix in (".lock", ".start.lock", ".log")))


def check_socket_path(path: Path) -> None:
    size = len(os.fsencode(str(path)))
    if size > MAX_SOCKET_PATH_BYTES:
        raise InputError("socket", str(path), f"is {size} bytes long; a Unix socket path may have at most {MAX_SOCKET_PATH_BYTES}")


# ---- requests -------------------------------------------------------------------------------------

class HealthRequest(BaseModel):
    model_config = ConfigDict(frozen=True)
    action: Literal["health"] = "health"


class StatusRequest(BaseModel):
    model_config = ConfigDict(frozen=True)
    action: Literal["status"] = "status"


class ShutdownRequest(BaseModel):
    model_config = ConfigDict(frozen=True)
    action: Literal["shutdown"] = "shutdown"


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    action: Literal["cancel"] = "cancel"
    job_id: JobId


class EncodeAudioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    action: Literal["encode_audio"] = "encode_audio"
    audio_path: Path
    output_path: Path
    job_id: JobId | None = None  # unset: the server makes one


class GenerateCall(BaseModel):
    """A generate request: the original server's generation fields (flat on the wire) plus delivery options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    action: Literal["generate"] = "generate"
    request: GenerationRequest
    output_path: Path | None = None  # unset: the server names one in its cache folder, as the original server did
    features: AudioFeatures | None = None  # made earlier by encode_audio; unset: encoded with the job
    # The caller's limit, counted from the request's arrival, so time waiting in the queue counts too.
    timeout_s: float | None = Field(None, gt=0)
    progress: bool = False  # send a {"event": "segment"} line after each segment, before the reply
    job_id: JobId | None = None  # the name to cancel it by; unset: the server makes one

    def to_wire(self) -> dict[str, Any]:
        extras = self.model_dump(mode="json", include=set(_GENERATE_OPTIONS), exclude_none=True, exclude_defaults=True)
        return {"action": "generate", **self.request.model_dump(mode="json", exclude_none=True), **extras}


_GENERATE_OPTIONS = ("output_path", "features", "timeout_s", "progress", "job_id")
Request = HealthRequest | StatusRequest | ShutdownRequest | CancelRequest | EncodeAudioRequest | GenerateCall
_SIMPLE = {
    "health": HealthRequest, "status": StatusRequest, "shutdown": ShutdownRequest, "cancel": CancelRequest,
    "encode_audio": EncodeAudioRequest,
}


def decode_line(line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise InputError("request", _snippet(line), f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError("request", _snippet(line), 'must be a JSON object such as {"action": "health"}')
    return data


def parse_request(data: dict[str, Any]) -> Request:
    """The typed request, or an InputError naming the field and value that is wrong."""
    action = data.get("action")
    if action == "generate":
        return _parse_generate(data)
    model = _SIMPLE.get(action) if isinstance(action, str) else None
    if model is None:
        raise InputError("action", action, f"unknown action; expected one of: {', '.join(ACTIONS)}")
    request = _validate(model, data)
    if isinstance(request, EncodeAudioRequest):
        _require_absolute("audio_path", request.audio_path)
        _require_absolute("output_path", request.output_path)
    return request


def _parse_generate(data: dict[str, Any]) -> GenerateCall:
    params = {k: v for k, v in data.items() if k != "action" and k not in _GENERATE_OPTIONS}
    request = GenerationRequest.parse(params)
    call = _validate(GenerateCall, {"request": request, **{k: data[k] for k in _GENERATE_OPTIONS if k in data}})
    # The server's working directory is not the client's: a relative path would name another file.
    _require_absolute("image_path", request.image_path)
    _require_absolute("audio_path", request.audio_path)
    if call.output_path is not None:
        _require_absolute("output_path", call.output_path)
    if call.features is not None:
        _require_absolute("features.path", call.features.path)
    return call


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise input_error_from(exc, data) from None


def _require_absolute(field: str, path: Path) -> None:
    if not path.is_absolute():
        raise InputError(field, str(path), "must be an absolute path (the server does not share the client's working directory)")


def _snippet(line: bytes) -> str:
    return line[:80].decode("utf-8", errors="replace")


# ---- replies --------------------------------------------------------------------------------------

class HealthReply(BaseModel):
    success: bool = True
    model_loaded: bool
    status: ServerState


class StatusReply(BaseModel):
    success: bool = True
    model_loaded: bool
    vram_allocated_gb: float  # the original server's name; on CPU it holds the server's resident memory (memory_kind)
    memory_kind: MemoryKind
    generation_count: int
    uptime_s: float
    load_time: float | None  # seconds the model took to load, imports included; None until loaded
    load_count: int  # loads done by this server process: 1 once warm, never more
    queue_length: int  # jobs waiting, not counting the one running
    status: ServerState
    last_error: str | None
    pid: int
    device: str | None
    checkpoint: str | None
    job_id: str | None = None  # the running job's
    queued_job_ids: list[str] = []  # in the order they will run
    # Measured generation seconds per DiT pass (segment x denoising step x guidance pass), per
    # resolution, for this checkpoint on this device (see estimate.py); empty until one is measured.
    seconds_per_dit_pass: dict[str, float] = {}


class GenerateReply(GenerationResult):
    success: bool = True
    job_id: str | None = None
    # Server clock (epoch seconds): when the job left the queue and when it finished.
    started_at: float | None = None
    finished_at: float | None = None


class EncodeAudioReply(AudioFeatures):
    success: bool = True
    job_id: str | None = None


class ShutdownReply(BaseModel):
    success: bool = True
    status: Literal["stopping"] = "stopping"


class CancelReply(BaseModel):
    success: bool = True
    job_id: str
    cancelled: CancelOutcome


class SegmentEvent(BaseModel):
    event: Literal["segment"] = "segment"
    segment: int
    segments: int
    job_id: str | None = None


class ErrorReply(BaseModel):
    success: Literal[False] = False
    error: str
    error_type: str  # the s2v.errors class, so a client raises what the in-process runtime would
    field: str | None = None  # for InputError: the field, value and reason, to rebuild the same error
    value: Any = None
    reason: str | None = None
    job_id: str | None = None  # when the request was a job


Reply = HealthReply | StatusReply | GenerateReply | EncodeAudioReply | ShutdownReply | CancelReply | ErrorReply


def encode(message: BaseModel) -> bytes:
    exclude_none = isinstance(message, ErrorReply)
    return message.model_dump_json(exclude_none=exclude_none).encode() + b"\n"


def error_reply(exc: S2VError, context: str = "", job_id: str | None = None) -> ErrorReply:
    if isinstance(exc, InputError):
        return ErrorReply(
            error=f"{context}{exc}", error_type="InputError", field=exc.field, value=_json_safe(exc.value), reason=exc.reason,
            job_id=job_id,
        )
    return ErrorReply(error=f"{context}{exc}", error_type=type(exc).__name__, job_id=job_id)


def exception_from(reply: ErrorReply) -> S2VError:
    """The s2v.errors exception an error reply stands for; ModelServerError when it names none."""
    if reply.error_type == "InputError" and reply.field is not None:
        return InputError(reply.field, reply.value, reply.reason or reply.error)
    cls = getattr(errors, reply.error_type, None)
    if not (isinstance(cls, type) and issubclass(cls, S2VError)) or cls is InputError:
        cls = ModelServerError
    return cls(reply.error)


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= 200 else text[:197] + "..."
