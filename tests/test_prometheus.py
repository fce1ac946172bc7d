"""Issue 6, acceptance 1 and 2, and the dashboard: the alert rules and the Grafana dashboard are
checked against Prometheus itself, not just written.

- ``promtool check rules`` and ``promtool test rules`` pass on deploy/prometheus/ (each alert
  fires from synthetic series and stays quiet on healthy ones);
- a real Prometheus server (Debian's binary, on a free port) scrapes a running worker: the
  delivered counter per destination equals what each partner received, ``iris_stream_lag``
  is there, the alert rules load, and every dashboard and alert expression is valid PromQL;
- every metric and label the dashboard and the alerts use exists in iris/metrics.py.

promtool and prometheus come from the Debian package ``prometheus`` (``make test`` installs it);
without them these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

from iris.runtime.metrics import Metrics
from iris_demo.localredis import free_port
from tests.conftest import destination_config, make_config, running, wait_for

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "iris.json"
INSTALL_HINT = "install it with: apt-get update && apt-get install -y prometheus"

EXPECTED_ALERTS = {
    "IrisStreamLagHigh", "IrisPendingStuck", "IrisDeliveryErrorRatio", "IrisDeadLetterGrowing",
    "IrisNoProgress", "IrisTokenFetchFailing", "IrisDestinationPaused", "IrisAuthRefused",
    "IrisRedisRefusesWrites", "IrisRedisUnavailable", "IrisInboundStreamGrowing",
    "IrisOutboundBacklogGrowing", "IrisEventsUnread",
}
RUNBOOK_HINTS = ("iris status", "iris dlq", "partner", "token")
NAME = re.compile(r"\b(?:iris|process|python)_[a-zA-Z0-9_]*")
SELECTOR = re.compile(r"\b(iris_[a-zA-Z0-9_]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                   "and", "or", "unless", "offset"}


def tool(name: str) -> str:
    """The path of a Debian ``prometheus`` binary; a clear failure (not a skip) without it."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                  else None)
    if path is None:
        pytest.fail(f"{name} is missing: it comes from Debian's prometheus package; "
                    f"{INSTALL_HINT}", pytrace=False)
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels of a collapsed row


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard_panels(dash) for t in p.get("targets", []) if "expr" in t]


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for a real query."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
            .replace("$destination", ".*"))


def catalogue() -> dict[str, set[str]]:
    """Every series name the worker exposes -> its labels, read from iris/metrics.py itself:
    counters with their ``_total`` suffix, histograms as ``_bucket`` (with ``le``), ``_sum``
    and ``_count``, gauges as they are; plus the process and platform collectors' samples."""
    metrics = Metrics(["d1"], "s", "g")
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        if isinstance(metric, Counter):
            names[f"{metric._name}_total"] = labels
        elif isinstance(metric, Histogram):
            names[f"{metric._name}_bucket"] = labels | {"le"}
            names[f"{metric._name}_sum"] = names[f"{metric._name}_count"] = labels
        else:
            names[metric._name] = labels
    return names


# -- acceptance 1: promtool ------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = run_promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_runbook_and_tests_that_fire_and_stay_quiet() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name} has no for:"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        notes = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(notes), name
        assert len(notes["runbook"]) > 200, f"{name}: the runbook is too short to act on"
        assert any(h in notes["runbook"] for h in RUNBOOK_HINTS), name

    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            if case["exp_alerts"]:
                fires.add(case["alertname"])
                for exp in case["exp_alerts"]:
                    assert "severity" in exp["exp_labels"], case
            else:
                quiet.add(case["alertname"])
    assert fires == EXPECTED_ALERTS, f"alerts never fired in a test: {EXPECTED_ALERTS - fires}"
    assert quiet == EXPECTED_ALERTS, f"alerts never kept quiet: {EXPECTED_ALERTS - quiet}"


# -- the dashboard, and the names both files use ----------------------------------------------


def test_dashboard_has_the_panels() -> None:
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    panels = [p for p in dashboard_panels(dash) if p["type"] != "row"]
    ids = [p["id"] for p in dashboard_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in panels:
        assert panel["title"] and panel["targets"], panel
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        for source in (panel["datasource"], *(t["datasource"] for t in panel["targets"])):
            assert source["uid"] == "${DS_PROMETHEUS}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]

    exprs = [re.sub(r"\s+", " ", e) for e in dashboard_exprs(dash)]

    def has(*patterns: str) -> bool:
        return any(all(re.search(p, e) for p in patterns) for e in exprs)

    assert has(r"rate\(iris_events_delivered_total", r"by \(destination\)"), "events/s panel"
    assert has(r"rate\(iris_requests_total\{[^}]*code!~\"2\.\.\"", r"\bcode\b.*\)"), "errors"
    for q in ("0.5", "0.9", "0.99"):
        assert has(rf"histogram_quantile\({q},", r"iris_request_duration_seconds_bucket",
                   r"\ble\b"), f"latency p{q}"
    assert has(r"\biris_stream_lag\b"), "lag panel"
    assert has(r"\biris_stream_pending\b"), "pending panel"
    assert has(r"increase\(iris_events_dead_lettered_total", r"by \([^)]*reason"), "dead letters"
    assert has(r"iris_token_requests_total", r"by \([^)]*outcome"), "token requests"
    assert has(r"iris_token_expiry_timestamp_seconds", r"time\(\)"), "time to token expiry"
    assert has(r"\biris_circuit_open\b"), "circuit state"


def test_dashboard_and_alerts_use_only_real_metrics_and_labels() -> None:
    names = catalogue()
    all_labels = set().union(*names.values()) | {"le", "instance", "job"}
    sources = {f"alert {r['alert']}": [r["expr"], *r["annotations"].values()]
               for r in alert_rules()}
    sources["dashboard"] = dashboard_exprs(dashboard())
    sources["dashboard variables"] = [
        json.dumps(v.get("query")) for v in dashboard()["templating"]["list"]]
    used = 0
    for where, texts in sources.items():
        for text in texts:
            for name in NAME.findall(text):
                used += 1
                assert name in names, f"{where}: {name} is not a metric of iris/metrics.py"
            for name, matchers in SELECTOR.findall(text):
                for label in MATCHER.findall(matchers):
                    allowed = names[name] | {"instance", "job"}
                    assert label in allowed, f"{where}: {name} has no label {label}"
            for group in GROUPING.findall(text):
                for label in filter(None, (x.strip() for x in group.split(","))):
                    assert label in all_labels, f"{where}: unknown label {label} in ({group})"
    assert used > 20


# -- acceptance 2: a real Prometheus scrapes a running worker ---------------------------------


class PrometheusServer:
    """Debian's prometheus binary on a free loopback port, scraping ``target`` every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shutil.copy(ALERTS, tmp / "alerts.yml")
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "iris", "scrape_interval": "1s",
                                "scrape_timeout": "1s",
                                "static_configs": [{"targets": [target]}]}],
        }))
        self.log_path = tmp / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


async def get_json(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return await resp.json(content_type=None)


async def test_prometheus_scrapes_a_running_worker(
    redis_server, redis, stream_key, partners, tmp_path
) -> None:
    tool("prometheus")  # fail at once, with the install hint, when it is missing
    a = await partners("423")
    b = await partners("424")
    config = make_config(redis_server.url, stream_key, [
        destination_config(a, segments=["s1", "s2"], batch={"max_wait": 0.1}),
        destination_config(b, segments=["s2", "s3"], batch={"max_users": 5, "max_wait": 0.1}),
    ])
    segments = ["s1", "s2", "s3"]
    events = [{"uuid": f"user{i:03d}", "segment": segments[i % 3], "status": str(i % 2),
               "dpuuid": f"dp{i}"} for i in range(60)]
    expected = {"423": sum(e["segment"] in ("s1", "s2") for e in events),
                "424": sum(e["segment"] in ("s2", "s3") for e in events)}
    assert expected == {"423": 40, "424": 40}

    async with running(config) as worker:
        server = PrometheusServer(tmp_path, f"127.0.0.1:{worker.http.port}")
        try:
            async with aiohttp.ClientSession() as session:

                async def ready() -> bool:
                    if server.proc.poll() is not None:
                        raise AssertionError(f"prometheus exited: {server.log()}")
                    try:
                        async with session.get(f"{server.url}/-/ready") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await wait_for(ready, 15, "prometheus ready", detail=server.log)

                async with redis.pipeline(transaction=False) as pipe:
                    for fields in events:
                        pipe.xadd(stream_key, fields)
                    await pipe.execute()
                received = {p.dest_id: p for p in (a, b)}
                await wait_for(
                    lambda: all(len(p.server.segment_changes()) >= expected[d]
                                for d, p in received.items()),
                    15, "both partners received every segment change",
                    detail=lambda: {d: len(p.server.segment_changes())
                                    for d, p in received.items()})
                got = {d: len(p.server.segment_changes()) for d, p in received.items()}
                assert got == expected

                scraped: dict[str, float] = {}

                async def delivered_matches() -> bool:
                    answer = await get_json(session, f"{server.url}/api/v1/query",
                                            query="iris_events_delivered_total")
                    assert answer["status"] == "success", answer
                    scraped.clear()
                    for item in answer["data"]["result"]:
                        scraped[item["metric"]["destination"]] = float(item["value"][1])
                    return scraped == {d: float(n) for d, n in got.items()}

                await wait_for(delivered_matches, 15, "Prometheus to scrape what was delivered",
                               detail=lambda: f"scraped={scraped} partners={got} "
                                              f"log={server.log()}")

                answer = await get_json(session, f"{server.url}/api/v1/query",
                                        query="iris_stream_lag")
                lag = answer["data"]["result"]
                assert lag, "no iris_stream_lag series in Prometheus"
                assert {s["metric"]["stream"] for s in lag} >= {stream_key}
                assert {s["metric"]["group"] for s in lag} == {config.stream.group}
                assert all(s["metric"]["job"] == "iris" for s in lag)

                # the real server loads the alert rules ...
                rules = await get_json(session, f"{server.url}/api/v1/rules", type="alert")
                loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
                assert loaded == EXPECTED_ALERTS
                assert all(r["health"] != "err" for g in rules["data"]["groups"]
                           for r in g["rules"]), rules
                # ... and accepts every dashboard and alert expression
                for expr in [*map(as_promql, dashboard_exprs(dashboard())),
                             *(r["expr"] for r in alert_rules())]:
                    answer = await get_json(session, f"{server.url}/api/v1/query", query=expr)
                    assert answer["status"] == "success", (expr, answer)
                # the dashboard's headline panel sees both destinations
                answer = await get_json(
                    session, f"{server.url}/api/v1/query",
                    query='sum by (destination) (iris_events_delivered_total)')
                assert {s["metric"]["destination"] for s in answer["data"]["result"]} == {
                    "423", "424"}
        finally:
            server.stop()
