"""A small OpenID Connect provider on loopback for the dashboard's sign-in tests.

It does what Cognito's hosted UI does for a public client using the authorization-code flow with PKCE:
a discovery document, an ``/authorize`` page with a sign-in form, a ``/token`` endpoint that checks the
code verifier against the S256 challenge and answers with an RS256 id token, and the JWKS Perdure
verifies that token with. Users and their groups are given to the constructor.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class Provider:
    def __init__(self, client_id: str, users: dict[str, tuple[str, ...]]) -> None:
        self.client_id = client_id
        self.users = users
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"kid-{secrets.token_hex(6)}"
        #: code -> (user, challenge, redirect_uri)
        self.codes: dict[str, tuple[str, str, str]] = {}
        self.token_requests = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/.well-known/openid-configuration":
                    self._json(200, provider.discovery())
                elif url.path == "/.well-known/jwks.json":
                    self._json(200, provider.jwks())
                elif url.path == "/authorize":
                    self._html(provider.login_form(query))
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if url.path == "/login":
                    self.send_response(302)
                    self.send_header("Location", provider.approve(form))
                    self.end_headers()
                elif url.path == "/token":
                    status, body = provider.exchange(form)
                    self._json(status, body)
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": self.jwks_url,
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    def jwks(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def token(self, user: str) -> str:
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
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

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
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != challenge:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        if form.get("redirect_uri") != redirect or form.get("client_id") != self.client_id:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri or client mismatch"}
        token = self.token(user)
        return 200, {"id_token": token, "access_token": token, "token_type": "Bearer", "expires_in": 3600}
