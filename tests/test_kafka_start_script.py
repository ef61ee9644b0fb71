"""``infra/kafka/start.sh``, the compose broker's command, run against stand-ins of the
apache/kafka image's tools (no Docker here): on first start it renders the configuration with
the image's own code (without CLUSTER_ID, so that code does not format), formats the storage
with a SCRAM-SHA-512 credential per user and password from the compose environment, writes the
health check's SASL_SSL client configuration readable by its owner only, and hands over to the
image's own start; on later starts it does not format again; a missing password stops it."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from modelbus_embedded import compose_secrets as cs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "infra" / "kafka" / "start.sh"
COMPOSE = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text(encoding="utf-8"))
KAFKA_ENV = COMPOSE["services"]["kafka"]["environment"]


def _stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def image(tmp_path) -> dict[str, Path]:
    """Stand-ins for the image's folders and tools; each tool records how it was called."""
    home, docker, data = tmp_path / "opt-kafka", tmp_path / "etc-kafka-docker", tmp_path / "data"
    calls = tmp_path / "calls"
    data.mkdir()
    # KafkaDockerWrapper setup: renders server.properties, then fails without CLUSTER_ID
    _stub(
        home / "bin" / "kafka-run-class.sh",
        f'echo "setup CLUSTER_ID=${{CLUSTER_ID-unset}} $*" >> {calls}\n'
        "while [[ $# -gt 0 ]]; do [[ $1 == --final-configs-dir ]] && out=$2; shift; done\n"
        'echo "process.roles=broker,controller" > "$out/server.properties"\n'
        '[[ -n "${CLUSTER_ID-}" ]] || { echo "CLUSTER_ID environment variable is not set." >&2;'
        " exit 1; }\n",
    )
    _stub(
        home / "bin" / "kafka-storage.sh",
        f'printf "%s\\n" "$@" >> {calls}\ntouch "$KAFKA_LOG_DIRS/meta.properties"\n',
    )
    _stub(docker / "run", f'echo "run" >> {calls}\n')
    (home / "config").mkdir(parents=True)
    return {"home": home, "docker": docker, "data": data, "calls": calls}


def _run(image: dict[str, Path], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.environ["PATH"],
        "MODELBUS_KAFKA_HOME": str(image["home"]),
        "MODELBUS_KAFKA_DOCKER_DIR": str(image["docker"]),
        "MODELBUS_KAFKA_MOUNTED_CONFIG_DIR": str(image["home"] / "mounted"),
        "KAFKA_LOG_DIRS": str(image["data"]),
        "CLUSTER_ID": str(KAFKA_ENV["CLUSTER_ID"]),
        "KAFKA_SSL_TRUSTSTORE_LOCATION": str(KAFKA_ENV["KAFKA_SSL_TRUSTSTORE_LOCATION"]),
        "MODELBUS_KAFKA_USERS": str(KAFKA_ENV["MODELBUS_KAFKA_USERS"]),
    }
    return subprocess.run(
        ["bash", str(SCRIPT)], env=base | env, capture_output=True, text=True, timeout=30
    )


def _passwords(secrets: cs.Secrets) -> dict[str, str]:
    return {
        cs.kafka_password_variable(u): secrets.env[cs.kafka_password_variable(u)]
        for u in cs.KAFKA_USERS
    }


def test_first_start_formats_with_a_scram_user_each_then_runs_the_image(image):
    secrets = cs.make()
    done = _run(image, _passwords(secrets))
    assert done.returncode == 0, done.stderr
    calls = image["calls"].read_text().splitlines()
    assert calls[0].startswith("setup CLUSTER_ID=unset kafka.docker.KafkaDockerWrapper setup ")
    assert calls[-1] == "run"
    format_args = calls[calls.index("format") + 1 : -1]
    assert format_args[:4] == [
        "--cluster-id",
        KAFKA_ENV["CLUSTER_ID"],
        "-c",
        str(image["home"] / "config" / "server.properties"),
    ]
    scram = format_args[4:]
    assert scram[0::2] == ["--add-scram"] * len(cs.KAFKA_USERS)
    expected = [
        f"{cs.SCRAM_MECHANISM}=[name={u},password={secrets.env[cs.kafka_password_variable(u)]}]"
        for u in cs.KAFKA_USERS
    ]
    assert scram[1::2] == expected


def test_the_health_check_client_config_is_sasl_ssl_as_the_broker_user(image):
    secrets = cs.make()
    assert _run(image, _passwords(secrets)).returncode == 0
    test = " ".join(COMPOSE["services"]["kafka"]["healthcheck"]["test"])
    name = Path(shlex.split(test.split("--command-config", 1)[1])[0]).name
    path = image["home"] / "config" / name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    props = dict(line.split("=", 1) for line in path.read_text().splitlines())
    password = secrets.env[cs.kafka_password_variable(cs.BROKER_USER)]
    assert props == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": cs.SCRAM_MECHANISM,
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{cs.BROKER_USER}" password="{password}";',
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": KAFKA_ENV["KAFKA_SSL_TRUSTSTORE_LOCATION"],
    }


def test_a_formatted_storage_is_not_formatted_again(image):
    passwords = _passwords(cs.make())
    assert _run(image, passwords).returncode == 0
    image["calls"].unlink()
    assert _run(image, passwords).returncode == 0
    assert image["calls"].read_text().splitlines() == ["run"]


def test_a_missing_password_stops_it_before_anything_runs(image):
    passwords = _passwords(cs.make())
    del passwords[cs.kafka_password_variable(cs.UPSTREAM_USER)]
    done = _run(image, passwords)
    assert done.returncode == 1
    assert cs.kafka_password_variable(cs.UPSTREAM_USER) in done.stderr
    assert "compose_secrets" in done.stderr
    assert not image["calls"].exists()
