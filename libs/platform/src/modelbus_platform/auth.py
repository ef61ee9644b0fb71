"""Who may call which HTTP route: authentication (API keys, JWT bearer tokens) and roles, as
one layer of the chain every route goes through (``modelbus_platform.http``), hot routes
included. The kit installs it when ``MODELBUS_AUTH=on``; off, the layer is not there at all.

Credentials: ``Authorization: Bearer <token>`` (an API key or a JWT: three dot-separated parts)
or ``X-API-Key: <key>``. None, or bad, expired or revoked ones: 401 ``unauthenticated`` with
``WWW-Authenticate: Bearer``. A role too low for the route: 403 ``forbidden`` naming the role.

Roles are ordered, each including the ones before it::

    viewer    read: GET, HEAD
    predict   inference: POST /models/{name}/predict, POST /v2/models/{name}[/versions/{v}]/infer
    operator  every other write: train, datasets, batch jobs, approve/reject, rollback, aliases
    admin     /admin/* (API keys) and PUT /models/{name}/policy

``required_role(method, path)`` decides it from the route template, in one place: the open paths
(health, metrics: ``auth_open_paths``) need nothing, ``ROLE_OVERRIDES`` name the exceptions, then
the method decides. A request that matches no route needs ``viewer`` (so a caller without
credentials learns nothing about which routes exist).

API keys are random (``mbk_`` + 256 bits), shown once, stored only as their SHA-256 in MongoDB
(``api_keys``, one collection every service reads). Each service caches what it read for
``auth_cache_ttl_s``: the hot infer route does not read MongoDB per request, and a revocation
takes effect everywhere within the TTL (at once in the registry, which revoked it). A bootstrap
admin key (``MODELBUS_ADMIN_KEY_SHA256``, the hash of a key the operator made) lets the first
admin create the others. JWTs are verified against a JWKS (``MODELBUS_JWKS`` or
``MODELBUS_JWKS_URL``) with the configured issuer and audience; the role comes from
``jwt_role_claim``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import httpx
import jwt
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pymongo.asynchronous.database import AsyncDatabase
from starlette.routing import compile_path

from .http import ApiError, ASGIApp, error_payload, error_responses, route_path, send_json

log = structlog.get_logger(__name__)

Role = Literal["viewer", "predict", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "predict", "operator", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The routes whose role the method does not decide: inference is its own role, policies belong
# to admins. Keyed by (method, route template).
ROLE_OVERRIDES: Mapping[tuple[str, str], Role] = {
    ("POST", "/models/{name}/predict"): "predict",
    ("POST", "/v2/models/{name}/infer"): "predict",
    ("POST", "/v2/models/{name}/versions/{version}/infer"): "predict",
    ("PUT", "/models/{name}/policy"): "admin",
}
ADMIN_PREFIX = "/admin/"
KEY_PREFIX = "mbk_"
CHALLENGE = {"www-authenticate": "Bearer"}


def required_role(
    method: str, path: str, open_paths: Iterable[str] = (), overrides: Mapping = ROLE_OVERRIDES
) -> Role | None:
    """The role a route (method + path template) needs, or None when it is open."""
    if path in open_paths:
        return None
    if (method, path) in overrides:
        return overrides[(method, path)]
    if path.startswith(ADMIN_PREFIX):
        return "admin"
    return "viewer" if method in READ_METHODS else "operator"


def highest_role(claimed: Any) -> Role | None:
    """The highest role named by a claim (a string, or a list of strings); None if none."""
    names = [claimed] if isinstance(claimed, str) else claimed
    if not isinstance(names, list):
        return None
    known = [name for name in names if name in RANK]
    return max(known, key=RANK.__getitem__) if known else None


@dataclass(frozen=True)
class Identity:
    """Who is calling: an API key's name or a JWT's subject, with its role. Routes read it as
    ``request.state.identity``."""

    name: str
    role: Role
    kind: Literal["api_key", "jwt", "bootstrap", "static"]
    key_id: str | None = None

    def may(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


class StaticKey(BaseModel):
    """An API key fixed in the configuration (``MODELBUS_STATIC_KEYS``, a JSON list of these),
    as Kubernetes' static token file: only its SHA-256 is configured."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")


def static_keys(raw: str | None) -> list[StaticKey]:
    """``MODELBUS_STATIC_KEYS`` parsed; a malformed value stops the service at start."""
    if not raw:
        return []
    return TypeAdapter(list[StaticKey]).validate_json(raw)


class Unauthenticated(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, message, "unauthenticated", headers=CHALLENGE)


def bearer(api_key: str | None) -> dict[str, str]:
    """The header a client presents ``api_key`` with (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def audit_actor(request: Request, claimed: str) -> str:
    """The actor an audit record names: the caller's identity when auth is on (a header or a
    body can claim anything), else what the request claims (auth off: as before)."""
    identity: Identity | None = getattr(request.state, "identity", None)
    return identity.name if identity is not None else claimed


# -- API keys ----------------------------------------------------------------------------------


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore(Protocol):
    """Where API keys are kept: only their hashes."""

    async def insert(self, record: dict[str, Any]) -> None: ...
    async def by_hash(self, sha256: str) -> dict[str, Any] | None: ...
    async def get(self, key_id: str) -> dict[str, Any] | None: ...
    async def all(self) -> list[dict[str, Any]]: ...
    async def revoke(self, key_id: str, at: datetime) -> dict[str, Any] | None: ...


class MemoryKeyStore:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.reads = 0  # by_hash calls: what the cache saves

    async def insert(self, record: dict[str, Any]) -> None:
        self.records[record["_id"]] = dict(record)

    async def by_hash(self, sha256: str) -> dict[str, Any] | None:
        self.reads += 1
        return next((dict(r) for r in self.records.values() if r["sha256"] == sha256), None)

    async def get(self, key_id: str) -> dict[str, Any] | None:
        record = self.records.get(key_id)
        return dict(record) if record else None

    async def all(self) -> list[dict[str, Any]]:
        return sorted((dict(r) for r in self.records.values()), key=lambda r: r["created_at"])

    async def revoke(self, key_id: str, at: datetime) -> dict[str, Any] | None:
        record = self.records.get(key_id)
        if record is None:
            return None
        if not record["revoked"]:
            record.update(revoked=True, revoked_at=at)
        return dict(record)


class MongoKeyStore:
    """``api_keys`` in the shared database, unique on the hash."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.keys = db["api_keys"]

    async def init(self) -> None:
        await self.keys.create_index("sha256", unique=True)

    async def insert(self, record: dict[str, Any]) -> None:
        await self.keys.insert_one(dict(record))

    async def by_hash(self, sha256: str) -> dict[str, Any] | None:
        return await self.keys.find_one({"sha256": sha256})

    async def get(self, key_id: str) -> dict[str, Any] | None:
        return await self.keys.find_one({"_id": key_id})

    async def all(self) -> list[dict[str, Any]]:
        return await self.keys.find().sort("created_at", 1).to_list(None)

    async def revoke(self, key_id: str, at: datetime) -> dict[str, Any] | None:
        await self.keys.update_one(
            {"_id": key_id, "revoked": False}, {"$set": {"revoked": True, "revoked_at": at}}
        )
        return await self.get(key_id)


class ApiKeys:
    """API keys: made, listed, revoked and rotated (the registry's admin API), and identified
    on every request through a TTL cache (misses too, bounded: a flood of random keys neither
    reaches MongoDB per request nor grows memory without end)."""

    CACHE_MAX = 10_000

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl_s: float = 5.0,
        bootstrap_sha256: str | None = None,
        static: Iterable[StaticKey] = (),
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.bootstrap_sha256 = (bootstrap_sha256 or "").strip().lower() or None
        # keys fixed in the configuration (hash -> holder): the embedded stack's and compose's
        # service keys; never in MongoDB, so neither listed, revoked nor rotated by the API
        self.static = {key.sha256: Identity(key.name, key.role, "static") for key in static}
        self.clock = clock
        self.now = now
        # hash -> (read at, record, its identity if usable, its expiry)
        self._cache: dict[str, tuple[float, dict[str, Any] | None, Identity | None, Any]] = {}

    async def create(
        self,
        name: str,
        role: Role,
        expires_in_days: float | None = None,
        *,
        expires_at: datetime | None = None,
    ) -> tuple[dict[str, Any], str]:
        secret = new_secret()
        now = self.now()
        if expires_in_days:
            expires_at = now + timedelta(days=expires_in_days)
        record = {
            "_id": uuid.uuid4().hex,
            "name": name,
            "role": role,
            "sha256": hash_key(secret),
            "created_at": now,
            "expires_at": expires_at,
            "revoked": False,
            "revoked_at": None,
        }
        await self.store.insert(record)
        return record, secret

    async def list(self) -> list[dict[str, Any]]:
        return await self.store.all()

    async def revoke(self, key_id: str) -> dict[str, Any] | None:
        record = await self.store.revoke(key_id, self.now())
        if record is not None:
            self._cache.pop(record["sha256"], None)
        return record

    async def rotate(self, key_id: str) -> tuple[dict[str, Any], str] | None:
        """A new secret with the old key's name, role and expiry; the old one revoked."""
        old = await self.store.get(key_id)
        if old is None:
            return None
        if old["revoked"]:  # rotating would bring a revoked key back
            raise ApiError(409, f"API key {key_id} is revoked: make a new one", "key_revoked")
        made = await self.create(old["name"], old["role"], expires_at=old["expires_at"])
        await self.revoke(key_id)
        return made

    def known(self, secret: str) -> Identity | None:
        """The holder of a key the cache vouches for (read within the TTL, not revoked, not
        expired), with no coroutine and no I/O: the hot path. None: ask ``identify``."""
        digest = hash_key(secret)
        fixed = self.static.get(digest)
        if fixed is not None:
            return fixed
        cached = self._cache.get(digest)
        if cached is None or cached[2] is None or self.clock() - cached[0] >= self.ttl_s:
            return None
        if cached[3] is not None and cached[3] <= self.now():
            return None
        return cached[2]

    async def identify(self, secret: str) -> Identity:
        digest = hash_key(secret)
        if self.bootstrap_sha256 and hmac.compare_digest(digest, self.bootstrap_sha256):
            return Identity("bootstrap-admin", "admin", "bootstrap")
        fixed = self.static.get(digest)
        if fixed is not None:
            return fixed
        record = await self._lookup(digest)
        if record is None:
            raise Unauthenticated("unknown API key")
        if record["revoked"]:
            raise Unauthenticated("revoked API key")
        expires = record.get("expires_at")
        if expires is not None and _aware(expires) <= self.now():
            raise Unauthenticated("expired API key")
        return Identity(record["name"], record["role"], "api_key", record["_id"])

    async def _lookup(self, digest: str) -> dict[str, Any] | None:
        cached = self._cache.get(digest)
        if cached is not None and self.clock() - cached[0] < self.ttl_s:
            return cached[1]
        try:
            record = await self.store.by_hash(digest)
        except Exception as exc:
            log.warning("auth.key_store_unavailable", error=str(exc))
            raise ApiError(503, "API keys cannot be read now", "unavailable") from exc
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()
        identity = expires = None
        if record is not None and not record["revoked"]:
            identity = Identity(record["name"], record["role"], "api_key", record["_id"])
            expires = record.get("expires_at") and _aware(record["expires_at"])
        self._cache[digest] = (self.clock(), record, identity, expires)
        return record


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- JWT ---------------------------------------------------------------------------------------


class JwtVerifier:
    """JWT bearer tokens signed by a key of the configured JWKS (given, or fetched from its URL
    and fetched again, at most every ``refresh_s``, when a token names a key it lacks).

    A verified token is remembered until its ``exp`` (a client sends the same token for many
    requests; checking its signature each time would cost the infer route a signature check
    per request). The memory is bounded, as the API keys' cache is."""

    ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
    CACHE_MAX = 10_000

    def __init__(
        self,
        *,
        jwks: Mapping[str, Any] | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        role_claim: str = "modelbus_role",
        refresh_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.role_claim = role_claim
        self.refresh_s = refresh_s
        self.transport = transport
        self.keys: dict[str | None, Any] = self._parse(jwks) if jwks else {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.wall = wall
        self._verified: dict[str, tuple[Identity, float]] = {}

    @staticmethod
    def _parse(jwks: Mapping[str, Any]) -> dict[str | None, Any]:
        return {key.key_id: key for key in jwt.PyJWKSet.from_dict(dict(jwks)).keys}

    def known(self, token: str) -> Identity | None:
        """The identity of a token verified before and not expired since (no coroutine)."""
        known = self._verified.get(token)
        if known is not None and self.wall() < known[1]:
            return known[0]
        return None

    async def verify(self, token: str) -> Identity:
        known = self.known(token)
        if known is not None:
            return known
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed token: {exc}") from exc
        key = await self._key(kid)
        if key is None:
            raise Unauthenticated("token signed by an unknown key")
        options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(self.ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("expired token") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        role = highest_role(claims.get(self.role_claim))
        if role is None:
            raise ApiError(403, f"token has no modelbus role in {self.role_claim}", "forbidden")
        identity = Identity(str(claims["sub"]), role, "jwt")
        if len(self._verified) >= self.CACHE_MAX:
            self._verified.clear()
        self._verified[token] = (identity, float(claims["exp"]))
        return identity

    async def _key(self, kid: str | None) -> Any:
        if kid in self.keys or self.url is None:
            return self.keys.get(kid) or (self.keys.get(None) if kid is None else None)
        async with self._lock:
            if kid not in self.keys and time.monotonic() - self._fetched_at >= self.refresh_s:
                self._fetched_at = time.monotonic()
                try:
                    async with httpx.AsyncClient(transport=self.transport, timeout=5) as client:
                        answer = await client.get(self.url)
                        answer.raise_for_status()
                        self.keys = self._parse(answer.json())
                except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                    log.warning("auth.jwks_unavailable", url=self.url, error=str(exc))
        return self.keys.get(kid)


# -- the chain's layer -------------------------------------------------------------------------


class Authenticator:
    """Credentials -> ``Identity``: an API key (``X-API-Key`` or a bearer that is not a JWT)
    or a JWT (when a JWKS is configured)."""

    def __init__(self, keys: ApiKeys, jwts: JwtVerifier | None = None) -> None:
        self.keys = keys
        self.jwts = jwts

    @staticmethod
    def credentials(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
        """(a JWT, an API key) from the headers; at most one of them."""
        bearer = api_key = None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    bearer = token.strip()
            elif name == b"x-api-key":
                api_key = value.decode("latin-1").strip()
        if bearer is not None and bearer.count(".") == 2:
            return bearer, None
        return None, bearer or api_key or None

    def known(self, headers: list[tuple[bytes, bytes]]) -> Identity | None:
        """The caller, if the caches vouch for their credentials now (the hot path)."""
        token, secret = self.credentials(headers)
        if token is not None:
            return self.jwts.known(token) if self.jwts is not None else None
        return self.keys.known(secret) if secret else None

    async def identify(self, headers: list[tuple[bytes, bytes]]) -> Identity:
        token, secret = self.credentials(headers)
        if token is not None:
            if self.jwts is None:
                raise Unauthenticated("JWT bearer tokens are not configured")
            return await self.jwts.verify(token)
        if not secret:
            raise Unauthenticated("credentials required: Authorization: Bearer or X-API-Key")
        return await self.keys.identify(secret)


class RouteRoles:
    """Every route of an app with the role it needs (``required_role``), matched as Starlette
    matches: by method and compiled path template."""

    def __init__(self, routes: Iterable[tuple[str, str]], open_paths: Iterable[str]) -> None:
        self.open_paths = frozenset(open_paths)
        self.table: dict[str, list[tuple[re.Pattern[str], str, Role | None]]] = {}
        for method, path in routes:
            regex = compile_path(path)[0]
            role = required_role(method, path, self.open_paths)
            self.table.setdefault(method, []).append((regex, path, role))

    @classmethod
    def of(cls, app: Any, open_paths: Iterable[str]) -> RouteRoles:
        return cls(app_routes(app), open_paths)

    def role_for(self, method: str, path: str) -> Role | None:
        """The highest role of the routes the path matches (a hot route is matched before
        FastAPI's, so route order cannot be trusted to say which one answers); None if every
        match is open; ``viewer`` if none matches (only known callers learn it is 404/405)."""
        needed: Role | None = None
        matched = False
        for regex, _, role in self.table.get(method, ()):
            if regex.match(path):
                matched = True
                if role is not None and (needed is None or RANK[role] > RANK[needed]):
                    needed = role
        return needed if matched else "viewer"


def app_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every route of ``app``, included routers flattened."""
    found = []
    for route in iter_route_contexts(app.routes):
        for method in sorted(route.methods or ()):
            if route.path is not None:
                found.append((method, route.path))
    return found


class AuthMiddleware:
    """The chain's authentication layer: the route's role, the caller's identity (put in the
    request's state), 401 or 403 in ``ErrorBody``; open routes pass untouched."""

    def __init__(
        self, app: ASGIApp, service_app: Any, authenticator: Authenticator, open_paths: Any
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.roles = RouteRoles.of(service_app, open_paths)

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # a caller the caches vouch for passes with no coroutine of this layer's own (it hands
        # back the inner app's awaitable); anyone else goes the slow way, which may read keys
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        role = self.roles.role_for(scope["method"], route_path(scope))
        if role is None:
            return self.app(scope, receive, send)
        identity = self.authenticator.known(scope["headers"])
        if identity is None or not identity.may(role):
            return self._identify(scope, receive, send, role)
        _remember(scope, identity)
        return self.app(scope, receive, send)

    async def _identify(self, scope: dict[str, Any], receive: Any, send: Any, role: Role) -> None:
        try:
            identity = await self.authenticator.identify(scope["headers"])
        except ApiError as exc:
            payload = error_payload(exc.detail, exc.reason)
            await send_json(send, exc.status_code, payload, exc.headers)
            return
        if not identity.may(role):
            message = f"{identity.name} ({identity.role}) needs the {role} role"
            await send_json(send, 403, error_payload(message, "forbidden"))
            return
        _remember(scope, identity)
        await self.app(scope, receive, send)


def _remember(scope: dict[str, Any], identity: Identity) -> None:
    """``request.state.identity``, in a state of this request's own (a server may share one)."""
    state = scope.get("state")
    scope["state"] = {**state, "identity": identity} if state else {"identity": identity}


def build_authenticator(settings: Any, store: KeyStore) -> Authenticator:
    bootstrap, fixed = settings.admin_key_sha256, settings.static_keys
    keys = ApiKeys(
        store,
        ttl_s=settings.auth_cache_ttl_s,
        bootstrap_sha256=bootstrap.get_secret_value() if bootstrap else None,
        static=static_keys(fixed.get_secret_value() if fixed else None),
    )
    jwts = None
    if settings.jwks or settings.jwks_url:
        jwts = JwtVerifier(
            jwks=json.loads(settings.jwks) if settings.jwks else None,
            jwks_url=settings.jwks_url,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            role_claim=settings.jwt_role_claim,
        )
    return Authenticator(keys, jwts)


# -- the admin API (the registry serves it) ----------------------------------------------------


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    role: Role
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class KeyView(BaseModel):
    """An API key as listed: never its secret nor its hash."""

    id: str
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    revoked_at: datetime | None = None


class KeyCreated(KeyView):
    key: str = Field(description="the secret: shown this once, stored only as its SHA-256")


def key_view(record: Mapping[str, Any]) -> KeyView:
    fields = {k: record.get(k) for k in KeyView.model_fields if k != "id"}
    return KeyView(id=record["_id"], **fields)


UNKNOWN_KEY = {404: "not_found: no API key with this id"}
ROTATE = {**UNKNOWN_KEY, 409: "key_revoked: a revoked key is not rotated"}


AUTH_OFF = {403: "auth_off: API keys are managed only with MODELBUS_AUTH=on"}


def key_admin_router(keys: ApiKeys, *, enabled: bool) -> APIRouter:
    """``/admin/keys``: make (the secret answered once), list, revoke, rotate. Only with auth
    on (``enabled``): with it off anyone could make an admin key that outlives the switch (the
    first admin logs in with the bootstrap key)."""

    async def auth_on() -> None:
        if not enabled:
            raise ApiError(403, AUTH_OFF[403].split(": ", 1)[1], "auth_off")

    router = APIRouter(
        prefix="/admin/keys",
        tags=["admin"],
        dependencies=[Depends(auth_on)],
        responses=error_responses(AUTH_OFF),
    )

    @router.post("", status_code=201, response_model=KeyCreated, summary="Make an API key")
    async def create(body: KeyCreate, request: Request) -> KeyCreated:
        record, secret = await keys.create(body.name, body.role, body.expires_in_days)
        log.info("auth.key_created", key_id=record["_id"], name=body.name, role=body.role)
        return KeyCreated(key=secret, **key_view(record).model_dump())

    @router.get("", response_model=list[KeyView], summary="API keys (no secrets)")
    async def listed(request: Request) -> list[KeyView]:
        return [key_view(r) for r in await keys.list()]

    @router.delete(
        "/{key_id}",
        response_model=KeyView,
        summary="Revoke an API key",
        responses=error_responses(UNKNOWN_KEY),
    )
    async def revoke(key_id: str, request: Request) -> KeyView:
        record = await keys.revoke(key_id)
        if record is None:
            raise ApiError(404, f"no API key {key_id}", "not_found")
        log.info("auth.key_revoked", key_id=key_id)
        return key_view(record)

    @router.post(
        "/{key_id}/rotate",
        status_code=201,
        response_model=KeyCreated,
        summary="A new secret for an API key (the old one revoked)",
        responses=error_responses(ROTATE),
    )
    async def rotate(key_id: str, request: Request) -> KeyCreated:
        made = await keys.rotate(key_id)
        if made is None:
            raise ApiError(404, f"no API key {key_id}", "not_found")
        record, secret = made
        log.info("auth.key_rotated", key_id=key_id, new_key_id=record["_id"])
        return KeyCreated(key=secret, **key_view(record).model_dump())

    return router


def make_static_key(name: str, role: Role) -> tuple[str, StaticKey]:
    """A new key's secret and its ``MODELBUS_STATIC_KEYS`` entry (which holds only the hash)."""
    secret = new_secret()
    return secret, StaticKey(name=name, role=role, sha256=hash_key(secret))


USAGE = "usage: python -m modelbus_platform.auth bootstrap-key | static-key NAME ROLE"


def main(argv: list[str]) -> int:
    """``bootstrap-key``: a new admin key and the setting that trusts it. ``static-key NAME
    ROLE``: a new key and its ``MODELBUS_STATIC_KEYS`` entry. Only hashes go into the services'
    environment; keep the keys themselves."""
    if argv == ["bootstrap-key"]:
        secret = new_secret()
        print(f"# the admin key (shown once): Authorization: Bearer {secret}")
        print(f"MODELBUS_ADMIN_KEY_SHA256={hash_key(secret)}")
        return 0
    if len(argv) == 3 and argv[0] == "static-key" and argv[2] in RANK:
        secret, entry = make_static_key(argv[1], argv[2])  # type: ignore[arg-type]
        print(f"# {argv[1]}'s key ({argv[2]}, shown once): Authorization: Bearer {secret}")
        print(f"# its entry in the MODELBUS_STATIC_KEYS list: {entry.model_dump_json()}")
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
