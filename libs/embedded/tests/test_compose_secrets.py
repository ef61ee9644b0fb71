"""``python -m modelbus_embedded.compose_secrets``: every secret the compose stack needs.

Run into a temporary folder: the ``.env`` parses (as docker compose and python-dotenv read it),
the broker's certificate chains to the CA and names the broker's hosts (checked with
``cryptography`` and by a real TLS handshake with a service's Kafka TLS context), the static
key hashes are those of the services' keys, the signing keys pair with the trusted keys, and an
existing set is never overwritten without ``--force``.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import socket
import ssl
import stat
import threading
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from dotenv import dotenv_values

from modelbus_embedded import compose_secrets as cs
from modelbus_embedded.stack import SERVICES
from modelbus_platform import auth, signing
from modelbus_platform.kafka_security import KafkaSecurity
from modelbus_platform.settings import ServiceSettings


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    """One run of the command: the folder, the ``.env`` as parsed, what it printed."""
    folder = tmp_path_factory.mktemp("infra")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cs.main([str(folder)]) == 0
    env = dotenv_values(folder / cs.ENV_FILE)
    assert all(v is not None for v in env.values())
    return folder, {k: str(v) for k, v in env.items()}, out.getvalue()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_the_env_file_and_the_certificates_private_where_secret(made):
    folder, _, _ = made
    paths = cs.targets(folder)
    assert _mode(paths["env"]) == 0o600
    assert _mode(paths["broker"]) == 0o600
    assert _mode(paths["ca"]) == 0o644  # public: what every client trusts


def test_the_env_file_has_every_secret_and_nothing_else(made):
    _, env, _ = made
    expected = {cs.kafka_password_variable(user) for user in cs.KAFKA_USERS}
    expected |= {signing.signing_key_variable(s) for s in SERVICES}
    expected |= {signing.TRUSTED_KEYS_VARIABLE, cs.ADMIN_KEY_VARIABLE, cs.STATIC_KEYS_VARIABLE}
    expected |= {cs.registry_key_variable(s) for s in cs.REGISTRY_READERS}
    expected |= set(cs.S3_VARIABLES) | set(cs.MONGO_VARIABLES)
    assert set(env) == expected
    assert all(env.values())


def test_kafka_passwords_are_random_distinct_and_safe_in_the_broker_syntax(made):
    _, env, _ = made
    passwords = [env[cs.kafka_password_variable(user)] for user in cs.KAFKA_USERS]
    assert len(set(passwords)) == len(passwords)
    for password in passwords:
        assert len(password) >= 32
        # --add-scram 'SCRAM-SHA-512=[name=u,password=p]' and the JAAS password="p"
        assert not set(password) & set(",[]\"\\$ ;'")


def test_the_admin_key_is_printed_once_and_only_its_hash_is_kept(made):
    folder, env, printed = made
    keys = [word for word in printed.split() if word.startswith(auth.KEY_PREFIX)]
    assert len(keys) == 1
    assert env[cs.ADMIN_KEY_VARIABLE] == auth.hash_key(keys[0])
    assert keys[0] not in (folder / cs.ENV_FILE).read_text()
    assert "localhost:9094" in printed and cs.UPSTREAM_USER in printed


def test_static_keys_are_the_hashes_of_the_services_registry_keys(made):
    _, env, _ = made
    static = auth.static_keys(env[cs.STATIC_KEYS_VARIABLE])
    assert [k.name for k in static] == list(cs.REGISTRY_READERS)
    by_hash = {k.sha256: k for k in static}
    for service in cs.REGISTRY_READERS:
        secret = env[cs.registry_key_variable(service)]
        assert secret.startswith(auth.KEY_PREFIX)
        key = by_hash[auth.hash_key(secret)]
        assert (key.name, key.role) == (service, cs.REGISTRY_READER_ROLE)
    assert "registry" not in {k.name for k in static}, "the registry does not call itself"


def test_signing_keys_pair_with_the_trusted_keys(made):
    _, env, _ = made
    trusted = json.loads(env[signing.TRUSTED_KEYS_VARIABLE])
    assert set(trusted) == set(SERVICES)
    for service in SERVICES:
        private = signing.private_key(env[signing.signing_key_variable(service)])
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert (
            signing.public_key(trusted[service]).public_bytes(Encoding.Raw, PublicFormat.Raw)
            == public
        )
    signer, verifier = signing.from_settings(
        "monitor", env["MODELBUS_MONITOR_SIGNING_KEY"], env[signing.TRUSTED_KEYS_VARIABLE]
    )
    headers = signer.sign("drift.detected.v1", {"ce_id": "1"}, b"{}")
    assert verifier.problem("drift.detected.v1", headers, b"{}") is None
    headers["ce_signer"] = "scorer"
    assert verifier.problem("drift.detected.v1", headers, b"{}") is not None


def test_the_mongodb_password_is_random_and_fits_a_uri_unescaped(made):
    _, env, _ = made
    user, password = (env[v] for v in cs.MONGO_VARIABLES)
    assert len(password) >= 32
    assert urllib.parse.quote(password, safe="") == password
    assert urllib.parse.quote(user, safe="") == user


def test_s3_credentials_are_not_the_defaults(made):
    _, env, _ = made
    access, secret = cs.S3_VARIABLES
    defaults = ServiceSettings.model_fields
    assert env[access] != defaults["s3_access_key"].default.get_secret_value()
    assert env[secret] != defaults["s3_secret_key"].default.get_secret_value()
    assert len(env[secret]) >= 8  # MinIO's minimum


def _pem_blocks(data: bytes, kind: str) -> list[bytes]:
    text = data.decode()
    begin, end = f"-----BEGIN {kind}-----", f"-----END {kind}-----"
    blocks, start = [], text.find(begin)
    while start >= 0:
        stop = text.index(end, start) + len(end)
        blocks.append(text[start:stop].encode())
        start = text.find(begin, stop)
    return blocks


def test_the_broker_certificate_chains_to_the_ca_and_names_the_broker_hosts(made):
    folder, _, _ = made
    paths = cs.targets(folder)
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    pem = paths["broker"].read_bytes()
    (key_pem,) = _pem_blocks(pem, "PRIVATE KEY")  # PKCS#8, not encrypted (no key password)
    broker, chain_ca = (x509.load_pem_x509_certificate(b) for b in _pem_blocks(pem, "CERTIFICATE"))
    assert chain_ca == ca
    broker.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not broker.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }
    assert names == set(cs.BROKER_HOSTS)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    key = load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == broker.public_key()


def _tls_server(pem: Path) -> tuple[socket.socket, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pem)  # the key and the chain from the one file the broker reads
    sock = socket.create_server(("127.0.0.1", 0))
    return sock, server


@pytest.mark.parametrize("host", [*cs.BROKER_HOSTS, "elsewhere.example"])
def test_a_service_tls_context_accepts_the_broker_by_each_of_its_names_only(made, host):
    folder, _, _ = made
    paths = cs.targets(folder)
    sock, server = _tls_server(paths["broker"])
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = sock.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = KafkaSecurity(
        protocol="SASL_SSL", username="scorer", password="x", cafile=str(paths["ca"])
    ).ssl_context()
    port = sock.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            if host == "elsewhere.example":
                with pytest.raises(ssl.SSLCertVerificationError):
                    client.wrap_socket(raw, server_hostname=host)
            else:
                with client.wrap_socket(raw, server_hostname=host) as tls:
                    assert tls.recv(2) == b"ok"
    finally:
        thread.join(5)
        sock.close()


def test_refuses_to_overwrite_unless_forced(tmp_path, capsys):
    assert cs.main([str(tmp_path)]) == 0
    paths = cs.targets(tmp_path)
    before = {name: path.read_bytes() for name, path in paths.items()}
    assert cs.main([str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert {name: path.read_bytes() for name, path in paths.items()} == before
    # one file left over is enough to refuse
    paths["env"].unlink()
    assert cs.main([str(tmp_path)]) == 1
    assert cs.main([str(tmp_path), "--force"]) == 0
    after = {name: path.read_bytes() for name, path in paths.items()}
    assert all(after[name] != before[name] for name in paths)
    assert _mode(paths["env"]) == 0o600
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        [cs.ENV_FILE, cs.CERTS_DIR, cs.CA_CERT, cs.BROKER_PEM]
    ), "nothing staged is left behind"


def test_env_text_round_trips_json_and_refuses_what_it_cannot_quote():
    env = {"A": '[{"name":"x"}]', "B": "plain-value_1=", "C": "a b"}
    text = cs.env_text(env)
    assert dotenv_values(stream=io.StringIO(text)) == env
    with pytest.raises(ValueError):
        cs.env_text({"D": "it's"})
