"""``infra/compose.yaml`` and ``infra/docker/Dockerfile`` agree with the code they run.

No Docker here: the compose file is parsed as YAML (merge keys resolved) and checked against
the repository: every service is in it, built by the one Dockerfile, configured only with real
settings fields (and values those settings accept), published on its own port, health-checked,
and started only after what it depends on is healthy.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelbus_platform.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "infra" / "compose.yaml"
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?-(?P<default>[^}]*))?\}")
PREFIX = "MODELBUS_"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def interpolate(value: Any) -> str:
    """Compose's ``${VAR:-default}`` with nothing set in the environment: the default."""
    return INTERPOLATION.sub(lambda m: m["default"] or "", str(value))


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(value) for key, value in env.items()}


def modelbus_env(name: str) -> dict[str, str]:
    return {k: v for k, v in environment(name).items() if k.startswith(PREFIX)}


def field_name(variable: str) -> str:
    return variable.removeprefix(PREFIX).lower()


def settings_class(name: str) -> type[ServiceSettings]:
    module = pytest.importorskip(f"modelbus_{name}.config")
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, ServiceSettings) and obj is not ServiceSettings
    ]
    assert len(classes) == 1, f"modelbus_{name}.config must define one ServiceSettings subclass"
    return classes[0]


def build_settings(cls: type[ServiceSettings], env: dict[str, str], monkeypatch):
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls()


def published_ports(name: str) -> list[tuple[int, int]]:
    out = []
    for port in service(name).get("ports", []):
        host, _, container = str(port).rpartition(":")
        out.append((int(host.rpartition(":")[2]), int(container.split("/")[0])))
    return out


# --- what is in the file ------------------------------------------------------------------------


def test_every_service_is_in_compose():
    assert SERVICES, "no services found"
    assert set(SERVICES) <= set(compose()["services"])


def test_infrastructure_is_in_compose():
    services = compose()["services"]
    assert services["kafka"]["image"] == "apache/kafka:3.9.0"
    assert services["mongo"]["image"] == "mongo:7"
    assert services["minio"]["image"].startswith("minio/minio")
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]


@pytest.mark.parametrize("name", sorted(compose()["services"]))
def test_every_container_has_a_healthcheck(name):
    check = service(name).get("healthcheck", {})
    assert check.get("test"), f"{name} has no healthcheck"
    assert not check.get("disable", False)


# --- build --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_built_by_the_shared_dockerfile(name):
    build = service(name)["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == ROOT
    dockerfile = context / build["dockerfile"]
    assert dockerfile == ROOT / "infra" / "docker" / "Dockerfile"
    assert dockerfile.is_file()
    assert build["args"]["SERVICE"] == name
    assert (ROOT / "services" / name / "pyproject.toml").is_file()


def test_dockerfile_installs_the_service_package_and_runs_its_module():
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG SERVICE" in text
    assert re.search(r"uv sync --frozen --no-dev\b.*--package \"?modelbus-\$\{SERVICE\}", text)
    module = re.search(r"python -m (modelbus_)\$\{SERVICE\}", text)
    assert module, "CMD must run python -m modelbus_${SERVICE}"
    for name in SERVICES:
        package = ROOT / "services" / name / "src" / f"{module[1]}{name}"
        assert (package / "__init__.py").is_file(), package
        assert (package / "__main__.py").is_file(), f"{package} has no __main__.py"


def test_dockerignore_keeps_the_context_small_but_complete():
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert {".git", ".venv"} <= set(ignored)
    for needed in ("uv.lock", "pyproject.toml", "services", "libs", "contracts", "infra/docker"):
        assert needed not in ignored


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_env_vars_are_known_settings(name):
    fields = set(ServiceSettings.model_fields)
    try:
        module = importlib.import_module(f"modelbus_{name}.config")
    except ModuleNotFoundError:
        module = None
    if module is not None:
        fields |= set(settings_class(name).model_fields)
    unknown = [v for v in modelbus_env(name) if field_name(v) not in fields]
    assert not unknown, f"{name}: not settings fields: {unknown}"


@pytest.mark.parametrize("name", SERVICES)
def test_env_builds_the_service_settings(name, monkeypatch):
    cls = settings_class(name)
    env = modelbus_env(name)
    unknown = [v for v in env if field_name(v) not in cls.model_fields]
    assert not unknown, f"{name}: not fields of {cls.__name__}: {unknown}"
    settings = build_settings(cls, env, monkeypatch)
    assert settings.service_name == name
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.mongo_uri.get_secret_value() == "mongodb://mongo:27017"
    assert settings.object_store == "s3"
    assert settings.s3_endpoint == "minio:9000"
    assert settings.http_host == "0.0.0.0"
    assert settings.registry_url == "http://registry:8001"
    assert settings.http_port == cls.model_fields["http_port"].default, "port differs from default"


@pytest.mark.parametrize("name", SERVICES)
def test_env_values_fit_the_base_settings(name, monkeypatch):
    base_env = {
        k: v for k, v in modelbus_env(name).items() if field_name(k) in ServiceSettings.model_fields
    }
    settings = build_settings(ServiceSettings, base_env, monkeypatch)
    assert settings.service_name == name
    assert settings.bucket == "modelbus"


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_signs_with_its_own_key_and_trusts_the_shared_ones(name):
    raw = service(name)["environment"]
    assert raw["MODELBUS_SIGNING_KEY"] == f"${{MODELBUS_{name.upper()}_SIGNING_KEY:-}}"
    assert raw["MODELBUS_TRUSTED_KEYS"] == "${MODELBUS_TRUSTED_KEYS:-}"


def test_s3_credentials_match_minio():
    minio = {k: interpolate(v) for k, v in service("minio")["environment"].items()}
    for name in SERVICES:
        env = environment(name)
        assert env["MODELBUS_S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
        assert env["MODELBUS_S3_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses passwords under 8 characters"


def test_registry_url_points_at_the_registry():
    port = int(environment("registry")["MODELBUS_HTTP_PORT"])
    for name in SERVICES:
        assert environment(name)["MODELBUS_REGISTRY_URL"] == f"http://registry:{port}"


# --- ports and health ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_published_port_is_the_http_port(name):
    port = int(environment(name)["MODELBUS_HTTP_PORT"])
    assert published_ports(name) == [(port, port)]


def test_ports_are_distinct_and_in_range():
    ports = [int(environment(name)["MODELBUS_HTTP_PORT"]) for name in SERVICES]
    assert len(set(ports)) == len(ports)
    assert all(8001 <= p <= 8006 for p in ports)


@pytest.mark.parametrize("name", SERVICES)
def test_service_healthcheck_probes_readiness_on_its_port(name):
    test = service(name)["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    port = environment(name)["MODELBUS_HTTP_PORT"]
    assert f":{port}/health/ready" in command
    assert "urllib.request" in command and "curl" not in command


@pytest.mark.parametrize("name", sorted(compose()["services"]))
def test_depends_on_waits_for_healthy_services(name):
    services = compose()["services"]
    depends = service(name).get("depends_on", {})
    assert isinstance(depends, dict), f"{name}: depends_on must use the long form with conditions"
    for target, spec in depends.items():
        assert target in services, f"{name} depends on unknown {target}"
        assert spec.get("condition") == "service_healthy", f"{name} -> {target}"
        assert services[target].get("healthcheck", {}).get("test"), f"{target} has no healthcheck"


@pytest.mark.parametrize("name", SERVICES)
def test_services_wait_for_the_infrastructure(name):
    assert {"kafka", "mongo", "minio"} <= set(service(name)["depends_on"])


def test_no_dependency_cycles():
    services = compose()["services"]
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for target in services[name].get("depends_on", {}):
            visit(target, (*path, name))
        done.add(name)

    for name in services:
        visit(name, ())
