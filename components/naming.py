"""Names AWS accepts for any valid stack name (1 to 100 characters).

Pulumi names a resource after its logical name plus `-` and 7 random
characters; IAM roles take 64 characters in all, so a long stack name would
overflow them. IAM roles and instance profiles therefore get a `namePrefix`
that fits (AWS appends a 26-character unique suffix to it), and role policies,
which need to be unique within their role only, a fixed name.
"""

from __future__ import annotations

import re

# What the provider appends to a name prefix, and the longest prefix IAM takes.
UNIQUE_SUFFIX = 26
IAM_PREFIX_MAX = 64 - UNIQUE_SUFFIX


def iam_name_prefix(stack: str, what: str) -> str:
    """`STACK-WHAT-`, the stack name cut so the whole fits IAM's 38-character prefix."""
    room = IAM_PREFIX_MAX - len(what) - 2
    return f"{stack[:room]}-{what}-"


# S3 takes bucket names of 63 characters: lowercase letters, digits, hyphens (and dots).
BUCKET_PREFIX_MAX = 63 - UNIQUE_SUFFIX


def bucket_name_prefix(stack: str, what: str) -> str:
    """`ipfleet-STACK-WHAT-` as S3 spells names (lowercase, `_` and `.` as `-`), cut to fit."""
    plain = "-".join(part for part in re.split(r"[^a-z0-9]+", stack.lower()) if part)
    room = BUCKET_PREFIX_MAX - len("ipfleet--") - len(what) - 1
    return f"ipfleet-{plain[:room].rstrip('-')}-{what}-"
