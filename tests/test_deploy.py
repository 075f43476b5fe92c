"""The Kubernetes manifests (deploy/kubernetes/), rendered offline and read as YAML.

`kubectl kustomize` renders them without a cluster; the checks then read what a cluster would
get: objects that validate against Kubernetes' own schemas, pods that Pod Security "restricted"
admits, NetworkPolicies that let only the search's pods reach PostgreSQL and nothing reach the
dashboard, a pinned image, no password in the repository, nothing reachable from outside the
cluster, and commands that the `search` CLI accepts, their options and environment variables
included.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from search.cli import cli
from search.define import presets
from search.store import storage

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# The package's version, as the Dockerfile's own comment builds it: docker build -t search:0.1.0 .
IMAGE = f"search:{VERSION}"
NAMESPACE = "search"
SECRET = ("search-db-password", "password")  # the Secret's name and key, created at install time
# The oldest Kubernetes the manifests are meant for (podFailurePolicy is GA since 1.31), and the
# newest whose schemas kubernetes-validate bundles.
SCHEMA_VERSIONS = ["1.31", kubernetes_validate.latest_version()]
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


def documents() -> list[tuple[str, Object]]:
    """Every YAML document under deploy/, by file, whether kustomization.yaml lists it or not."""
    found = []
    for path in sorted((ROOT / "deploy").rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((str(path.relative_to(ROOT)), doc))
    return found


def of_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pods(objects: list[Object]) -> dict[str, Object]:
    """The pod template's spec of every workload, by the workload's name."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if "template" in o.get("spec", {})
    }


def pod_labels(objects: list[Object]) -> dict[str, dict[str, str]]:
    """The pod template's labels of every workload, by the workload's name."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"].get("labels", {})
        for o in objects
        if "template" in o.get("spec", {})
    }


def containers(objects: list[Object]) -> list[Object]:
    return [c for pod in pods(objects).values() for c in pod["containers"]]


def all_containers(pod: Object) -> list[Object]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_the_manifests_render_offline_and_malformed_yaml_fails(tmp_path: Path) -> None:
    assert render(DEPLOY).returncode == 0
    broken = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, broken)
    workers = broken / "workers.yaml"
    workers.write_text(workers.read_text().replace("  parallelism: 4", "  parallelism: [4"))
    result = render(broken)
    assert result.returncode != 0 and "workers.yaml" in result.stderr


def validate(o: Object, version: str) -> None:
    """Kubernetes' JSON schema for the object's kind, strict: an unknown field is refused."""
    try:
        kubernetes_validate.validate(o, version, strict=True)
        return
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        problem = f"{o['kind']}/{o['metadata']['name']} on {version}: {where}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        problem = e.message
    pytest.fail(problem)  # outside the handler: the message, not the whole schema


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(
    objects: list[Object], version: str
) -> None:
    raw = [doc for _, doc in documents() if doc.get("kind") != "Kustomization"]
    for o in [*objects, *raw]:
        validate(o, version)
    # Strict indeed: a misspelt field fails here, where the API server would drop it silently
    # (kubectl apply warns at most) and the pod would run without it.
    job = copy.deepcopy(of_kind(objects, "Job")["search-workers"])
    job["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {"runAsNonRoot": True}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, version, strict=True)


def test_postgresql_on_a_volume_a_job_of_workers_and_the_dashboard(objects: list[Object]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("ConfigMap", "search-storage"),
        ("Deployment", "search-dashboard"),
        ("Job", "search-workers"),
        ("Namespace", NAMESPACE),
        ("NetworkPolicy", "search-db"),
        ("NetworkPolicy", "search-default-deny"),
        ("NetworkPolicy", "search-to-db-and-dns"),
        ("Service", "search-dashboard"),
        ("Service", "search-db"),
        ("StatefulSet", "search-db"),
    ]
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]["name"]
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


def first_rule(rules: list[Object], exit_code: int | None, condition: str | None) -> str:
    """What a Job's podFailurePolicy does with a failed worker pod, as the Job controller
    decides it: the first rule that matches, else the pod counts towards backoffLimit."""
    for rule in rules:
        codes = rule.get("onExitCodes")
        if codes and exit_code is not None and codes.get("containerName", "worker") == "worker":
            inside = exit_code in codes["values"]
            if codes["operator"] == "NotIn":
                inside = not inside and exit_code != 0
            if inside:
                return str(rule["action"])
        for pattern in rule.get("onPodConditions", []):
            if pattern["type"] == condition and pattern.get("status", "True") == "True":
                return str(rule["action"])
    return "Count"


def test_the_job_counts_only_the_failures_that_a_retry_may_cure(objects: list[Object]) -> None:
    job = of_kind(objects, "Job")["search-workers"]["spec"]
    # podFailurePolicy needs it: a pod's exit is the Job's to judge, not the kubelet's to retry.
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    rules = job["podFailurePolicy"]["rules"]
    # Evicted, preempted or drained: the trial is failed and run again, the pod replaced.
    assert first_rule(rules, None, "DisruptionTarget") == "Ignore"
    assert first_rule(rules, 143, "DisruptionTarget") == "Ignore"
    # Stopped: 130 is search's exit on Ctrl-C or SIGTERM, 143 a SIGTERM that ended it at once.
    assert first_rule(rules, 130, None) == "Ignore"
    assert first_rule(rules, 143, None) == "Ignore"
    # A usage error (click's 2) fails every pod alike: the Job stops at once.
    assert first_rule(rules, 2, None) == "FailJob"
    # A failure at run time (the database not ready yet) or a kill (OOM) counts, as before.
    assert first_rule(rules, 1, None) == "Count"
    assert first_rule(rules, 137, None) == "Count"
    assert 10 <= job["backoffLimit"]


def effective(pod: Object, container: Object, key: str) -> Any:
    """A security setting as the container gets it: its own, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else pod.get("securityContext", {}).get(key)


def test_every_pod_meets_pod_security_restricted(objects: list[Object]) -> None:
    user = re.search(r"^USER (\d+)(?::(\d+))?$", (ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile runs as a numeric, non-root USER"
    allowed_volumes = {"configMap", "emptyDir", "ephemeral", "persistentVolumeClaim", "secret"}
    allowed_volumes |= {"csi", "downwardAPI", "projected"}
    for name, pod in pods(objects).items():
        assert not {"hostNetwork", "hostPID", "hostIPC"} & {k for k, v in pod.items() if v}, name
        assert pod.get("automountServiceAccountToken") is False, name  # no pod uses the API
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= allowed_volumes, (name, volume)
        for container in all_containers(pod):
            where = f"{name}/{container['name']}"
            own = container.get("securityContext", {})
            assert effective(pod, container, "runAsNonRoot") is True, where
            uid = effective(pod, container, "runAsUser")
            assert isinstance(uid, int) and uid > 0, where  # numeric: the kubelet can check it
            seccomp = effective(pod, container, "seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", where
            assert own.get("allowPrivilegeEscalation") is False, where
            assert own.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not own.get("capabilities", {}).get("add"), where
            assert not own.get("privileged") and own.get("procMount", "Default") == "Default"
            if container["image"] == IMAGE:
                # The Dockerfile's user, who owns /data and the home folder (~/.keras, the
                # matplotlib cache) in the image.
                assert uid == int(user[1]), where
    db = pods(objects)["search-db"]
    (postgres,) = db["containers"]
    # The official image's postgres user; fsGroup makes the volume its group's to write.
    assert effective(db, postgres, "runAsUser") == 999
    assert db["securityContext"]["fsGroup"] == 999
    env = {e["name"]: e.get("value") for e in postgres["env"]}
    (mount,) = postgres["volumeMounts"]
    assert Path(env["PGDATA"]).parent == Path(mount["mountPath"])  # initdb refuses lost+found
    # A worker writes models and reports to SEARCH_DIR: a volume of its own, writable by fsGroup.
    worker = pods(objects)["search-workers"]
    (container,) = worker["containers"]
    assert "/data" in {m["mountPath"] for m in container["volumeMounts"]}
    assert worker["securityContext"]["fsGroup"] == int(user[2] or user[1])
    # The namespace enforces it: a pod that does not meet it is refused, not run.
    (namespace,) = of_kind(objects, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def selects(selector: Object, labels: dict[str, str]) -> bool:
    """Whether a label selector matches a pod's labels (an empty selector matches every pod)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, values, operator = e["key"], e.get("values", []), e["operator"]
        present = key in labels
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and present and labels[key] in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


def ports(rule: Object) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


def pairs(
    peers: list[Object], labels: dict[str, dict[str, str]], selected: list[str], *, inbound: bool
) -> list[tuple[str, str]]:
    """(source, target) for each pod a rule's peers name and each pod its policy selects.

    Only pod selectors are allowed: an empty one, another namespace or an IP block would
    let in pods we do not know.
    """
    found = []
    for peer in peers:
        assert list(peer) == ["podSelector"] and peer["podSelector"], peer
        for other, pod in labels.items():
            if selects(peer["podSelector"], pod):
                found += [(other, mine) if inbound else (mine, other) for mine in selected]
    return found


def test_network_policies_deny_by_default_and_only_search_reaches_postgresql(
    objects: list[Object],
) -> None:
    policies = [p["spec"] for p in of_kind(objects, "NetworkPolicy").values()]
    labels = pod_labels(objects)
    # A default deny for every pod of the namespace, ours and any added later.
    assert {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]} in policies
    for name, pod in labels.items():
        for direction in ("Ingress", "Egress"):
            assert any(
                selects(p["podSelector"], pod) and direction in p["policyTypes"] for p in policies
            ), (name, direction)
    ingress: dict[tuple[str, str], set[tuple[str, int]]] = {}
    egress: dict[tuple[str, str], set[tuple[str, int]]] = {}
    dns: set[str] = set()
    for policy in policies:
        selected = [name for name, pod in labels.items() if selects(policy["podSelector"], pod)]
        for rule in policy.get("ingress", []):
            # A rule without 'from', an empty selector, another namespace or an IP block would
            # let in pods we do not know; kubectl port-forward needs no rule at all.
            assert rule.get("from"), "an ingress rule without 'from' admits everyone"
            for source, target in pairs(rule["from"], labels, selected, inbound=True):
                ingress.setdefault((source, target), set()).update(ports(rule))
        for rule in policy.get("egress", []):
            if "to" not in rule:  # any destination: name lookups only
                assert ports(rule) == {("UDP", 53), ("TCP", 53)}, rule
                dns.update(selected)
                continue
            for source, target in pairs(rule["to"], labels, selected, inbound=False):
                egress.setdefault((source, target), set()).update(ports(rule))
    # Both ways: the workers and the dashboard reach PostgreSQL, and nothing else reaches
    # anything; the dashboard, which can delete studies, takes no connection at all.
    expected = {
        ("search-workers", "search-db"): {("TCP", 5432)},
        ("search-dashboard", "search-db"): {("TCP", 5432)},
    }
    assert ingress == expected
    assert egress == expected
    assert dns == {"search-workers", "search-dashboard"}


def tag(image: str) -> str:
    """The image's tag, or '' for none; a digest counts as one."""
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def test_every_image_is_pinned_and_ours_is_the_package_version(objects: list[Object]) -> None:
    assert tag("search") == "" and tag("registry:5000/search") == ""
    assert tag("registry:5000/search:0.1.0") == "0.1.0"
    for pod in pods(objects).values():
        for container in all_containers(pod):
            # Every node runs the same build: 'latest', or no tag at all, may differ per node.
            assert tag(container["image"]) not in ("", "latest"), container["image"]
            assert container.get("imagePullPolicy") == "IfNotPresent", container["name"]
    assert sorted(c["name"] for c in containers(objects) if c["image"] == IMAGE) == [
        "dashboard",
        "worker",
    ]
    (kustomization,) = (d for _, d in documents() if d.get("kind") == "Kustomization")
    assert [i.get("newTag") for i in kustomization.get("images", [])] in ([], [VERSION])
    build = f"docker build -t {IMAGE} ."
    assert build in (ROOT / "Dockerfile").read_text()
    assert build in (ROOT / "README.md").read_text()


def test_no_password_is_committed_and_the_pods_need_the_secret(objects: list[Object]) -> None:
    for path, doc in documents():
        if doc.get("kind") == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), path
        for generator in doc.get("secretGenerator", []):
            assert not generator.get("literals"), path
    assert not of_kind(objects, "Secret")
    references = 0
    for pod in pods(objects).values():
        for container in all_containers(pod):
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, container["name"]
            for env in container.get("env", []):
                if "PASSWORD" in env["name"]:
                    assert "value" not in env, env
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) == SECRET
                    # Not optional: without the Secret a pod does not start, rather than
                    # starting with no password, or a default one.
                    assert not ref.get("optional"), env
                    references += 1
    assert references == 3  # POSTGRES_PASSWORD for the server, PGPASSWORD for two of ours
    url = of_kind(objects, "ConfigMap")["search-storage"]["data"]["SEARCH_STORAGE"]
    assert make_url(url).password is None


def test_the_readme_creates_the_secret_that_the_pods_read(objects: list[Object]) -> None:
    """The README's command, run with --dry-run=client: no cluster, no password kept."""
    lines = [
        line.split("  #")[0].strip()
        for line in (ROOT / "README.md").read_text().splitlines()
        if "kubectl" in line and "create secret" in line
    ]
    assert len(lines) == 1, "README.md shows one 'kubectl ... create secret' command"
    (line,) = lines
    kubectl = shutil.which("kubectl")
    assert kubectl is not None and shutil.which("openssl") is not None
    command = f"{line.replace('kubectl', kubectl, 1)} --dry-run=client -o yaml"
    env = {**os.environ, "KUBECONFIG": os.devnull}  # no cluster is asked, whatever is configured
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    secret = yaml.safe_load(result.stdout)
    assert secret["kind"] == "Secret"
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (SECRET[0], NAMESPACE)
    assert list(secret["data"]) == [SECRET[1]]
    assert re.fullmatch(r"[0-9a-f]{48}", base64.b64decode(secret["data"][SECRET[1]]).decode())


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
