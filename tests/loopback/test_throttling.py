"""The laptop's AWS calls under throttling (ipfleet/aws.py), against moto behind a proxy
that answers as AWS does past an account's quota: `ThrottlingException`. A call retries,
backing off, and goes through; one throttled every time gives up after its bound and
says so."""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from bootstrap.ipfleet_node import wire
from ipfleet import aws
from ipfleet.node_status import read_all_records


class ThrottlingProxy:
    """Forwards to moto, but answers the first THROTTLE requests (None: every one) of the
    JSON-protocol services (SSM) with AWS's throttling error."""

    def __init__(self, upstream: str, throttle: int | None):
        self.upstream = urlsplit(upstream)
        self.throttle = throttle
        self.throttled = 0
        self.forwarded = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                json_protocol = "json" in (self.headers.get("Content-Type") or "")
                if json_protocol and (proxy.throttle is None or proxy.throttled < proxy.throttle):
                    proxy.throttled += 1
                    answer = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                proxy.forwarded += 1
                self._forward("POST", body)

            def do_GET(self) -> None:  # noqa: N802
                proxy.forwarded += 1
                self._forward("GET", None)

            def _forward(self, method: str, body: bytes | None) -> None:
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(method, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def throttled(aws_env, monkeypatch):
    """A stack's controller record in moto; returns a function that puts a proxy throttling
    N requests in front of it (for the laptop's clients) and gives the proxy back."""
    ssm = aws.client("ssm", "us-east-1")
    record = {"format": 1, "role": "controller", "instanceId": "i-0123456789abcdef0", "phase": "running"}
    ssm.put_parameter(Name=wire.controller_record_parameter("thr"), Value=json.dumps(record), Type="String")
    proxies = []

    def behind(throttle: int | None) -> ThrottlingProxy:
        proxy = ThrottlingProxy(aws_env["AWS_ENDPOINT_URL"], throttle)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        return proxy

    yield behind
    for proxy in proxies:
        proxy.close()


def test_a_throttled_call_backs_off_and_goes_through(throttled):
    proxy = throttled(2)
    found = read_all_records(aws.client("ssm", "us-east-1"), aws.client("s3", "us-east-1"), "thr")
    assert [r.instance_id for r in found.valid] == ["i-0123456789abcdef0"]
    assert proxy.throttled == 2 and proxy.forwarded >= 1


def test_a_call_throttled_every_time_gives_up_after_its_bound_and_says_so(throttled, monkeypatch):
    import botocore.exceptions

    monkeypatch.setattr(aws, "MAX_ATTEMPTS", 3)  # the bound, made short for the test
    proxy = throttled(None)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        read_all_records(aws.client("ssm", "us-east-1"), aws.client("s3", "us-east-1"), "thr")
    assert proxy.throttled == 3 and proxy.forwarded == 0
    assert "ThrottlingException" in str(refused.value) and "reached max retries: 2" in str(refused.value)
