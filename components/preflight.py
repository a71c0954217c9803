"""Checks on what the stack will hand AWS and the nodes, run before any resource is declared."""

from __future__ import annotations

import json

from bootstrap.render import UserDataTooLarge, encode_user_data, render_user_data
from bootstrap.runtime_wheel import runtime_wheel
from bootstrap.spec import ROLES, RUNTIME_BUCKET_PLACEHOLDER, node_spec
from components.engine_fleet import (
    CONTROLLER_ACTIONS,
    CONTROLLER_DESCRIBE,
    group_arn_pattern,
    group_policy,
)
from components.node_role import session_manager_statements
from components.node_runtime import POLICY_NAME as RUNTIME_POLICY
from components.node_runtime import RECORDS_POLICY_NAME, records_document
from components.node_runtime import policy_document as runtime_document
from components.rendezvous import PUBLISH_ACTIONS, READ_ACTIONS
from components.rendezvous import policy_document as rendezvous_document
from components.s3_mounts import policy_document as s3_document
from ipfleet.access import Access
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


# The account id in the ARNs of the stack's parameters: 12 digits.
ACCOUNT = "123456789012"


def role_policies(settings: Settings) -> dict[str, dict[str, dict]]:
    """Every inline policy each role gets, by name, built by the same functions the
    components use, with ARNs as long as AWS's will be. A test holds this to the plan's
    RolePolicy resources, name for name and action for action, so the two cannot drift."""

    partition = settings.partition

    def parameter(name: str) -> str:
        return partition.arn("ssm", settings.region, ACCOUNT, f"parameter{name}")

    group = group_arn_pattern(partition, settings.region, f"{settings.stack}-engines")
    controller = {
        "ipfleet-rendezvous-publish": rendezvous_document(
            [parameter(name) for name in settings.controller_parameters], PUBLISH_ACTIONS
        ),
        "ipfleet-engine-group": json.loads(group_policy(group, CONTROLLER_ACTIONS, CONTROLLER_DESCRIBE)),
        RECORDS_POLICY_NAME: records_document(RUNTIME_BUCKET_PLACEHOLDER, partition),
    }
    engine = {
        "ipfleet-rendezvous-read": rendezvous_document([parameter(settings.rendezvous_parameter)], READ_ACTIONS),
    }
    for policies in (controller, engine):
        policies[RUNTIME_POLICY] = runtime_document(RUNTIME_BUCKET_PLACEHOLDER, runtime_wheel(), partition)
        if settings.access is Access.SSM:
            policies["ipfleet-session-manager"] = {
                "Version": "2012-10-17",
                "Statement": session_manager_statements(partition),
            }
        if settings.s3_mounts:
            policies["ipfleet-s3-mounts"] = s3_document(settings.s3_mounts, partition)
    return {"controller": controller, "engine": engine}


def policy_characters(document: dict) -> int:
    """What IAM counts of a policy: its JSON without whitespace."""
    return len(json.dumps(document, separators=(",", ":")))


def check_role_policy_size(settings: Settings) -> None:
    """Every role's inline policies, added up, within IAM's limit, before anything exists."""
    for role, policies in role_policies(settings).items():
        size = sum(policy_characters(document) for document in policies.values())
        if size > ROLE_POLICY_CHARACTERS:
            raise SettingsError(
                [
                    f"ipfleet:s3Mounts: the {role} role's inline policies would total {size} characters, "
                    f"over the {ROLE_POLICY_CHARACTERS} IAM allows a role ({len(settings.s3_mounts)} S3 mounts "
                    "among them); mount fewer buckets, or whole buckets instead of many prefixes"
                ]
            )
