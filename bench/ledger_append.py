"""What appending one ledger record costs as the ledger grows, write-once records against rewriting the files.

For each ledger size (10, 1,000 and 10,000 records already stored) and each store (a local folder and
moto's S3 server on loopback), it measures, side by side in one run:
  - write-once: `LedgerStore.append` (one small object per record: what the pipeline does now);
  - rewrite: writing results.jsonl and results.csv whole with the new record (what it did before);
bytes uploaded per append and seconds per append (median of --appends), and the ratio. Then it times
parsing + validating a 10,000-row manifest (the target: under 5 s on this machine).

    .venv/bin/python bench/ledger_append.py [--sizes 10 1000 10000] [--appends 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from records.ledger import CSV_NAME, JSONL_NAME, RECORDS_FOLDER, Ledger, LedgerRecord, LedgerStore  # noqa: E402
from s2v.settings import Settings  # noqa: E402
from s2v.storage.locations import output_location  # noqa: E402
from s2v.storage.outputs import filesystem, write_output_text  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_record(n: int) -> LedgerRecord:
    return LedgerRecord(
        clip_id=f"clip-{n:06d}", status="succeeded", row=n + 2, url=f"https://cdn.example.com/videos/clip-{n:06d}.mp4",
        output_uri=f"s3://studio/videos/clip-{n:06d}.mp4", generation_time=171.3, total_time=190.2, video_size_mb=4.2,
        warm_model=True, tiny_checkpoint=False, width=832, height=480, duration=5.0, frames=80, segments=1,
        resolution="480p", mode="standard", sample_steps=20, seed=1234, attempts=1, image_sha256="i" * 64,
        audio_sha256="a" * 64, options_hash="o" * 16, manifest="0123456789abcdef", worker="gpu-1",
        finished_at=T0 + timedelta(seconds=n), record_id=f"{n:06d}-bench",
    )


def populate(out: str, size: int, settings: Settings) -> None:
    """`size` records as stored objects, compacted into the view as a long-running output would be."""
    fs, root = filesystem(out, settings)
    records = [make_record(n) for n in range(size)]
    contents = {f"{root}/{RECORDS_FOLDER}/{r.clip_id}/{r.record_id}.json": r.model_dump_json().encode() for r in records}
    if not out.startswith("s3://"):
        for path in contents:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    fs.pipe(contents)  # concurrent on S3
    ledger = Ledger(records)
    write_output_text(output_location(out, JSONL_NAME), ledger.to_jsonl(), settings)
    write_output_text(output_location(out, CSV_NAME), ledger.to_csv(), settings)


class Counted:
    """Bytes sent to the store: S3 request bodies (botocore events), or bytes written under a folder."""

    def __init__(self, out: str, settings: Settings):
        self.out, self.bytes = out, 0
        self.local = not out.startswith("s3://")
        if not self.local:
            fs, _ = filesystem(out, settings)
            fs.connect()
            fs.s3.meta.events.register("before-send.s3.*", self._count)

    def _count(self, request, **_):
        self.bytes += int(request.headers.get("Content-Length", 0))


def measure(out: str, size: int, appends: int, settings: Settings) -> dict:
    populate(out, size, settings)
    store = LedgerStore(out, settings)
    counter = Counted(out, settings)
    results = {}
    existing = Ledger([make_record(n) for n in range(size)])
    for how in ("write-once", "rewrite"):
        seconds, sizes = [], []
        for n in range(appends):
            record = make_record(size + n)
            before = counter.bytes if not counter.local else _folder_bytes(out)
            started = time.perf_counter()
            if how == "write-once":
                store.append(record)
            else:
                existing.records.append(record)
                write_output_text(output_location(out, JSONL_NAME), existing.to_jsonl(), settings)
                write_output_text(output_location(out, CSV_NAME), existing.to_csv(), settings)
            seconds.append(time.perf_counter() - started)
            after = counter.bytes if not counter.local else _folder_bytes(out)
            # A local rewrite replaces the files: count what was written, not what the folder grew by.
            sizes.append(after - before if how == "write-once" or not counter.local else
                         len(existing.to_jsonl().encode()) + len(existing.to_csv().encode()))
        results[how] = {"seconds": statistics.median(seconds), "bytes": statistics.median(sizes)}
    return results


def _folder_bytes(out: str) -> int:
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())


def manifest_parse(rows: int) -> float:
    from records.manifest import parse_manifest

    lines = ["clip_id,image,audio,prompt,sample_steps,seed"]
    lines += [f"c{n},https://cdn.example.com/p/{n}.jpg,https://cdn.example.com/a/{n}.wav,A person speaking,20,{n}"
              for n in range(rows)]
    text = "\n".join(lines) + "\n"
    started = time.perf_counter()
    parsed = parse_manifest(text, None, Settings())
    elapsed = time.perf_counter() - started
    assert len(parsed.rows) == rows, (len(parsed.rows), parsed.invalid[:3])
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--appends", type=int, default=20)
    parser.add_argument("--manifest-rows", type=int, default=10000)
    args = parser.parse_args()

    import logging
    import os

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench-ledger")
    print(f"{'store':6} {'records':>8} | {'write-once B':>12} {'s':>8} | {'rewrite B':>12} {'s':>8} | bytes x  seconds x")
    try:
        with tempfile.TemporaryDirectory(prefix="s2v-ledger-bench-") as tmp:
            for size in args.sizes:
                for store in ("local", "s3"):
                    settings = Settings(cache_dir=Path(tmp) / "cache", s3_endpoint_url=endpoint)
                    out = f"s3://bench-ledger/size-{size}" if store == "s3" else str(Path(tmp) / f"size-{size}")
                    result = measure(out, size, args.appends, settings)
                    once, rewrite = result["write-once"], result["rewrite"]
                    print(f"{store:6} {size:>8} | {once['bytes']:>12,.0f} {once['seconds']:>8.4f} | "
                          f"{rewrite['bytes']:>12,.0f} {rewrite['seconds']:>8.4f} | "
                          f"{rewrite['bytes'] / once['bytes']:7.0f}  {rewrite['seconds'] / once['seconds']:8.1f}")
    finally:
        server.stop()
    elapsed = manifest_parse(args.manifest_rows)
    print(f"parse + validate a {args.manifest_rows:,}-row manifest: {elapsed:.2f} s (target < 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
