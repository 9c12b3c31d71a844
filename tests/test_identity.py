"""--auth jwt against a real identity provider on loopback: the test serves its own OIDC discovery document
and JWKS from a Tornado app on a free port and signs tokens with keys it generates (no network)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import jwt
import pytest
import pytest_asyncio
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import ADMIN
from mcprt.identity import KEY_REFETCH, KEYS_MIN_AGE, STALE_FOR
from support import ROOT, free_port

pytestmark = pytest.mark.asyncio
AUDIENCE = "mcprt-tests"
SECRET = "a-deployment-secret-of-at-least-32-characters"


class Provider:
    """An OIDC issuer: discovery, a JWKS whose keys the test changes, and token signing."""

    def __init__(self):
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys: dict[str, tuple[str, object]] = {}  # kid -> (alg, private key)
        self.published: list[str] = []  # kids the JWKS lists
        self.fetches = 0
        self.max_age = 300
        self.server = None

    def add(self, kid: str, alg: str = "RS256") -> None:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" else \
            ec.generate_private_key(ec.SECP256R1())
        self.keys[kid] = (alg, private)
        self.published.append(kid)

    def jwks(self) -> dict:
        out = []
        for kid in self.published:
            alg, private = self.keys[kid]
            algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
            entry = algorithm.to_jwk(private.public_key(), as_dict=True)
            out.append({**entry, "kid": kid, "use": "sig", "alg": alg})
        return {"keys": out}

    def token(self, kid: str = "k1", now: float | None = None, **claims) -> str:
        now = time.time() if now is None else now
        body = {"iss": self.issuer, "aud": AUDIENCE, "sub": "alice", "iat": int(now), "exp": int(now) + 600, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        alg, private = self.keys[kid]
        return jwt.encode(body, private, algorithm=alg, headers={"kid": kid})

    def start(self) -> None:
        provider = self

        class Discovery(tornado.web.RequestHandler):
            def get(self):
                self.write({"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks"})

        class Keys(tornado.web.RequestHandler):
            def get(self):
                provider.fetches += 1
                self.set_header("Cache-Control", f"public, max-age={provider.max_age}")
                self.write(provider.jwks())
        app = tornado.web.Application([(r"/.well-known/openid-configuration", Discovery), (r"/jwks", Keys)])
        self.server = app.listen(self.port, "127.0.0.1")

    def stop(self) -> None:
        self.server.stop()


@pytest_asyncio.fixture
async def provider():
    idp = Provider()
    idp.add("k1")
    idp.start()
    yield idp
    idp.stop()


@pytest_asyncio.fixture
async def jwt_app(start, provider, clock):
    return await start(clock=clock, auth="jwt", jwt_issuer=provider.issuer, jwt_audience=AUDIENCE)


async def create(app, token: str | None, body: dict | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await app.fetch("POST", "/api/sessions", body if body is not None else {}, headers=headers)


async def test_a_verified_token_names_the_user_and_bounds_the_session(jwt_app, provider, clock):
    token = provider.token(now=clock.now, sub="alice", exp=int(clock.now) + 600)
    reply = await create(jwt_app, token, {"client_info": "tests"})
    assert reply.status == 201, reply.json
    assert reply.json["user_id"] == "alice"
    from mcprt.clock import parse_iso
    assert parse_iso(reply.json["expires_at"]) <= int(clock.now) + 600 + 60  # exp plus the leeway, not 24 h
    await jwt_app.settle()
    created, = await jwt_app.events(type="session_created")
    assert created["details"]["auth"] == "jwt" and created["details"]["issuer"] == provider.issuer
    assert created["details"]["subject"] == "alice"
    same = await create(jwt_app, token, {"user_id": "alice"})  # naming the same user is fine
    assert same.status == 201
    ws = await jwt_app.ws_connect(reply.json["session_id"])  # the session id is the socket's credential
    assert ws.state["payload"]["revision"] == 0


async def test_es256_tokens_verify_too(jwt_app, provider, clock):
    provider.add("e1", "ES256")
    assert (await create(jwt_app, provider.token("e1", now=clock.now, sub="bob"))).json["user_id"] == "bob"


REFUSED = {
    "expired": (lambda p, now: p.token(now=now - 4000, exp=int(now) - 120), "expired"),
    "not yet valid": (lambda p, now: p.token(now=now, nbf=int(now) + 600), "not_yet_valid"),
    "issued in the future": (lambda p, now: p.token(now=now + 600), "not_yet_valid"),
    "wrong audience": (lambda p, now: p.token(now=now, aud="someone-else"), "wrong_audience"),
    "wrong issuer": (lambda p, now: p.token(now=now, iss="https://evil.example"), "wrong_issuer"),
    "no exp": (lambda p, now: p.token(now=now, exp=None), "missing_claim"),
    "no sub": (lambda p, now: p.token(now=now, sub=None), "missing_claim"),
    "alg none": (lambda p, now: jwt.encode({"iss": p.issuer, "aud": AUDIENCE, "sub": "mallory", "exp": int(now) + 600},
                                           None, algorithm="none"), "algorithm"),
    "HS256 with the public key": (lambda p, now: _hmac_with_public_key(p, now), "algorithm"),
    "forged signature": (lambda p, now: _forged(p, now), "bad_signature"),
    "unknown kid": (lambda p, now: _other_key(p, now), "unknown_key"),
    "not a JWT": (lambda p, now: "not.a.jwt", "malformed"),
}


def _hmac_with_public_key(provider: Provider, now: float) -> str:
    """The classic confusion: HS256 keyed with the RSA public key's PEM, under the RSA key's kid."""
    import base64
    import hashlib
    import hmac as hmac_
    pem = provider.keys["k1"][1].public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps({"iss": provider.issuer, "aud": AUDIENCE, "sub": "mallory", "exp": int(now) + 600}).encode())
    signature = hmac_.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def _forged(provider: Provider, now: float) -> str:
    head, body, _ = provider.token(now=now).split(".")
    other = Provider()
    other.add("k1")
    return ".".join([head, body, other.token(now=now).split(".")[2]])


def _other_key(provider: Provider, now: float) -> str:
    other = Provider()
    other.issuer = provider.issuer
    other.add("never-published")
    return other.token("never-published", now=now)


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_token_that_proves_nothing_is_refused_and_recorded_with_its_reason(jwt_app, provider, clock, case):
    make, reason = REFUSED[case]
    reply = await create(jwt_app, make(provider, clock.now), {})
    assert reply.status == 401 and reply.json["error"]["code"] == "UNAUTHORIZED", reply.json
    assert reply.json["error"]["details"]["reason"] == reason
    await jwt_app.settle()
    refused, = await jwt_app.events(type="token_refused")
    assert refused["details"]["reason"] == reason and refused["kind"] == "security"
    assert refused["severity"] == {"expired": "low", "not_yet_valid": "low", "algorithm": "high",
                                   "bad_signature": "high"}.get(reason, "medium")
    assert not await jwt_app.events(type="session_created")


async def test_a_body_user_id_other_than_the_tokens_is_impersonation(jwt_app, provider, clock):
    reply = await create(jwt_app, provider.token(now=clock.now, sub="alice"), {"user_id": "bob"})
    assert reply.status == 401 and reply.json["error"]["details"]["pointer"] == "/user_id"
    await jwt_app.settle()
    event, = await jwt_app.events(type="impersonation")
    assert event["details"]["claimed_user_id"] == "bob" and event["details"]["token_user_id"] == "alice"
    assert event["severity"] == "high"


async def test_without_a_token_only_the_admin_token_creates_sessions(jwt_app):
    reply = await create(jwt_app, None, {"user_id": "anyone"})
    assert reply.status == 401 and "Bearer" in reply.json["error"]["message"]
    minted = await create(jwt_app, ADMIN, {"user_id": "carol"})  # an application backend minting for its user
    assert minted.status == 201 and minted.json["user_id"] == "carol"
    assert (await create(jwt_app, ADMIN, {})).status == 400  # it must say for whom


async def test_keys_are_cached_and_a_rotation_is_picked_up_within_the_refetch_limit(jwt_app, provider, clock):
    assert (await create(jwt_app, provider.token(now=clock.now))).status == 201
    assert (await create(jwt_app, provider.token(now=clock.now))).status == 201
    assert provider.fetches == 1  # cached
    provider.add("k2")  # the provider rotates: a new key, then the old one goes
    provider.published.remove("k1")
    early = await create(jwt_app, provider.token("k2", now=clock.now))
    assert early.status == 401 and provider.fetches == 1  # within the refetch limit of the last fetch
    clock.advance(KEY_REFETCH + 1)
    assert (await create(jwt_app, provider.token("k2", now=clock.now))).status == 201  # unknown kid: fetched again
    assert provider.fetches == 2
    bogus = _other_key(provider, clock.now)
    for _ in range(5):  # unknown kids do not make the server hammer the provider
        assert (await create(jwt_app, bogus)).status == 401
    assert provider.fetches == 2
    clock.advance(KEY_REFETCH + 1)
    assert (await create(jwt_app, bogus)).status == 401
    assert provider.fetches == 3


async def test_an_unreachable_provider_serves_stale_keys_then_refuses(jwt_app, provider, clock):
    provider.max_age = 0  # kept for the shortest time the server allows
    assert (await create(jwt_app, provider.token(now=clock.now))).status == 201
    provider.stop()
    clock.advance(KEYS_MIN_AGE + 1)  # the keys are due for a fetch, which fails: served stale
    reply = await create(jwt_app, provider.token(now=clock.now))
    assert reply.status == 201, reply.json
    clock.advance(STALE_FOR)
    reply = await create(jwt_app, provider.token(now=clock.now))
    assert reply.status == 401 and reply.json["error"]["details"]["reason"] == "keys_unavailable"
    provider.start()  # back: the next token verifies again
    clock.advance(KEY_REFETCH + 1)
    assert (await create(jwt_app, provider.token(now=clock.now))).status == 201


async def test_a_deployment_secret_verifies_hs256_tokens_only_with_itself(start, clock):
    app = await start(clock=clock, auth="jwt", jwt_secret=SECRET)
    now = int(clock.now)
    good = jwt.encode({"sub": "dave", "exp": now + 600}, SECRET, algorithm="HS256")
    assert (await create(app, good)).json["user_id"] == "dave"
    wrong = jwt.encode({"sub": "dave", "exp": now + 600}, SECRET + "x", algorithm="HS256")
    reply = await create(app, wrong)
    assert reply.status == 401 and reply.json["error"]["details"]["reason"] == "bad_signature"
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs = jwt.encode({"sub": "dave", "exp": now + 600}, private, algorithm="RS256")
    reply = await create(app, rs)  # no key set configured: RS256 is not accepted here
    assert reply.status == 401 and reply.json["error"]["details"]["reason"] == "algorithm"


async def test_open_mode_keeps_todays_behaviour(app):
    reply = await app.fetch("POST", "/api/sessions", {"user_id": "anyone"})
    assert reply.status == 201 and reply.json["user_id"] == "anyone"
    missing = await app.fetch("POST", "/api/sessions", {})
    assert missing.status == 400 and missing.json["error"]["code"] == "INVALID_MESSAGE"


@pytest.mark.parametrize("flags, message", [
    (["--auth", "jwt"], "--auth jwt needs a key source"),
    (["--auth", "ldap"], "--auth must be one of open, jwt, not 'ldap'"),
    (["--auth", "jwt", "--jwt-secret", "short"], "at least 32 characters"),
    (["--auth", "jwt", "--jwt-jwks-url", "file:///etc/keys"], "must be an http(s) URL"),
])
async def test_auth_settings_that_cannot_work_are_one_line_and_status_2(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, "-m", "mcprt", "--port", "0", "--db", str(tmp_path / "a.db"), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "a.db").exists()  # refused before anything opened


async def test_cors_answers_listed_origins_only(start):
    app = await start(allowed_origins=("https://app.example",))
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    reply = await app.fetch("OPTIONS", "/api/sessions", headers=preflight)
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    created = await app.fetch("POST", "/api/sessions", {"user_id": "web"}, headers={"Origin": "https://app.example"})
    assert created.status == 201 and created.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in created.headers["Vary"]
    refused = await app.fetch("OPTIONS", "/api/sessions", headers={**preflight, "Origin": "https://evil.example"})
    assert refused.status == 403 and "Access-Control-Allow-Origin" not in refused.headers
    other = await app.fetch("POST", "/api/sessions", {"user_id": "web"}, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers  # the browser keeps the reply from that page


async def test_auth_refresh_extends_the_session_and_a_refused_one_leaves_its_deadline(jwt_app, provider, clock):
    now = int(clock.now)
    created = await create(jwt_app, provider.token(now=clock.now, exp=now + 600))
    sid = created.json["session_id"]
    ws = await jwt_app.ws_connect(sid)
    other = await jwt_app.ws_connect(sid, "another-document")  # a second socket of the same session
    await ws.send_msg("auth_refresh", {"token": provider.token(now=clock.now, exp=now + 3600)}, "r1")
    refreshed = await ws.recv_type("auth_refreshed")
    from mcprt.clock import parse_iso
    assert refreshed["id"] == "r1" and parse_iso(refreshed["payload"]["expires_at"]) == now + 3600 + 60
    assert (await jwt_app.deps.store.get_session(sid)).expires_at == now + 3600 + 60
    await ws.send_msg("auth_refresh", {"token": provider.token(now=clock.now, sub="mallory")}, "r2")
    error = await ws.recv_type("error")
    assert error["id"] == "r2" and error["payload"]["code"] == "UNAUTHORIZED"
    await ws.send_msg("auth_refresh", {"token": provider.token(now=clock.now - 7200, exp=now - 3600)}, "r3")
    error = await ws.recv_type("error")
    assert error["id"] == "r3" and error["payload"]["details"]["reason"] == "expired"
    await jwt_app.settle()
    assert len(await jwt_app.events(type="session_refreshed")) == 1
    assert (await jwt_app.events(type="token_refused"))[0]["details"]["via"] == "auth_refresh"
    assert (await jwt_app.events(type="impersonation"))[0]["details"]["claimed_user_id"] == "mallory"
    clock.advance(3600 + 61)  # past the refreshed deadline: both sockets end with 4011
    await other.send_msg("heartbeat", {})
    code, _ = await other.closed()
    assert code == 4011
    code, _ = await ws.closed()
    assert code == 4011


async def test_auth_refresh_in_open_mode_is_an_invalid_message(app):
    ws = await app.editor()
    await ws.send_msg("auth_refresh", {"token": "x.y.z"}, "r")
    error = await ws.recv_type("error")
    assert error["id"] == "r" and error["payload"]["code"] == "INVALID_MESSAGE"
