#!/usr/bin/env python3
"""Write the Prometheus Operator's PrometheusRule for iris from alerts.yml.

    python3 deploy/prometheus/prometheusrule.py          # rewrite the PrometheusRule
    python3 deploy/prometheus/prometheusrule.py --check  # exit 1 if it differs from alerts.yml

alerts.yml (what Prometheus loads directly, and what promtool tests) is the one source; the
PrometheusRule in deploy/kubernetes/components/monitoring/ holds the same groups under
``spec:``. Only the standard library is used: the rules are indented as written, so comments
and folded runbooks come through unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
TARGET = HERE.parent / "kubernetes" / "components" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/prometheus/prometheusrule.py: do not
# edit; edit alerts.yml and run `python3 deploy/prometheus/prometheusrule.py`.
# The iris alert rules for the Prometheus Operator. Each alert's runbook is in its annotations.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: iris
  labels:
    app.kubernetes.io/name: iris
    app.kubernetes.io/component: metrics
spec:
"""


def render(alerts: str) -> str:
    lines = alerts.splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
        lines.pop(0)  # alerts.yml's own header speaks of promtool, not of this file
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines)
    return HEADER + body


def main(argv: list[str]) -> int:
    expected = render(ALERTS.read_text(encoding="utf-8"))
    if argv[1:] == ["--check"]:
        current = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
        if current != expected:
            print(f"{TARGET} is out of date: run python3 {Path(__file__).as_posix()}",
                  file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    TARGET.write_text(expected, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
