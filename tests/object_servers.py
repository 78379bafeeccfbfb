"""Real servers for the object storage tests and benchmark: moto's S3 server (with
authentication on, so that a bucket policy can deny), a TCP proxy in front of it that sees
every request and can cut a connection mid-response, and a static HTTP server that honours
Range requests as CDNs do."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_REQUEST = re.compile(rb"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 with IAM enforced: one user whose policy allows
    everything but reading objects of bucket ``locked`` and listing bucket ``hidden``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # the first requests (creating the user, its policy and key) need no signature
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="vidfeat")
        iam.put_user_policy(UserName="vidfeat", PolicyName="corpus", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:GetObject",
                 "Resource": "arn:aws:s3:::locked/*"},
                # AWS checks s3:ListBucket for a listing; moto 5.2.6 enforces the calls' names
                {"Effect": "Deny", "Action": ["s3:ListBucket", "s3:ListObjects",
                                             "s3:ListObjectsV2"],
                 "Resource": "arn:aws:s3:::hidden"},
            ]}))
        key = iam.create_access_key(UserName="vidfeat")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def client(self, endpoint: str | None = None):  # a boto3 S3 client, as a user has one
        import boto3

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint,
                            region_name="us-east-1", aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class Proxy:
    """A TCP proxy that records each HTTP request line passing through and the bytes each
    connection returns; ``cut`` = (pattern, bytes): a response to a request whose line
    matches the pattern is cut off (both sockets closed) after that many bytes, as a dropped
    connection does."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.bytes_down = 0
        self.cut: tuple[str, int] | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.requests, self.bytes_down = [], 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            state = {"line": "", "sent": 0}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state),
                             daemon=True).start()

    def _up(self, source: socket.socket, target: socket.socket, state: dict) -> None:
        try:
            while data := source.recv(1 << 16):
                for found in _REQUEST.finditer(data):
                    line = f"{found.group(1).decode()} {found.group(2).decode()}"
                    state["line"], state["sent"] = line, 0
                    with self.lock:
                        self.requests.append(line)
                target.sendall(data)
        except OSError:
            pass
        _close(source, target)

    def _down(self, source: socket.socket, target: socket.socket, state: dict) -> None:
        try:
            while data := source.recv(1 << 16):
                cut = self.cut
                if cut and re.search(cut[0], state["line"]):
                    allowed = max(0, cut[1] - state["sent"])
                    if len(data) > allowed:
                        target.sendall(data[:allowed])
                        break  # the connection drops mid-response
                state["sent"] += len(data)
                with self.lock:
                    self.bytes_down += len(data)
                target.sendall(data)
        except OSError:
            pass
        _close(source, target)


def _close(*sockets: socket.socket) -> None:
    for each in sockets:
        try:
            each.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        each.close()


class _RangeHandler(SimpleHTTPRequestHandler):
    """Python's static file handler with single Range requests (206), as CDNs serve."""

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[override]
        self.server.requests.append(  # type: ignore[attr-defined]
            f"{self.command} {self.path} {self.headers.get('Range', '')}".strip())
        found = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if found is None or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start = int(found.group(1))
        end = min(int(found.group(2)) if found.group(2) else size - 1, size - 1)
        handle = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.end_headers()
        return _Limited(handle, end - start + 1)


class _Limited:
    def __init__(self, handle, size: int) -> None:
        self.handle, self.left = handle, size

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.handle.close()


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[ThreadingHTTPServer]:
    """A static HTTP server for ``directory`` on 127.0.0.1 (plain http, as https:// sources
    are read the same way), serving in a daemon thread while inside; ``requests`` lists what
    it was asked."""
    handler = functools.partial(_RangeHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []  # type: ignore[attr-defined]  # "GET /path bytes=0-99" of each
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
