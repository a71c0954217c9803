"""A proxy in front of moto that throttles as AWS does past an account's quotas.

moto answers every call; AWS answers a call past its account's rate with an error that
each protocol spells its own way. This proxy forwards to moto, tells the calls apart by
API (`ssm:GetParameter`, `ec2:DescribeInstances`, `s3:PutObject`, ...), draws each from a
token bucket of its quota (several APIs may share one: Parameter Store's reads do), and
answers a call with no token as AWS would:

- JSON protocol (SSM): 400 `ThrottlingException`;
- EC2's query protocol: 503 `RequestLimitExceeded`;
- Auto Scaling's query protocol: 400 `Throttling`;
- S3: 503 `SlowDown`.

botocore retries each of these as throttling. Every call is logged (when, which API,
throttled or not, the instance it named if any), for benchmarks/aws_budget.py to count.
The loopback tests use THROTTLE_FIRST instead of buckets: the first N calls are refused.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# Signature V4 names the service in its credential scope: Credential=KEY/DATE/REGION/SERVICE/aws4_request.
_SCOPE = re.compile(r"Credential=[^/]+/\d+/[^/]+/([^/]+)/aws4_request")


@dataclass(frozen=True)
class Quota:
    """A token bucket: RATE calls a second, BURST at once; APIS draw from it."""

    apis: tuple[str, ...]
    rate: float
    burst: float


class Bucket:
    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.clock = clock
        self.at = clock()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


@dataclass(frozen=True)
class Call:
    at: float  # time.time()
    api: str
    throttled: bool
    instance: str | None = None
    source: str | None = None  # the caller's address


def api_of(method: str, path: str, headers, body: bytes) -> str:
    """`service:Action` for a request botocore sends."""
    scope = _SCOPE.search(headers.get("Authorization") or "")
    service = scope.group(1) if scope else "?"
    target = headers.get("X-Amz-Target")
    if target:  # JSON protocol: AmazonSSM.GetParameter
        return f"{service}:{target.rsplit('.', 1)[-1]}"
    if service == "s3":
        key = urlsplit(path).path.strip("/").partition("/")[2]
        verb = {"GET": "Get", "PUT": "Put", "HEAD": "Head", "DELETE": "Delete", "POST": "Post"}.get(method, method)
        return f"s3:{verb}{'Object' if key else 'Bucket'}"
    action = parse_qs(body.decode(errors="replace")).get("Action", ["?"])[0]
    return f"{service}:{action}"


def instance_named(body: bytes) -> str | None:
    """The instance a query-protocol call names (CompleteLifecycleAction's), if one."""
    found = parse_qs(body.decode(errors="replace")).get("InstanceId")
    return found[0] if found else None


def throttled_answer(api: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of AWS's refusal for API past its rate."""
    service = api.split(":", 1)[0]
    if service == "s3":
        body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        return 503, "application/xml", body.encode()
    if service == "ec2":
        body = (
            "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded."
            "</Message></Error></Errors><RequestID>throttled</RequestID></Response>"
        )
        return 503, "text/xml", body.encode()
    if service == "autoscaling":
        body = (
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>"
            "</Error><RequestId>throttled</RequestId></ErrorResponse>"
        )
        return 400, "text/xml", body.encode()
    body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
    return 400, "application/x-amz-json-1.1", body.encode()


class ThrottlingProxy:
    """Forwards to moto at UPSTREAM on 127.0.0.1 (a free port, or PORT), throttling by
    QUOTAS (API -> its bucket; an API in none is never throttled) or, for tests, the first
    THROTTLE_FIRST calls of SERVICES (None: every call)."""

    def __init__(
        self,
        upstream: str,
        quotas: list[Quota] | None = None,
        throttle_first: int | None = 0,
        services: tuple[str, ...] = ("ssm",),
        port: int = 0,
    ):
        self.upstream = urlsplit(upstream)
        self.buckets: dict[str, Bucket] = {}
        for quota in quotas or []:
            bucket = Bucket(quota.rate, quota.burst)
            self.buckets.update((api, bucket) for api in quota.apis)
        self.throttle_first = throttle_first
        self.services = services
        self.throttled = 0
        self.forwarded = 0
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def refuses(self, api: str) -> bool:
        bucket = self.buckets.get(api)
        if bucket is not None:
            return not bucket.take()
        if self.buckets or api.split(":", 1)[0] not in self.services:
            return False
        with self._lock:
            return self.throttle_first is None or self.throttled < self.throttle_first

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api = api_of(self.command, self.path, self.headers, body)
                refused = proxy.refuses(api)
                with proxy._lock:
                    proxy.calls.append(Call(time.time(), api, refused, instance_named(body), self.client_address[0]))
                    if refused:
                        proxy.throttled += 1
                    else:
                        proxy.forwarded += 1
                if refused:
                    status, kind, answer = throttled_answer(api)
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                self._forward(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve  # noqa: N815 (http.server's naming)

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port, timeout=60
                )
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    """`python -m ipfleet.twin.throttling UPSTREAM QUOTAS_JSON CALLS_FILE`: serve until
    SIGTERM (printing its URL first), then write every call to CALLS_FILE (JSON lines).
    QUOTAS_JSON: [{"apis": [...], "rate": R, "burst": B}]."""
    import signal
    import sys
    from pathlib import Path

    upstream, quotas_file, calls_file = sys.argv[1:4]
    quotas = [Quota(tuple(q["apis"]), q["rate"], q["burst"]) for q in json.loads(Path(quotas_file).read_text())]
    proxy = ThrottlingProxy(upstream, quotas)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print(proxy.url, flush=True)
    stopping.wait()
    with proxy._lock:
        calls = list(proxy.calls)
    Path(calls_file).write_text("".join(json.dumps(c.__dict__) + "\n" for c in calls))
    proxy.close()


if __name__ == "__main__":
    main()
