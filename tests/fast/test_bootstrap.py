"""The node side: every rendered document against the real `cloud-init schema` and shellcheck."""

from __future__ import annotations

import ast
import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bootstrap.ipfleet_node import paths
from bootstrap.render import (
    KNOWN_TOP_LEVEL_KEYS,
    USER_DATA_LIMIT,
    decode_user_data,
    encode_user_data,
    inline_program,
    render_bootstrap_script,
    render_user_data,
)
from bootstrap.runtime_wheel import runtime_wheel
from bootstrap.spec import ROLES, node_spec
from components.preflight import check_user_data
from ipfleet.settings import SettingsError
from tests.conftest import settings_of

EFS = "fs-0123456789abcdef0.efs.us-east-1.amazonaws.com"

VARIATIONS = {
    "example": {},
    "no-shared-storage": {"sharedStorage": {"enabled": False}},
    "s3-mounts": {
        "s3Mounts": [
            {"bucket": "inputs-bucket", "prefix": "runs/1", "mountPoint": "/data/in"},
            {"bucket": "results-bucket", "mountPoint": "/data/out", "readOnly": False},
        ]
    },
    "fixed-engines-msgpack": {"enginesPerNode": 4, "ipyparallel": {"packer": "msgpack", "scheme": "twobin"}},
    "ubuntu-mirror": {
        "image": "ubuntu-24.04",
        "packageIndexUrl": "https://pypi.mirror.example/simple",
        "aptPackages": ["build-essential", "libopenblas-dev"],
        "pythonPackages": ["scipy>=1.11", "pandas[performance]==2.2.3"],
    },
    "pinned-ssm-agent": {
        "ssmAgentUrl": "https://mirror.example.org/ssm/3.3.1142.0/amazon-ssm-agent.deb",
        "ssmAgentSha256": "0123456789abcdef" * 4,
    },
}


def documents():
    for variation, overrides in VARIATIONS.items():
        settings = settings_of(**overrides)
        for role in ROLES:
            yield variation, role, node_spec(settings, role, EFS)


CASES = [(v, r, s) for v, r, s in documents()]
IDS = [f"{v}-{r}" for v, r, _ in CASES]


@pytest.mark.parametrize("variation,role,spec", CASES, ids=IDS)
def test_cloud_init_schema_accepts_the_document(variation, role, spec, tmp_path):
    assert shutil.which("cloud-init"), "cloud-init is required (apt-get install cloud-init)"
    path = tmp_path / "user-data"
    path.write_text(render_user_data(spec))
    result = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_cloud_init_schema_would_catch_a_broken_document(tmp_path):
    """The check above can fail: a wrong type under a known key is rejected."""
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\npackage_update: sometimes\nruncmd: 3\n")
    result = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert result.returncode != 0


@pytest.mark.parametrize("variation,role,spec", CASES, ids=IDS)
def test_only_known_top_level_keys(variation, role, spec):
    document = yaml.safe_load(render_user_data(spec))
    assert set(document) <= KNOWN_TOP_LEVEL_KEYS


@pytest.mark.parametrize("variation,role,spec", CASES, ids=IDS)
def test_shellcheck_passes_the_bootstrap_script(variation, role, spec, tmp_path):
    assert shutil.which("shellcheck"), "shellcheck is required (apt-get install shellcheck)"
    script = tmp_path / "bootstrap.sh"
    script.write_text(render_bootstrap_script(spec))
    result = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("variation,role,spec", CASES, ids=IDS)
def test_embedded_files_are_what_the_sources_say(variation, role, spec):
    """User data carries one program, the environment script, as it is in the source;
    the agent and keeper come as the runtime wheel, named by its sha256 in the facts."""
    document = yaml.safe_load(render_user_data(spec))
    files = {f["path"]: f["content"] for f in document["write_files"]}
    source = Path(__file__).resolve().parents[2] / "bootstrap" / "ipfleet_node"
    assert files[paths.PYENV] == inline_program((source / "pyenv.py").read_text())
    programs = [path for path, content in files.items() if content.startswith("#!/usr/bin/env python")]
    assert programs == [paths.PYENV]
    assert not any("def watch(" in content or "def keep(" in content for content in files.values())
    wheel = runtime_wheel()
    runtime = json.loads(files[paths.FACTS_FILE])["runtime"]
    assert runtime == {"bucket": spec.runtime_bucket, "key": wheel.key, "sha256": wheel.sha256}
    assert files["/usr/local/lib/ipfleet/bootstrap.sh"] == render_bootstrap_script(spec)
    for mount in spec.mounts:
        unit = files[f"/etc/systemd/system/{mount.unit}"]
        assert f"What={mount.what}\n" in unit and f"Where={mount.where}\n" in unit


def without_docstrings(tree: ast.AST) -> str:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def test_the_inlined_environment_script_is_the_sources_code_line_for_line():
    source = (Path(__file__).resolve().parents[2] / "bootstrap" / "ipfleet_node" / "pyenv.py").read_text()
    inlined = inline_program(source)
    assert without_docstrings(ast.parse(inlined)) == without_docstrings(ast.parse(source))
    assert inlined.count("\n") == source.count("\n") and "#" not in inlined.split("\n", 1)[1].replace('"#"', "")
    # Lines stay where they were: a traceback's line number points into the source.
    for number, line in enumerate(inlined.split("\n")):
        assert not line.strip() or source.split("\n")[number].startswith(line.rstrip()) or line.strip() == '""', number
    # And what it does to code that is not a docstring or a comment: nothing.
    tricky = 'def f(x):\n    """Doc."""\n    return "a  # b", x  # note\n'
    assert inline_program(tricky) == 'def f(x):\n    ""\n    return "a  # b", x\n'


def test_mount_unit_names_follow_systemd_escaping():
    settings = settings_of(s3Mounts=[{"bucket": "b-1", "mountPoint": "/data/my-files"}])
    units = [m.unit for m in node_spec(settings, "engine", EFS).mounts]
    assert units == ["shared.mount", "data-my\\x2dfiles.mount"]


@pytest.mark.parametrize(
    "where",
    ["/shared", "/data/.cache", "/.hidden/data", "/data/my-files", "/srv/a_b.c/x:y", "/mnt/ünïcode", "/scratch/.a/.b"],
)
def test_mount_unit_names_are_systemd_escapes_own(where):
    """systemd names a mount unit after its path; a unit named otherwise is not the mount."""
    from bootstrap.spec import Mount

    assert shutil.which("systemd-escape"), "systemd-escape is required (the systemd package)"
    real = subprocess.run(
        ["systemd-escape", "--path", "--suffix=mount", where], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Mount("x", where, "none", "bind").unit == real


def test_service_group_has_the_fixed_gid_the_s3_mounts_name():
    """s3fs's gid= must name a group that exists, with the same id on every node."""
    settings = settings_of(s3Mounts=[{"bucket": "b-1", "mountPoint": "/data"}])
    document = yaml.safe_load(render_user_data(node_spec(settings, "engine", EFS)))
    assert document["bootcmd"] == [
        ["sh", "-c", "getent group ipfleet >/dev/null || groupadd --system --gid 2001 ipfleet"]
    ]
    user = next(u for u in document["users"] if isinstance(u, dict) and u["name"] == "ipfleet")
    assert (user["uid"], user["primary_group"], user["no_user_group"]) == (2001, "ipfleet", True)
    s3 = next(m for m in node_spec(settings, "engine", EFS).mounts if m.type == "fuse.s3fs")
    assert "gid=2001" in s3.options.split(",")


def _files(settings, role):
    document = yaml.safe_load(render_user_data(node_spec(settings, role, EFS)))
    return {f["path"]: f["content"] for f in document["write_files"]}, document


def test_tunnel_login_forwards_only_to_the_controllers_own_ports_and_has_no_sudo():
    from tests.conftest import PUBLIC_KEY

    files, document = _files(settings_of(sshPublicKey=PUBLIC_KEY, notebook=True), "controller")
    dropin = files["/etc/ssh/sshd_config.d/20-ipfleet.conf"]
    # Fails closed: until (or unless) the bootstrap writes the node's destinations, none.
    assert "PermitOpen none" in dropin and "AllowTcpForwarding local" in dropin
    facts = json.loads(files["/etc/ipfleet/node.json"])
    # Its own client-facing ports come from the wire contract the node runs (test_node_agent).
    assert facts["loopback_forward_ports"] == [8888]
    login = next(u for u in document["users"] if isinstance(u, dict) and u["name"] == "ipfleet-admin")
    assert "sudo" not in login
    _, with_sudo = _files(settings_of(sshPublicKey=PUBLIC_KEY, adminSudo=True), "controller")
    login = next(u for u in with_sudo["users"] if isinstance(u, dict) and u["name"] == "ipfleet-admin")
    assert login["sudo"] == "ALL=(ALL) NOPASSWD:ALL"


def test_units_that_use_the_shared_storage_require_it():
    files, _ = _files(settings_of(), "controller")
    assert "RequiresMountsFor=/shared\n" in files["/etc/systemd/system/ipcontroller.service"]
    files, _ = _files(settings_of(), "engine")
    unit = files["/etc/systemd/system/ipengine@.service"]
    assert "RequiresMountsFor=/shared\n" in unit
    files, _ = _files(settings_of(sharedStorage={"enabled": False}), "engine")
    assert "RequiresMountsFor" not in files["/etc/systemd/system/ipengine@.service"]


def test_engines_reread_the_rendezvous_whenever_they_start():
    files, _ = _files(settings_of(), "engine")
    unit = files["/etc/systemd/system/ipengine@.service"]
    assert "ExecStartPre=/opt/ipfleet/venv/bin/python -I -m ipfleet_node wait-connection" in unit
    assert "Restart=always\n" in unit and "StartLimitIntervalSec=0\n" in unit
    assert "TimeoutStopSec=5\n" in unit  # the nanny would otherwise hold a restart back 90 s
    config = files["/var/lib/ipfleet/ipython/profile_default/ipengine_config.py"]
    assert "c.IPEngine.max_heartbeat_misses = 10" in config


def test_bootstrap_mounts_through_the_agent_with_a_bound():
    script = render_bootstrap_script(node_spec(settings_of(), "engine", EFS))
    assert "-m ipfleet_node mount shared.mount --timeout 600" in script


# Shapes of secrets that must never reach user data.
SECRET_SHAPES = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r'"key"\s*:\s*"[0-9a-f-]{16,}"'),  # an ipyparallel HMAC key
    # A CurveZMQ key written out: a curve key's name, then a 40-character Z85 value.
    re.compile(r"curve_?(secret|public|server)_?key\W{1,6}[0-9A-Za-z.:+=^!/*?&<>()\[\]{}@%$#-]{40}"),
]


@pytest.mark.parametrize("variation,role,spec", CASES, ids=IDS)
def test_user_data_holds_no_secret(variation, role, spec, monkeypatch):
    # Even with credentials in the environment, nothing of them reaches user data.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAABCDEFGHIJKLMNOP")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    text = render_user_data(spec)
    for shape in SECRET_SHAPES:
        assert not shape.search(text), shape.pattern
    assert "wJalrXUtnFEMI" not in text


def test_large_user_data_is_gzipped_and_still_decodes():
    many = [f"package-number-{i}>=1.0" for i in range(120)]
    spec = node_spec(settings_of(pythonPackages=many), "engine", EFS)
    text = render_user_data(spec)
    assert len(text.encode()) > USER_DATA_LIMIT
    encoded = encode_user_data(text)

    raw = base64.b64decode(encoded)
    assert raw[:2] == b"\x1f\x8b" and len(raw) <= USER_DATA_LIMIT
    assert decode_user_data(encoded) == text


def test_user_data_that_fits_stays_plain_text():

    text = "#cloud-config\n" + "# padding\n" * 1000
    assert base64.b64decode(encode_user_data(text)) == text.encode()


def test_user_data_is_configuration_not_programs():
    """The example stack's user data, as EC2 takes it, is at most 40 % of EC2's 16 KB:
    the agent and keeper travel as the runtime wheel, leaving the room to settings."""
    for role in ("controller", "engine"):
        encoded = encode_user_data(render_user_data(node_spec(settings_of(), role, EFS)))
        assert len(base64.b64decode(encoded)) <= USER_DATA_LIMIT * 0.4, role


def test_user_data_over_the_limit_is_a_settings_error():
    import random

    rng = random.Random(7)  # incompressible names: gzip cannot rescue these
    many = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(60)) for _ in range(600)]
    with pytest.raises(SettingsError, match="over EC2's 16384-byte limit"):
        check_user_data(settings_of(pythonPackages=many))


def test_node_runs_the_projects_ipyparallel():
    from importlib.metadata import version

    spec = node_spec(settings_of(), "engine", EFS)
    assert f"ipyparallel=={version('ipyparallel')}" in spec.python_requirements
    assert "msgpack" not in " ".join(spec.python_requirements)


def test_controller_config_pins_ports_from_the_shared_module():
    from ipfleet import ports

    text = render_user_data(node_spec(settings_of(), "controller", EFS))

    def assigned(name: str) -> list[int]:
        return eval(re.search(rf"^\s*c\.IPController\.{name} = (.+)$", text, re.MULTILINE).group(1))

    assert assigned("client_ports") == ports.CLIENT_PORTS.as_list()
    assert assigned("engine_ports") == ports.ENGINE_PORTS.as_list()
    assert assigned("ports") == ports.INTERNAL_PORTS.as_list()


def test_s3_prefixes_mount_without_a_directory_object():
    """s3fs 1.95 (Debian 13) refuses `bucket:/prefix` when no `prefix/` object exists, as is
    usual for prefixes written by other tools, unless given compat_dir (seen in the twin)."""
    settings = settings_of(
        s3Mounts=[{"bucket": "b-1", "prefix": "runs", "mountPoint": "/data"}, {"bucket": "b-2", "mountPoint": "/whole"}]
    )
    options = {m.where: m.options.split(",") for m in node_spec(settings, "engine", EFS).mounts}
    assert "compat_dir" in options["/data"] and "compat_dir" not in options["/whole"]


def test_the_environment_program_reads_the_files_the_user_data_writes():
    # ipfleet_pyenv.py runs before ipfleet's modules are anywhere: it has its own copy.
    source = (Path(__file__).resolve().parents[2] / "bootstrap" / "ipfleet_node" / "pyenv.py").read_text()
    assert f'REQUIREMENTS = "{paths.PYTHON_REQUIREMENTS}"' in source
    assert f'CONSTRAINTS = "{paths.PYTHON_CONSTRAINTS}"' in source
    assert f'UV_HOME = Path("{paths.UV_HOME}")' in source


def test_a_heavy_stack_still_fits_in_user_data():
    """Ten Python packages, five Debian ones, three S3 mounts and the notebook."""

    heavy = settings_of(
        pythonPackages=[
            "numpy",
            "scipy",
            "pandas",
            "scikit-learn",
            "matplotlib",
            "xarray",
            "netCDF4",
            "h5py",
            "numba",
            "dask",
        ],
        aptPackages=["gfortran", "libopenblas-dev", "htop", "git", "build-essential"],
        s3Mounts=[
            {"bucket": "my-lab-data", "prefix": "runs/2026", "mountPoint": "/data/runs"},
            {"bucket": "my-lab-reference", "mountPoint": "/data/ref", "readOnly": True},
            {"bucket": "my-lab-results", "mountPoint": "/data/results"},
        ],
        notebook=True,
    )
    for role in ("controller", "engine"):
        encoded = encode_user_data(render_user_data(node_spec(heavy, role, EFS)))
        assert len(base64.b64decode(encoded)) < USER_DATA_LIMIT * 0.9, role


def test_the_high_water_mark_reaches_the_controller_config():
    def config_of(**overrides) -> str:
        text = render_user_data(node_spec(settings_of(**overrides), "controller", EFS))
        files = {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}
        return files["/var/lib/ipfleet/ipython/profile_default/ipcontroller_config.py"]

    assert "c.TaskScheduler.hwm = 1\n" in config_of()
    assert "c.TaskScheduler.hwm = 0\n" in config_of(ipyparallel={"highWaterMark": 0})


def test_a_pinned_ssm_agent_is_checked_before_dpkg_sees_it(tmp_path):
    """The script's own check: a package that is not the pinned one never reaches dpkg."""
    import hashlib

    spec = node_spec(settings_of(**VARIATIONS["pinned-ssm-agent"]), "controller", EFS)
    script = render_bootstrap_script(spec)
    line = next(line for line in script.splitlines() if "sha256sum --check" in line)
    assert script.index("sha256sum --check") < script.index("dpkg -i")
    package = tmp_path / "amazon-ssm-agent.deb"
    package.write_bytes(b"the real package")
    check = line.replace("${agent_dir}", str(tmp_path)).strip().removeprefix("&& ").rstrip(" \\")
    wrong = subprocess.run(["bash", "-c", check], capture_output=True, text=True)
    assert wrong.returncode != 0  # the stack pinned another sha256
    right = check.replace("0123456789abcdef" * 4, hashlib.sha256(b"the real package").hexdigest())
    assert subprocess.run(["bash", "-c", right], capture_output=True, text=True).returncode == 0
