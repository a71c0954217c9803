"""Checks on what the nodes will receive, run before any resource is declared."""

from __future__ import annotations

from bootstrap.render import UserDataTooLarge, encode_user_data, render_user_data
from bootstrap.spec import ROLES, node_spec
from ipfleet.settings import Settings, SettingsError

# EFS DNS names are known only after deploy, and all have this length.
PLACEHOLDER_EFS_DNS = "fs-0123456789abcdef0.efs.{region}.amazonaws.com"


def check_user_data(settings: Settings) -> None:
    """Render every role now, so an oversized bootstrap fails before anything exists."""
    for role in ROLES:
        spec = node_spec(settings, role, PLACEHOLDER_EFS_DNS.format(region=settings.region))
        try:
            encode_user_data(render_user_data(spec))
        except UserDataTooLarge as e:
            raise SettingsError([
                f"ipfleet:pythonPackages/aptPackages: the {role} {e}; install fewer packages "
                "at boot (bake an AMI and set ipfleet:image, or use ipfleet:packageIndexUrl)"
            ]) from None
