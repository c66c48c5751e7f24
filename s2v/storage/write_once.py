"""Create-if-absent writes at an output location: the one primitive that lets two writers race for a key.

Local folders: the text is staged beside the target and hard-linked into place (`link` fails when the
name exists, atomically, and readers never see half a file). S3 and R2: a PUT with `If-None-Match: *`,
which the store refuses with 412 when the key exists (S3 since 2024, R2, moto).
"""
from __future__ import annotations

import os
from pathlib import Path

from s2v.settings import Settings
from s2v.storage.atomic import fsync_file, staged_file
from s2v.storage.locations import is_s3, local_path, split_s3
from s2v.storage.transient import transient_as


class AlreadyWritten(Exception):
    """Another writer created the key first."""


def create_output_text(location: str, text: str, settings: Settings) -> None:
    """Write `text` at `location` only if nothing is there; AlreadyWritten when something is."""
    if is_s3(location):
        _create_s3(location, text.encode("utf-8"), settings)
    else:
        _create_local(Path(os.path.abspath(local_path(location, "output", location))), text)


def _create_local(path: Path, text: str) -> None:
    with staged_file(path.parent, prefix=f".{path.name}.") as staged:
        with open(staged, "w", encoding="utf-8") as handle:
            handle.write(text)
        fsync_file(staged)
        try:
            os.link(staged, path)
        except FileExistsError:
            raise AlreadyWritten(str(path)) from None


def _create_s3(location: str, data: bytes, settings: Settings) -> None:
    from botocore.exceptions import ClientError

    bucket, key = split_s3(location)
    client = _client(settings)
    try:
        with transient_as(f"writing {location}"):
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", ContentType="application/json")
    except ClientError as exc:
        # 412: the key exists; 409: another conditional write to it is in flight (S3 says so too).
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
            raise AlreadyWritten(location) from None
        raise


def _client(settings: Settings):
    """A plain boto3 client with the project's S3 settings (s3fs does not pass If-None-Match through)."""
    import boto3
    from botocore.config import Config

    from s2v.storage.s3 import s3_config_kwargs

    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=Config(**s3_config_kwargs(settings)))

