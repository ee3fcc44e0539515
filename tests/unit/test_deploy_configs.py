"""The deployment configs: cluster.yaml (Ray cluster launcher) and the KubeRay manifests.

cluster.yaml goes through Ray's own config preparation and schema validation (what `ray up`
does before touching AWS); the manifests are checked against this repository's code: the
RayJob entrypoint against `python -m batch`'s parser, the RayService app against
serve_app/config.yaml, and every pinned version against ray, pyproject.toml and the Makefile.
"""

from __future__ import annotations

import ast
import copy
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
RAYJOB_YAML = REPO / "deploy" / "kuberay" / "rayjob.yaml"
RAYSERVICE_YAML = REPO / "deploy" / "kuberay" / "rayservice.yaml"
SERVE_CONFIG_YAML = REPO / "serve_app" / "config.yaml"

PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<version>[0-9][^-]*)-(?P<py>py\d+)-(?P<flavor>cpu|gpu)$")
WORLD = {"0.0.0.0/0", "::/0"}
RAY_PORTS = (6379, 8265, 10001)


# ---------------------------------------------------------------------------------------- helpers


def load_cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def load_single(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one document, got {len(docs)}"
    return docs[0]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every (path, key, value) pair in a parsed YAML tree; list items have key None."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield f"{path}[{i}]", None, v
            yield from walk(v, f"{path}[{i}]")


def pyproject_requirement(name: str) -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == name]
    return req


def makefile_torch_version() -> str:
    m = re.search(r"^TORCH_VERSION\s*\?=\s*(\S+)\s*$", (REPO / "Makefile").read_text(), re.M)
    assert m, "Makefile: TORCH_VERSION not found"
    return m.group(1)


def shell_pieces(command: str) -> list[list[str]]:
    """A one-line shell command split at ';' / '&&' into argv lists."""
    return [shlex.split(part) for part in re.split(r";|&&", command) if part.strip()]


def ray_start_argv(commands: list[str]) -> list[tuple[str, list[str]]]:
    """(whole command, `ray start ...` argv) for every `ray start` in a list of commands."""
    found = []
    for cmd in commands:
        for argv in shell_pieces(cmd):
            if argv[:2] == ["ray", "start"]:
                found.append((cmd, argv))
    return found


def flag_values(argv: list[str], flag: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
    return values


def check_ray_image(image: str, flavor: str | None = None) -> None:
    m = RAY_IMAGE.match(image)
    assert m, f"{image}: not a pinned rayproject/ray:<version>-<py>-<cpu|gpu> image"
    assert m["version"] == ray.__version__, f"{image}: Ray {m['version']} but the project runs {ray.__version__}"
    assert m["py"] == PY_TAG, f"{image}: {m['py']} but the project runs {PY_TAG}"
    if flavor:
        assert m["flavor"] == flavor, f"{image}: expected the {flavor} image"


def check_torch_pins(texts: list[str]) -> None:
    pins = [m.group(1) for t in texts for m in re.finditer(r"\btorch==([0-9][0-9A-Za-z.+]*)", t)]
    assert pins, "no torch==X pin found"
    torch_req = pyproject_requirement("torch")
    for pin in pins:
        assert pin == makefile_torch_version(), f"torch=={pin} differs from the Makefile's TORCH_VERSION"
        assert Version(pin) in torch_req.specifier, f"torch=={pin} is outside pyproject's {torch_req}"


def containers(cluster_spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{'head': [...], '<group>': [...]} containers of a RayCluster spec."""
    out = {"head": cluster_spec["headGroupSpec"]["template"]["spec"]["containers"]}
    for group in cluster_spec["workerGroupSpecs"]:
        out[group["groupName"]] = group["template"]["spec"]["containers"]
    return out


def serve_config_app() -> tuple[dict[str, Any], dict[str, Any]]:
    doc = yaml.safe_load(SERVE_CONFIG_YAML.read_text())
    (app,) = doc["applications"]
    return doc, app


# ------------------------------------------------------------------------------------ cluster.yaml


def test_cluster_yaml_validates_with_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load_cluster()
    # What `ray up` does before it talks to AWS: merge provider defaults, then validate.
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    # Our own commands replace Ray's defaults (which install a nightly wheel) rather than mixing in.
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in raw, f"{key} must be explicit, or Ray's defaults.yaml fills it in"
    merged = " ".join(prepared["head_setup_commands"] + prepared["worker_setup_commands"])
    assert "ray-wheels" not in merged and "ray-3.0.0.dev0" not in merged


def test_cluster_yaml_schema_validation_rejects_a_typo():
    # Proves the validation above can fail: an unknown top-level key is a schema error.
    import jsonschema

    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = prepare_config(copy.deepcopy(load_cluster()))
    bad["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)


def test_head_node_type_has_no_gpus():
    cfg = load_cluster()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU") == 0, "the head must advertise GPU: 0"
    assert head.get("max_workers", 0) == 0
    ((_, argv),) = ray_start_argv(cfg["head_start_ray_commands"])
    assert "--head" in argv
    assert flag_values(argv, "--num-gpus") in ([], ["0"])


def test_gpu_worker_type_scales_from_zero_with_a_ceiling():
    cfg = load_cluster()
    workers = {name: t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, "no GPU worker node type"
    for name, t in gpu.items():
        assert t["resources"]["GPU"] == 1, f"{name}: one GPU per worker node"
        assert t.get("min_workers") == 0, f"{name}: min_workers must be 0 (no idle GPU bill)"
        assert isinstance(t.get("max_workers"), int) and 1 <= t["max_workers"] <= cfg["max_workers"], name
        assert t["node_config"]["InstanceType"].split(".")[0] in {"g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5"}


def test_cluster_yaml_pins_match_ray_pyproject_and_makefile():
    cfg = load_cluster()
    docker = cfg["docker"]
    check_ray_image(docker["image"])
    check_ray_image(docker["head_image"], "cpu")
    check_ray_image(docker["worker_image"], "gpu")
    assert Version(ray.__version__) in pyproject_requirement("ray").specifier
    for key in ("head_setup_commands", "worker_setup_commands"):
        cmds = cfg[key]
        check_torch_pins(cmds)
        torch_at = next(i for i, c in enumerate(cmds) if "torch==" in c)
        project_at = next(i for i, c in enumerate(cmds) if re.search(r"pip install .*-e ~/ray-diffusion", c))
        assert torch_at < project_at, f"{key}: torch must be installed (pinned) before the project"
    # The head has no GPU: its torch comes from the CPU wheel index.
    assert any("torch==" in c and "/whl/cpu" in c for c in cfg["head_setup_commands"])
    # The project installed is the repository synced by file_mounts.
    assert cfg["file_mounts"]["~/ray-diffusion"] == "."


def test_no_security_group_rule_opens_anything_to_the_world():
    cfg = load_cluster()
    for path, key, value in walk(cfg):
        if key in ("CidrIp", "CidrIpv6", "IpRanges", "Ipv6Ranges", "cidr", "CidrBlock"):
            text = yaml.safe_dump(value)
            assert not any(w in text for w in WORLD), f"{path}: open to the world"
        if key == "IpPermissions":
            for rule in value:
                lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
                ranges = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
                    r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
                exposed = [p for p in RAY_PORTS if lo == -1 or lo <= p <= hi]
                assert not (ranges & WORLD and exposed), f"{path}: {exposed} open to the world"
    # Ray's auto-created security group always adds SSH from 0.0.0.0/0: every node type must
    # bring its own group instead.
    for name, t in cfg["available_node_types"].items():
        assert t["node_config"].get("SecurityGroupIds"), f"{name}: set SecurityGroupIds"


def test_dashboard_binds_loopback_and_start_flags_exist():
    from ray.scripts.scripts import start

    cfg = load_cluster()
    known = {opt for p in start.params for opt in p.opts}
    starts = ray_start_argv(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert len(starts) == 2
    for commands in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert commands[0].strip() == "ray stop", "stop a previous Ray before starting"
    for _, argv in starts:
        for arg in argv[2:]:
            if arg.startswith("--"):
                assert arg.split("=", 1)[0] in known, f"`ray start` has no option {arg}"
        hosts = flag_values(argv, "--dashboard-host")
        assert all(h == "127.0.0.1" for h in hosts), f"dashboard must stay on loopback: {hosts}"
    ((_, head),) = ray_start_argv(cfg["head_start_ray_commands"])
    assert flag_values(head, "--dashboard-host") == ["127.0.0.1"]


def test_token_auth_on_every_node_with_the_token_outside_the_repo():
    cfg = load_cluster()
    for cmd, _ in ray_start_argv(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in cmd, f"no RAY_AUTH_MODE=token in: {cmd}"
        m = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", cmd)
        assert m and m.group(1).replace("$HOME", "~").startswith("~/.ray-diffusion/"), cmd
    opts = " ".join(cfg["docker"]["run_options"])
    assert "-e RAY_AUTH_MODE=token" in opts
    m = re.search(r"-e RAY_AUTH_TOKEN_PATH=/home/ray/(\S+)", opts)
    assert m and m.group(1) == ".ray-diffusion/auth_token"
    # The token directory is synced from the operator's home, never from the repository.
    local = cfg["file_mounts"]["~/.ray-diffusion"]
    assert local.startswith("~/") and not Path(local).expanduser().resolve().is_relative_to(REPO)
    assert "HF_HOME=" in opts, "model cache location for every node"


def secret_like(text: str) -> list[str]:
    return re.findall(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32,}(?![0-9A-Fa-f])", text)


@pytest.mark.parametrize("path", [CLUSTER_YAML, RAYJOB_YAML, RAYSERVICE_YAML], ids=lambda p: p.name)
def test_no_literal_secret_is_committed(path):
    text = path.read_text()
    assert not secret_like(text), f"{path.name}: hex string that looks like a token"
    assert not re.search(r"(?i)(auth_token|api_key|password)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{16,}", text)
    for _, key, value in walk(list(yaml.safe_load_all(text))):
        if isinstance(value, dict) and value.get("kind") == "Secret":
            pytest.fail(f"{path.name}: a Secret manifest is committed")
        if key == "env":
            for var in value:
                if re.search(r"TOKEN|KEY|SECRET|PASSWORD", var["name"]):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], var["name"]


def test_secret_detector_catches_a_token():
    import secrets

    assert secret_like(f"RAY_AUTH_TOKEN={secrets.token_hex(32)}")


# --------------------------------------------------------------------------------------- KubeRay


def test_kuberay_manifests_parse_with_the_right_kinds():
    job, svc = load_single(RAYJOB_YAML), load_single(RAYSERVICE_YAML)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert (svc["apiVersion"], svc["kind"]) == ("ray.io/v1", "RayService")


def test_rayjob_entrypoint_is_a_valid_batch_command():
    from batch.cli import build_parser, resolve_config

    job = load_single(RAYJOB_YAML)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "batch"]
    assert (REPO / "batch" / "__main__.py").is_file()
    try:
        ns = build_parser().parse_args(argv[3:])
    except SystemExit:
        pytest.fail(f"`python -m batch` rejects the entrypoint's options: {argv[3:]}")
    assert ns.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert ns.dtype == "float16"
    assert re.match(r"^[a-z][a-z0-9+]*://", ns.output) and ns.output.startswith("s3://"), ns.output
    cfg = resolve_config(ns)  # the same validation the driver applies before any work
    assert cfg.output == ns.output and cfg.prompts == ns.prompts
    # The driver plans GPU workers only when a GPU is present at start, then asks for the rest:
    # the cluster starts with a GPU pod and can grow to the requested worker count.
    (gpu,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    per_pod = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert gpu["replicas"] >= 1
    assert cfg.num_workers and cfg.num_workers * cfg.gpus_per_worker <= gpu["maxReplicas"] * per_pod


def test_rayjob_cluster_shape_and_lifecycle():
    spec = load_single(RAYJOB_YAML)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    packages = runtime_env["pip"]["packages"]
    check_torch_pins(packages)
    assert packages[0].startswith("torch=="), "torch first, pinned"
    assert any(Requirement(p).name == "ray-diffusion" for p in packages)
    check_cluster_spec(spec["rayClusterSpec"])


def check_cluster_spec(cluster: dict[str, Any]) -> None:
    assert cluster["rayVersion"] == ray.__version__
    auth = cluster["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"], "token auth from a Secret reference"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    by_group = containers(cluster)
    for c in by_group["head"]:
        check_ray_image(c["image"])
        for section in ("limits", "requests"):
            assert "nvidia.com/gpu" not in c.get("resources", {}).get(section, {}), "the head gets no GPU"
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu_groups, "no GPU worker group"
    for group in gpu_groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for c in group["template"]["spec"]["containers"]:
            check_ray_image(c["image"], "gpu")
            res = c["resources"]
            assert int(res["limits"]["nvidia.com/gpu"]) == int(res["requests"]["nvidia.com/gpu"]) == 1
            assert res["requests"].get("cpu") and res["requests"].get("memory")
    # Every Ray container sees the shared HF cache at HF_HOME, backed by the same claim.
    pod_specs = [head["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pod_specs:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["volumes"] if "persistentVolumeClaim" in v}
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c["env"]}
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert env.get("HF_HOME") in mounts and mounts[env["HF_HOME"]] in claims, c["name"]


def test_kuberay_dashboard_and_services_are_not_public():
    for path in (RAYJOB_YAML, RAYSERVICE_YAML):
        doc = load_single(path)
        for where, key, value in walk(doc):
            assert value not in ("LoadBalancer", "NodePort"), f"{path.name}{where}: {value}"
            if key in ("enableIngress", "hostNetwork"):
                assert value is False, f"{path.name}{where}"


def test_rayservice_app_is_serve_app_config_yaml():
    from serve_app.config import ServeAppConfig

    spec = load_single(RAYSERVICE_YAML)["spec"]
    serve = yaml.safe_load(spec["serveConfigV2"])
    shipped, shipped_app = serve_config_app()
    (app,) = serve["applications"]
    for key in ("name", "route_prefix", "import_path", "args"):
        assert app[key] == shipped_app[key], f"application {key} differs from serve_app/config.yaml"
    assert ServeAppConfig.from_args(app["args"]) == ServeAppConfig.from_args(shipped_app["args"])
    assert serve["proxy_location"] == shipped["proxy_location"]
    assert serve["http_options"]["port"] == shipped["http_options"]["port"]
    # 0.0.0.0 only inside the pod, behind the ClusterIP Serve Service (checked above).
    assert serve["http_options"]["host"] in (shipped["http_options"]["host"], "0.0.0.0")
    assert spec.get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"

    # The import path resolves to a build_app function in this repository.
    module, _, attr = app["import_path"].partition(":")
    source = REPO.joinpath(*module.split(".")).with_suffix(".py")
    assert source.is_file(), source
    defs = {n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert attr in defs, f"{source}: no function {attr}"

    packages = app["runtime_env"]["pip"]["packages"]
    check_torch_pins(packages)
    assert packages[0].startswith("torch==")


def test_rayservice_cluster_gpu_group_api_key_and_scaling():
    spec = load_single(RAYSERVICE_YAML)["spec"]
    cluster = spec["rayClusterConfig"]
    check_cluster_spec(cluster)
    app = yaml.safe_load(spec["serveConfigV2"])["applications"][0]
    key_env = app["args"]["api_key_env"]
    assert key_env == "RAY_DIFFUSION_API_KEY"
    # The ingress replica can land on any node: every Ray container gets the key from a Secret.
    for group, cs in containers(cluster).items():
        for c in cs:
            (var,) = [e for e in c["env"] if e["name"] == key_env]
            assert "value" not in var and var["valueFrom"]["secretKeyRef"]["name"], group
    # The GPU group can hold the app's replica bounds (one replica per GPU pod).
    (gpu,) = cluster["workerGroupSpecs"]
    per_pod = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    replicas = per_pod // app["args"]["gpus_per_replica"]
    assert gpu["maxReplicas"] * replicas >= app["args"]["max_replicas"]
    assert gpu["minReplicas"] * replicas <= app["args"]["min_replicas"]
