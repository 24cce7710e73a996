"""The Ray cluster-launcher configs in hippo/: valid for the installed Ray, right node types,
right setup, token auth on, and no secrets. No cloud call is made."""
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"aws": REPO / "hippo" / "aws.yaml", "azure": REPO / "hippo" / "azure.yaml"}
# Files a secret must never reach.
SCANNED = [*CONFIGS.values(), REPO / "hippo" / "README.md", REPO / "patches" / "README.md"]

# accelerator -> {provider: (instance type, GPUs per node)}
GPU_TYPES = {
    "H100": {"aws": ("p5.48xlarge", 8), "azure": ("Standard_ND96isr_H100_v5", 8)},
    "A100": {"aws": ("p4d.24xlarge", 8), "azure": ("Standard_ND96asr_v4", 8)},
    "T4": {"aws": ("g4dn.xlarge", 1), "azure": ("Standard_NC4as_T4_v3", 1)},
}
BASE_REQS = "pip install -r ~/trainer/requirements.txt"
GPU_REQS = "requirements-gpu.txt"


def load(name: str) -> dict:
    with open(CONFIGS[name]) as f:
        return yaml.safe_load(f)


def prepared(name: str) -> dict:
    """What `ray up` validates: the config merged with Ray's provider defaults."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load(name))
    validate_config(config)
    return config


def instance_type(name: str, node_type: dict) -> str:
    node_config = node_type["node_config"]
    return node_config["InstanceType"] if name == "aws" else node_config["azure_arm_parameters"]["vmSize"]


def gpu_node_types(config: dict) -> dict:
    return {k: v for k, v in config["available_node_types"].items() if v["resources"].get("GPU", 0) > 0}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def provider(request):
    return request.param


# ---------------------------------------------------------------- Ray's own validation


def test_passes_ray_cluster_config_validation(provider):
    config = prepared(provider)  # raises on any schema or consistency error
    assert config["provider"]["type"] == provider
    assert config["cluster_name"] == "hippo"
    # prepare_config merged the setup lists the way `ray up` runs them.
    assert config["head_setup_commands"][: len(load(provider)["setup_commands"])] == load(provider)["setup_commands"]


def test_ray_validation_is_not_a_no_op(provider):
    """The same validator rejects broken variants of the file, so passing means something."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    unknown_key = load(provider)
    unknown_key["head_setup_comands"] = []  # misspelt field
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(unknown_key))

    fractional_gpu = load(provider)
    next(iter(gpu_node_types(fractional_gpu).values()))["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(fractional_gpu))

    too_many_min = load(provider)
    for node_type in gpu_node_types(too_many_min).values():
        node_type["min_workers"] = too_many_min["max_workers"]
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(prepare_config(too_many_min))


# ---------------------------------------------------------------- node types


def test_head_node_type_is_a_cpu_node_that_never_scales(provider):
    config = prepared(provider)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"]["CPU"] >= 4
    assert head["min_workers"] == head["max_workers"] == 0
    assert not any(k.startswith("accelerator_type:") for k in head["resources"])
    assert instance_type(provider, head) in ("m5.2xlarge", "Standard_D8s_v5")


@pytest.mark.parametrize("accelerator", sorted(GPU_TYPES))
def test_gpu_worker_type_declares_gpus_and_accelerator_type(provider, accelerator):
    config = prepared(provider)
    resource = f"accelerator_type:{accelerator}"
    matching = {k: v for k, v in config["available_node_types"].items() if resource in v["resources"]}
    assert len(matching) == 1, f"expected one node type with {resource}, got {sorted(matching)}"
    (name, node_type), = matching.items()
    expected_instance, expected_gpus = GPU_TYPES[accelerator][provider]
    assert name != config["head_node_type"]
    assert instance_type(provider, node_type) == expected_instance
    assert node_type["resources"]["GPU"] == expected_gpus
    assert node_type["resources"][resource] == 1
    assert node_type["resources"]["CPU"] >= 4
    assert 0 == node_type["min_workers"] < node_type["max_workers"] <= config["max_workers"]


def test_autoscaling_bounds(provider):
    config = prepared(provider)
    assert config["max_workers"] == 8
    types = config["available_node_types"]
    assert sum(t["min_workers"] for t in types.values()) <= config["max_workers"]
    assert {t: types[t]["max_workers"] for t in gpu_node_types(config)} == {
        "worker.h100": 2, "worker.a100": 2, "worker.t4": 4}
    assert config["idle_timeout_minutes"] > 0


# ---------------------------------------------------------------- setup and start commands


def test_setup_installs_requirements_everywhere_and_gpu_extras_only_on_gpu_types(provider):
    config = prepared(provider)
    # The head runs setup_commands + head_setup_commands (merged by prepare_config).
    head_cmds = config["head_setup_commands"]
    assert any(BASE_REQS in c for c in head_cmds)
    assert not any(GPU_REQS in c for c in head_cmds)
    # Worker types without their own list run setup_commands + worker_setup_commands.
    assert any(BASE_REQS in c for c in config["worker_setup_commands"])
    assert not any(GPU_REQS in c for c in config["worker_setup_commands"])
    gpu_types = gpu_node_types(config)
    assert set(gpu_types) == {"worker.h100", "worker.a100", "worker.t4"}
    for name, node_type in gpu_types.items():
        # A node type's own worker_setup_commands replace the global lists entirely,
        # so it must install the base requirements itself, before the GPU extras.
        cmds = node_type["worker_setup_commands"]
        base = [i for i, c in enumerate(cmds) if BASE_REQS in c and GPU_REQS not in c]
        gpu = [i for i, c in enumerate(cmds) if GPU_REQS in c]
        assert base and gpu and base[0] < gpu[0], (name, cmds)
        assert any(c.startswith("nvidia-smi") for c in cmds), name
        assert cmds[-len(config["setup_commands"]) - 1:-1] == config["setup_commands"], name
    for node_type in config["available_node_types"].values():
        if node_type["resources"].get("GPU", 0) == 0:
            assert not any(GPU_REQS in c for c in node_type.get("worker_setup_commands", []))


def test_requirements_files_are_mounted_and_exist(provider):
    config = prepared(provider)
    assert config["file_mounts"]["~/trainer"] == "."
    assert (REPO / "requirements.txt").is_file() and (REPO / "requirements-gpu.txt").is_file()
    assert ".git" in config["rsync_exclude"]


def test_python_311_environment_is_created_and_activated(provider):
    cmds = prepared(provider)["setup_commands"]
    assert any("uv venv" in c and "--python 3.11" in c and "~/venv" in c for c in cmds)
    bashrc = next(c for c in cmds if ">> ~/.bashrc" in c)
    assert "venv/bin/activate" in bashrc and "export RAY_AUTH_MODE=token" in bashrc
    # The venv must exist before anything is pip-installed into it.
    assert [i for i, c in enumerate(cmds) if "uv venv" in c][0] < [i for i, c in enumerate(cmds) if BASE_REQS in c][0]


def test_start_commands_enable_token_auth(provider):
    config = prepared(provider)
    head_start = config["head_start_ray_commands"]
    worker_start = config["worker_start_ray_commands"]
    assert head_start[0] == worker_start[0] == "ray stop"
    head = head_start[-1]
    for flag in ("ray start --head", "--port=6379", "--dashboard-host=0.0.0.0",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml", "RAY_AUTH_MODE=token"):
        assert flag in head, flag
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start[-1]
    assert "RAY_AUTH_MODE=token" in worker_start[-1]
    # `ray start` reads the token from ~/.ray/auth_token; it is mounted from the user's
    # machine (outside the repository), never stored in it.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_installed_ray_supports_token_auth_mode():
    """The configs rely on Ray 2.60's RAY_AUTH_MODE=token and its default token path."""
    from ray._private.authentication import authentication_token_setup as setup
    from ray._private.authentication.authentication_utils import get_authentication_mode_name
    from ray._raylet import AuthenticationMode

    assert setup.AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    assert get_authentication_mode_name(AuthenticationMode.TOKEN) == "token"
    assert get_authentication_mode_name(AuthenticationMode.DISABLED) == "disabled"
    assert setup._get_default_token_path() == Path.home() / ".ray" / "auth_token"


# ---------------------------------------------------------------- providers


def test_aws_provider_and_node_configs_match_the_ec2_api():
    import botocore.session
    from botocore.validate import ParamValidator

    config = prepared("aws")
    assert config["provider"]["region"] == "us-west-2"
    assert config["provider"]["availability_zone"].startswith("us-west-2")
    assert config["provider"]["cache_stopped_nodes"] is False
    # Ray passes node_config to EC2 RunInstances as is: check it against the EC2 API model.
    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in config["available_node_types"].items():
        report = ParamValidator().validate(dict(node_type["node_config"], MinCount=1, MaxCount=1), shape)
        assert not report.has_errors(), (name, report.generate_report())
        assert node_type["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/")
    for name, node_type in gpu_node_types(config).items():
        assert "deeplearning" in node_type["node_config"]["ImageId"], name
        assert node_type["node_config"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] >= 200
    bad = ParamValidator().validate({"InstanceTyp": "p5.48xlarge", "MinCount": 1, "MaxCount": 1}, shape)
    assert bad.has_errors()
    assert any("boto3" in c for c in config["head_setup_commands"])


def _ray_azure_template() -> dict:
    import ray.autoscaler._private._azure as azure

    with open(Path(azure.__file__).parent / "azure-vm-template.json") as f:
        return json.load(f)


def test_azure_provider_auth_and_arm_parameters():
    config = prepared("azure")
    provider = config["provider"]
    assert provider["location"] and provider["resource_group"] == "hippo-ray"
    assert "subscription_id" not in provider  # comes from `az login`, never from the file
    assert config["auth"]["ssh_private_key"] == "~/.ssh/id_rsa"
    assert config["auth"]["ssh_public_key"] == "~/.ssh/id_rsa.pub"

    template_params = _ray_azure_template()["parameters"]
    # Ray's node provider injects these; everything else without a default must come from us.
    injected = {"vmName", "adminUsername", "publicKey", "vmTags", "vmCount", "msi", "nsg", "subnet"}
    required = {k for k, v in template_params.items() if "defaultValue" not in v} - injected
    kinds = {"string": str, "int": int, "bool": bool, "object": dict, "array": list}
    for name, node_type in config["available_node_types"].items():
        params = node_type["node_config"]["azure_arm_parameters"]
        unknown = set(params) - set(template_params) - {"availability_zone"}
        assert not unknown, (name, unknown)  # ARM rejects parameters its template lacks
        assert required <= set(params), (name, required - set(params))
        for key, value in params.items():
            if key in template_params:
                assert isinstance(value, kinds[template_params[key]["type"].lower()]), (name, key)
        assert params["osDiskSize"] >= 128
    for name, node_type in gpu_node_types(config).items():
        params = node_type["node_config"]["azure_arm_parameters"]
        assert (params["imagePublisher"], params["imageOffer"], params["imageSku"]) == (
            "microsoft-dsvm", "ubuntu-hpc", "2204"), name
        assert params["osDiskSize"] >= 256
    head_cmds = " ".join(config["head_setup_commands"])
    for package in ("azure-identity", "azure-mgmt-compute", "azure-mgmt-network", "azure-mgmt-resource"):
        assert package in head_cmds


def test_installed_ray_azure_template_supports_image_id_and_os_disk_size():
    """What patches/README.md states: Ray 2.60 needs no patch for a custom image or disk size."""
    template = _ray_azure_template()
    assert template["parameters"]["imageId"]["type"] == "string"
    assert template["parameters"]["osDiskSize"]["type"] == "int"
    vm = next(r for r in template["resources"] if r["type"] == "Microsoft.Compute/virtualMachines")
    storage = vm["properties"]["storageProfile"]
    assert "parameters('osDiskSize')" in storage["osDisk"]["diskSizeGB"]
    assert "parameters('imageId')" in storage["imageReference"]
    assert "parameters('imagePublisher')" in storage["imageReference"]
    readme = (REPO / "patches" / "README.md").read_text()
    for name in ("imageId", "osDiskSize", "azure-vm-template.json", "node_provider.py", "53298"):
        assert name in readme


# ---------------------------------------------------------------- secrets

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "Ray auth token (64 hex)": re.compile(r"\b[0-9a-f]{64}\b"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "Azure subscription/tenant id (GUID)": re.compile(
        r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
    "bearer token": re.compile(r"Bearer\s+[A-Za-z0-9._~+/=-]{16,}"),
    # NAME=value / "name": "value" where the name says secret and the value is a literal,
    # not a $VARIABLE, <PLACEHOLDER>, path or command.
    "secret assignment": re.compile(
        r"(?i)(token|secret|password|passwd|access_key|private_key|account_key)[\"']?\s*[:=]\s*"
        r"[\"']?(?![$<~{(./\"'\s])[A-Za-z0-9+/_\-]{12,}"),
}


def find_secrets(text: str) -> list:
    return [(label, m.group(0)) for label, rx in SECRET_PATTERNS.items() for m in rx.finditer(text)]


def test_secret_scanner_catches_what_it_should():
    # Assembled at run time so that this file holds no secret-shaped literal itself.
    samples = {
        "AWS access key id": "aws_key = " + "AKIA" + "Q" * 16,
        "private key block": "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
        "Ray auth token (64 hex)": "RAY_AUTH_TOKEN=" + "ab12" * 16,
        "Hugging Face token": "HF_TOKEN: " + "hf_" + "x" * 34,
        "Azure subscription/tenant id (GUID)": "subscription_id: " + "-".join(
            ["1" * 8, "2" * 4, "3" * 4, "4" * 4, "5" * 12]),
        "bearer token": "Authorization: " + "Bearer " + "z" * 40,
        "secret assignment": "AWS_SECRET_ACCESS_KEY=" + "wJalr" + "X" * 30,
    }
    for label, text in samples.items():
        assert label in {hit[0] for hit in find_secrets(text)}, label
    for harmless in ('"HF_TOKEN": "$HF_TOKEN"', "ssh_private_key: ~/.ssh/id_rsa",
                     "RAY_AUTH_MODE=token ray start", "export RAY_AUTH_MODE=token",
                     "# subscription_id: <AZURE_SUBSCRIPTION_ID>", '"~/.ray/auth_token": "~/.ray/auth_token"'):
        assert find_secrets(harmless) == [], harmless


@pytest.mark.parametrize("path", SCANNED, ids=[str(p.relative_to(REPO)) for p in SCANNED])
def test_no_secrets_in_cluster_files(path):
    text = path.read_text()
    assert find_secrets(text) == []
    if path.suffix == ".yaml":
        # Every string value too (anchors expanded), in case YAML folding hides a match.
        def strings(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    yield str(k)
                    yield from strings(v)
            elif isinstance(node, list):
                for v in node:
                    yield from strings(v)
            elif isinstance(node, str):
                yield node
        values = list(strings(yaml.safe_load(text)))
        assert values and not [s for s in values if find_secrets(s)]
        assert not any(s.startswith("ssh-rsa ") or s.startswith("ssh-ed25519 ") for s in values)
