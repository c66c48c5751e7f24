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


class FileServer:
    """http.server with the routes the tests need, counting requests per path."""

    def __init__(self):
        self.hits: Counter[str] = Counter()
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
        handler.wfile.write(body)

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
