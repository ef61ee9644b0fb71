"""Signed artifacts: no model code runs unless a trusted service wrote it and a person allowed it.

The service that writes an artifact signs it: the trainer what it trains, the registry what an
operator imports (after vetting it in a process of its own). The signature is detached, in the
``ArtifactRef`` that every event and registry record carries: Ed25519 over a version tag, the
artifact's sha256 and its format (the OpenSSF model-signing idea, reduced to what a
content-addressed store needs: the hash names the bytes, so signing the hash signs the bytes).

Every loader (the scorer, the batch service, the deployer's evaluation, the registry before it
makes a version champion) asks ``ArtifactTrust.problem`` before it reads the bytes, with the
fetched bytes' sha256 checked against the same ref (``stores.get_verified``):

- with trusted keys (``MODELBUS_TRUSTED_KEYS``), an artifact must be signed by a service allowed
  to write artifacts (``ARTIFACT_SIGNERS``) whose key is trusted, and the signature must verify;
- a pickled format (River, user ``python`` models: unpickling runs code) is refused unless the
  model's policy allows it (``artifacts.allow_pickle``, which only an admin sets) AND the
  signature verifies, so without trusted keys a pickle is never loaded;
- without trusted keys, a code-free artifact (logreg JSON, ONNX) is loaded unsigned (the
  service warns at start that nothing is verified).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature

from modelbus_contracts import ArtifactRef, ArtifactSignature
from modelbus_contracts.policy import ModelPolicyDoc
from modelbus_ml.flavors import PICKLED_FORMATS

from . import signing
from .signing import Signer, Verifier

VERSION = b"modelbus-artifact-v1"
# the services that write artifacts: a key of another service signs no artifact
ARTIFACT_SIGNERS = frozenset({"trainer", "registry"})
PICKLE_REFUSED = (
    "{format} is a pickle (loading it runs code): refused unless the model's policy allows it "
    "(artifacts.allow_pickle, set by an admin)"
)


def message(sha256: str, format: str) -> bytes:
    """What an artifact signature covers."""
    return b"\n".join((VERSION, sha256.encode(), format.encode()))


def pickled(format: str) -> bool:
    return format in PICKLED_FORMATS


@dataclass(frozen=True)
class ArtifactTrust:
    """One service's view of artifacts: its signer (if it writes them) and verifier."""

    signer: Signer | None = None
    verifier: Verifier | None = None

    @classmethod
    def from_settings(cls, settings: object) -> ArtifactTrust:
        key = getattr(settings, "signing_key", None)
        signer, verifier = signing.from_settings(
            getattr(settings, "service_name", "modelbus"),
            key.get_secret_value() if key is not None else None,
            getattr(settings, "trusted_keys", None),
        )
        return cls(signer, verifier)

    def sign(self, ref: ArtifactRef) -> ArtifactRef:
        """``ref`` with this service's signature (unchanged without a signing key)."""
        if self.signer is None:
            return ref
        raw = self.signer.key.sign(message(ref.sha256, ref.format))
        signature = ArtifactSignature(
            signer=self.signer.name, signature=base64.b64encode(raw).decode()
        )
        return ref.model_copy(update={"signature": signature})

    def problem(self, ref: ArtifactRef, *, allow_pickle: bool = False) -> str | None:
        """Why the artifact must not be loaded, or None."""
        if pickled(ref.format) and not allow_pickle:
            return PICKLE_REFUSED.format(format=ref.format)
        if self.verifier is None:
            if pickled(ref.format):
                return (
                    f"{ref.format} is a pickle and is loaded only with a verified signature: "
                    "this service trusts no keys (MODELBUS_TRUSTED_KEYS)"
                )
            return None
        return self._signature_problem(ref)

    async def refusal(
        self, ref: ArtifactRef, model_name: str, allow_pickle: AllowPickle
    ) -> str | None:
        """``problem``, with the model's policy asked (``allow_pickle``) only for a pickle: what
        every loader calls before it reads a byte."""
        allowed = pickled(ref.format) and await allow_pickle(model_name)
        return self.problem(ref, allow_pickle=allowed)

    def _signature_problem(self, ref: ArtifactRef) -> str | None:
        assert self.verifier is not None
        signed = ref.signature
        if signed is None:
            return "unsigned artifact: no trusted service signed it"
        if signed.signer not in ARTIFACT_SIGNERS:
            return f"artifact signed by {signed.signer!r}, which does not write artifacts"
        key = self.verifier.trusted.get(signed.signer)
        if key is None:
            return f"artifact signed by {signed.signer!r}, whose key is not trusted"
        try:
            key.verify(
                base64.b64decode(signed.signature, validate=True), message(ref.sha256, ref.format)
            )
        except (InvalidSignature, binascii.Error, ValueError):
            return f"the artifact signature of {signed.signer!r} does not verify"
        return None


AllowPickle = Callable[[str], Awaitable[bool]]


class PolicySource(Protocol):
    async def get(self, name: str) -> ModelPolicyDoc: ...


async def refuse_pickle(model_name: str) -> bool:
    return False


def pickle_policy(policies: PolicySource) -> AllowPickle:
    """Whether a model's live policy allows pickles (``artifacts.allow_pickle``)."""

    async def allowed(model_name: str) -> bool:
        return (await policies.get(model_name)).artifacts.allow_pickle

    return allowed
