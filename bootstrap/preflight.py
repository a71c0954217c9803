"""Checks on what the stack will hand AWS and the nodes, run before any resource is declared."""

from __future__ import annotations

import json

from bootstrap.render import UserDataTooLarge, encode_user_data, render_user_data
from bootstrap.spec import ROLES, node_spec
from ipfleet.settings import Settings, SettingsError

# EFS DNS names are known only after deploy, and all have this length.
PLACEHOLDER_EFS_DNS = "fs-0123456789abcdef0.efs.{region}.amazonaws.com"
# IAM refuses a role whose inline policies add up to more than this (whitespace not counted).
ROLE_POLICY_CHARACTERS = 10_240


def preflight(settings: Settings) -> None:
    """Everything AWS would refuse half-way through `pulumi up`, refused now."""
    check_user_data(settings)
    check_role_policy_size(settings)


def check_user_data(settings: Settings) -> None:
    """Render every role now, so an oversized bootstrap fails before anything exists."""
    for role in ROLES:
        spec = node_spec(settings, role, PLACEHOLDER_EFS_DNS.format(region=settings.region))
        try:
            encode_user_data(render_user_data(spec))
        except UserDataTooLarge as e:
            raise SettingsError(
                [
                    f"ipfleet:pythonPackages/aptPackages: the {role} {e}; install fewer packages "
                    "at boot (bake an AMI and set ipfleet:image, or use ipfleet:packageIndexUrl)"
                ]
            ) from None


def check_role_policy_size(settings: Settings) -> None:
    """The controller's role carries the most: Session Manager, the rendezvous and the S3 mounts."""
    from components.node_role import SESSION_MANAGER_STATEMENTS
    from components.rendezvous import PUBLISH_ACTIONS
    from components.rendezvous import policy_document as rendezvous_document
    from components.s3_mounts import policy_document
    from ipfleet.settings import controller_record_parameter, keeper_parameter, notebook_parameter

    arn = f"arn:aws:ssm:{settings.region}:123456789012:parameter"
    controller_parameters = [
        settings.rendezvous_parameter,
        settings.keys_parameter,
        notebook_parameter(settings.stack),
        controller_record_parameter(settings.stack),
        keeper_parameter(settings.stack),
    ]
    documents = [
        rendezvous_document([arn + name for name in controller_parameters], PUBLISH_ACTIONS),
        {"Version": "2012-10-17", "Statement": SESSION_MANAGER_STATEMENTS},
        policy_document(settings.s3_mounts),
    ]
    size = sum(len(json.dumps(d, separators=(",", ":"))) for d in documents)
    if size > ROLE_POLICY_CHARACTERS:
        raise SettingsError(
            [
                f"ipfleet:s3Mounts: {len(settings.s3_mounts)} mounts need IAM policies of {size} characters, "
                f"over the {ROLE_POLICY_CHARACTERS} IAM allows a role; mount fewer buckets or whole buckets "
                "instead of many prefixes"
            ]
        )
