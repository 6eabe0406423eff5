"""Deployment artefacts: the Kubernetes manifests validate against the API schema, the Grafana dashboard parses
and every query names a metric proctor exports."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from proctor.engine.config import Config
from proctor.engine.cores.metrics import Metrics

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


def _version() -> str:
    return str(tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["version"])


def _proctor_containers(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container that runs the image, in Deployments and a LeaderWorkerSet's templates."""
    specs = [d["spec"]["template"]["spec"] for d in documents if d["kind"] == "Deployment"]
    for group in (d["spec"]["leaderWorkerTemplate"] for d in documents if d["kind"] == "LeaderWorkerSet"):
        specs += [group["leaderTemplate"]["spec"], group["workerTemplate"]["spec"]]
    return [c for spec in specs for c in spec["containers"] if c["image"].startswith("localhost/proctor")]


@pytest.mark.parametrize("name", ["proctor.yaml", "proctor-tp.yaml", "proctor-multinode.yaml"])
def test_manifests_run_the_image_the_build_names(name: str) -> None:
    """The Containerfile's GPU build, tagged as deploy/OPERATIONS.md builds it; `proctor serve` is its entrypoint,
    so a container's args are serve's (a command of its own replaces the entrypoint)."""
    containers = _proctor_containers(_documents(name))
    assert containers
    for container in containers:
        assert container["image"] == f"localhost/proctor:{_version()}-cuda", container["image"]
        assert "command" in container or container["args"][0] == "--config", container["args"]
    operations = (DEPLOY / "OPERATIONS.md").read_text()
    assert f"-t localhost/proctor:{_version()}-cuda" in operations, "OPERATIONS.md builds the name the manifests run"


def test_kubernetes_manifests_validate(tmp_path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    documents = _documents("proctor.yaml")
    kinds = [d["kind"] for d in documents]
    assert kinds.count("Deployment") == 4 and kinds.count("Service") == 4  # teacher, critic, reward; Redis
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
    deployments = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("proctor")]
    assert len(deployments) == 3
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        config = _config(documents, container, tmp_path)
        # gRPC's own health protocol; the HTTP front's /health where the front is on.
        if config.http.port == -1:
            assert container["readinessProbe"]["grpc"]["service"].startswith("proctor.v1.")
        else:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert container["readinessProbe"]["httpGet"] == {"port": "http", "path": "/health"}
            assert ports["http"] == config.http.port and config.http.host == "0.0.0.0"
        assert container["startupProbe"]["grpc"]["service"].startswith("proctor.v1.")
        assert container["livenessProbe"]["grpc"]["port"] == config.server.port == 50051
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        # the pod's grace outlasts the server's drain plus the preStop pause
        assert spec["terminationGracePeriodSeconds"] > config.server.drain_grace_s + 10
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(config.server.metrics_port)
        if config.reward is not None and deployment["spec"]["replicas"] > 1:
            # replicas on several nodes count a run's steps in one shared store, the Redis Service here
            store = config.reward.steps.store
            assert store.startswith("redis://"), "reward replicas need a shared step store"
            host = store.removeprefix("redis://").split(":")[0]
            assert any(d["kind"] == "Service" and d["metadata"]["name"] == host for d in documents)
    for service in (d for d in documents if d["kind"] == "Service" and d["metadata"]["name"].startswith("proctor")):
        assert service["spec"]["clusterIP"] == "None", "headless, for client-side balancing"


def test_the_image_default_config_loads() -> None:
    from proctor.engine.config import load_config

    config = load_config(DEPLOY / "image" / "proctor.yaml")
    assert config.server.host == config.server.metrics_host == config.http.host == "0.0.0.0"
    assert config.teacher is not None and config.teacher.model == "/models/teacher"


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


def test_every_config_key_is_documented_once_where_it_is_declared() -> None:
    from proctor.engine.jobs import reference

    rows = [line for line in reference.config_reference().splitlines() if line.startswith("| `")]
    assert len(rows) > 100, "every section's keys, nested ones included"
    undocumented = [row.split("`")[1] for row in rows if row.rstrip().endswith("|  |")]
    assert not undocumented, f"give these fields an attribute docstring: {undocumented}"
    assert "(multi-line" in next(r for r in rows if "`reward.prompt_template`" in r), "long defaults are not inlined"


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def _config(documents: list[dict[str, Any]], container: dict[str, Any], tmp_path: Path) -> Config:
    """The proctor config a container serves, as proctor loads it."""
    from proctor.engine.config import load_config

    command = " ".join(container.get("command", []) + container["args"])
    name = re.search(r"--config /etc/proctor/(\S+)", command)
    assert name is not None, command
    path = tmp_path / name.group(1)
    path.write_text(next(d for d in documents if d["kind"] == "ConfigMap")["data"][name.group(1)])
    return load_config(path)


def _gpus(container: dict[str, Any]) -> int:
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
    return int(container["resources"]["limits"]["nvidia.com/gpu"])


def _check_sharded_teacher(config: Config, gpus_per_pod: int, pods: int) -> None:
    """Generation spans every GPU of the group; the hidden-state scorer's engine fits one pod's GPUs, and the two
    engines' memory shares fit those GPUs together."""
    teacher = config.teacher
    assert teacher is not None and teacher.backend == "vllm" and teacher.scorer == "vllm-hidden"
    gen, score = teacher.vllm, teacher.scorer_vllm
    assert gen.tensor_parallel_size * gen.pipeline_parallel_size == gpus_per_pod * pods
    assert gen.distributed_executor_backend == ("ray" if pods > 1 else "mp")
    assert score.tensor_parallel_size * score.pipeline_parallel_size == gpus_per_pod
    assert score.distributed_executor_backend == "mp"
    assert gen.gpu_memory_utilization + score.gpu_memory_utilization <= 0.9


def test_the_one_pod_tensor_parallel_teacher(tmp_path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    documents = _documents("proctor-tp.yaml")
    assert sorted(d["kind"] for d in documents) == ["ConfigMap", "Deployment", "Service"]
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["grpc"]["service"] == "proctor.v1.Teacher"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"]), "a /dev/shm for the workers"
    _check_sharded_teacher(_config(documents, container, tmp_path), _gpus(container), pods=1)


def test_the_multi_node_teacher_is_a_leader_worker_set(tmp_path: Path) -> None:
    """kubernetes-validate knows the built-in kinds, not the LeaderWorkerSet CRD: its two pod templates are
    validated as PodTemplates, its own fields checked here."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    documents = _documents("proctor-multinode.yaml")
    assert sorted(d["kind"] for d in documents) == ["ConfigMap", "LeaderWorkerSet", "Service"]
    for document in (d for d in documents if d["kind"] != "LeaderWorkerSet"):
        kubernetes_validate.validate(document, "1.30", strict=True)
    lws = next(d for d in documents if d["kind"] == "LeaderWorkerSet")
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["restartPolicy"] == "RecreateGroupOnPodRestart"
    for role in ("leaderTemplate", "workerTemplate"):
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": role.lower()},
            "template": group[role],
        }
        kubernetes_validate.validate(template, "1.30", strict=True)
    leader = group["leaderTemplate"]["spec"]["containers"][0]
    worker = group["workerTemplate"]["spec"]["containers"][0]
    assert "ray start --head" in leader["args"][0] and "LWS_GROUP_SIZE" in leader["args"][0]
    assert "ray start --address=$LWS_LEADER_ADDRESS" in worker["args"][0]
    assert _gpus(leader) == _gpus(worker)
    service = next(d for d in documents if d["kind"] == "Service")
    assert service["spec"]["selector"]["role"] == "leader" == group["leaderTemplate"]["metadata"]["labels"]["role"]
    _check_sharded_teacher(_config(documents, leader, tmp_path), _gpus(leader), pods=group["size"])
