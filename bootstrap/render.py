"""Render a node's cloud-init user data from its NodeSpec.

One Jinja2 template per role (`templates/controller.yaml.j2`,
`templates/engine.yaml.j2`) extends the shared `templates/node.yaml.j2`.
StrictUndefined turns a missing value into an error at render time, not a
broken node at boot time.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import gzip
import json
import shlex
from functools import cache
from pathlib import Path

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from bootstrap import paths
from bootstrap.spec import DRAIN_HOOK, NodeSpec

HERE = Path(__file__).parent
AGENT_SOURCE = HERE / "node" / "ipfleet_node.py"
KEEPER_SOURCE = HERE / "node" / "ipfleet_keeper.py"
PYENV_SOURCE = HERE / "node" / "ipfleet_pyenv.py"

# What each role's long-running services import, compiled to bytecode at boot.
WARM_MODULES = {
    "controller": ("boto3", "ipyparallel.controller.app", "ipyparallel.controller.scheduler"),
    "engine": ("boto3", "ipyparallel.engine.app", "ipykernel.ipkernel"),
}

# EC2 refuses user data over 16 KB (before base64).
USER_DATA_LIMIT = 16 * 1024

# cloud-config top-level keys ipfleet writes. `cloud-init schema` (22.4) does not
# flag unknown top-level keys, so the tests hold rendered documents to this list.
KNOWN_TOP_LEVEL_KEYS = frozenset(
    {
        "bootcmd",
        "locale",
        "users",
        "write_files",
        "runcmd",
        "ssh_pwauth",
        "disable_root",
    }
)

# Fixed paths on every node (bootstrap/paths.py); templates and the agent share them.
VENV, AGENT, STATE_DIR, IPYTHON_DIR = paths.VENV, paths.AGENT, paths.STATE_DIR, paths.IPYTHON_DIR
PROFILE_DIR, FACTS_FILE, KEYS_FILE = paths.PROFILE_DIR, paths.FACTS_FILE, paths.KEYS_FILE
BOOTSTRAP_SCRIPT = paths.BOOTSTRAP_SCRIPT


class UserDataTooLarge(ValueError):
    pass


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["shquote"] = shlex.quote
    # JSON strings are valid YAML scalars: quoting without surprises.
    env.filters["yaml"] = lambda v: json.dumps(v)
    env.filters["pylist"] = python_list
    return env


def python_list(numbers) -> str:
    """A Python expression for a list of ints: a range when it is one (shorter user data)."""
    numbers = list(numbers)
    if numbers and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"list(range({numbers[0]}, {numbers[-1] + 1}))"
    return repr(numbers)


def facts(spec: NodeSpec) -> dict:
    """/etc/ipfleet/node.json: what the node agent reads at boot, and only what the
    node's role reads (user data is 16 KB in all)."""
    common = {
        "role": spec.role,
        "stack": spec.stack,
        "region": spec.region,
        "rendezvous_parameter": spec.rendezvous_parameter,
        "state_dir": STATE_DIR,
        "node_state_dir": paths.NODE_STATE_DIR,
        "profile_dir": PROFILE_DIR,
        "aws_endpoint_url": spec.aws_endpoint_url,
        "mounts": [{"what": m.what, "where": m.where, "type": m.type, "unit": m.unit} for m in spec.mounts],
        # What the bootstrap installs when the image lacks it (the twin's image reads it too).
        "apt_packages": list(spec.apt_packages),
        # For bootstrap/node/ipfleet_pyenv.py.
        "python": {
            "venv": VENV,
            "index_url": spec.package_index_url,
            "uv": spec.uv_requirement,
        },
    }
    if spec.role == "engine":
        return {
            **common,
            "node_records_path": spec.node_records_path,
            "engines_per_node": spec.engines_per_node,
            "drain_hook": DRAIN_HOOK,
        }
    return {
        **common,
        "keys_parameter": spec.keys_parameter,
        "keys_file": KEYS_FILE,
        "controller_record_parameter": spec.controller_record_parameter,
        "keeper_parameter": spec.keeper_parameter,
        "notebook_parameter": spec.notebook_parameter,
        "service_user": spec.service_user,
        "access": spec.access,
        "login_user": spec.login_user,
        "ssh_public_key": spec.ssh_public_key,
        "notebook_port": spec.notebook_port,
        # Where the controller's sshd lets tunnels go: its own client-facing ports (and the notebook).
        "forward_ports": list(spec.forward_ports),
        "loopback_forward_ports": list(spec.loopback_forward_ports),
        "keeper": dict(spec.keeper),
    }


def render_bootstrap_script(spec: NodeSpec) -> str:
    """The shell script cloud-init's runcmd runs once (shellcheck-clean)."""
    return _environment().get_template("bootstrap.sh.j2").render(**_context(spec))


def render_user_data(spec: NodeSpec) -> str:
    """The #cloud-config document for one role's nodes."""
    template = _environment().get_template(f"{spec.role}.yaml.j2")
    context = _context(spec)
    context["bootstrap_script"] = render_bootstrap_script(spec)
    context["agent_source"] = node_program(AGENT_SOURCE, spec.role)
    context["keeper_source"] = node_program(KEEPER_SOURCE)
    context["pyenv_source"] = node_program(PYENV_SOURCE)
    text = template.render(**context)
    # Fail here, with the template's name, rather than at boot.
    parsed = yaml.safe_load(text)
    unknown = set(parsed) - KNOWN_TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"{spec.role}.yaml.j2 renders unknown cloud-config keys: {sorted(unknown)}")
    return text


@cache
def node_program(path: Path, role: str | None = None) -> str:
    """A node program as the node gets it: the same code without comments, docstrings
    and argparse's help texts, which EC2's 16 KB of user data has no room for (about a
    quarter of the compressed size), and, for ROLE, without the functions the module's
    ROLE_ONLY names for the other role. Tracebacks on a node name the lines of this text."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            node.keywords = [k for k in node.keywords if k.arg not in ("help", "description")]
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    if role is not None:
        others = {name for owner, names in role_only(tree).items() if owner != role for name in names}
        # The table itself is for this renderer only.
        tree.body = [
            node
            for node in tree.body
            if not (isinstance(node, ast.FunctionDef) and node.name in others) and not _is_role_only(node)
        ]
    return f"#!/usr/bin/env python3\n# {path.name} from ipfleet's source (bootstrap/node/).\n{ast.unparse(tree)}\n"


def role_only(tree: ast.Module) -> dict[str, tuple[str, ...]]:
    """The module's ROLE_ONLY table: {role: names of functions only that role runs}."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and _is_role_only(node):
            return ast.literal_eval(node.value)
    return {}


def _is_role_only(node: ast.stmt) -> bool:
    return isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ROLE_ONLY" for t in node.targets)


def _context(spec: NodeSpec) -> dict:
    return {
        **dataclasses.asdict(spec),
        "facts": facts(spec),
        "venv": VENV,
        "agent": AGENT,
        "keeper": paths.KEEPER,
        "pyenv": paths.PYENV,
        "warm_modules": WARM_MODULES[spec.role],
        "uv_binary": paths.UV_BINARY,
        "python_requirements_file": paths.PYTHON_REQUIREMENTS,
        "python_constraints_file": paths.PYTHON_CONSTRAINTS,
        "state_dir": STATE_DIR,
        "node_state_dir": paths.NODE_STATE_DIR,
        "ipython_dir": IPYTHON_DIR,
        "profile_dir": PROFILE_DIR,
        "facts_file": FACTS_FILE,
        "keys_file": KEYS_FILE,
        "bootstrap_path": BOOTSTRAP_SCRIPT,
        "mount_units": [m.unit for m in spec.mounts],
    }


def encode_user_data(text: str) -> str:
    """Base64 user data for EC2, gzip-compressed only when plain text would not fit.

    Plain text stays readable in the EC2 console; cloud-init detects gzip itself.
    The node programs are plain text inside it, so that one gzip over the whole
    document compresses them (a base64 of gzip inside would not compress again).
    """
    raw = text.encode()
    if len(raw) > USER_DATA_LIMIT:
        raw = gzip.compress(raw, compresslevel=9, mtime=0)
        if len(raw) > USER_DATA_LIMIT:
            raise UserDataTooLarge(
                f"user data is {len(raw)} bytes even compressed, over EC2's {USER_DATA_LIMIT}-byte limit"
            )
    return base64.b64encode(raw).decode()


def decode_user_data(encoded: str) -> str:
    raw = base64.b64decode(encoded)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode()
