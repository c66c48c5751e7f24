"""Screenshots of what an operator sees in the Prefect UI after a batch: run state, cards, pictures.

Starts a Prefect server with its UI (temporary home, SQLite), runs a small batch on the tiny checkpoint
(one row fails on purpose) into a local folder and, with --s3, into moto's S3 server (so pictures are
presigned URLs instead of inlined ones), then opens the pages in headless Chromium and saves PNGs:
the runs list, the run's artifacts tab, and each card. Needs Debian's chromium (`apt-get install chromium`).

    .venv/bin/python tools/ui_screenshot.py --out /tmp/ui-shots [--s3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
SETTLE_S = 8.0  # the UI is a single-page app: it draws after its API calls, well after the load event


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 240
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the Prefect server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(1)


CLICK_SCRIPT = """(() => { const el = [...document.querySelectorAll('button, a, li, [role=tab]')]
    .find(e => e.innerText && e.innerText.trim() === %s); if (el) { el.click(); return true; } return false; })()"""


def _small_png(data: bytes, colours: int) -> bytes:
    """A screenshot in a palette of `colours`: a UI's flat colours survive, the file is a fraction of the size."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").quantize(colors=colours).save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()


class Browser:
    """Headless Chromium driven over the DevTools protocol: open a page, let it settle, capture it."""

    def __init__(self, chromium: str, profile: Path, width: int = 1500):
        self.port, self.width = free_port(), width
        self.process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={self.port}",
             f"--window-size={width},1800", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its helper processes end with it (close() signals the group)
        self.socket_url = self._page_socket()
        self._id = 0

    def _page_socket(self) -> str:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{self.port}/json", timeout=2).json()
                return next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
            except (httpx.HTTPError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise SystemExit("chromium did not open its DevTools port")
                time.sleep(0.5)

    def _session(self):
        from websockets.sync.client import connect

        ws = connect(self.socket_url, max_size=64 * 2**20)

        def call(method: str, **params):
            self._id += 1
            ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
            while True:
                reply = json.loads(ws.recv())
                if reply.get("id") == self._id:
                    return reply.get("result", {})

        return ws, call

    def open(self, url: str, wait_for: tuple[str, ...] = (), timeout_s: float = SETTLE_S, height: int = 1800,
             click: str | None = None, shot: Path | None = None, colours: int = 0) -> str:
        """Open `url` (then `click` the element whose text it is: a tab); return the page's visible text once it
        holds every `wait_for` text, or when time is up; `shot`: save it as a PNG (`colours` > 0 keeps it small)."""
        import base64

        ws, call = self._session()
        with ws:  # one DevTools session: the viewport set here lasts until the picture is taken
            call("Emulation.setDeviceMetricsOverride", width=self.width, height=height, deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout_s
            clicked = click is None
            while True:
                time.sleep(1.0)
                if not clicked:
                    clicked = self._evaluate(call, CLICK_SCRIPT % json.dumps(click))
                text = self._evaluate(call, "document.body ? document.body.innerText : ''") or ""
                if (clicked and wait_for and all(needle in text for needle in wait_for)) or time.monotonic() > deadline:
                    break
            if shot is not None:
                time.sleep(1.0)  # pictures inside cards load after the text
                data = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
                shot.write_bytes(_small_png(data, colours) if colours else data)
        return text

    @staticmethod
    def _evaluate(call, expression: str):
        return call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def shoot(self, url: str, path: Path, height: int = 1800) -> None:
        self.open(url, height=height, shot=path)
        print(f"{path}  <- {url}")

    def close(self) -> None:
        import signal

        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def run_batch(output: str) -> str:
    """A 3-row batch (one broken row) through the real flow; returns the flow run id."""
    from flows.batch import batch

    broken = Path(tempfile.mkdtemp()) / "broken.jpg"
    broken.write_bytes(b"half an upload")
    manifest = (f"clip_id,image,audio,sample_steps\nanna,{EXAMPLES / 'portrait_anna.jpg'},{EXAMPLES / 'speech_short.wav'},15\n"
                f"chen,{EXAMPLES / 'portrait_chen.jpg'},{EXAMPLES / 'speech_short.wav'},15\n"
                f"broken,{broken},{EXAMPLES / 'speech_short.wav'},15\n")
    state = batch(manifest=manifest, output=output, return_state=True)
    return str(state.state_details.flow_run_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--s3", action="store_true", help="also a batch into moto's S3 (presigned pictures)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="s2v-ui-"))
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(work / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"{ui}/api"}  # the UI calls the API at this address
    env.pop("PREFECT_API_URL", None)
    log = work / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    moto = None
    try:
        wait_healthy(ui, server, log)
        os.environ.update(PREFECT_API_URL=f"{ui}/api", PREFECT_HOME=str(work / "home"), S2V_CHECKPOINT="tiny",
                          S2V_CACHE_DIR=str(work / "cache"), S2V_DEVICE="cpu", S2V_LOCAL_INPUTS="true",
                          PREFECT_LOGGING_LEVEL="WARNING")
        runs = {"local": run_batch(str(work / "out"))}
        if args.s3:
            import boto3
            from moto.server import ThreadedMotoServer

            os.environ.update(AWS_ACCESS_KEY_ID="ui", AWS_SECRET_ACCESS_KEY="ui", AWS_DEFAULT_REGION="us-east-1")
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            moto.start()
            host, moto_port = moto.get_host_and_port()
            os.environ["S2V_S3_ENDPOINT_URL"] = f"http://{host}:{moto_port}"
            boto3.client("s3", endpoint_url=os.environ["S2V_S3_ENDPOINT_URL"]).create_bucket(Bucket="ui-videos")
            runs["s3"] = run_batch("s3://ui-videos/batch")

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        browser = Browser(chromium, work / "chromium")
        try:
            browser.shoot(f"{ui}/runs", args.out / "runs.png", height=900)
            with get_client(sync_client=True) as client:
                for name, run_id in runs.items():
                    browser.shoot(f"{ui}/runs/flow-run/{run_id}?tab=Artifacts", args.out / f"{name}-artifacts.png")
                    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
                    for artifact in artifacts:
                        label = (artifact.key or artifact.type).rsplit("-", 1)[-1]
                        browser.shoot(f"{ui}/artifacts/artifact/{artifact.id}", args.out / f"{name}-{label}.png")
        finally:
            browser.close()
    finally:
        if moto is not None:
            moto.stop()
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
