"""The twin's instance metadata service: IMDSv2 only, as EC2 with `http_tokens: required`.

Runs in the router namespace on 169.254.169.254:80. Like EC2's:
- `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600) returns a
  session token, good for that instance only; without the header, 400; a request
  carrying `X-Forwarded-For` (a proxy in the way), 403.
- Every `GET` needs a live token in `X-aws-ec2-metadata-token`: without one, 401
  Unauthorized. This is what breaks IMDSv1-only clients (s3fs before 1.91) on AWS.
- Values are per instance, told apart by the caller's address, from a JSON file the
  twin writes (`{address: {"instance-id": ..., ...}}`) and may change while it runs.

Usage: python -m ipfleet.twin.instance_metadata NODES_JSON [--address 169.254.169.254] [--port 80]
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOKEN_TTL_MAX = 21600
CREDENTIALS_PREFIX = "meta-data/iam/security-credentials/"


class Metadata:
    """The per-instance values, re-read whenever the twin rewrites the file."""

    def __init__(self, path: Path):
        self.path = path
        self._mtime = -1.0
        self._nodes: dict[str, dict] = {}
        self._lock = threading.Lock()
        # token -> (caller address, expiry on the monotonic clock)
        self.tokens: dict[str, tuple[str, float]] = {}

    def node(self, address: str) -> dict | None:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            if mtime != self._mtime:
                self._nodes, self._mtime = json.loads(self.path.read_text()), mtime
            return self._nodes.get(address)


def credentials(node: dict) -> str:
    """Role credentials in EC2's format; moto takes any key, so they are fixed strings."""
    now = datetime.now(UTC).replace(microsecond=0)
    return json.dumps(
        {
            "Code": "Success",
            "LastUpdated": now.isoformat().replace("+00:00", "Z"),
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIATWIN" + node["instance-id"][-12:].upper(),
            "SecretAccessKey": "twin-secret",
            "Token": "twin-session-token",
            "Expiration": (now + timedelta(hours=6)).isoformat().replace("+00:00", "Z"),
        }
    )


def lookup(node: dict, path: str) -> str | None:
    """The value at `path` (below /latest/), a listing for a folder, or None."""
    values = {f"meta-data/{k}": str(v) for k, v in node.items() if k != "iam-role" and v is not None}
    role = node.get("iam-role")
    if role:
        values[f"{CREDENTIALS_PREFIX}{role}"] = credentials(node)
        values["meta-data/iam/info"] = json.dumps(
            {"Code": "Success", "InstanceProfileArn": f"arn:aws:iam::123456789012:instance-profile/{role}"}
        )
    if path in values:
        return values[path]
    folder = path.rstrip("/") + "/"
    children = sorted(
        {
            k[len(folder) :].split("/", 1)[0] + ("/" if "/" in k[len(folder) :] else "")
            for k in values
            if k.startswith(folder)
        }
    )
    return "\n".join(children) if children else None


def handler_for(metadata: Metadata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "EC2ws"

        def log_message(self, format: str, *args) -> None:  # quiet: nodes poll
            return

        def _answer(self, status: int, body: str = "", headers: dict | None = None) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") != "/latest/api/token":
                return self._answer(404)
            if self.headers.get("X-Forwarded-For"):
                return self._answer(403)
            try:
                ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
            except ValueError:
                return self._answer(400)
            if not 1 <= ttl <= TOKEN_TTL_MAX:
                return self._answer(400)
            token = secrets.token_urlsafe(32)
            metadata.tokens[token] = (self.client_address[0], time.monotonic() + ttl)
            self._answer(200, token, {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

        def do_GET(self) -> None:  # noqa: N802
            token = self.headers.get("X-aws-ec2-metadata-token", "")
            owner, expiry = metadata.tokens.get(token, ("", 0.0))
            if owner != self.client_address[0] or expiry < time.monotonic():
                return self._answer(401)  # IMDSv1 (no token) is refused: http_tokens is required
            node = metadata.node(self.client_address[0])
            if node is None or not self.path.startswith("/latest/"):
                return self._answer(404)
            value = lookup(node, self.path[len("/latest/") :])
            if value is None:
                return self._answer(404)
            self._answer(200, value)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nodes", type=Path)
    parser.add_argument("--address", default="169.254.169.254")
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.address, args.port), handler_for(Metadata(args.nodes)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
