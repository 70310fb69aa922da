"""Offline checks of the Ray cluster-launcher files `cluster.yaml` (AWS) and `cluster-local.yaml`.

Each file goes through the two steps `ray up` itself runs before it touches any machine:
`prepare_config` (merge with the provider's `defaults.yaml`, merge `setup_commands` into the
head/worker lists, fill per-node-type min/max workers; for the `local` provider, build its single
node type from `head_ip`/`worker_ips`) and `validate_config` (Ray's JSON schema
`ray-schema.json` plus a few cross-field rules). Both live in the private module
`ray.autoscaler._private.util`; the import stays at module level so that a Ray upgrade that moves
them fails this file at collection.

Offline: for `aws`, `prepare_config` only reads `ray/autoscaler/aws/defaults.yaml`; it needs
neither boto3 nor credentials (the AWS calls happen later, in `ray up`'s provider bootstrap:
key pair, IAM role, security group, subnets, AMI and instance-type lookups). We state `resources`
explicitly for every node type, so nothing here depends on Ray looking up instance types.

What Ray's validator checks: unknown top-level, `auth`, `docker` and node-type keys (typos such as
`max_worker`), types (integers, lists of commands), non-negative integer resources, required
`resources`/`node_config`, that `head_node_type` is one of `available_node_types`, and
sum(min_workers) <= max_workers. What it does not check (pinned below, and checked by our own
tests where it matters): `node_config` (the EC2 arguments), `provider` keys other than a few,
a node type's `max_workers` above the global `max_workers`, the commands themselves, and whether
`file_mounts` sources exist.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.exceptions import ClickException
from packaging.requirements import Requirement
from packaging.version import Version
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
AWS_FILE = REPO / "cluster.yaml"
LOCAL_FILE = REPO / "cluster-local.yaml"
SHARED_MOUNT = "/mnt/halo_ray"
AWS_GPU_FAMILIES = ("g", "p")  # EC2 instance families with NVIDIA GPUs (g5, g6, p4d, p5, ...)


def load(path: Path) -> dict:
    """The YAML file as a plain dict, exactly as `ray up` reads it."""
    with open(path) as f:
        return yaml.safe_load(f)


def prepared(cfg: dict) -> dict:
    """Ray's own preparation and validation of a cluster config; raises on an invalid one."""
    out = prepare_config(copy.deepcopy(cfg))
    validate_config(out)
    return out


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The argument lists of every `pip install` in `commands` (shell words after `install`)."""
    found = []
    for command in commands:
        for part in re.split(r"&&|;|\|\|", command):
            words = shlex.split(part)
            for i, word in enumerate(words[:-1]):
                if Path(word).name in ("pip", "pip3") and words[i + 1] == "install":
                    found.append(words[i + 2 :])
    return found


def editable_targets(commands: list[str]) -> list[str]:
    """The paths installed with `pip install -e PATH` in `commands`."""
    targets = []
    for args in pip_installs(commands):
        targets += [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in ("-e", "--editable")]
    return targets


def requirements(commands: list[str]) -> list[Requirement]:
    """The requirement specifiers (not options, not editable paths) given to `pip install`."""
    reqs = []
    for args in pip_installs(commands):
        skip = False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg in ("-e", "--editable", "--index-url", "--extra-index-url", "-i"):
                skip = True
                continue
            if not arg.startswith("-"):
                reqs.append(Requirement(arg))
    return reqs


def repo_mount(cfg: dict) -> str:
    """The remote path that `file_mounts` fills from "." (the repository root)."""
    remote = [r for r, local in cfg["file_mounts"].items() if local in (".", "./")]
    assert len(remote) == 1, f"expected one file_mounts entry copying '.', got {cfg['file_mounts']}"
    return remote[0]


@pytest.fixture(scope="module")
def aws_raw() -> dict:
    return load(AWS_FILE)


@pytest.fixture(scope="module")
def aws(aws_raw) -> dict:
    return prepared(aws_raw)


@pytest.fixture(scope="module")
def local_raw() -> dict:
    return load(LOCAL_FILE)


@pytest.fixture(scope="module")
def local(local_raw) -> dict:
    return prepared(local_raw)


# --- cluster.yaml (AWS) ------------------------------------------------------------------------


def test_aws_config_passes_rays_validation(aws):
    assert aws["provider"]["type"] == "aws"
    assert aws["head_node_type"] in aws["available_node_types"]
    # prepare_config filled the head's max_workers with 0 (the head is never a worker)
    assert aws["available_node_types"][aws["head_node_type"]]["max_workers"] == 0


def test_aws_head_is_a_cpu_node(aws):
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(AWS_GPU_FAMILIES)


def test_aws_has_an_autoscaled_gpu_worker_type(aws):
    workers = {k: v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu, f"no worker type advertises a GPU: {workers}"
    for name, node in gpu.items():
        assert node["node_config"]["InstanceType"].startswith(AWS_GPU_FAMILIES), name
        assert node["resources"].get("CPU", 0) >= 1, name
        # Ray does not check a node type's max_workers against the global cap: we do.
        assert 1 <= node["max_workers"] <= aws["max_workers"], name
        assert 0 <= node["min_workers"] <= node["max_workers"], name


def test_aws_every_node_type_names_its_ami(aws):
    """Without an ImageId Ray launches its old Ubuntu 18.04 DLAMI (Python 3.7): halo_ray needs >= 3.10."""
    for name, node in aws["available_node_types"].items():
        assert node["node_config"].get("ImageId", "").startswith("ami-"), name


def test_aws_head_and_workers_install_halo_ray_from_the_copied_checkout(aws):
    checkout = repo_mount(aws)
    assert (AWS_FILE.parent / "pyproject.toml").exists()  # "." is the repository root
    for key in ("head_setup_commands", "worker_setup_commands"):  # merged with setup_commands
        commands = aws[key]
        assert editable_targets(commands) == [checkout], key
        names = [r.name for r in requirements(commands)]
        assert "ray" in names, key
        # Ray (with its CLI for `ray start`) is installed before halo_ray
        ray_at = next(i for i, c in enumerate(commands) if re.search(r"pip install .*\bray\[", c))
        halo_at = next(i for i, c in enumerate(commands) if f"-e {checkout}" in c)
        assert ray_at < halo_at, key


def test_aws_head_installs_boto3_for_the_autoscaler(aws):
    """The autoscaler on the head launches the workers through boto3."""
    assert "boto3" in [r.name for r in requirements(aws["head_setup_commands"])]


def test_aws_nodes_mount_the_shared_results_volume(aws_raw, aws):
    mounts = [c for c in aws["initialization_commands"] if "mount" in c and SHARED_MOUNT in c]
    assert any("nfs4" in c and ".efs." in c for c in mounts), aws["initialization_commands"]
    # initialization_commands run on the head and on every worker
    text = AWS_FILE.read_text()
    assert f"--storage {SHARED_MOUNT}/runs" in text and "s3://" in text


# --- both files --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=lambda p: p.name)
def test_pins_stay_inside_pyproject_ranges(path):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ranges = {Requirement(d).name: Requirement(d).specifier for d in project["dependencies"]}
    cfg = prepared(load(path))
    checked = 0
    for req in requirements(cfg["head_setup_commands"] + cfg["worker_setup_commands"]):
        if req.name not in ranges:
            continue
        pinned = [Version(s.version) for s in req.specifier if s.operator == "=="]
        for version in pinned:
            assert version in ranges[req.name], f"{path.name}: {req} outside {ranges[req.name]}"
        if not pinned:
            assert req.specifier == ranges[req.name], f"{path.name}: {req} vs {ranges[req.name]}"
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=lambda p: p.name)
def test_token_auth_is_on_consistently_on_every_node(path):
    """RAY_AUTH_MODE=token on head and workers, and the token file shipped to all of them."""
    cfg = prepared(load(path))
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379" in worker
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


# --- cluster-local.yaml (on-prem) --------------------------------------------------------------


def test_local_config_passes_rays_validation(local_raw, local):
    workers = local_raw["provider"]["worker_ips"]
    (node_type,) = local["available_node_types"].values()  # the provider's single node type
    assert (
        node_type["min_workers"] == node_type["max_workers"] == len(workers) == local["max_workers"]
    )
    assert local_raw["provider"]["head_ip"] not in workers


def test_local_head_runs_no_trials(local):
    head = " ".join(local["head_start_ray_commands"])
    assert "--num-cpus=0" in head and "--num-gpus=0" in head


def test_local_nodes_install_halo_ray_and_mount_the_shared_volume(local):
    checkout = repo_mount(local)
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert editable_targets(local[key]) == [checkout], key
    assert any("mount" in c and SHARED_MOUNT in c for c in local["initialization_commands"])


def test_local_rejects_a_provider_without_worker_ips(local_raw):
    cfg = copy.deepcopy(local_raw)
    del cfg["provider"]["worker_ips"]
    with pytest.raises(ClickException, match="worker_ips"):
        prepared(cfg)


# --- Ray's validator rejects broken files (so the tests above can fail) ----------------------------


def _mutated(cfg: dict, edit) -> dict:
    out = copy.deepcopy(cfg)
    edit(out)
    return out


def _gpu_type(cfg: dict) -> dict:
    return cfg["available_node_types"]["ray.worker.gpu"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(max_worker=c.pop("max_workers")), "'max_worker' was unexpected"),
        (lambda c: _gpu_type(c).update(min_worker=1), "'min_worker' was unexpected"),
        (lambda c: c["auth"].update(ssh_usr="ubuntu"), "'ssh_usr' was unexpected"),
        (lambda c: c.update(max_workers="four"), "'four' is not of type 'integer'"),
        (lambda c: _gpu_type(c)["resources"].update(GPU=0.5), "0.5 is not of type 'integer'"),
        (lambda c: _gpu_type(c)["resources"].update(GPU=-1), "less than the minimum of 0"),
        (lambda c: _gpu_type(c).pop("resources"), "'resources' is a required property"),
    ],
    ids=[
        "max_worker",
        "min_worker",
        "ssh_usr",
        "max_workers-str",
        "fractional-gpu",
        "negative-gpu",
        "no-resources",
    ],
)
def test_schema_rejects(aws_raw, edit, message):
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        prepared(_mutated(aws_raw, edit))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c.update(head_node_type="ray.head.gpu"),
            "must be one of `available_node_types`",
        ),
        (lambda c: _gpu_type(c).update(min_workers=5), "smaller than the sum of `min_workers`"),
    ],
    ids=["unknown-head-type", "min-workers-over-cap"],
)
def test_cross_field_rules_reject(aws_raw, edit, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        prepared(_mutated(aws_raw, edit))


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: _gpu_type(c)["node_config"].update(InstanceTyp="g5.xlarge"),
        lambda c: c["provider"].update(regoin="us-east-1"),
        lambda c: _gpu_type(c).update(max_workers=10),
    ],
    ids=["node_config-typo", "provider-typo", "node-max-over-global"],
)
def test_what_rays_validator_does_not_catch(aws_raw, edit):
    """Accepted by Ray 2.60 (surfaces only at `ray up` or never): our own checks above cover it."""
    prepared(_mutated(aws_raw, edit))
