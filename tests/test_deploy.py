"""Deployment artefacts: the Kubernetes manifests validate against the API schema, the Grafana dashboard parses
and every query names a metric proctor exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from proctor.engine.services.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _exported() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
    return names | {n + suffix for n in list(names) for suffix in ("_bucket", "_sum", "_count", "_total")}


def test_grafana_dashboard_queries_name_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "proctor.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) >= 10
    exported = _exported()
    for expr in exprs:
        names = re.findall(r"\bproctor_[a-z_]+", expr)
        assert names, expr
        missing = [n for n in names if n not in exported]
        assert not missing, (expr, missing)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("per second", "latency", "queue", "errors", "gpu memory"):
        assert topic in titles


def test_kubernetes_manifests_validate() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    documents = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "proctor.yaml").read_text()) if d]
    kinds = [d["kind"] for d in documents]
    assert kinds.count("Deployment") == 3 and kinds.count("Service") == 3
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["readinessProbe"]["grpc"]["service"].startswith("proctor.v1.")
        assert container["livenessProbe"]["grpc"]["port"] == 50051
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        config_name = container["args"][-1].rsplit("/", 1)[-1]
        config = yaml.safe_load(next(d for d in documents if d["kind"] == "ConfigMap")["data"][config_name])
        # the pod's grace outlasts the server's drain plus the preStop pause
        assert spec["terminationGracePeriodSeconds"] > config["server"]["drain_grace_s"] + 10
        assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(
            config["server"]["metrics_port"]
        )
    for service in (d for d in documents if d["kind"] == "Service"):
        assert service["spec"]["clusterIP"] == "None", "headless, for client-side balancing"


def test_kubernetes_configs_load(tmp_path: Path) -> None:
    from proctor.engine.config import load_config

    documents = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "proctor.yaml").read_text()) if d]
    configmap = next(d for d in documents if d["kind"] == "ConfigMap")
    for name, text in configmap["data"].items():
        path = tmp_path / name
        path.write_text(text)
        config = load_config(path)
        assert config.server.host == "0.0.0.0" and config.services(), name


def test_operations_reference_is_current() -> None:
    from proctor.engine.jobs import reference

    assert reference.render(reference.DOC.read_text()) == reference.DOC.read_text(), (
        "deploy/OPERATIONS.md is stale: python -m proctor.engine.jobs.reference --write"
    )
