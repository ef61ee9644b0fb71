"""``infra/compose.yaml`` and ``infra/docker/Dockerfile`` agree with the code they run.

No Docker here: the compose file is parsed as YAML (merge keys resolved) and checked against
the repository: every service is in it, built by the one Dockerfile, configured only with real
settings fields (and values those settings accept), published on its own port, health-checked,
and started only after what it depends on is healthy. Its ``${VAR}`` references are filled from
a fresh set of secrets made by ``modelbus_embedded.compose_secrets`` (what ``infra/.env`` holds),
so every secret it needs is one the generator writes, and the settings built from it connect to
Kafka over SASL_SSL as the service's own user, with auth on and the generated keys.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelbus_embedded import compose_secrets as cs
from modelbus_platform import auth, signing
from modelbus_platform.kafka_security import KafkaSecurity
from modelbus_platform.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "infra" / "compose.yaml"
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
PREFIX = "MODELBUS_"
# what infra/.env holds after `compose_secrets infra/` (made once for the module)
SECRETS = cs.make()
# the only variables compose may default: not secrets
DEFAULTED = {"MODELBUS_LOG_LEVEL", "MODELBUS_CODE_VERSION"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def interpolate(value: Any, env: dict[str, str] = SECRETS.env) -> str:
    """Compose's interpolation with ``env`` as ``infra/.env``: a required variable (``:?``)
    missing from it fails, as ``docker compose`` would."""

    def one(m: re.Match) -> str:
        if m["name"] in env and (env[m["name"]] or not m["op"] or ":" not in m["op"]):
            return env[m["name"]]
        if m["op"] and m["op"].endswith("?"):
            raise AssertionError(f"compose needs {m['name']}, which .env does not have")
        return m["arg"] or ""

    return INTERPOLATION.sub(one, str(value))


def references() -> list[re.Match]:
    return list(INTERPOLATION.finditer(COMPOSE_FILE.read_text(encoding="utf-8")))


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
    assert "://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]


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
    user, password = (SECRETS.env[v] for v in cs.MONGO_VARIABLES)
    mongo = {k: interpolate(v) for k, v in service("mongo")["environment"].items()}
    assert (mongo["MONGO_INITDB_ROOT_USERNAME"], mongo["MONGO_INITDB_ROOT_PASSWORD"]) == (
        user,
        password,
    )
    assert settings.mongo_uri.get_secret_value() == (
        f"mongodb://{user}:{password}@mongo:27017/?authSource=admin"
    )
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
def test_every_service_signs_with_its_own_key_and_trusts_the_shared_ones(name, monkeypatch):
    settings = build_settings(settings_class(name), modelbus_env(name), monkeypatch)
    signer, verifier = signing.from_settings(
        name, settings.signing_key.get_secret_value(), settings.trusted_keys
    )
    assert signer is not None and signer.name == name
    assert verifier is not None and set(verifier.trusted) == set(SERVICES)
    headers = signer.sign("model.promoted.v1", {"ce_type": "x", "ce_id": "1"}, b"{}")
    assert verifier.problem("model.promoted.v1", headers, b"{}") is None


def test_s3_credentials_match_minio():
    minio = {k: interpolate(v) for k, v in service("minio")["environment"].items()}
    for name in SERVICES:
        env = environment(name)
        assert env["MODELBUS_S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
        assert env["MODELBUS_S3_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses passwords under 8 characters"
    access, secret = cs.S3_VARIABLES
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (
        SECRETS.env[access],
        SECRETS.env[secret],
    )


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


# --- secrets, Kafka security, auth ------------------------------------------------------------


def test_every_secret_compose_needs_is_one_the_generator_writes_and_none_has_a_default():
    refs = references()
    assert refs
    for ref in refs:
        name, op = ref["name"], ref["op"] or ""
        if name in DEFAULTED:
            continue
        assert op in (":?", "?"), f"${{{name}}} must fail when unset (${{{name}:?…}}), not {op!r}"
        assert name in SECRETS.env, f"compose needs {name}, which compose_secrets does not write"
        assert "compose_secrets" in ref["arg"], f"{name}: the error must name the command"
    used = {ref["name"] for ref in refs}
    assert not set(SECRETS.env) - used, "compose_secrets writes secrets compose does not use"


def test_no_credential_is_the_settings_default():
    defaults = {
        field: ServiceSettings.model_fields[field].default
        for field in ("s3_access_key", "s3_secret_key")
    }
    for name in SERVICES:
        env = environment(name)
        for field, default in defaults.items():
            value = env[PREFIX + field.upper()]
            assert value and value != default.get_secret_value(), f"{name}: default {field}"


def _bind_mounts(name: str) -> dict[str, dict[str, Any]]:
    """``target -> mount`` of a container's bind mounts (the long syntax, which fails when the
    file is missing instead of mounting an empty folder)."""
    mounts = {}
    for volume in service(name).get("volumes", []):
        if isinstance(volume, dict) and volume.get("type") == "bind":
            assert volume.get("read_only") is True, f"{name}: {volume['target']} must be read-only"
            assert volume.get("bind", {}).get("create_host_path") is False
            mounts[volume["target"]] = volume
    return mounts


def _host_path(mount: dict[str, Any]) -> Path:
    return (COMPOSE_FILE.parent / mount["source"]).resolve()


CA_FILE = ROOT / "infra" / cs.CERTS_DIR / cs.CA_CERT
BROKER_PEM = ROOT / "infra" / cs.CERTS_DIR / cs.BROKER_PEM


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_talks_to_kafka_over_sasl_ssl_as_its_own_user(name, monkeypatch):
    settings = build_settings(settings_class(name), modelbus_env(name), monkeypatch)
    security = KafkaSecurity.from_settings(settings)
    assert (security.protocol, security.mechanism) == ("SASL_SSL", cs.SCRAM_MECHANISM)
    assert security.username == name
    assert security.password == SECRETS.env[cs.kafka_password_variable(name)]
    mounts = _bind_mounts(name)
    assert security.cafile in mounts, f"{name}: the CA file {security.cafile} is not mounted"
    assert _host_path(mounts[security.cafile]) == CA_FILE
    host = settings.kafka_bootstrap.rpartition(":")[0]
    assert host in cs.BROKER_HOSTS, f"the broker's certificate does not name {host}"


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_has_auth_on_and_reads_the_registry_with_its_own_viewer_key(
    name, monkeypatch
):
    settings = build_settings(settings_class(name), modelbus_env(name), monkeypatch)
    assert settings.auth == "on"
    assert settings.admin_key_sha256.get_secret_value() == auth.hash_key(SECRETS.admin_key)
    static = {key.sha256: key for key in auth.static_keys(settings.static_keys.get_secret_value())}
    assert {key.name for key in static.values()} == set(cs.REGISTRY_READERS)
    if name not in cs.REGISTRY_READERS:
        assert settings.registry_api_key is None
        return
    key = static.get(auth.hash_key(settings.registry_api_key.get_secret_value()))
    assert key is not None, f"{name}'s registry key is not one the services accept"
    assert (key.name, key.role) == (name, "viewer")


def _listeners(value: str) -> dict[str, str]:
    """``NAME://host:port,...`` as ``{NAME: host:port}``."""
    return dict(item.split("://", 1) for item in value.split(","))


def test_kafka_client_listeners_are_sasl_ssl_with_scram_and_the_controller_is_internal():
    env = {k: interpolate(v) for k, v in service("kafka")["environment"].items()}
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(listeners) == set(protocols)
    assert set(advertised) == set(listeners) - {controller}
    for name in advertised:
        assert protocols[name] == "SASL_SSL", f"client listener {name} is {protocols[name]}"
        assert "SSL" not in name, "a listener named *SSL* turns on the image's JKS handling"
        jaas = env[f"KAFKA_LISTENER_NAME_{name}_SCRAM___SHA___512_SASL_JAAS_CONFIG"]
        assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required")
        assert advertised[name].rpartition(":")[0] in cs.BROKER_HOSTS
    # plaintext only inside the container
    assert listeners[controller].startswith("localhost:")
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].endswith("@" + listeners[controller])
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == cs.SCRAM_MECHANISM
    assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == cs.SCRAM_MECHANISM
    inter_broker = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert inter_broker in advertised
    jaas = env[f"KAFKA_LISTENER_NAME_{inter_broker}_SCRAM___SHA___512_SASL_JAAS_CONFIG"]
    password = SECRETS.env[cs.kafka_password_variable(cs.BROKER_USER)]
    assert f'username="{cs.BROKER_USER}" password="{password}";' in jaas
    # the published port is the HOST listener's, for producers outside the stack
    host_ports = {port for port, _ in published_ports("kafka")}
    assert host_ports == {int(advertised["HOST"].rpartition(":")[2])}


def test_kafka_reads_its_tls_files_from_the_generated_certs():
    env = service("kafka")["environment"]
    mounts = _bind_mounts("kafka")
    assert env["KAFKA_SSL_KEYSTORE_TYPE"] == env["KAFKA_SSL_TRUSTSTORE_TYPE"] == "PEM"
    assert _host_path(mounts[env["KAFKA_SSL_KEYSTORE_LOCATION"]]) == BROKER_PEM
    assert _host_path(mounts[env["KAFKA_SSL_TRUSTSTORE_LOCATION"]]) == CA_FILE
    assert env["KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM"] == "https"


def test_kafka_makes_a_scram_user_per_service_broker_and_upstream_at_format_time():
    kafka = service("kafka")
    env = {k: interpolate(v) for k, v in kafka["environment"].items()}
    assert tuple(env["MODELBUS_KAFKA_USERS"].split()) == cs.KAFKA_USERS
    assert set(SERVICES) | {cs.BROKER_USER, cs.UPSTREAM_USER} == set(cs.KAFKA_USERS)
    for user in cs.KAFKA_USERS:
        variable = cs.kafka_password_variable(user)
        assert env[variable] == SECRETS.env[variable]
    command = kafka["command"]
    script = next(t for t, m in _bind_mounts("kafka").items() if t in command)
    text = _host_path(_bind_mounts("kafka")[script]).read_text(encoding="utf-8")
    assert 'kafka-storage.sh" format' in text and "--add-scram" in text
    assert f"{cs.SCRAM_MECHANISM}=[name=$user,password=" in text
    assert "MODELBUS_KAFKA_${user^^}_PASSWORD" in text, "the script's password variables"
    assert 'exec "$docker_dir/run"' in text, "the image's own start comes last"


def test_kafka_healthcheck_connects_over_sasl_ssl():
    test = service("kafka")["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    config = re.search(r"--command-config (\S+)", command)
    assert config, "the health check must authenticate (a client config file)"
    assert "--bootstrap-server localhost:9092" in command
    script = (ROOT / "infra" / "kafka" / "start.sh").read_text(encoding="utf-8")
    assert f'client_config="$config_dir/{Path(config[1]).name}"' in script
    assert "security.protocol=SASL_SSL" in script
    assert f'username="{cs.BROKER_USER}"' in script
    assert "ssl.truststore.location=$KAFKA_SSL_TRUSTSTORE_LOCATION" in script
