"""The Kubernetes manifests (deploy/kubernetes/), rendered offline and read as YAML.

`kubectl kustomize` renders them without a cluster; the checks then read what a cluster would
get: the password in the Secret only, nothing reachable from outside the cluster, and
commands that the `search` CLI accepts, their options and environment variables included.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from search.cli import cli
from search.define import presets
from search.store import storage

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
IMAGE = "search:latest"  # the Dockerfile's own comment builds it: docker build -t search:latest .
Object = dict[str, Any]


def render(folder: Path) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: run 'bash .ci/setup --test' (kubernetes-client).")
    command = [kubectl, "kustomize", str(folder)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def objects() -> list[Object]:
    result = render(DEPLOY)
    assert result.returncode == 0, result.stderr
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def of_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pods(objects: list[Object]) -> dict[str, Object]:
    """The pod template's spec of every workload, by the workload's name."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if "template" in o.get("spec", {})
    }


def containers(objects: list[Object]) -> list[Object]:
    return [c for pod in pods(objects).values() for c in pod["containers"]]


def test_the_manifests_render_offline_and_malformed_yaml_fails(tmp_path: Path) -> None:
    assert render(DEPLOY).returncode == 0
    broken = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, broken)
    workers = broken / "workers.yaml"
    workers.write_text(workers.read_text().replace("  parallelism: 4", "  parallelism: [4"))
    result = render(broken)
    assert result.returncode != 0 and "workers.yaml" in result.stderr


def test_postgresql_on_a_volume_a_job_of_workers_and_the_dashboard(objects: list[Object]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("ConfigMap", "search-storage"),
        ("Deployment", "search-dashboard"),
        ("Job", "search-workers"),
        ("Secret", "search-db-password"),
        ("Service", "search-dashboard"),
        ("Service", "search-db"),
        ("StatefulSet", "search-db"),
    ]
    db = of_kind(objects, "StatefulSet")["search-db"]["spec"]
    (claim,) = db["volumeClaimTemplates"]
    (mount,) = db["template"]["spec"]["containers"][0]["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]  # the data outlives the pod
    url = make_url(of_kind(objects, "ConfigMap")["search-storage"]["data"]["SEARCH_STORAGE"])
    assert (url.host, url.port) == ("search-db", 5432)  # the Service's name and port
    service = of_kind(objects, "Service")["search-db"]["spec"]
    assert [p["port"] for p in service["ports"]] == [5432]
    job = of_kind(objects, "Job")["search-workers"]["spec"]
    # A work queue: several pods at once, and no completion count; each pod stops at the total.
    assert job["parallelism"] >= 2 and "completions" not in job
    assert job["template"]["spec"]["restartPolicy"] == "OnFailure"


def test_the_password_lives_in_the_secret_alone(objects: list[Object]) -> None:
    (secret,) = of_kind(objects, "Secret").values()
    data = secret.get("stringData") or {
        k: base64.b64decode(v).decode() for k, v in secret["data"].items()
    }
    password = data["password"]
    assert len(password) >= 8
    for o in objects:
        if o is not secret:
            assert password not in yaml.safe_dump(o), o["metadata"]["name"]
    references = 0
    for container in containers(objects):
        for env in container.get("env", []):
            if "PASSWORD" in env["name"]:
                assert "value" not in env, env
                ref = env["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "password")
                references += 1
    assert references == 3  # POSTGRES_PASSWORD for the server, PGPASSWORD for two of ours
    url = of_kind(objects, "ConfigMap")["search-storage"]["data"]["SEARCH_STORAGE"]
    assert make_url(url).password is None


def test_nothing_is_reachable_from_outside_the_cluster(objects: list[Object]) -> None:
    assert not {o["kind"] for o in objects} & {"Ingress", "Route", "Gateway", "HTTPRoute"}
    for name, service in of_kind(objects, "Service").items():
        spec = service["spec"]
        assert spec.get("type", "ClusterIP") == "ClusterIP", name
        assert not {"externalIPs", "loadBalancerIP", "externalName"} & set(spec), name
    for name, pod in pods(objects).items():
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
        for container in pod["containers"]:
            assert all("hostPort" not in p for p in container.get("ports", [])), name


def environment(container: Object, objects: list[Object]) -> dict[str, str]:
    """A container's environment as the pod sees it: literals and the ConfigMap's values."""
    maps = {name: o["data"] for name, o in of_kind(objects, "ConfigMap").items()}
    env = {}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            env[item["name"]] = maps[ref["name"]][ref["key"]]
        elif "value" in item:
            env[item["name"]] = item["value"]
    return env


def test_the_pods_run_the_real_cli_on_the_image_from_the_dockerfile(
    objects: list[Object], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = [c for c in containers(objects) if c["image"] == IMAGE]
    assert sorted(c["name"] for c in ours) == ["dashboard", "worker"]
    assert f"docker build -t {IMAGE} ." in (ROOT / "Dockerfile").read_text()
    for container in ours:
        command = [*container["command"], *container.get("args", [])]
        assert command[0] == "search"
        env = environment(container, objects)
        # The command's options and the variables it reads: a renamed option or variable, or
        # a value of the wrong type, fails here as it would in the pod.
        command_object = cli.commands[command[1]]
        known = {p.envvar for p in command_object.params if p.envvar}
        known |= {storage.ENV_DIR, storage.ENV_HEARTBEAT, storage.ENV_GRACE}
        assert {k for k in env if k.startswith("SEARCH_")} <= known, container["name"]
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        context = command_object.make_context(command[1], command[2:])
        assert context.params["url"] == env[storage.ENV_URL]
        if container["name"] == "worker":
            assert command[1] in ("start", "worker")
            preset = presets.load_preset(
                context.params["preset"]
            )  # a shipped preset, in the wheel
            # Its data is in the image: no pod downloads it.
            assert preset.dataset == "fashion_mnist"
            assert "dataset-fashion-mnist" in (ROOT / "Dockerfile").read_text()
        else:
            assert command[1] == "dashboard" and context.params["host"] == "0.0.0.0"
            port = context.params["port"]
            assert [p["containerPort"] for p in container["ports"]] == [port]
