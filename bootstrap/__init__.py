"""The node side: cloud-init user data that makes a plain Debian or Ubuntu image
an ipfleet controller or engine node, with no SSH orchestration."""

from bootstrap.render import (
    USER_DATA_LIMIT,
    UserDataTooLarge,
    decode_user_data,
    encode_user_data,
    render_bootstrap_script,
    render_user_data,
)
from bootstrap.spec import ROLES, Mount, NodeSpec, Role, node_spec

__all__ = [
    "ROLES",
    "USER_DATA_LIMIT",
    "Mount",
    "NodeSpec",
    "Role",
    "UserDataTooLarge",
    "decode_user_data",
    "encode_user_data",
    "node_spec",
    "render_bootstrap_script",
    "render_user_data",
]
