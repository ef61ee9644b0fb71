"""Every secret the compose stack (``infra/compose.yaml``) needs, made by one command::

    uv run python -m modelbus_embedded.compose_secrets infra/

It writes ``infra/.env`` (mode 0600; docker compose reads it for ``${VAR}`` in the compose file)
and ``infra/certs/``, and refuses to overwrite them unless ``--force``:

- a CA (``certs/ca.crt``, what every Kafka client trusts; its key is not kept: to re-issue,
  run again with ``--force``) and the broker's certificate for ``kafka``, ``localhost`` and
  ``127.0.0.1`` with its key, as one PEM file (``certs/kafka.pem``, mode 0600), which the
  apache/kafka image reads with ``ssl.keystore.type=PEM``;
- a random SCRAM-SHA-512 password per Kafka user (``MODELBUS_KAFKA_<USER>_PASSWORD``): one user
  per service, ``broker`` (inter-broker, health check) and ``upstream`` (producers outside the
  stack, on ``localhost:9094``);
- an Ed25519 signing key per service and the trusted keys (``modelbus_platform.signing``);
- HTTP auth: a bootstrap admin key (printed once; only its SHA-256 is written), and a ``viewer``
  key per service that reads the registry (``MODELBUS_<SERVICE>_REGISTRY_API_KEY``; the
  registry trusts it by its hash in ``MODELBUS_STATIC_KEYS``);
- MinIO's root credentials (``MODELBUS_S3_ACCESS_KEY`` / ``MODELBUS_S3_SECRET_KEY``) and
  MongoDB's (``MODELBUS_MONGO_USER`` / ``MODELBUS_MONGO_PASSWORD``).

Kafka's SCRAM users are created when the broker formats its storage, and MongoDB's user when it
starts on an empty volume (first start): after ``--force`` the old ``kafka-data`` and
``mongo-data`` volumes still hold the old passwords, so remove them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modelbus_platform.auth import hash_key, make_static_key, new_secret
from modelbus_platform.signing import env_variables, keyset

from .stack import SERVICES

COMMAND = "uv run python -m modelbus_embedded.compose_secrets infra/"
SCRAM_MECHANISM = "SCRAM-SHA-512"
BROKER_USER = "broker"
UPSTREAM_USER = "upstream"
KAFKA_USERS: tuple[str, ...] = (BROKER_USER, *SERVICES, UPSTREAM_USER)
# the services that read the registry's API (the registry does not call itself)
REGISTRY_READERS: tuple[str, ...] = tuple(s for s in SERVICES if s != "registry")
REGISTRY_READER_ROLE = "viewer"
BROKER_HOSTS: tuple[str, ...] = ("kafka", "localhost", "127.0.0.1")
ENV_FILE = ".env"
CERTS_DIR = "certs"
CA_CERT = "ca.crt"
BROKER_PEM = "kafka.pem"
CA_DAYS = 3650
BROKER_DAYS = 825
ADMIN_KEY_VARIABLE = "MODELBUS_ADMIN_KEY_SHA256"
STATIC_KEYS_VARIABLE = "MODELBUS_STATIC_KEYS"
S3_VARIABLES = ("MODELBUS_S3_ACCESS_KEY", "MODELBUS_S3_SECRET_KEY")
MONGO_VARIABLES = ("MODELBUS_MONGO_USER", "MODELBUS_MONGO_PASSWORD")


def kafka_password_variable(user: str) -> str:
    return f"MODELBUS_KAFKA_{user.upper()}_PASSWORD"


def registry_key_variable(service: str) -> str:
    return f"MODELBUS_{service.upper()}_REGISTRY_API_KEY"


@dataclass(frozen=True)
class Secrets:
    """What one run made: the ``.env`` variables, the files, and the admin key (shown once)."""

    env: dict[str, str]
    ca_pem: bytes
    broker_pem: bytes
    admin_key: str


# -- certificates ------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "modelbus compose"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def certificates(hosts: tuple[str, ...] = BROKER_HOSTS) -> tuple[bytes, bytes]:
    """A new CA (its certificate, PEM) and the broker's key and certificate chain (one PEM:
    the unencrypted PKCS#8 key, the broker's certificate, the CA's). The CA's key is dropped."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("modelbus compose CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=BROKER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # serverAuth for its listeners, clientAuth for the broker as a client of itself
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ca_pem, key_pem + cert.public_bytes(serialization.Encoding.PEM) + ca_pem


# -- the rest ----------------------------------------------------------------------------------


def make() -> Secrets:
    """Every secret, new."""
    env: dict[str, str] = {}
    for user in KAFKA_USERS:
        env[kafka_password_variable(user)] = secrets.token_urlsafe(32)
    env |= env_variables(*keyset(SERVICES))
    admin_key = new_secret()
    env[ADMIN_KEY_VARIABLE] = hash_key(admin_key)
    entries = []
    for service in REGISTRY_READERS:
        secret, entry = make_static_key(service, REGISTRY_READER_ROLE)
        env[registry_key_variable(service)] = secret
        entries.append(entry.model_dump(mode="json"))
    env[STATIC_KEYS_VARIABLE] = json.dumps(entries, separators=(",", ":"))
    access, secret_key = S3_VARIABLES
    env[access] = f"modelbus-{secrets.token_hex(6)}"
    env[secret_key] = secrets.token_urlsafe(32)
    mongo_user, mongo_password = MONGO_VARIABLES
    env[mongo_user] = "modelbus"
    env[mongo_password] = secrets.token_urlsafe(32)  # URL-safe: it goes into the MongoDB URI
    ca_pem, broker_pem = certificates()
    return Secrets(env, ca_pem, broker_pem, admin_key)


def env_text(env: Mapping[str, str]) -> str:
    """``.env`` lines; a value with quotes or braces (JSON) single-quoted, which compose and
    python-dotenv take literally (no ``$`` interpolation)."""
    lines = [
        f"# made by `{COMMAND}`: the compose stack's secrets. Keep this file private (0600).",
    ]
    for name, value in env.items():
        if "'" in value or "\n" in value:
            raise ValueError(f"{name}: a value with a single quote or a newline")
        literal = any(c in value for c in '"{}[]$ #')
        lines.append(f"{name}='{value}'" if literal else f"{name}={value}")
    return "\n".join(lines) + "\n"


def _write(path: Path, data: bytes, mode: int) -> None:
    """``data`` into a new file of ``mode``, put in place at once (replacing one that another
    owner may have by now, e.g. the broker's key after a chown to the image's user)."""
    staged = path.with_name(f".{path.name}.new")
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)
    os.replace(staged, path)


def targets(directory: Path) -> dict[str, Path]:
    certs = directory / CERTS_DIR
    return {"env": directory / ENV_FILE, "ca": certs / CA_CERT, "broker": certs / BROKER_PEM}


def write(directory: Path, *, force: bool = False) -> Secrets:
    """Make every secret and write them under ``directory`` (``.env``, ``certs/``). Refuses
    (FileExistsError) when one of the files exists, unless ``force``."""
    paths = targets(directory)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{', '.join(existing)} exist: keeping them (run with --force to make new secrets; "
            "then also remove the kafka-data and mongo-data volumes, which hold the old users)"
        )
    made = make()
    paths["ca"].parent.mkdir(parents=True, exist_ok=True)
    _write(paths["ca"], made.ca_pem, 0o644)
    _write(paths["broker"], made.broker_pem, 0o600)
    _write(paths["env"], env_text(made.env).encode(), 0o600)
    return made


def instructions(directory: Path, made: Secrets) -> str:
    certs = directory / CERTS_DIR
    upstream = kafka_password_variable(UPSTREAM_USER)
    notes = [
        f"wrote {directory / ENV_FILE} (0600), {certs / CA_CERT} and {certs / BROKER_PEM} (0600)",
        "",
        "The bootstrap admin key (shown only now; only its SHA-256 is in .env). Keep it:",
        f"  {made.admin_key}",
        "",
        f"Start the stack:  docker compose -f {directory / 'compose.yaml'} up --build",
        "Call the APIs with it, e.g.:",
        '  curl -H "Authorization: Bearer <admin key>" http://localhost:8001/models',
        "and make keys with the least role for every other caller on POST /admin/keys.",
        "",
        f"Producers outside the stack: SASL_SSL, {SCRAM_MECHANISM}, on localhost:9094, as user "
        f"'{UPSTREAM_USER}' ({upstream} in .env), trusting {certs / CA_CERT}.",
    ]
    if hasattr(os, "getuid") and os.getuid() != 1000:
        notes += [
            "",
            f"The apache/kafka image runs as uid 1000 and must read {certs / BROKER_PEM}: "
            f"`sudo chown 1000 {certs / BROKER_PEM}` (Docker Desktop maps owners itself).",
        ]
    return "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelbus_embedded.compose_secrets",
        description="Make every secret the compose stack needs: <dir>/.env and <dir>/certs/.",
    )
    parser.add_argument("directory", type=Path, help="the compose folder, e.g. infra/")
    parser.add_argument("--force", action="store_true", help="replace existing secrets")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a folder")
    try:
        made = write(args.directory, force=args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(instructions(args.directory, made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
