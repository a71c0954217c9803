"""The official images ipfleet knows by name (`ipfleet:image`), in one table.

The cloud side looks each up by publisher and name; the twin builds the same
release with debootstrap; the settings check refuses what an image cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfficialImage:
    name: str
    # The AWS account that publishes it, and its AMI name pattern ({arch}: amd64 or arm64).
    owner: str
    name_pattern: str
    # The Debian release the twin builds for it (debootstrap suite); None: not buildable here.
    twin_suite: str | None
    # s3fs before 1.91 cannot get IAM role credentials when IMDSv2 is required
    # (s3fs-fuse #1762): Debian 12 ships 1.90, Debian 13 1.95, Ubuntu 24.04 1.93.
    s3fs_imdsv2: bool


IMAGES = {
    image.name: image
    for image in (
        OfficialImage("debian-13", "136693071363", "debian-13-{arch}-*", "trixie", True),
        OfficialImage("debian-12", "136693071363", "debian-12-{arch}-*", "bookworm", False),
        OfficialImage(
            "ubuntu-24.04", "099720109477", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*", None, True
        ),
    )
}
DEFAULT_IMAGE = "debian-13"
