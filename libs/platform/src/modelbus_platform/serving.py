"""Loading one registry version to serve it: fetch the artifact, verify it, parse, warm up.

``load_version(store, view, trust, allow_pickle)`` is the one way the scorer and the batch
service turn a registry record (``VersionView``) into a ``modelbus_ml.serving.Served``. Before
any byte is fetched the artifact's signature and format must pass ``ArtifactTrust`` (a pickle
only when the model's policy allows it: ``allow_pickle`` reads it, only for a pickle); the
artifact's sha256 must match the record (checked on the fetched bytes, and again by
``load_model`` before it parses or unpickles anything). Every reason the version cannot serve is
a ``LoadFailed``; only the store or the registry being unreachable raises something else
(transient: the caller retries).
"""

from __future__ import annotations

from modelbus_contracts.api import VersionView
from modelbus_ml.serving import LoadFailed, Served, check_servable, serve_artifact

from .artifacts import AllowPickle, ArtifactTrust, refuse_pickle
from .stores import IntegrityError, ObjectNotFound, ObjectStore, get_verified

__all__ = ["LoadFailed", "Served", "load_version"]


async def load_version(
    store: ObjectStore,
    view: VersionView,
    trust: ArtifactTrust,
    allow_pickle: AllowPickle = refuse_pickle,
) -> Served:
    """Check, fetch, verify, parse and warm up ``view``'s artifact; ``LoadFailed`` if it cannot
    serve. ``allow_pickle(model_name)``: whether the model's policy allows a pickle."""
    artifact = view.artifact
    check_servable(artifact.format)
    refusal = await trust.refusal(artifact, view.model_name, allow_pickle)
    if refusal is not None:
        raise LoadFailed(f"untrusted artifact: {refusal}")
    try:
        data = await get_verified(store, artifact.uri, artifact.sha256)
    except IntegrityError as exc:
        raise LoadFailed(f"integrity: {exc}") from exc
    except ObjectNotFound as exc:
        raise LoadFailed(f"artifact missing: {artifact.uri}") from exc
    return serve_artifact(
        data,
        version=view.version,
        artifact_format=artifact.format,
        sha256=artifact.sha256,
        feature_names=view.feature_names,
        signature=view.signature,
    )
