"""Real servers on loopback that tests talk to: an HTTP file server with failure routes, moto's S3."""
from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

from tests.conftest import EXAMPLES

PORTRAIT = (EXAMPLES / "portrait_anna.jpg").read_bytes()
SPEECH = (EXAMPLES / "speech_hello.wav").read_bytes()
BIG = b"\0" * (3 * 1024 * 1024)
SECRET = "hunter2-SECRET"
DRIP_SECONDS = 2.0  # the slow-drip routes send one byte this often
DRIP_BYTES = 60  # ... and give up after this many, so a test that does not cut them still ends


class FileServer:
    """http.server with the routes the tests need, counting requests per path."""

    def __init__(self):
        self.hits: Counter[str] = Counter()
        self.files: dict[str, bytes] = {}  # served at /files/<name>, for content a test makes
        self.hosts: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                owner.hits[path] += 1
                owner.hosts.append(self.headers.get("Host", ""))
                owner.route(self, path)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def route(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        if path == "/portrait.jpg":
            return self.send(handler, 200, PORTRAIT)
        if path == "/speech.wav":
            return self.send(handler, 200, SPEECH)
        if path == "/flaky.wav":  # fails once, like a busy origin
            return self.send(handler, 503 if self.hits[path] == 1 else 200, SPEECH)
        if path == "/big.wav":
            return self.send(handler, 200, BIG)
        if path == "/big-unsized.wav":  # no Content-Length: the reader must count
            handler.send_response(200)
            handler.send_header("Connection", "close")
            handler.end_headers()
            try:
                for start in range(0, len(BIG), 65536):
                    handler.wfile.write(BIG[start:start + 65536])
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if path == "/slow.wav":
            time.sleep(2)
            return self.send(handler, 200, SPEECH)
        if path.startswith("/drip"):
            return self.drip(handler, path)
        if path.startswith("/files/") and path.removeprefix("/files/") in self.files:
            return self.send(handler, 200, self.files[path.removeprefix("/files/")])
        if path == "/signed.jpg":
            return self.send(handler, 403, b"expired")
        if path == "/redirect-relative":
            return self.redirect(handler, "/portrait.jpg")
        if path == "/redirect-private":
            return self.redirect(handler, self.url("/portrait.jpg", host="localhost"))
        return self.send(handler, 404, b"no such file")

    @staticmethod
    def send(handler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a deadline test)
            pass

    @staticmethod
    def drip(handler, path: str) -> None:
        """One byte every DRIP_SECONDS: a read timeout never fires, only a deadline can end it.

        /drip.wav announces a length, /drip-unsized.wav ends the body by closing (a cut connection
        looks complete), /drip-headers.wav trickles its header lines.
        """
        try:
            if path == "/drip-headers.wav":
                handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
                payload = b"X-Slow: " + b"x" * DRIP_BYTES
            else:
                handler.send_response(200)
                if path == "/drip-unsized.wav":
                    handler.send_header("Connection", "close")
                else:
                    handler.send_header("Content-Length", str(10 * DRIP_BYTES))
                handler.end_headers()
                payload = SPEECH[:DRIP_BYTES]
            for index in range(len(payload)):
                handler.wfile.write(payload[index:index + 1])
                handler.wfile.flush()
                time.sleep(DRIP_SECONDS)
        except (BrokenPipeError, ConnectionResetError):
            pass
        handler.close_connection = True

    @staticmethod
    def redirect(handler, location: str) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


def moto_server(buckets: tuple[str, ...]):
    """Starts moto's S3 server (s3fs needs a real endpoint); returns (server, endpoint URL)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for bucket in buckets:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return server, endpoint
