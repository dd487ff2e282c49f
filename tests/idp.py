"""The one test identity provider: RSA keys made here, their JWKS on a loopback HTTP server, and tokens.

* For the security tests: Cognito access tokens (real and forged: ``alg: none``, HS256 signed with the
  public key, tampered payloads), keys added to the JWKS while a server runs, and a record of when the
  JWKS was read (``fetches``). The issuer named in the tokens is Cognito's unless one is given.
* For the dashboard's sign-in tests: what Cognito's hosted UI does for a public client with the
  authorization-code flow and PKCE -- a discovery document, an ``/authorize`` page with a sign-in form,
  a ``/token`` endpoint that checks the code verifier against the S256 challenge and answers with an
  RS256 id token for one of ``users`` (user -> groups). The issuer is then this server's own URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

REGION = "us-west-1"
POOL = "us-west-1_perdureTest"
COGNITO_ISSUER = f"https://cognito-idp.{REGION}.amazonaws.com/{POOL}"
CLIENT_ID = "perdure-test-client"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64url(json.dumps(value).encode())


class Issuer:
    """RSA signing keys, their JWKS on a loopback HTTP server, and tokens (real and forged).

    ``published`` are the key ids the JWKS lists; ``fetches`` records when the JWKS was read;
    ``token_requests`` counts the sign-in flow's calls of ``/token``. ``issuer=None``: this server is
    the issuer (the sign-in flow's discovery document names it).
    """

    def __init__(
        self,
        issuer: str | None = COGNITO_ISSUER,
        client_id: str = CLIENT_ID,
        users: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.client_id = client_id
        self.users = users or {}
        self.private: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []
        self.fetches: list[float] = []
        #: code -> (user, challenge, redirect_uri)
        self.codes: dict[str, tuple[str, str, str]] = {}
        self.token_requests = 0
        self.kid = self.new_key(publish=True)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.issuer = issuer or f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- keys ---------------------------------------------------------------------------------------

    def new_key(self, *, publish: bool) -> str:
        kid = f"kid-{uuid.uuid4().hex[:12]}"
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published.append(kid)
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in list(self.published):
            jwk = json.loads(RSAAlgorithm.to_jwk(self.private[kid].public_key()))
            keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": keys}

    def public_pem(self, kid: str | None = None) -> bytes:
        return (
            self.private[kid or self.kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    # ---- tokens -------------------------------------------------------------------------------------

    def claims(
        self,
        user: str = "root",
        groups: tuple[str, ...] | None = ("admin",),
        *,
        group_claim: str = "cognito:groups",
        **changes: Any,
    ) -> dict[str, Any]:
        """A Cognito access token's claims (``groups`` in ``group_claim``); ``changes`` set claims
        (``None`` removes one)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": str(uuid.uuid5(uuid.NAMESPACE_DNS, user)),
            "iss": self.issuer,
            "client_id": self.client_id,
            "token_use": "access",
            "username": user,
            "scope": "aws.cognito.signin.user.admin",
            "auth_time": now,
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
        }
        if groups is not None:
            claims[group_claim] = list(groups)
        for name, value in changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(
        self,
        user: str = "root",
        groups: tuple[str, ...] | None = ("admin",),
        *,
        kid: str | None = None,
        signer: str | None = None,
        **changes: Any,
    ) -> str:
        """Signed RS256 with ``kid``'s key (the published key by default), or ``signer``'s key."""
        kid = kid or self.kid
        claims = self.claims(user, groups, **changes)
        return jwt.encode(claims, self.private[signer or kid], algorithm="RS256", headers={"kid": kid})

    def id_token(self, user: str) -> str:
        """An OpenID Connect id token for one of ``users``, as the sign-in flow hands out."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": f"sub-{user}",
            "aud": self.client_id,
            "username": user,
            "groups": list(self.users[user]),
            "iat": now,
            "exp": now + 3600,
        }
        return jwt.encode(claims, self.private[self.kid], algorithm="RS256", headers={"kid": self.kid})

    def alg_none(self, claims: dict[str, Any]) -> str:
        return f"{b64json({'alg': 'none', 'typ': 'JWT', 'kid': self.kid})}.{b64json(claims)}."

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The classic key-confusion forgery: HMAC-SHA256 keyed with the RSA public key's PEM."""
        signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': self.kid})}.{b64json(claims)}"
        mac = hmac.new(self.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"

    def tampered(self, token: str, **changes: Any) -> str:
        """``token``'s header and signature around a payload with ``changes`` applied."""
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims.update(changes)
        return f"{header}.{b64json(claims)}.{signature}"

    # ---- the sign-in flow (authorization code with PKCE) --------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": self.jwks_url,
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    def login_form(self, query: dict[str, str]) -> str:
        if query.get("client_id") != self.client_id or query.get("code_challenge_method") != "S256":
            return "<p>bad request: unknown client or no PKCE</p>"
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(query.get(k, ""))}">'
            for k in ("redirect_uri", "state", "code_challenge")
        )
        return (
            "<!doctype html><html lang='en'><head><title>Test identity provider</title></head><body>"
            f"<main><h1>Sign in</h1><form method='post' action='/login'>{hidden}"
            "<label for='username'>User name</label> <input id='username' name='username'>"
            "<button type='submit'>Sign in</button></form></main></body></html>"
        )

    def approve(self, form: dict[str, str]) -> str:
        user = form.get("username", "")
        redirect = form.get("redirect_uri", "")
        if user not in self.users:
            return f"{redirect}?{urlencode({'error': 'access_denied', 'state': form.get('state', '')})}"
        code = secrets.token_urlsafe(16)
        self.codes[code] = (user, form.get("code_challenge", ""), redirect)
        return f"{redirect}?{urlencode({'code': code, 'state': form.get('state', '')})}"

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        user, challenge, redirect = grant
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if b64url(digest) != challenge:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        if form.get("redirect_uri") != redirect or form.get("client_id") != self.client_id:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri or client mismatch"}
        token = self.id_token(user)
        return 200, {"id_token": token, "access_token": token, "token_type": "Bearer", "expires_in": 3600}


def _handler(owner: Issuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/.well-known/openid-configuration":
                self._json(200, owner.discovery())
            elif url.path == "/authorize":
                self._html(owner.login_form({k: v[0] for k, v in parse_qs(url.query).items()}))
            else:  # the JWKS, whatever the path
                owner.fetches.append(time.monotonic())
                self._json(200, owner.jwks())

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if url.path == "/login":
                self.send_response(302)
                self.send_header("Location", owner.approve(form))
                self.end_headers()
            elif url.path == "/token":
                self._json(*owner.exchange(form))
            else:
                self._json(404, {"error": "not_found"})

        def do_OPTIONS(self) -> None:
            self.send_response(204)
            self._cors()
            self.end_headers()

        def _cors(self) -> None:
            self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin") or "*")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self._cors()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _html(self, page: str) -> None:
            data = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
