"""Settings shared by every service. Each service subclasses ``ServiceSettings``.

Environment variables carry the ``MODELBUS_`` prefix (e.g. ``MODELBUS_KAFKA_BOOTSTRAP``). Settings
are built once at start-up and passed down; nothing reads the environment after that.
"""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELBUS_", extra="ignore")

    service_name: str = Field(default="modelbus", description="name in logs, metrics, events")
    instance_id: str = Field(default_factory=socket.gethostname, description="this replica's id")

    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="how every Kafka client connects (kafka_security.py)"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism for SASL_PLAINTEXT / SASL_SSL"
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password")
    kafka_ssl_cafile: str | None = Field(default=None, description="the broker's CA (PEM)")
    kafka_ssl_certfile: str | None = Field(default=None, description="client certificate (mTLS)")
    kafka_ssl_keyfile: str | None = Field(default=None, description="client key (mTLS)")
    kafka_allow_plain_sasl: bool = Field(
        default=False, description="allow SASL PLAIN without TLS (the password in clear)"
    )
    topic_partitions: int = Field(default=3, ge=1, description="partitions for auto-created topics")

    mongo_uri: SecretStr = Field(
        default=SecretStr("mongodb://127.0.0.1:27017"), description="MongoDB connection URI"
    )
    mongo_db: str = Field(default="modelbus", description="database name")

    object_store: Literal["s3", "local"] = Field(default="s3", description="artifact store kind")
    s3_endpoint: str = Field(default="127.0.0.1:9000", description="host:port of the S3 server")
    s3_access_key: SecretStr = Field(default=SecretStr("modelbus"))
    s3_secret_key: SecretStr = Field(default=SecretStr("modelbus-secret"))
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    bucket: str = Field(default="modelbus", description="bucket for datasets and artifacts")
    local_store_dir: str = Field(default=".data/objects", description="root of the local store")

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_000_000, ge=1, description="HTTP request size limit")
    max_upload_bytes: int = Field(
        default=256_000_000,
        ge=1,
        description="size limit of an upload route's request (a dataset, a model artifact)",
    )

    registry_url: str = Field(default="http://127.0.0.1:8001", description="registry HTTP API")
    registry_api_key: SecretStr | None = Field(
        default=None,
        description="the API key this service reads the registry with when the registry has "
        "auth on (a viewer key of its own)",
    )
    policy_ttl_s: float = Field(
        default=10.0,
        ge=0,
        description="how long a model's policy read from the registry is used before it is "
        "read again (a ModelPolicyChanged makes it at once)",
    )
    registry_timeout_s: float = Field(
        default=5.0, gt=0, description="timeout of one registry HTTP call"
    )

    log_level: str = "INFO"
    log_json: bool | None = Field(default=None, description="JSON logs; default: when not a tty")

    signing_key: SecretStr | None = Field(
        default=None,
        description="this service's Ed25519 key (base64, 32 raw bytes): it signs the control "
        "events it publishes (modelbus_platform.signing)",
    )
    trusted_keys: str | None = Field(
        default=None,
        description='JSON {"<service>": "<base64 public key>"}: control events are acted on '
        "only when signed by one of them (unset: not verified, a warning at start)",
    )
    max_event_bytes: int = Field(
        default=1_000_000,
        ge=1_000,
        description="largest event a consumer reads (and a producer sends: the Kafka clients' "
        "max_request_size); a larger message is dead-lettered unread, cut down",
    )
    consumer_stall_s: float = Field(
        default=120.0,
        gt=0,
        description="a consumer group with a backlog whose commits have not moved for this "
        "long (no dependency awaited) makes readiness 503 ('consumers')",
    )
    handler_retries: int = Field(default=3, ge=0, description="retries before dead-lettering")
    handler_backoff_s: float = Field(default=0.2, ge=0, description="first retry delay, doubles")
    handler_backoff_max_s: float = Field(
        default=30.0,
        gt=0,
        description="longest wait between retries of a transient failure (a dependency not "
        "answering): retried until it answers, never dead-lettered",
    )

    # -- HTTP authentication (modelbus_platform.auth) ------------------------------------------
    auth: Literal["off", "on"] = Field(
        default="off",
        description="on: every HTTP route but auth_open_paths needs an API key or a JWT with "
        "the route's role (viewer < predict < operator < admin); off: every route is open",
    )
    auth_open_paths: list[str] = Field(
        default_factory=lambda: [
            "/health/live",
            "/health/ready",
            "/v2/health/live",
            "/v2/health/ready",
            "/metrics",
        ],
        description="route templates answered without credentials when auth is on",
    )
    admin_key_sha256: SecretStr | None = Field(
        default=None,
        description="hex SHA-256 of a bootstrap admin API key the operator made (the first "
        "admin logs in with it to create keys)",
    )
    static_keys: SecretStr | None = Field(
        default=None,
        description='JSON [{"name": ..., "role": ..., "sha256": "<hex SHA-256 of the key>"}]: '
        "API keys fixed in the configuration (services' keys for each other, CI's), beside "
        "the ones in MongoDB; ``python -m modelbus_platform.auth static-key NAME ROLE`` makes one",
    )
    auth_cache_ttl_s: float = Field(
        default=5.0,
        ge=0,
        description="how long an API key read from MongoDB is trusted (a revocation takes "
        "effect within it)",
    )
    jwks_url: str | None = Field(default=None, description="JWKS URL the JWT keys come from")
    jwks: str | None = Field(default=None, description="JWKS as JSON (instead of jwks_url)")
    jwt_issuer: str | None = Field(default=None, description="required iss of a JWT")
    jwt_audience: str | None = Field(default=None, description="required aud of a JWT")
    jwt_role_claim: str = Field(
        default="modelbus_role",
        description="claim naming the role (a string or a list: the highest role wins)",
    )
