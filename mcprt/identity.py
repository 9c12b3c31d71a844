"""Identity in `--auth jwt`: verifying the JWT an application's identity provider issued (PyJWT), against a
key set fetched without blocking the loop, or against the deployment's own HS256 secret.

The key set comes from `--jwt-jwks-url`, or from the issuer's OIDC discovery document. It is cached for
its `max-age` (bounded), fetched again at most every KEY_REFETCH seconds for a `kid` it does not hold (a
key rotation), and served stale while the issuer cannot be reached, for at most STALE_FOR. A token's
algorithm must be RS256 or ES256 with a key from the set, or HS256 with the secret: never `none`, and
never an HMAC whose key would be a public key's bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable

import jwt
from tornado.httpclient import AsyncHTTPClient

from .access import ROLES

log = logging.getLogger("mcprt.identity")

ASYMMETRIC = ("RS256", "ES256")
KEY_REFETCH = 30.0        # seconds between fetches for an unknown kid
KEYS_MAX_AGE = 3600.0     # seconds a key set is kept at most (its max-age, when shorter, wins)
KEYS_MIN_AGE = 30.0       # ...and at least
STALE_FOR = 6 * 3600.0    # seconds an expired key set keeps serving while the issuer cannot be reached
FETCH_TIMEOUT = 5.0       # seconds per request to the issuer
_MAX_AGE = re.compile(r"max-age=(\d+)")


class TokenRefused(Exception):
    """A token that does not prove an identity; `reason` is a key of SEVERITY (recorded with the event)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    @property
    def severity(self) -> str:
        """Of its security event: an expired or not-yet-valid token is a client's clock or a stale tab, a
        forged one an attack."""
        return SEVERITY[self.reason]


SEVERITY = {"expired": "low", "not_yet_valid": "low", "keys_unavailable": "low", "wrong_audience": "medium",
            "wrong_issuer": "medium", "missing_claim": "medium", "unknown_key": "medium", "malformed": "medium",
            "algorithm": "high", "bad_signature": "high"}  # reason -> severity; the reasons a refusal gives


@dataclass(frozen=True)
class Identity:
    """Who a verified token says the caller is."""
    user_id: str
    issuer: str | None
    subject: str | None
    expires: float       # the token's exp
    expires_by: float    # exp plus the leeway: no session from this token lasts longer
    claims: dict
    groups: tuple[str, ...] = ()  # from the groups claim, when one is configured
    grants: tuple[tuple[str, str], ...] | None = None  # from the roles claim; None when none is configured


class KeySet:
    """The issuer's public keys by kid, fetched with Tornado's async HTTP client."""

    def __init__(self, jwks_url: str | None, issuer: str | None, clock: Callable[[], float] = time.time):
        self.jwks_url, self.issuer, self.clock = jwks_url, issuer, clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # when the keys held were fetched
        self._max_age = KEYS_MAX_AGE
        self._last_try: float | None = None     # when a fetch last started (for the unknown-kid limit)
        self._fetching: asyncio.Future | None = None

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key for `kid` (the only key when the set has one and the token names none)."""
        now = self.clock()
        if self._fetched_at is None or now - self._fetched_at >= self._max_age:
            await self._refresh(stale_ok=True)
        found = self._find(kid)
        if found is None and (self._last_try is None or self.clock() - self._last_try >= KEY_REFETCH):
            await self._refresh(stale_ok=True)  # a rotation: the issuer may have a key we do not
            found = self._find(kid)
        if found is None:
            if not self._keys:
                raise TokenRefused("keys_unavailable", "the identity provider's keys could not be fetched")
            raise TokenRefused("unknown_key", f"no key {kid!r} in the identity provider's key set")
        return found

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, stale_ok: bool) -> None:
        """Fetch the key set (concurrent callers share one fetch); on failure keep what is held while it
        is younger than STALE_FOR, else drop it."""
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.ensure_future(self._fetch())
        try:
            await asyncio.shield(self._fetching)
        except Exception as exc:
            age = None if self._fetched_at is None else self.clock() - self._fetched_at
            log.warning("fetching the identity provider's keys failed: %s%s", exc,
                        "" if age is None else f" (serving the keys fetched {age:.0f}s ago)")
            if age is not None and age >= STALE_FOR:
                self._keys = {}

    async def _fetch(self) -> None:
        self._last_try = self.clock()
        http = AsyncHTTPClient()
        url = self.jwks_url
        if url is None:
            discovery = await http.fetch(self.issuer.rstrip("/") + "/.well-known/openid-configuration",
                                         request_timeout=FETCH_TIMEOUT)
            url = json.loads(discovery.body)["jwks_uri"]
        reply = await http.fetch(url, request_timeout=FETCH_TIMEOUT)
        keys = {}
        for entry in json.loads(reply.body).get("keys", []):
            if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC"):
                continue
            try:
                keys[entry.get("kid")] = jwt.PyJWK(entry)
            except jwt.PyJWKError as exc:
                log.warning("skipping a key of the identity provider's set: %s", exc)
        match = _MAX_AGE.search(reply.headers.get("Cache-Control", ""))
        self._max_age = min(KEYS_MAX_AGE, max(KEYS_MIN_AGE, float(match.group(1)))) if match else KEYS_MAX_AGE
        self._keys, self._fetched_at = keys, self.clock()


_REFUSALS = (
    (jwt.ExpiredSignatureError, "expired"), (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"), (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"), (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "algorithm"), (jwt.InvalidTokenError, "malformed"),
)


class Verifier:
    """Checks a token's signature, algorithm, iss, aud, exp, nbf and iat (with a leeway) and names its user."""

    def __init__(self, *, jwks_url: str | None = None, issuer: str | None = None, audience: str | None = None,
                 secret: str | None = None, leeway: float = 60.0, user_claim: str = "sub",
                 groups_claim: str | None = None, roles_claim: str | None = None,
                 clock: Callable[[], float] = time.time):
        self.groups_claim, self.roles_claim = groups_claim, roles_claim
        self.issuer, self.audience, self.secret = issuer, audience, secret
        self.leeway, self.user_claim, self.clock = leeway, user_claim, clock
        self.keys = KeySet(jwks_url, issuer, clock) if (jwks_url or issuer) else None

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenRefused("malformed", f"not a JWT: {exc}") from None
        alg = header.get("alg")
        if alg in ASYMMETRIC and self.keys is not None:
            key = (await self.keys.key(header.get("kid"))).key
        elif alg == "HS256" and self.secret is not None:
            key = self.secret
        else:
            allowed = [*(ASYMMETRIC if self.keys else ()), *(("HS256",) if self.secret else ())]
            raise TokenRefused("algorithm", f"algorithm {alg!r} is not accepted (accepted: {', '.join(allowed)})")
        try:
            claims = _decode(token, key, alg, self.audience, self.issuer, self.leeway, self.clock())
        except jwt.InvalidTokenError as exc:
            raise TokenRefused(next(reason for kind, reason in _REFUSALS if isinstance(exc, kind)), str(exc)) from None
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not user or len(user) > 256:
            raise TokenRefused("missing_claim", f"the token has no usable {self.user_claim!r} claim")
        return Identity(user, claims.get("iss"), claims.get("sub"), float(claims["exp"]),
                        float(claims["exp"]) + self.leeway, claims, self._groups(claims), self._grants(claims))

    def _groups(self, claims: dict) -> tuple[str, ...]:
        """The groups claim as names (a list of strings, or one string); at most 64, each 1-128 characters."""
        value = claims.get(self.groups_claim) if self.groups_claim else None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return ()
        return tuple(sorted({g for g in value if isinstance(g, str) and 0 < len(g) <= 128 and g.isprintable()}))[:64]

    def _grants(self, claims: dict) -> tuple[tuple[str, str], ...] | None:
        """The roles claim as (pattern, role) pairs: a document id, an id prefix ending in `*`, or `*`, to
        owner, editor or viewer; at most 256, anything else in it ignored. A configured claim the token
        lacks grants nothing (not None: the identity provider keeps access, and said nothing here)."""
        if not self.roles_claim:
            return None
        value = claims.get(self.roles_claim)
        if not isinstance(value, dict):
            return ()
        return tuple(sorted((k, v) for k, v in value.items() if v in ROLES and _PATTERN.match(k)))[:256]


_PATTERN = re.compile(r"^(\*|[A-Za-z0-9._-]{1,128}\*?)$")


def _decode(token: str, key, alg: str, audience: str | None, issuer: str | None, leeway: float,
            now: float) -> dict:
    """PyJWT's checks, on the injected clock: signature with exactly `alg`, then the time claims."""
    claims = jwt.decode(token, key, algorithms=[alg], audience=audience, issuer=issuer,
                        options={"require": ["exp"], "verify_exp": False, "verify_nbf": False,
                                 "verify_iat": False, "verify_aud": audience is not None,
                                 "verify_iss": issuer is not None})
    for name in ("exp", "nbf", "iat"):
        if name in claims and not isinstance(claims[name], (int, float)):
            raise jwt.InvalidTokenError(f"the {name} claim is not a number")
    if claims["exp"] <= now - leeway:
        raise jwt.ExpiredSignatureError("the token has expired")
    if "nbf" in claims and claims["nbf"] > now + leeway:
        raise jwt.ImmatureSignatureError("the token is not yet valid (nbf)")
    if "iat" in claims and claims["iat"] > now + leeway:
        raise jwt.ImmatureSignatureError("the token was issued in the future (iat)")
    return claims



def verifier_for(settings, clock: Callable[[], float]) -> Verifier | None:
    """The Verifier `--auth jwt` needs (None in `--auth open`); ValueError for settings that cannot work."""
    check_auth(settings)
    if settings.auth != "jwt":
        return None
    return Verifier(jwks_url=settings.jwt_jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                    secret=settings.jwt_secret, leeway=settings.jwt_leeway, user_claim=settings.jwt_user_claim,
                    groups_claim=settings.jwt_groups_claim, roles_claim=settings.jwt_roles_claim, clock=clock)


def check_auth(settings) -> None:
    """One sentence for `--auth` settings that cannot work."""
    if settings.auth not in ("open", "jwt"):
        raise ValueError(f"--auth must be open or jwt, not {settings.auth!r}")
    if settings.auth == "jwt" and not (settings.jwt_jwks_url or settings.jwt_issuer or settings.jwt_secret):
        raise ValueError("--auth jwt needs a key source: --jwt-jwks-url, --jwt-issuer (OIDC discovery) or --jwt-secret")
    for name in ("jwt_jwks_url", "jwt_issuer"):
        value = getattr(settings, name)
        if value and not value.startswith(("https://", "http://")):
            raise ValueError(f"--{name.replace('_', '-')} must be an http(s) URL, not {value!r}")
    if settings.jwt_secret is not None and len(settings.jwt_secret) < 32:
        raise ValueError("--jwt-secret must be at least 32 characters (an HS256 key shorter than its hash is guessable)")
    if settings.jwt_leeway < 0:
        raise ValueError("--jwt-leeway must not be negative")
