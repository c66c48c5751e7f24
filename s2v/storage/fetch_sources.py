"""Reading a local file (only where the operator allowed local inputs) or an s3:// object as chunks."""
from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from s2v.errors import InputError
from s2v.settings import Settings
from s2v.storage.download_limits import CHUNK_BYTES, Deadline, Limits, check_size, late
from s2v.storage.locations import local_path, split_s3
from s2v.storage.redaction import redact
from s2v.storage.s3 import s3_filesystem
from s2v.storage.transient import transient_as

LOCAL_REFUSED = (
    "local paths and file:// URLs are not accepted here; give an http(s):// or s3:// URL, "
    "or have the operator name the allowed folders in S2V_INPUT_ROOTS"
)
OUTSIDE_ROOTS = "outside the allowed input folders (S2V_INPUT_ROOTS)"


def local_file(uri: str, field: str, settings: Settings) -> Path:
    """The real path of a local path or file:// URI the settings allow, checked to be a readable file.

    Refusals come before the filesystem is touched, or (under `input_roots`) with one message
    whether the path exists or not, so a caller cannot probe the worker's files.
    """
    shown = redact(uri)
    if settings.input_roots is None and not settings.local_inputs:
        raise InputError(field, shown, LOCAL_REFUSED)
    resolved = Path(os.path.realpath(local_path(uri, field, shown)))
    if settings.input_roots is not None and not any(
        resolved.is_relative_to(os.path.realpath(root)) for root in settings.input_roots
    ):
        raise InputError(field, shown, OUTSIDE_ROOTS)
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise InputError(field, shown, "file not found") from None
    except PermissionError:
        raise InputError(field, shown, "not readable (permission denied)") from None
    if stat.S_ISDIR(mode):
        raise InputError(field, shown, "is a folder, not a file")
    return resolved


def local_chunks(uri: str, field: str, settings: Settings, limits: Limits) -> Iterator[bytes]:
    """The bytes of an allowed local file (see local_file)."""
    shown = redact(uri)
    resolved = local_file(uri, field, settings)
    try:
        source = open(resolved, "rb")
    except FileNotFoundError:
        raise InputError(field, shown, "file not found") from None
    except IsADirectoryError:
        raise InputError(field, shown, "is a folder, not a file") from None
    except PermissionError:
        raise InputError(field, shown, "not readable (permission denied)") from None
    with source:
        check_size(os.fstat(source.fileno()).st_size, limits, field, shown)
        yield from iter(partial(source.read, CHUNK_BYTES), b"")


def s3_chunks(uri: str, field: str, settings: Settings, limits: Limits, deadline: Deadline) -> Iterator[bytes]:
    """The bytes of an s3:// object, through the project's S3 settings (so R2 works)."""
    # botocore's connect/read timeouts bound each call; `limited` checks the deadline between chunks.
    shown = redact(uri)
    bucket, key = split_s3(uri)
    if "@" in urlsplit(uri).netloc:
        raise InputError(field, shown, "credentials in s3:// URIs are not accepted; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if not bucket or not key:
        raise InputError(field, shown, "an s3 URI needs a bucket and a key: s3://bucket/key")
    fs = s3_filesystem(settings)
    try:
        with transient_as(f"{field} {shown}"):
            check_size(fs.info(f"{bucket}/{key}")["size"], limits, field, shown)
            if time.monotonic() > deadline.at:
                raise late(field, shown, limits, deadline)
            with fs.open(f"{bucket}/{key}", "rb") as source:
                yield from iter(partial(source.read, CHUNK_BYTES), b"")
    except FileNotFoundError:
        raise InputError(field, shown, "not found (no such bucket or key)") from None
    except PermissionError:
        raise InputError(field, shown, "access denied") from None
