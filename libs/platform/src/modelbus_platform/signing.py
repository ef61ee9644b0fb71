"""Signed control events: who may move a champion on the bus.

Control events (a trained artifact, a registration, a verdict, a promotion, a rollback, a
drift, a policy change, ...) make other services act, so each carries the Ed25519 signature of
the service that produced it, in two CloudEvents extension headers: ``ce_signer`` (the
service's name) and ``ce_signature`` (base64). The signed message is every envelope header
(type, id, source, subject, time, correlation and causation ids) and the SHA-256 of the Kafka
value, so neither the envelope nor the data can be changed, and a structured-mode copy of a
signed event does not verify. A consumer that has trusted keys (``MODELBUS_TRUSTED_KEYS``:
``{"registry": "<base64 public key>", ...}``) dead-letters a control event that is unsigned,
signed by a service it does not know, or whose signature does not verify, with the reason, and
counts it. A replayed genuine event is a duplicate (same event id): the consumers dedupe it.

Upstream events (ScoringRequested, LabelObserved, TrainingRequested, BatchScoringRequested) are
not signed: they are open to producers the Kafka ACLs allow. Keys are raw Ed25519 keys in
base64 (32 bytes); ``python -m modelbus_platform.signing keygen <service>...`` prints a set.
Without trusted keys nothing is verified (the service logs a warning at start): the embedded
stack and the compose stack always configure them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modelbus_contracts.events import CONTROL_EVENTS

SIGNATURE = "ce_signature"
TRUSTED_KEYS_VARIABLE = "MODELBUS_TRUSTED_KEYS"
SIGNER = "ce_signer"
VERSION = b"modelbus-signature-v1"
# the events other services act on: only a trusted service's signature makes them count
CONTROL_TOPICS: frozenset[str] = frozenset(cls.topic for cls in CONTROL_EVENTS)
SIGNED_HEADERS = (
    "ce_type",
    "ce_id",
    "ce_source",
    "ce_subject",
    "ce_time",
    "ce_correlationid",
    "ce_causationid",
)


class KeyError_(ValueError):
    """A key that is not a base64 raw Ed25519 key."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    out: dict[str, str] = {}
    for key, value in items:
        out.setdefault(str(key).lower(), _text(value))
    return out


def message(headers: Mapping[str, str], value: bytes) -> bytes:
    """What is signed: the version tag, every envelope header and the value's SHA-256."""
    parts = [VERSION, *(headers.get(h, "").encode() for h in SIGNED_HEADERS)]
    parts.append(hashlib.sha256(value or b"").hexdigest().encode())
    return b"\n".join(parts)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _raw(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError_(f"{what} is not base64: {exc}") from exc
    if len(raw) != 32:
        raise KeyError_(f"{what} must be 32 raw bytes (an Ed25519 key), got {len(raw)}")
    return raw


def private_key(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_raw(text, "the signing key"))


def public_key(text: str, name: str = "a trusted key") -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_raw(text, name))


def keypair() -> tuple[str, str]:
    """A new (private, public) pair, each base64 of the raw 32 bytes."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes_raw()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _b64(private), _b64(public)


def keyset(services: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """A new key per service: the signing (private) keys and the trusted (public) keys."""
    pairs = {name: keypair() for name in services}
    return (
        {name: pair[0] for name, pair in pairs.items()},
        {name: pair[1] for name, pair in pairs.items()},
    )


def env_variables(
    signing_keys: Mapping[str, str], trusted_keys: Mapping[str, str]
) -> dict[str, str]:
    """The keys as compose variables: ``MODELBUS_<SERVICE>_SIGNING_KEY`` each (the compose file
    hands it to that service as ``MODELBUS_SIGNING_KEY``) and ``MODELBUS_TRUSTED_KEYS`` (JSON)."""
    out = {signing_key_variable(name): key for name, key in signing_keys.items()}
    out[TRUSTED_KEYS_VARIABLE] = json.dumps(dict(trusted_keys), sort_keys=True)
    return out


def env_lines(signing_keys: Mapping[str, str], trusted_keys: Mapping[str, str]) -> list[str]:
    """The keys as lines of a compose ``.env`` file (the JSON single-quoted: taken literally)."""
    variables = env_variables(signing_keys, trusted_keys)
    return [
        f"{name}='{value}'" if name == TRUSTED_KEYS_VARIABLE else f"{name}={value}"
        for name, value in variables.items()
    ]


def signing_key_variable(service: str) -> str:
    """The compose variable holding ``service``'s signing key."""
    return f"MODELBUS_{service.upper()}_SIGNING_KEY"


@dataclass(frozen=True)
class Signer:
    """Signs the control events one service publishes."""

    name: str
    key: Ed25519PrivateKey

    def sign(self, topic: str, headers: dict[str, str], value: bytes) -> dict[str, str]:
        """``headers`` with the signer and the signature added (control events only)."""
        if topic not in CONTROL_TOPICS:
            return headers
        signed = {k: v for k, v in headers.items() if k not in (SIGNATURE, SIGNER)}
        signed[SIGNER] = self.name
        signed[SIGNATURE] = _b64(self.key.sign(message(_headers(signed), value)))
        return signed


@dataclass(frozen=True)
class Verifier:
    """Checks control events against the trusted services' public keys."""

    trusted: Mapping[str, Ed25519PublicKey]

    def problem(self, topic: str, headers: Any, value: bytes) -> str | None:
        """Why this record must not be acted on, or None (also for non-control topics)."""
        if topic not in CONTROL_TOPICS:
            return None
        h = _headers(headers)
        signer, signature = h.get(SIGNER), h.get(SIGNATURE)
        if not signer or not signature:
            return "unsigned control event (no ce_signer / ce_signature)"
        key = self.trusted.get(signer)
        if key is None:
            return f"signed by {signer!r}, which is not a trusted service"
        try:
            key.verify(base64.b64decode(signature, validate=True), message(h, value))
        except (InvalidSignature, binascii.Error, ValueError):
            return f"the signature of {signer!r} does not verify"
        return None


def from_settings(
    service: str, signing_key: str | None, trusted_keys: str | None
) -> tuple[Signer | None, Verifier | None]:
    """The service's signer (if it has a key) and verifier (if it trusts any keys)."""
    signer = Signer(service, private_key(signing_key)) if signing_key else None
    verifier = None
    if trusted_keys:
        try:
            doc = json.loads(trusted_keys)
        except ValueError as exc:
            raise KeyError_(f"trusted keys are not JSON: {exc}") from exc
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            raise KeyError_('trusted keys must be {"<service>": "<base64 public key>", ...}')
        verifier = Verifier({str(k): public_key(v, f"the key of {k!r}") for k, v in doc.items()})
    return signer, verifier


def main(argv: list[str]) -> int:
    """``keygen [--env] <service>...``: a key per service and the trusted-keys document, as
    JSON or (``--env``) as the lines of a compose ``.env`` file."""
    as_env = "--env" in argv
    argv = [a for a in argv if a != "--env"]
    if len(argv) < 2 or argv[0] != "keygen":
        print("usage: python -m modelbus_platform.signing keygen [--env] <service> [...]")
        return 2
    signing_keys, trusted_keys = keyset(argv[1:])
    if as_env:
        print("\n".join(env_lines(signing_keys, trusted_keys)))
        return 0
    print(json.dumps({"signing_keys": signing_keys, "trusted_keys": trusted_keys}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
