"""The one rule for stack names, wherever a name arrives: a stack file's name, a CLI
argument, a workflow's matrix entry; and the one for region names, which reach boto3
and ssh's ProxyCommand (a shell command) from a stack file, an option or the environment.

Pulumi's own rule (1-100 of A-Z a-z 0-9 _ . -) with a letter or digit first, so a name
can never be read as an option (`--help`) by ipfleet, git or pulumi, nor climb out of a
folder (`..`), and never carries a character a shell or an ssh config would interpret.
"""

from __future__ import annotations

import re

from ipfleet.errors import UsageError

STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
STACK_NAME_RULE = "1-100 of A-Z a-z 0-9 _ . -, starting with a letter or digit"


REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")


class InvalidStackName(UsageError, ValueError):
    pass


class InvalidRegion(UsageError, ValueError):
    pass


def is_stack_name(name: str) -> bool:
    return bool(STACK_NAME.match(name)) and ".." not in name


def check_stack_name(name: str, where: str = "stack name") -> str:
    """`name`, or an InvalidStackName that shows it (escaped) and the rule."""
    if not is_stack_name(name):
        raise InvalidStackName(f"{where} {name!r} is not a stack name ({STACK_NAME_RULE})")
    return name


def check_region(region: str, where: str = "region") -> str:
    """REGION, or an InvalidRegion saying where it came from and what it holds (escaped)."""
    if not REGION.match(region):
        raise InvalidRegion(f"{where} {region!r} is not an AWS region name such as us-east-1")
    return region
