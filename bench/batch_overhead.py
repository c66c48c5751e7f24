"""Batch overhead and stage overlap, tiny checkpoint, one run.

(a) the batch flow over N rows: row wall time against the pipeline's own generation time;
(b) the same batch with inputs served over HTTP with 1 s of latency per file: the fraction of wall
    time the generator was busy, overlapped (the flow) against the same stages run strictly one
    after another.

    .venv/bin/python bench/batch_overhead.py [--rows 4] [--latency 1.0]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTRAIT, SPEECH = ROOT / "examples/portrait_anna.jpg", ROOT / "examples/speech_short.wav"


def slow_file_server(latency: float) -> ThreadingHTTPServer:
    files = {"/portrait.jpg": PORTRAIT.read_bytes(), "/speech.wav": SPEECH.read_bytes()}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            time.sleep(latency)  # a distant origin
            body = files["/portrait.jpg" if self.path.endswith(".jpg") else "/speech.wav"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def manifest(rows: int, image: str, audio: str, tag: str) -> str:
    # Distinct clip ids and URLs per row: every row is generated (no resume), every file fetched.
    lines = [f"{tag}-{i},{image.format(i=i)},{audio.format(i=i)},15,{i}" for i in range(rows)]
    return "clip_id,image,audio,sample_steps,seed\n" + "\n".join(lines) + "\n"


def flow_window(records: list[dict]) -> tuple[float, float, float]:
    """(wall seconds from the first row's start to the last row's end, pipeline s, generate-task s)."""
    ends = [datetime.fromisoformat(r["finished_at"]).timestamp() for r in records]
    starts = [end - r["total_time"] for end, r in zip(ends, records)]
    return max(ends) - min(starts), sum(r["pipeline_time"] for r in records), sum(r["generate_s"] for r in records)


def run_sequential(rows: int, base: str, settings) -> tuple[float, float, float]:
    """The same four tasks in a flow, each row fully done before the next starts."""
    from prefect import flow

    @flow(name="s2v-bench-sequential")
    def sequential():
        return _sequential_rows(rows, base, settings)

    return sequential()


def _sequential_rows(rows: int, base: str, settings) -> tuple[float, float, float]:
    from model_runtime.request import GenerationRequest
    from tasks.download import download_inputs
    from tasks.encode import encode_audio
    from tasks.generate import generate_video
    from tasks.upload import upload_video

    work = settings.cache_dir / "seq"
    pipeline = generate = 0.0
    started = time.perf_counter()
    for i in range(rows):
        inputs = download_inputs(f"{base}/portrait-seq{i}.jpg", f"{base}/speech-seq{i}.wav", work, settings)
        features = encode_audio(f"seq{i}", inputs.audio_path, settings)["features"]
        request = GenerationRequest(image_path=inputs.image_path, audio_path=inputs.audio_path, sample_steps=15, seed=i)
        made = generate_video(f"seq{i}", request, features, work / f"seq{i}.mp4", settings)
        upload_video(made["result"].video_path, f"seq{i}.mp4", settings.output, settings)
        pipeline += made["result"].pipeline_time
        generate += made["seconds"]
    return time.perf_counter() - started, pipeline, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the HTTP server waits per file")
    args = parser.parse_args()

    from cli.batch import prepare_prefect

    work = Path(tempfile.mkdtemp(prefix="s2v-bench-"))
    os.environ.update({"S2V_CACHE_DIR": str(work / "cache"), "S2V_DEVICE": "cpu", "S2V_ALLOWED_HOSTS": '["127.0.0.1"]',
                       "PREFECT_HOME": str(work / "prefect")})
    prepare_prefect(verbose=False)
    from flows.batch import batch
    from s2v.settings import Settings

    server = slow_file_server(args.latency)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    settings = Settings(output=str(work / "seq-out"))

    # Warm the model and Prefect once so neither run pays their start-up.
    batch(manifest=manifest(1, str(PORTRAIT), str(SPEECH), "warmup"), output=str(work / "warmup"))

    local = batch(manifest=manifest(args.rows, str(PORTRAIT), str(SPEECH), "local"), output=str(work / "a"))
    wall_a, pipeline_a, _ = flow_window(local["records"])
    remote = batch(manifest=manifest(args.rows, base + "/portrait-{i}.jpg", base + "/speech-{i}.wav", "http"),
                   output=str(work / "b"))
    wall_b, pipeline_b, generate_b = flow_window(remote["records"])
    wall_s, pipeline_s, generate_s = run_sequential(args.rows, base, settings)

    print(f"tiny checkpoint, {args.rows} rows of {SPEECH.name} (15 steps), CPU; HTTP latency {args.latency:.1f} s/file")
    print(f"(a) local inputs: {wall_a / args.rows:.2f} s per row vs {pipeline_a / args.rows:.2f} s in the pipeline "
          f"-> overhead {100 * (wall_a / pipeline_a - 1):.1f}% (target <= 5%)")
    mean = lambda key: sum(r[key] or 0 for r in local["records"]) / len(local["records"])  # noqa: E731
    print(f"    per row, mean s: download {mean('download_s'):.2f}, encode {mean('encode_s'):.2f}, generate task "
          f"{mean('generate_s'):.2f} (pipeline {mean('pipeline_time'):.2f}), upload {mean('upload_s'):.2f}")
    print(f"(b) {'':30}{'overlapped (flow)':>20}{'sequential':>14}")
    print(f"    {'wall s':30}{wall_b:>20.2f}{wall_s:>14.2f}")
    print(f"    {'generator busy (pipeline calls)':30}{100 * pipeline_b / wall_b:>19.1f}%{100 * pipeline_s / wall_s:>13.1f}%")
    print(f"    {'generate task busy':30}{100 * generate_b / wall_b:>19.1f}%{100 * generate_s / wall_s:>13.1f}%")
    print(f"    sequential/overlapped wall ratio: {wall_s / wall_b:.2f}x (target: busy >= 90% overlapped)")
    server.shutdown()


if __name__ == "__main__":
    main()
