"""The node runtime (bootstrap/ipfleet_node/) as a wheel whose bytes depend on its source alone.

Nodes install the same files that are in the repository. The wheel is built here, in
memory, the same way on every machine: files in name order, one fixed timestamp and
mode, and no compression (zlib's output may differ between builds of zlib; the stack
stores the wheel once, so its size hardly matters). Its sha256 is then a name for the
source: the S3 key holds it, the node checks it before installing, and a plan diff
shows a change of the runtime as that one hash.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = "ipfleet_node"
SOURCE = Path(__file__).parent / PACKAGE
DISTRIBUTION = "ipfleet_node"
# The wheel's version stays put: the content hash tells runtimes apart.
VERSION = "1"
# A zip entry's time cannot be before 1980; any fixed time makes the bytes repeatable.
TIMESTAMP = (1980, 1, 1, 0, 0, 0)
# Where the stack keeps it in its runtime bucket.
KEY_PREFIX = "node-runtime"


@dataclass(frozen=True)
class RuntimeWheel:
    filename: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def key(self) -> str:
        """Its S3 key: a new runtime is a new object, and a node never gets a half-replaced one."""
        return f"{KEY_PREFIX}/{self.sha256}/{self.filename}"


def source_files(source: Path = SOURCE) -> dict[str, bytes]:
    """The package's modules by their path in the wheel (no caches, no tests)."""
    return {f"{PACKAGE}/{path.name}": path.read_bytes() for path in sorted(source.glob("*.py"))}


@cache
def runtime_wheel() -> RuntimeWheel:
    return build(source_files())


def build(files: dict[str, bytes]) -> RuntimeWheel:
    """A wheel of FILES ({path in the wheel: content}) with its metadata and RECORD."""
    dist_info = f"{DISTRIBUTION}-{VERSION}.dist-info"
    entries = dict(sorted(files.items()))
    entries[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {VERSION}\n"
        "Summary: ipfleet's node runtime: the agent, the keeper and the wire contract\n"
    ).encode()
    entries[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: ipfleet\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [f"{name},sha256={_digest(content)},{len(content)}" for name, content in entries.items()]
    entries[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as wheel:
        for name, content in entries.items():
            info = zipfile.ZipInfo(name, date_time=TIMESTAMP)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix, whatever system builds it
            wheel.writestr(info, content)
    return RuntimeWheel(f"{DISTRIBUTION}-{VERSION}-py3-none-any.whl", buffer.getvalue())


def _digest(content: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
