"""Settings every node gets, in one place: IMDSv2 and encrypted root volumes."""

from __future__ import annotations

# IMDSv2 only (session tokens), and a hop limit of 1 so that containers on a
# node cannot borrow its credentials.
IMDS_V2: dict = {
    "http_endpoint": "enabled",
    "http_tokens": "required",
    "http_put_response_hop_limit": 1,
}

ROOT_VOLUME_GB = 20


def encrypted_root() -> dict:
    """An Instance's root_block_device."""
    return {"encrypted": True, "volume_type": "gp3", "volume_size": ROOT_VOLUME_GB, "delete_on_termination": True}


def encrypted_root_mapping(device_name: str) -> dict:
    """A LaunchTemplate's block device mapping for the image's root device."""
    return {
        "device_name": device_name,
        "ebs": {
            "encrypted": "true",
            "volume_type": "gp3",
            "volume_size": ROOT_VOLUME_GB,
            "delete_on_termination": "true",
        },
    }
