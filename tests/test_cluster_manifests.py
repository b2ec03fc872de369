"""The cluster files: KubeRay manifests, the submit helper, the image and the EC2 launcher config.

Nothing here needs a cluster: manifests go through the offline KubeRay validator
(shared/kuberay/validate.py, the official CRD schemas), the launcher config through
Ray's own schema, and the submit helper runs in --dry-run mode or against a fake `ray`.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
VALIDATOR = Path(__file__).resolve().parents[2] / "shared" / "kuberay" / "validate.py"
SUBMIT = ROOT / "scripts" / "submit.sh"
DOCKERFILE = CLUSTER / "Dockerfile"
AWS = CLUSTER / "aws.yaml"
# Where cluster/Dockerfile puts the repository inside the image.
IMAGE_APP_DIR = "/home/ray/ltx-ray"


def _kuberay_manifests() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*.yaml") if "apiVersion: ray.io/" in p.read_text())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ray_doc(path: Path) -> dict:
    (doc,) = [d for d in _docs(path) if str(d.get("apiVersion", "")).startswith("ray.io/")]
    return doc


def _validate_manifest(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=60
    )


def _ltx_validate(config: str, overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ltx_ray", "validate", config, *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


# Passed through to the job by scripts/submit.sh; cleared so the host's values never leak in.
_FORWARDED = (
    "WANDB_API_KEY", "WANDB_ENTITY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS",
)


def _submit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in (*_FORWARDED, "RAY_ADDRESS", "RAY")}
    base["PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", str(SUBMIT), *args], cwd=ROOT, capture_output=True, text=True,
        env={**base, **(env or {})}, timeout=60,
    )


def _entrypoint_of_dry_run(stdout: str) -> list[str]:
    """The job's entrypoint from the command a --dry-run prints (everything after ` -- `)."""
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("ray job submit ")]
    words = shlex.split(line)
    return words[words.index("--") + 1:]


def _config_and_overrides(entrypoint: list[str]) -> tuple[str, list[str]]:
    """Map `python -m ltx_ray train CONFIG OVERRIDES...` to a repo-relative config and overrides."""
    assert entrypoint[:4] == ["python", "-m", "ltx_ray", "train"], entrypoint
    config, overrides = entrypoint[4], entrypoint[5:]
    if config.startswith(IMAGE_APP_DIR + "/"):
        config = config[len(IMAGE_APP_DIR) + 1:]
    return config, overrides


# --------------------------------------------------------------------------- KubeRay manifests


def test_cluster_holds_a_rayjob_and_a_raycluster():
    kinds = sorted(_ray_doc(p)["kind"] for p in _kuberay_manifests())
    assert kinds == ["RayCluster", "RayJob"]


@pytest.mark.parametrize("path", _kuberay_manifests(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_kuberay_manifest_passes_the_validator(path):
    result = _validate_manifest(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 invalid" in result.stdout


@pytest.mark.parametrize(
    "manifest, field, typo",
    [
        ("rayjob.yaml", "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        ("raycluster.yaml", "rayStartParams", "rayStartParam"),
    ],
)
def test_a_misspelled_field_fails_the_validator_naming_it(tmp_path, manifest, field, typo):
    text = (CLUSTER / "kuberay" / manifest).read_text()
    assert f"{field}:" in text
    broken = tmp_path / manifest
    broken.write_text(text.replace(f"{field}:", f"{typo}:", 1))
    result = _validate_manifest(broken)
    assert result.returncode == 1, result.stdout
    assert f'unknown field "{typo}"' in result.stdout


def test_rayjob_cleans_up_and_retries_on_a_cpu_head_and_8_gpu_workers():
    spec = _ray_doc(CLUSTER / "kuberay" / "rayjob.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1
    assert spec["rayClusterSpec"]["rayVersion"] == importlib.metadata.version("ray")
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    (workers,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    pod = workers["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])


@pytest.mark.parametrize("manifest", ["rayjob.yaml", "raycluster.yaml"])
def test_gpu_pods_mount_a_memory_backed_dev_shm(manifest):
    doc = _ray_doc(CLUSTER / "kuberay" / manifest)
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("manifest", ["rayjob.yaml", "raycluster.yaml"])
def test_credentials_come_from_the_example_secret_and_not_the_runtime_env(manifest):
    (secret,) = [d for d in _docs(CLUSTER / "kuberay" / "secret.example.yaml") if d["kind"] == "Secret"]
    assert "WANDB_API_KEY" in secret["stringData"]
    doc = _ray_doc(CLUSTER / "kuberay" / manifest)
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        container = group["template"]["spec"]["containers"][0]
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert refs == [secret["metadata"]["name"]]
    assert not re.search(r"KEY|SECRET|TOKEN", doc["spec"].get("runtimeEnvYAML", ""))


def test_rayjob_entrypoint_names_a_config_in_conf_with_overrides_ltx_ray_accepts():
    spec = _ray_doc(CLUSTER / "kuberay" / "rayjob.yaml")["spec"]
    config, overrides = _config_and_overrides(shlex.split(spec["entrypoint"]))
    assert config.startswith("conf/") and (ROOT / config).is_file(), config
    result = _ltx_validate(config, overrides)
    assert result.returncode == 0, result.stderr


def test_rayjob_entrypoint_config_path_is_where_the_dockerfile_copies_conf():
    dockerfile = DOCKERFILE.read_text()
    assert re.search(rf"^WORKDIR {re.escape(IMAGE_APP_DIR)}$", dockerfile, re.M)
    assert re.search(r"^COPY .*\bconf \./conf$", dockerfile, re.M)
    entrypoint = _ray_doc(CLUSTER / "kuberay" / "rayjob.yaml")["spec"]["entrypoint"]
    assert shlex.split(entrypoint)[4].startswith(IMAGE_APP_DIR + "/conf/")


def test_raycluster_submit_command_names_a_config_in_conf_with_overrides_ltx_ray_accepts():
    command = _ray_doc(CLUSTER / "kuberay" / "raycluster.yaml")["metadata"]["annotations"]["ltx-ray/submit"]
    words = shlex.split(command)
    assert words[0] == "scripts/submit.sh"
    result = _submit("--dry-run", *words[1:])
    assert result.returncode == 0, result.stderr
    config, overrides = _config_and_overrides(_entrypoint_of_dry_run(result.stdout))
    assert config.startswith("conf/") and (ROOT / config).is_file(), config
    validated = _ltx_validate(config, overrides)
    assert validated.returncode == 0, validated.stderr


def test_both_manifests_fix_a_storage_run_name_so_a_retry_resumes():
    job_entry = _ray_doc(CLUSTER / "kuberay" / "rayjob.yaml")["spec"]["entrypoint"]
    assert re.search(r"\bstorage\.run_name=[A-Za-z0-9][A-Za-z0-9._-]*\b", job_entry)
    submit = _ray_doc(CLUSTER / "kuberay" / "raycluster.yaml")["metadata"]["annotations"]["ltx-ray/submit"]
    assert re.search(r"--run-name [A-Za-z0-9][A-Za-z0-9._-]*\b", submit)


def _workers_range(words: list[str]) -> tuple[int, int]:
    """(min, max) of the `cluster.num_workers=` override among command words (an int N is (N, N))."""
    (value,) = [w.split("=", 1)[1] for w in words if w.startswith("cluster.num_workers=")]
    n = yaml.safe_load(value)
    lo, hi = (n, n) if isinstance(n, int) else n
    assert isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi, value
    return lo, hi


def _gpu_group_and_command(manifest: str) -> tuple[dict, dict, list[str]]:
    """The manifest's cluster spec, its one GPU worker group, and the command words that start a run."""
    doc = _ray_doc(CLUSTER / "kuberay" / manifest)
    if doc["kind"] == "RayJob":
        cluster, words = doc["spec"]["rayClusterSpec"], shlex.split(doc["spec"]["entrypoint"])
    else:
        cluster, words = doc["spec"], shlex.split(doc["metadata"]["annotations"]["ltx-ray/submit"])
    (group,) = [g for g in cluster["workerGroupSpecs"]
                if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    return cluster, group, words


@pytest.mark.parametrize("manifest", ["rayjob.yaml", "raycluster.yaml"])
def test_gpu_group_replicas_times_gpus_per_pod_match_the_num_workers_range(manifest):
    cluster, group, words = _gpu_group_and_command(manifest)
    lo, hi = _workers_range(words)
    gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert (group["minReplicas"] * gpus, group["maxReplicas"] * gpus) == (lo, hi)
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # Whole pods come and go: the world sizes validate checks are the multiples of the GPUs of one.
    assert f"cluster.workers_per_node={gpus}" in words
    if lo < hi:  # elastic: something must move replicas between the bounds
        assert cluster["enableInTreeAutoscaling"] is True
        assert cluster["autoscalerOptions"]["version"] == "v2"


@pytest.mark.parametrize("manifest", ["rayjob.yaml", "raycluster.yaml"])
def test_gpu_pods_drain_ray_within_their_grace_period_and_an_ec2_spot_notice(manifest):
    _, group, _ = _gpu_group_and_command(manifest)
    pod = group["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
    drain_s = float(env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"])
    assert 30 <= drain_s < pod["terminationGracePeriodSeconds"] < 120


# EFA devices of one node, all of them requested by its one GPU pod (cluster/README.md, "EFA").
EFA_DEVICES = {"p5.48xlarge": 32, "p4d.24xlarge": 4, "p4de.24xlarge": 4}


@pytest.mark.parametrize("manifest", ["rayjob.yaml", "raycluster.yaml"])
def test_gpu_pods_request_every_efa_device_of_a_p5_node_and_the_efa_provider(manifest):
    cluster, group, _ = _gpu_group_and_command(manifest)
    container = group["template"]["spec"]["containers"][0]
    resources = container["resources"]
    # An extended resource: requests must equal limits, a whole count.
    assert resources["requests"]["vpc.amazonaws.com/efa"] == resources["limits"]["vpc.amazonaws.com/efa"]
    assert int(resources["limits"]["vpc.amazonaws.com/efa"]) == EFA_DEVICES["p5.48xlarge"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["FI_PROVIDER"] == "efa"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert "vpc.amazonaws.com/efa" not in {**head.get("requests", {}), **head.get("limits", {})}


@pytest.mark.parametrize("manifest", ["rayjob.yaml", "raycluster.yaml"])
def test_gpu_pods_log_the_network_nccl_chose(manifest):
    doc = _ray_doc(CLUSTER / "kuberay" / manifest)
    _, group, _ = _gpu_group_and_command(manifest)
    env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0].get("env", [])}
    if doc["kind"] == "RayJob":  # the job's runtime env overrides the container's for its processes
        env.update(yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"])
    assert env["NCCL_DEBUG"] == "INFO" and set(env["NCCL_DEBUG_SUBSYS"].split(",")) >= {"INIT", "NET"}


# --------------------------------------------------------------------------- scripts/submit.sh


def test_submit_help_describes_the_options():
    result = _submit("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--address", "--run-name", "--no-wait", "--dry-run", "--pip", "--no-secrets"):
        assert option in result.stdout


def test_submit_dry_run_redacts_secret_values_but_names_them():
    result = _submit(
        "--dry-run", "--run-name", "r1", "conf/default.yaml",
        env={"WANDB_API_KEY": "sekrit123", "AWS_SECRET_ACCESS_KEY": "sekrit456", "AWS_SESSION_TOKEN": "sekrit789"},
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "sekrit" not in output
    for name in ("WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert f'"{name}": "<redacted>"' in output


def test_submit_dry_run_shows_non_secret_values_and_skips_unset_variables():
    result = _submit("--dry-run", "conf/default.yaml", env={"AWS_DEFAULT_REGION": "eu-west-1"})
    assert result.returncode == 0, result.stderr
    assert '"AWS_DEFAULT_REGION": "eu-west-1"' in result.stdout
    assert "WANDB_API_KEY" not in result.stdout


def test_submit_no_secrets_forwards_no_credentials():
    result = _submit("--dry-run", "--no-secrets", "conf/default.yaml", env={"WANDB_API_KEY": "sekrit123"})
    assert result.returncode == 0, result.stderr
    assert "WANDB_API_KEY" not in result.stdout


def test_submit_dry_run_prints_the_ray_job_submit_command():
    result = _submit(
        "--dry-run", "--no-wait", "--address", "http://10.0.0.1:8265", "--run-name", "my-run",
        "conf/default.yaml", "request.rank=64", "request.trigger_phrase=a b",
    )
    assert result.returncode == 0, result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("ray job submit ")]
    words = shlex.split(line)
    assert words[words.index("--address") + 1] == "http://10.0.0.1:8265"
    assert words[words.index("--working-dir") + 1] == str(ROOT)
    assert "--no-wait" in words and "--runtime-env" in words
    assert words[words.index("--") + 1:] == [
        "python", "-m", "ltx_ray", "train", "conf/default.yaml",
        "storage.run_name=my-run", "request.rank=64", "request.trigger_phrase=a b",
    ]


def test_submit_address_defaults_to_ray_address_then_localhost():
    from_env = _submit("--dry-run", env={"RAY_ADDRESS": "http://head:8265"})
    assert "--address http://head:8265 " in from_env.stdout, from_env.stderr
    default = _submit("--dry-run")
    assert "--address http://127.0.0.1:8265 " in default.stdout, default.stderr


def test_submit_rejects_an_invalid_request_before_submitting():
    result = _submit("--dry-run", "conf/default.yaml", "request.rank=63")
    assert result.returncode == 2
    assert "request.rank" in result.stderr
    assert "ray job submit" not in result.stdout


def test_submit_pip_option_installs_the_project_dependencies_except_ray():
    result = _submit("--dry-run", "--pip", "conf/default.yaml")
    assert result.returncode == 0, result.stderr
    runtime_env = json.loads(result.stdout.split("redacted):\n", 1)[1].split("\ncommand:", 1)[0])
    packages = runtime_env["pip"]["packages"]
    assert "torch==2.9.1" in packages and "torchaudio==2.9.1" in packages
    assert not [p for p in packages if re.match(r"ray\b", p)]


def test_submit_hands_ray_the_secrets_in_a_private_file_removed_afterwards(tmp_path):
    fake_ray = tmp_path / "ray"
    fake_ray.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$@" > "$OUT/args"\n'
        'while [[ $1 != --runtime-env ]]; do shift; done\n'
        'stat -c %a "$2" > "$OUT/mode"; cp "$2" "$OUT/env.json"; echo "$2" > "$OUT/path"\n'
    )
    fake_ray.chmod(0o755)
    result = _submit(
        "--no-wait", "--run-name", "r2", "conf/default.yaml",
        env={"RAY": str(fake_ray), "OUT": str(tmp_path), "WANDB_API_KEY": "sekrit123"},
    )
    assert result.returncode == 0, result.stderr
    assert "sekrit123" not in result.stdout + result.stderr
    assert json.loads((tmp_path / "env.json").read_text())["env_vars"]["WANDB_API_KEY"] == "sekrit123"
    assert (tmp_path / "mode").read_text().strip() == "600"
    assert not Path((tmp_path / "path").read_text().strip()).exists()
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:2] == ["job", "submit"] and "--no-wait" in args
    assert args[args.index("--") + 1:] == [
        "python", "-m", "ltx_ray", "train", "conf/default.yaml", "storage.run_name=r2",
    ]


def test_submit_script_never_traces_commands():
    assert not re.search(r"^\s*set\s+(-\w*x|-o\s+xtrace)", SUBMIT.read_text(), re.M)


def test_submit_passes_the_runtime_env_in_a_file_not_on_the_command_line():
    result = _submit("--dry-run", "conf/default.yaml", env={"WANDB_API_KEY": "sekrit123"})
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("ray job submit ")]
    words = shlex.split(line)
    assert words[words.index("--runtime-env") + 1] == "RUNTIME_ENV_FILE"
    assert "--runtime-env-json" not in words


# --------------------------------------------------------------------------- image


def _pyproject_pin(name: str) -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(rf"{name}==", d)]
    return pin


def test_dockerfile_builds_on_the_ray_gpu_image_of_the_installed_ray():
    ray_version = importlib.metadata.version("ray")
    assert re.search(rf"^ARG RAY_IMAGE=rayproject/ray:{re.escape(ray_version)}-py311-gpu$", DOCKERFILE.read_text(), re.M)


def test_dockerfile_installs_the_torch_pair_pinned_in_pyproject_from_the_cuda_index():
    text = DOCKERFILE.read_text()
    assert "https://download.pytorch.org/whl/${TORCH_CUDA}" in text
    assert f"{_pyproject_pin('torch')} {_pyproject_pin('torchaudio')}" in text


def test_dockerfile_bakes_in_no_model_weights():
    instructions = [ln for ln in DOCKERFILE.read_text().splitlines() if ln and not ln.startswith("#")]
    assert not [ln for ln in instructions if re.search(r"safetensors|huggingface|hf download|gemma", ln, re.I)]


def test_dockerfile_installs_a_pinned_efa_stack_with_the_aws_ofi_nccl_plugin_and_runs_as_ray():
    text = DOCKERFILE.read_text()
    (version,) = re.findall(r"^ARG EFA_INSTALLER_VERSION=(\S+)$", text, re.M)
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version  # pinned, never "latest"
    assert "https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" in text
    (install,) = [ln for ln in text.splitlines() if "efa_installer.sh" in ln]
    for flag in ("-y", "--skip-kmod", "--skip-limit-conf", "--no-verify"):
        assert flag in install.split()
    # The plugin is looked for after the install, and the build stops without it.
    after = text[text.index("efa_installer.sh"):]
    assert "libnccl-net" in after and re.search(r"exit 1", after)
    # Root only for the system install: the image's own user runs Ray.
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users[-1] == "ray" and text.index("USER root") < text.index("efa_installer.sh") < text.rindex("USER ray")


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches a path's parents."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/").replace("**/", "*")
        if any(fnmatch.fnmatch(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_admits_what_the_dockerfile_copies_and_nothing_heavy():
    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    copied = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            copied += words[:-1]
    assert "ltx_ray" in copied and "pyproject.toml" in copied
    for source in copied:
        assert not _dockerignored(f"{source}/x.py" if (ROOT / source).is_dir() else source, patterns), source
    for heavy in (".venv/lib/python3.11/site-packages/torch/x.so", "runs/demo/checkpoint_000001/x.pt",
                  ".cache/tiny-bundle/ltx.safetensors", ".git/HEAD", "wandb/run-1/x"):
        assert _dockerignored(heavy, patterns), heavy


# --------------------------------------------------------------------------- EC2 cluster launcher


def _ray_launcher_schema() -> dict:
    (ray_dir,) = importlib.util.find_spec("ray").submodule_search_locations
    return json.loads((Path(ray_dir) / "autoscaler" / "ray-schema.json").read_text())


def test_aws_cluster_config_matches_the_ray_launcher_schema():
    config = yaml.safe_load(AWS.read_text())
    jsonschema.validate(config, _ray_launcher_schema())
    assert config["provider"]["type"] == "aws"
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


def test_aws_schema_check_rejects_a_misspelled_field():
    config = yaml.safe_load(AWS.read_text())
    config["docker"]["imagee"] = config["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError, match="imagee"):
        jsonschema.validate(config, _ray_launcher_schema())


def test_aws_cluster_config_passes_rays_own_launcher_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(yaml.safe_load(AWS.read_text()))))


def test_every_cluster_file_names_the_same_image():
    images = {yaml.safe_load(AWS.read_text())["docker"]["image"]}
    for path in _kuberay_manifests():
        images.update(re.findall(r"^\s*image: (\S+)$", path.read_text(), re.M))
    assert len(images) == 1, images


def _aws_documented_range_and_gpus() -> tuple[tuple[int, int], int]:
    """The `cluster.num_workers=` of the submit line in aws.yaml's header and its `GPUs per node: N`."""
    text = AWS.read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("#") and "'cluster.num_workers=" in ln]
    (gpus,) = re.findall(r"^\s*# GPUs per node: (\d+)\.", text, re.M)
    return _workers_range(shlex.split(line.lstrip("# "))), int(gpus)


def test_aws_gpu_node_type_min_max_workers_match_the_documented_num_workers_range():
    config = yaml.safe_load(AWS.read_text())
    (lo, hi), gpus = _aws_documented_range_and_gpus()
    (worker,) = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert (worker["min_workers"] * gpus, worker["max_workers"] * gpus) == (lo, hi)
    assert config["max_workers"] >= worker["max_workers"]


def test_every_cluster_file_documents_the_same_num_workers_range():
    ranges = {_workers_range(_gpu_group_and_command(m)[2]) for m in ("rayjob.yaml", "raycluster.yaml")}
    ranges.add(_aws_documented_range_and_gpus()[0])
    assert len(ranges) == 1, ranges



def test_aws_gpu_workers_get_an_efa_device_on_every_network_card_in_one_placement_group():
    from ray.autoscaler._private.aws.config import _configure_from_network_interfaces

    config = yaml.safe_load(AWS.read_text())
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    (worker,) = [t["node_config"] for name, t in config["available_node_types"].items()
                 if name != config["head_node_type"]]
    interfaces = worker["NetworkInterfaces"]
    slots = [(i["NetworkCardIndex"], i["DeviceIndex"]) for i in interfaces]
    assert len(set(slots)) == len(slots)
    (primary,) = [i for i in interfaces if (i["NetworkCardIndex"], i["DeviceIndex"]) == (0, 0)]
    assert primary["InterfaceType"] == "interface"  # IP traffic; an EFA-only interface cannot be primary
    efa = [i for i in interfaces if i["InterfaceType"] in ("efa", "efa-only")]
    assert len(efa) == EFA_DEVICES[worker["InstanceType"]] == len({i["NetworkCardIndex"] for i in efa})
    # The same number the KubeRay GPU pods request, and one subnet and security group, the head's.
    for manifest in ("rayjob.yaml", "raycluster.yaml"):
        limits = _gpu_group_and_command(manifest)[1]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["vpc.amazonaws.com/efa"]) == len(efa)
    assert {i["SubnetId"] for i in interfaces} == set(head["SubnetIds"])
    assert {g for i in interfaces for g in i["Groups"]} == set(head["SecurityGroupIds"])
    assert worker["Placement"]["GroupName"]
    # Ray's launcher takes subnets and groups from the interfaces (it refuses them at both levels).
    prepared = _configure_from_network_interfaces(copy.deepcopy(config))
    assert set(prepared["available_node_types"]["ray.worker.gpu8"]["node_config"]["SubnetIds"]) == set(head["SubnetIds"])
    # No public IP for a multi-interface instance: nodes are reached on private addresses.
    assert config["provider"]["use_internal_ips"] is True
    run_options = " ".join(config["docker"]["worker_run_options"])
    assert "--device=/dev/infiniband" in run_options and "--ulimit memlock=-1:-1" in run_options
