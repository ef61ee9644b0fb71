"""How every Kafka client of a service connects: plaintext (the embedded broker), TLS, SASL
(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) or SASL over TLS, from the service's settings.

One ``KafkaSecurity`` gives the same connection to the three kinds of clients a service has:
the FastStream broker (publishing and the subscriptions), the bulk producer and the admin client
(topic creation), so none of them can be left on plaintext by accident. Settings
(``MODELBUS_KAFKA_*``): ``security_protocol`` (``PLAINTEXT`` | ``SSL`` | ``SASL_PLAINTEXT`` |
``SASL_SSL``), ``sasl_mechanism``, ``sasl_username``, ``sasl_password``, and for TLS
``ssl_cafile`` (the broker's CA), ``ssl_certfile`` / ``ssl_keyfile`` (a client certificate,
for mutual TLS). A combination that cannot work (SASL without a user, a client certificate
without its key, PLAIN over an unencrypted connection unless explicitly allowed) is refused at
start with the reason, not discovered at the first publish.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(ValueError):
    """Settings that cannot make a working, safe connection."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    allow_plain_over_plaintext: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(f"kafka security protocol {self.protocol!r}: {PROTOCOLS}")
        if self.sasl:
            if self.mechanism not in MECHANISMS:
                raise KafkaSecurityError(f"SASL mechanism {self.mechanism!r}: {MECHANISMS}")
            if not self.username or not self.password:
                raise KafkaSecurityError(f"{self.protocol} needs a SASL username and password")
            if self.mechanism == "PLAIN" and not self.tls and not self.allow_plain_over_plaintext:
                raise KafkaSecurityError(
                    "SASL PLAIN over SASL_PLAINTEXT sends the password in clear: use SASL_SSL "
                    "or SCRAM (or allow it explicitly)"
                )
        if bool(self.certfile) != bool(self.keyfile):
            raise KafkaSecurityError("a client certificate needs both ssl_certfile and ssl_keyfile")
        if not self.tls and (self.cafile or self.certfile):
            raise KafkaSecurityError(f"TLS files are set but the protocol is {self.protocol}")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_settings(cls, settings: Any) -> KafkaSecurity:
        password = getattr(settings, "kafka_sasl_password", None)
        return cls(
            protocol=getattr(settings, "kafka_security_protocol", "PLAINTEXT"),
            mechanism=getattr(settings, "kafka_sasl_mechanism", "SCRAM-SHA-512"),
            username=getattr(settings, "kafka_sasl_username", None),
            password=password.get_secret_value() if password is not None else None,
            cafile=getattr(settings, "kafka_ssl_cafile", None),
            certfile=getattr(settings, "kafka_ssl_certfile", None),
            keyfile=getattr(settings, "kafka_ssl_keyfile", None),
            allow_plain_over_plaintext=getattr(settings, "kafka_allow_plain_sasl", False),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifying the broker's certificate (against ``cafile``, else the system's CAs)."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.cafile)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producers, consumers and admin clients."""
        if self.protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        if self.sasl:
            options |= {
                "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        return options

    def faststream(self) -> Any:
        """The FastStream security object for the broker (None: plaintext)."""
        from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

        if self.protocol == "PLAINTEXT":
            return None
        context = self.ssl_context()
        if not self.sasl:
            return BaseSecurity(ssl_context=context, use_ssl=True)
        cls = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256}.get(
            self.mechanism, SASLScram512
        )
        return cls(str(self.username), str(self.password), ssl_context=context, use_ssl=self.tls)
