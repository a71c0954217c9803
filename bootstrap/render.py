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
import io
import json
import shlex
import tokenize
from functools import cache
from pathlib import Path

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from bootstrap.ipfleet_node import paths, wire
from bootstrap.runtime_wheel import runtime_wheel
from bootstrap.spec import NodeSpec

HERE = Path(__file__).parent
# The one node program user data carries: it makes the venv the runtime is installed into.
PYENV_SOURCE = HERE / "ipfleet_node" / "pyenv.py"

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

# Fixed paths on every node (bootstrap/ipfleet_node/paths.py); templates and the agent share them.
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
    wheel = runtime_wheel()
    common = {
        "role": spec.role,
        "stack": spec.stack,
        "region": spec.region,
        "aws_endpoint_url": spec.aws_endpoint_url,
        "mounts": [{"what": m.what, "where": m.where, "type": m.type, "unit": m.unit} for m in spec.mounts],
        # The node runtime's wheel (bootstrap/runtime_wheel.py), checked against its sha256.
        "runtime": {"bucket": spec.runtime_bucket, "key": wheel.key, "sha256": wheel.sha256},
        # For bootstrap/ipfleet_node/pyenv.py.
        "python": {
            "venv": VENV,
            "index_url": spec.package_index_url,
            "uv": spec.uv_requirement,
        },
    }
    if spec.role == "engine":
        return {
            **common,
            "engines_per_node": spec.engines_per_node,
            # The group's most nodes: how widely they spread their looks at the rendezvous.
            "fleet_nodes": spec.fleet_nodes,
            # Whose engines may read root's copy of the connection info (agent.root_copy).
            "service_user": spec.service_user,
        }
    return {
        **common,
        "service_user": spec.service_user,
        "access": spec.access,
        "login_user": spec.login_user,
        "ssh_public_key": spec.ssh_public_key,
        "notebook_port": spec.notebook_port,
        # Where the controller's sshd lets tunnels go: its own client-facing ports (and the notebook).
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
    context["pyenv_source"] = inline_program(PYENV_SOURCE.read_text())
    text = template.render(**context)
    # Fail here, with the template's name, rather than at boot.
    parsed = yaml.safe_load(text)
    unknown = set(parsed) - KNOWN_TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"{spec.role}.yaml.j2 renders unknown cloud-config keys: {sorted(unknown)}")
    return text


def inline_program(source: str) -> str:
    """SOURCE as user data carries it: comments and docstrings blanked out, every line
    where it was (a traceback on a node names the source's lines). Where they are comes
    from the tokenizer and the syntax tree, facts of the text itself, so the result is
    the same whatever Python renders it. Only the environment script travels this way."""
    lines = source.split("\n")
    comments = [
        token.start
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and token.start[0] > 1  # the #! line stays
    ]
    for row, column in comments:
        lines[row - 1] = lines[row - 1][:column].rstrip()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and body and _is_docstring(body[0]):
            first, last = body[0].lineno, body[0].end_lineno or body[0].lineno
            lines[first - 1] = " " * body[0].col_offset + '""'
            lines[first:last] = [""] * (last - first)
    return "\n".join(lines)


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _context(spec: NodeSpec) -> dict:
    return {
        **dataclasses.asdict(spec),
        "facts": facts(spec),
        "venv": VENV,
        "agent": AGENT,
        "keeper": paths.KEEPER,
        "records_port": wire.RECORDS_PORT,
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
