"""Checks of a manifest row that need no model and no GPU, shared by `s2v check`, the batch's parse
stage and the pipeline before its encode stage, so what `check` calls ok does not fail later for a
reason it could have seen. Light: no Prefect, no torch.

Every error is an InputError on the field and the value as the manifest wrote it (redacted), with the
row number: `row N: field='value': reason`.
"""
from __future__ import annotations

from pathlib import Path

from s2v.errors import InputError, S2VError
from s2v.settings import Settings
from s2v.storage.fetch import FetchedInput, fetch_input, local_file
from s2v.storage.locations import uri_scheme
from s2v.storage.redaction import redact

# The fields a row names files in, in the order they are fetched; each goes through the one input
# policy of s2v.storage.fetch (URLs; local paths only where the settings allow).
FILE_FIELDS = ("image", "audio", "lora", "pose_video")


def check_fetched(fetched: FetchedInput, settings: Settings) -> dict:
    """What the file in `fetched` is, by its field: {"width", "height"}, {"seconds", "sample_rate"},
    {"lora_targets"} or {"pose_size"}; InputError if it is not what its field needs."""
    from records.media_checks import check_audio, check_image, check_lora, check_pose_video

    field = fetched.field.removesuffix("_url")
    if field == "image":
        width, height = check_image(fetched)
        return {"width": width, "height": height}
    if field == "audio":
        seconds, sample_rate = check_audio(fetched, settings.max_audio_seconds)
        return {"seconds": seconds, "sample_rate": sample_rate}
    if field == "lora":
        return {"lora_targets": check_lora(fetched, settings)}
    width, height, _ = check_pose_video(fetched)
    return {"pose_size": (width, height)}


def row_files(row) -> dict[str, str]:
    """{field: URI as the manifest gave it} for the files a row names."""
    return {field: getattr(row, field) for field in FILE_FIELDS if getattr(row, field, "")}


def check_not_redacted(uri: str, field: str) -> None:
    """A value read back from a kept manifest whose credentials were removed cannot be fetched: say so."""
    if redacted_marks(uri):
        raise InputError(field, uri, "its credentials were not kept under the output (manifests/ holds none); "
                                     "run the original manifest again with `s2v run`: rows already made are skipped")


def redacted_marks(uri: str) -> bool:
    return "://***@" in uri or "=REDACTED" in uri


def check_local_option_file(uri: str, field: str, settings: Settings) -> dict:
    """A local file the row names, allowed and checked in place (LoRA header, pose video decode) without
    a copy of a LoRA's gigabytes; image and audio are only looked for here, the download stage decodes them."""
    path = local_file(uri, field, settings)
    if field not in ("lora", "pose_video"):
        return {}
    return check_fetched(FetchedInput(field=field, source=redact(uri), path=path, sha256="", size_bytes=0, fetch_s=0.0),
                         settings)


def check_file(uri: str, field: str, work: Path, settings: Settings) -> dict:
    """What `check_fetched` says of the file at `uri`: a local LoRA or pose video in place, anything
    else fetched into `work` as the download stage fetches it."""
    if field in ("lora", "pose_video") and uri_scheme(uri) in ("", "file"):
        return check_local_option_file(uri, field, settings)
    return check_fetched(fetch_input(uri, work, field, settings), settings)


def check_speech_time(row, speech_s: float, settings: Settings) -> float | None:
    """The estimated generation time of the row (None while unmeasured); InputError on `audio` when it
    cannot finish within S2V_GENERATION_TIMEOUT_S, before any encoder or GPU time is spent on it."""
    from model_runtime.estimate import check_within_limit

    found = check_within_limit(settings, redact(row.audio), speech_s, row.options(),
                               limit_s=settings.generation_timeout_s, limit_name="S2V_GENERATION_TIMEOUT_S")
    return None if found is None else found.seconds


def row_error(exc: BaseException, row, paths: dict[str, str] | None = None) -> str:
    """`row N: field='value as written': reason` for an error met while working on `row`.

    `paths` maps worker paths (input copies, the LoRA cache) to the manifest's values, so no internal
    path reaches the ledger; an error without a field still gets the row prefix.
    """
    if isinstance(exc, InputError):
        value = exc.value
        for path, written in (paths or {}).items():
            if str(value) == path:
                value = written
        message = str(InputError(exc.field, value, exc.reason, row=row.row))
    elif isinstance(exc, S2VError):
        message = str(exc)
    else:
        message = f"internal error ({type(exc).__name__}: {exc})"
    for path, written in sorted((paths or {}).items(), key=lambda item: -len(item[0])):
        message = message.replace(path, written)
    prefix = f"row {row.row}: "
    return message if message.startswith(prefix) else prefix + message
