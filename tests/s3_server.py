"""S3 for tests: moto's standalone server over real HTTP on loopback, and a fault-injecting proxy in front of it.

Fixtures (registered by tests/conftest.py):
- `s3_server` (session): starts `moto.server` in a subprocess on 127.0.0.1:<free port> with fake credentials in
  the environment, creates a bucket, yields {"endpoint", "bucket", "region"}; stops the server at the end (it
  also exits by itself if the test process dies: it watches its stdin pipe).
- `s3` (function): points operators.storage at the server for one test (and AWS_ENDPOINT_URL_S3, so Ray workers
  and subprocesses started during the test find it too) and hands out a fresh prefix: `s3.uri("a/b.mp4")`.
- `fault_proxy` (function): a started FaultProxy in front of the server (no faults until told).

Helpers for other test files: `configure_storage_for(endpoint, **opts)`, `FaultProxy`, `list_multipart_uploads`.
"""
from __future__ import annotations

import collections
import os
import random
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

import pytest

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNSET_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
BUCKET = "longvid-test"

_SERVER_BOOT = (
    "import os, sys, threading\n"
    "def _watch():\n"
    "    sys.stdin.read()\n"  # the parent closed the pipe (ended or died): exit
    "    os._exit(0)\n"
    "threading.Thread(target=_watch, daemon=True).start()\n"
    "from moto.server import main\n"
    "main(['-H', '127.0.0.1', '-p', sys.argv[1]])\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer at {url} within {timeout}s: {last}")


class MotoServer:
    """moto.server in a subprocess on loopback. Use as a context manager."""

    def __init__(self, port: int | None = None, env: dict | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._env = env
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 60.0) -> "MotoServer":
        env = dict(os.environ)
        env.update(FAKE_ENV)
        env.update(self._env or {})
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_BOOT, str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log, env=env,
        )
        try:
            _wait_http(self.endpoint + "/moto-api/", timeout, self.proc)
        except BaseException as e:
            self.stop()
            raise RuntimeError(f"{e}\n(is moto[server] installed?) server stderr:\n{self.stderr_tail()}") from e
        return self

    def stderr_tail(self, n: int = 3000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-n:]

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def boto_client(endpoint: str):
    """A plain boto3 client (for test set-up and inspection, bypassing operators.storage)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def configure_storage_for(endpoint: str, **opts):
    """Point operators.storage at `endpoint` (fast retries by default, suitable for tests). Returns S3Options."""
    from longvid.operators import storage

    kw = {"max_attempts": 6, "base_delay": 0.01, "max_delay": 0.2, "connect_timeout": 5.0, "read_timeout": 10.0}
    kw.update(opts)
    return storage.configure_s3(storage.S3Options(endpoint_url=endpoint, **kw))


def list_multipart_uploads(endpoint: str, bucket: str, prefix: str = "") -> list[dict]:
    resp = boto_client(endpoint).list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return list(resp.get("Uploads", []) or [])


# --------------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server():
    saved = {k: os.environ.get(k) for k in list(FAKE_ENV) + list(UNSET_ENV)}
    for k in UNSET_ENV:
        os.environ.pop(k, None)
    os.environ.update(FAKE_ENV)
    try:
        with MotoServer() as srv:
            boto_client(srv.endpoint).create_bucket(Bucket=BUCKET)
            yield {"endpoint": srv.endpoint, "bucket": BUCKET, "region": "us-east-1"}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        from longvid.operators import storage

        storage.configure_s3()


@dataclass
class S3Env:
    endpoint: str
    bucket: str
    prefix: str  # s3://bucket/<unique>/

    def uri(self, *parts: str) -> str:
        return "/".join([self.prefix.rstrip("/"), *[p.strip("/") for p in parts if p]])


@pytest.fixture
def s3(s3_server, monkeypatch):
    from longvid.operators import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server["endpoint"])
    configure_storage_for(s3_server["endpoint"])
    yield S3Env(s3_server["endpoint"], s3_server["bucket"], f"s3://{s3_server['bucket']}/{uuid.uuid4().hex[:12]}/")
    storage.configure_s3()


@pytest.fixture
def fault_proxy(s3_server):
    with FaultProxy(s3_server["endpoint"]) as proxy:
        yield proxy


# --------------------------------------------------------------------------------------------------------------
# FaultProxy
# --------------------------------------------------------------------------------------------------------------

FAULT_KINDS = ("503", "500", "reset", "cut", "reset_early", "stall", "403")
_ERR_BODY = {
    "503": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
}
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade",
                "expect"}


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, addr, handler, proxy: "FaultProxy"):
        self.proxy = proxy
        self.slots = threading.BoundedSemaphore(proxy.max_connections)
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(timeout=30):  # bounded threads: refuse instead of piling up
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _ResetConnection(Exception):
    pass


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        proxy = self.server.proxy
        sock: socket.socket = self.request
        sock.settimeout(proxy.timeout)
        rfile = sock.makefile("rb")
        try:
            for _ in range(10_000):  # keep-alive loop, bounded
                req = self._read_request(rfile, sock)
                if req is None:
                    return
                method, target, headers, body = req
                fault = proxy._decide(method, target, headers)
                if fault in _ERR_BODY:
                    status, reason, code, msg = _ERR_BODY[fault]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{msg}'
                           f"</Message><RequestId>fault</RequestId></Error>").encode()
                    hdrs = [("Content-Type", "application/xml"), ("Content-Length", str(len(xml)))]
                    sock.sendall(self._head(status, reason, hdrs) + (b"" if method == "HEAD" else xml))
                    continue
                if fault == "reset_early":
                    raise _ResetConnection
                if fault == "stall":  # no answer for a while (client read timeout), then a reset
                    time.sleep(proxy.stall_seconds)
                    raise _ResetConnection
                status, reason, rhdrs, data, close = self._forward(method, target, headers, body)
                head = self._head(status, reason, rhdrs)
                if fault in ("reset", "cut"):
                    # headers and half the body (half the headers if there is no body), then a TCP reset
                    # ("reset": bytes still in flight may be lost) or an orderly close ("cut": they all arrive)
                    sock.sendall(head + data[: len(data) // 2] if data else head[: len(head) // 2])
                    if fault == "cut":
                        return
                    raise _ResetConnection
                sock.sendall(head + data)
                if close or any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
                    return
        except _ResetConnection:
            rfile.close()
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            sock.close()
        except (OSError, ValueError):
            return
        finally:
            try:
                rfile.close()
            except OSError:
                pass

    @staticmethod
    def _head(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _read_request(self, rfile, sock):
        line = rfile.readline(65537)
        while line in (b"\r\n", b"\n"):
            line = rfile.readline(65537)
        if not line:
            return None
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            return None
        method, target, _ = parts
        headers: list[tuple[str, str]] = []
        for _ in range(200):
            h = rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        hmap = {k.lower(): v for k, v in headers}
        if hmap.get("expect", "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if hmap.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                n = int(rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(rfile.read(n))
                rfile.readline(16)
            body = b"".join(chunks)
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
            headers.append(("Content-Length", str(len(body))))
        else:
            body = rfile.read(int(hmap.get("content-length", "0") or 0))
        return method, target, headers, body

    def _forward(self, method, target, headers, body):
        import http.client

        proxy = self.server.proxy
        conn = http.client.HTTPConnection(proxy.up_host, proxy.up_port, timeout=proxy.timeout)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                if k.lower() not in _HOP_HEADERS:
                    conn.putheader(k, v)
            conn.putheader("Connection", "close")
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
            out = []
            for k, v in resp.getheaders():
                kl = k.lower()
                if kl in _HOP_HEADERS or (kl == "content-length" and method != "HEAD"):
                    continue
                out.append((k, v))
            if method != "HEAD" and resp.status not in (204, 304):
                out.append(("Content-Length", str(len(data))))
            return resp.status, resp.reason, out, data, False
        finally:
            conn.close()


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that injects transient faults.

    Fault kinds: "503" (SlowDown), "500" (InternalError) -- answered by the proxy, the request never reaches the
    server; "reset" -- forwarded, then the response is cut after its headers and half its body with a TCP reset
    (mid-body of a ranged GET, a PUT whose answer is lost, ...); "cut" -- the same with an orderly close instead
    of a reset, so the bytes sent before the cut surely reach the client; "reset_early" -- reset before any response;
    "stall" -- no answer for `stall_seconds`, then a reset (client read timeouts). "403" (AccessDenied) is a
    permanent error, for checking that such errors are not retried.

    Which requests get a fault: `schedule` (a list consumed one entry per matching request; None = no fault), then
    `probability` (each matching request gets a fault drawn from `kinds`, from a seeded RNG). `match(method,
    target, headers) -> bool` restricts both to some requests (e.g. ranged GETs). Change at run time with `set()`.
    Counters: `requests`, `faults` (by kind), `log` [(method, target, range header or None, fault)].
    """

    def __init__(self, upstream: str, schedule: Iterable[str | None] | None = None, probability: float = 0.0,
                 kinds: Iterable[str] = ("503", "500", "reset"), seed: int = 0,
                 match: Callable[[str, str, list], bool] | None = None, max_connections: int = 32,
                 timeout: float = 30.0, stall_seconds: float = 1.5):
        hostport = upstream.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.partition(":")
        self.up_host, self.up_port = host, int(port or 80)
        self.max_connections = max_connections
        self.timeout = timeout
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.requests = 0
        self.faults: collections.Counter = collections.Counter()
        self.log: collections.deque = collections.deque(maxlen=10_000)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.match: Callable | None = None
        self.set(schedule=schedule or [], probability=probability, kinds=kinds, match=match)

    def set(self, schedule: Iterable[str | None] | None = None, probability: float | None = None,
            kinds: Iterable[str] | None = None, match: Callable | None = None, clear_match: bool = False) -> None:
        with self._lock:
            if schedule is not None:
                sched = list(schedule)
                bad = [k for k in sched if k is not None and k not in FAULT_KINDS]
                if bad:
                    raise ValueError(f"FaultProxy: unknown fault kinds {bad}; known: {FAULT_KINDS}")
                self._schedule = collections.deque(sched)
            if probability is not None:
                if not 0.0 <= probability <= 1.0:
                    raise ValueError(f"FaultProxy: probability must be in [0, 1], got {probability}")
                self.probability = probability
            if kinds is not None:
                ks = tuple(kinds)
                bad = [k for k in ks if k not in FAULT_KINDS]
                if bad or not ks:
                    raise ValueError(f"FaultProxy: bad kinds {ks}; known: {FAULT_KINDS}")
                self.kinds = ks
            if match is not None or clear_match:
                self.match = match

    def _decide(self, method: str, target: str, headers: list) -> str | None:
        with self._lock:
            self.requests += 1
            fault = None
            if self.match is None or self.match(method, target, headers):
                if self._schedule:
                    fault = self._schedule.popleft()
                elif self.probability and self._rng.random() < self.probability:
                    fault = self._rng.choice(self.kinds)
            if fault:
                self.faults[fault] += 1
            rng = next((v for k, v in headers if k.lower() == "range"), None)
            self.log.append((method, target, rng, fault))
            return fault

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def start(self) -> "FaultProxy":
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="FaultProxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def is_ranged_get(method: str, target: str, headers: list) -> bool:
    return method == "GET" and any(k.lower() == "range" for k, _ in headers)


def is_upload_part(method: str, target: str, headers: list) -> bool:
    return method == "PUT" and "uploadId=" in target and "partNumber=" in target
