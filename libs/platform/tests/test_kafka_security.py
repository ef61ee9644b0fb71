"""Every Kafka client of a service connects the same way: plaintext, TLS, SASL or SASL over
TLS, from its settings; settings that cannot work or would leak a password are refused."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from modelbus_platform.bus import EventBus, MemoryProcessedEvents
from modelbus_platform.kafka_security import KafkaSecurity, KafkaSecurityError
from modelbus_platform.metrics import Metrics
from modelbus_platform.settings import ServiceSettings


def ca_file(tmp_path) -> str:
    """A self-signed CA certificate in PEM, as an operator's broker CA would be."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelbus-test-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_plaintext_is_the_default_and_adds_nothing():
    security = KafkaSecurity()
    assert security.client_options() == {} and security.faststream() is None


def test_scram_over_tls_verifies_the_broker_against_its_ca(tmp_path):
    security = KafkaSecurity(
        protocol="SASL_SSL",
        mechanism="SCRAM-SHA-512",
        username="scorer",
        password="s3cret",
        cafile=ca_file(tmp_path),
    )
    options = security.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "scorer",
    )
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(
        c["subject"] == ((("commonName", "modelbus-test-ca"),),) for c in context.get_ca_certs()
    )
    assert isinstance(security.faststream(), SASLScram512)


@pytest.mark.parametrize(
    ("protocol", "mechanism", "cls"),
    [
        ("SASL_PLAINTEXT", "SCRAM-SHA-256", SASLScram256),
        ("SASL_SSL", "PLAIN", SASLPlaintext),
        ("SSL", "SCRAM-SHA-512", BaseSecurity),
    ],
)
def test_each_protocol_gives_the_broker_its_security(protocol, mechanism, cls):
    security = KafkaSecurity(protocol=protocol, mechanism=mechanism, username="u", password="p")
    assert type(security.faststream()) is cls
    assert ("sasl_mechanism" in security.client_options()) == protocol.startswith("SASL_")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"protocol": "SASL_SSL"}, "username and password"),
        (
            {"protocol": "SASL_PLAINTEXT", "mechanism": "PLAIN", "username": "u", "password": "p"},
            "in clear",
        ),
        ({"protocol": "SSL", "certfile": "c.pem"}, "both ssl_certfile and ssl_keyfile"),
        ({"protocol": "PLAINTEXT", "cafile": "ca.pem"}, "the protocol is PLAINTEXT"),
        ({"protocol": "TLS"}, "security protocol"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_reason(fields, message):
    with pytest.raises(KafkaSecurityError, match=message):
        KafkaSecurity(**fields)


def test_the_bus_built_from_settings_connects_every_client_the_same_way(monkeypatch):
    monkeypatch.setenv("MODELBUS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("MODELBUS_KAFKA_SASL_USERNAME", "registry")
    monkeypatch.setenv("MODELBUS_KAFKA_SASL_PASSWORD", "pw")
    settings = ServiceSettings()
    bus = EventBus.from_settings(
        settings, metrics=Metrics("kafka-security"), processed=MemoryProcessedEvents()
    )
    assert bus.security.client_options()["sasl_plain_password"] == "pw"
    assert bus.security.client_options()["sasl_mechanism"] == "SCRAM-SHA-512"
