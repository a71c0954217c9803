"""How the twin derives its nodes' settings: only the documented knobs change."""

from __future__ import annotations

import pytest

from bootstrap.render import render_user_data
from bootstrap.spec import node_spec
from ipfleet.settings import SettingsError, parse_settings
from ipfleet.twin.amis import BASE_PACKAGES, cache_key, packages_for
from ipfleet.twin.package_index import write_simple_index
from ipfleet.twin.plan_deploy import TWIN_KNOBS, apt_packages_of, twin_config, written_files
from ipfleet.twin.vpc import CLIENT_SUBNET, ENDPOINT
from tests.conftest import PUBLIC_KEY, example_config, settings_of


def test_twin_changes_only_the_documented_knobs():
    original = example_config()
    twin = twin_config(original, PUBLIC_KEY)
    changed = {k for k in twin if twin.get(k) != original.get(k)}
    assert changed == {
        "ipfleet:awsEndpointUrl",
        "ipfleet:packageIndexUrl",
        "ipfleet:sharedStorage",
        "ipfleet:ssmAgentUrl",
        "ipfleet:sshPublicKey",
    }
    assert twin["ipfleet:sshPublicKey"] == PUBLIC_KEY
    assert twin["ipfleet:sharedStorage"] == {**original["ipfleet:sharedStorage"], "source": "bind:/srv/efs"}
    assert TWIN_KNOBS["ipfleet:awsEndpointUrl"] == ENDPOINT


def test_modes_that_open_a_port_admit_the_client_subnet_only():
    twin = twin_config(example_config(access="direct", adminCidrs=["203.0.113.0/24"]), PUBLIC_KEY)
    assert twin["ipfleet:adminCidrs"] == [CLIENT_SUBNET]
    assert (
        "ipfleet:adminCidrs" not in twin_config(example_config(), PUBLIC_KEY)
        or twin_config(example_config(), PUBLIC_KEY)["ipfleet:adminCidrs"] == []
    )


def test_twin_keeps_shared_storage_off_when_the_stack_turns_it_off():
    twin = twin_config(example_config(sharedStorage={"enabled": False}))
    assert twin["ipfleet:sharedStorage"] == {"enabled": False}


def test_endpoint_override_reaches_the_agent_s3fs_and_user_code():
    settings = parse_settings(
        "t",
        {**twin_config(example_config(s3Mounts=[{"bucket": "b-1", "mountPoint": "/data"}])), "aws:region": "eu-west-1"},
    )
    spec = node_spec(settings, "engine", None)
    assert spec.aws_endpoint_url == ENDPOINT
    s3 = next(m for m in spec.mounts if m.type == "fuse.s3fs")
    assert f"url={ENDPOINT}" in s3.options and "use_path_request_style" in s3.options
    assert ("AWS_ENDPOINT_URL", ENDPOINT) in spec.environment
    shared = next(m for m in spec.mounts if m.where == "/shared")
    assert (shared.what, shared.type, shared.options) == ("/srv/efs", "none", "bind")
    assert "nfs-common" not in spec.apt_packages


@pytest.mark.parametrize(
    "source,ok",
    [
        ("efs", True),
        ("nfs:files.internal:/export/home", True),
        ("bind:/mnt/data", True),
        ("nfs:/no-host", False),
        ("bind:relative", False),
        ("s3:bucket", False),
    ],
)
def test_shared_storage_source_values(source, ok):
    config = {"aws:region": "us-east-1", "ipfleet:sharedStorage": {"source": source}}
    if ok:
        assert parse_settings("t", config).shared_storage.source == source
    else:
        with pytest.raises(SettingsError, match="ipfleet:sharedStorage.source"):
            parse_settings("t", config)


def test_nfs_source_creates_no_efs():
    from tests.conftest import plan_of

    plan = plan_of(sharedStorage={"source": "nfs:files.internal:/export"})
    assert not plan.of_type("aws:efs/fileSystem:FileSystem")


def test_image_cache_key_follows_the_release_and_the_package_list():
    assert cache_key("trixie", packages_for([])) == cache_key("trixie", packages_for(["s3fs"]))  # in the base
    assert cache_key("trixie", packages_for([])) != cache_key("trixie", packages_for(["gfortran"]))
    assert cache_key("trixie", packages_for([])) != cache_key("bookworm", packages_for([]))
    assert set(BASE_PACKAGES) <= set(packages_for(["gfortran"]))


@pytest.mark.parametrize("image,suite", [("debian-13", "trixie"), ("debian-12", "bookworm")])
def test_the_twin_builds_the_stacks_release(image, suite):
    from ipfleet.twin.cluster import twin_suite

    assert twin_suite(image) == suite


@pytest.mark.parametrize(
    "image,says", [("ubuntu-24.04", "Debian images only"), ("ami-0123456789abcdef0", "cannot know what that AMI holds")]
)
def test_the_twin_refuses_images_it_cannot_build(image, says):
    from ipfleet.twin.cluster import twin_suite
    from ipfleet.twin.state import TwinError

    with pytest.raises(TwinError, match=says):
        twin_suite(image)


def test_twin_host_names_fit_any_stack_name():
    from ipfleet.twin.cluster import host_name

    assert host_name("example", "engine-1") == "example-engine-1"
    long = host_name("a_very.long" + "x" * 90, "controller-12")
    assert len(long) <= 64 and long.startswith("a-very-long") and "_" not in long


def test_apt_packages_are_read_from_user_data_even_compressed():
    import gzip

    spec = node_spec(
        settings_of(s3Mounts=[{"bucket": "b-1", "mountPoint": "/data"}], sharedStorage={"enabled": False}),
        "engine",
        None,
    )
    text = render_user_data(spec).encode()
    assert (
        apt_packages_of(written_files(text))
        == apt_packages_of(written_files(gzip.compress(text)))
        == ["iproute2", "s3fs"]
    )


def test_simple_index_layout(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    for name in ("ipyparallel-9.2.0-py3-none-any.whl", "jupyter_client-8.6.3-py3-none-any.whl"):
        (files / name).write_bytes(b"")
    write_simple_index(tmp_path)
    page = (tmp_path / "simple" / "jupyter-client" / "index.html").read_text()
    # With the sha256 PyPI gives, which a node's uv fetch checks (of empty files here).
    assert (
        'href="../../files/jupyter_client-8.6.3-py3-none-any.whl#sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"'
        in page
    )
    assert 'href="ipyparallel/"' in (tmp_path / "simple" / "index.html").read_text()
