"""Who is calling: OIDC/Cognito bearer tokens verified with PyJWT against the issuer's JWKS.

Only asymmetric algorithms are accepted, so neither ``alg: none`` nor an HMAC signed with the public
key can pass. Keys are cached per JWKS URL and fetched again when a token names an unknown ``kid``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jwt

from perdure.config.model import CognitoConfig

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"]
#: Clock skew tolerated on exp/nbf/iat.
LEEWAY_S = 30


class TokenError(Exception):
    """The token is missing, malformed, forged, expired or not for us (401)."""


@dataclass(frozen=True)
class Principal:
    user: str
    groups: tuple[str, ...] = ()
    admin: bool = False
    #: "anonymous" (security off), "user" (bearer token), "worker" (clientgroup token), "scraper"
    #: (the metrics token) or "capability" (a workunit's data capability alone, api/leasecaps.py).
    kind: str = "user"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


ANONYMOUS = Principal(user="public", admin=True, kind="anonymous")


def issuer_of(config: CognitoConfig) -> str:
    if config.issuer:
        return config.issuer.rstrip("/")
    return f"https://cognito-idp.{config.region}.amazonaws.com/{config.userPoolID}"


def jwks_url_of(config: CognitoConfig) -> str:
    return config.jwksURL or f"{issuer_of(config)}/.well-known/jwks.json"


class Verifier:
    """Verifies bearer tokens for one Cognito (or OIDC) configuration."""

    #: One key cache per JWKS URL, shared by every request.
    _clients: ClassVar[dict[str, jwt.PyJWKClient]] = {}
    _clients_lock: ClassVar[threading.Lock] = threading.Lock()
    #: A token with an unknown key id refetches the JWKS at most this often (PyJWT's guard against
    #: a flood of made-up key ids making the server hammer the issuer); a rotated-in key waits this long.
    refetch_cooldown_s: ClassVar[float] = 30.0

    def __init__(self, config: CognitoConfig) -> None:
        self.config = config
        self.issuer = issuer_of(config)
        self.jwks_url = jwks_url_of(config)
        self.cognito = not config.issuer

    def _client(self) -> jwt.PyJWKClient:
        with self._clients_lock:
            client = self._clients.get(self.jwks_url)
            if client is None:
                client = jwt.PyJWKClient(
                    self.jwks_url,
                    cache_jwk_set=True,
                    lifespan=3600,
                    timeout=10,
                    cooldown_duration=self.refetch_cooldown_s,
                )
                self._clients[self.jwks_url] = client
            return client

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        if header.get("alg") not in ALGORITHMS:
            raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted")
        try:
            key = self._client().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError as exc:
            raise TokenError(f"token signing key not found: {exc}") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token not yet valid") from None
        except jwt.InvalidIssuerError:
            raise TokenError("token from the wrong issuer") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        self._check_use_and_client(claims)
        groups = tuple(claims.get("cognito:groups") or claims.get("groups") or ())
        user = str(claims.get("username") or claims.get("cognito:username") or claims.get("sub") or "")
        if not user:
            raise TokenError("token names no user")
        admin = bool(set(groups) & set(self.config.adminGroups))
        return Principal(user=user, groups=groups, admin=admin, kind="user")

    def _check_use_and_client(self, claims: dict[str, Any]) -> None:
        use = claims.get("token_use")
        if (use is not None or self.cognito) and use not in ("access", "id"):
            raise TokenError(f"token_use {use!r} is not accepted (access or id)")
        audience = claims.get("aud")
        client_id = claims.get("client_id")
        audiences = audience if isinstance(audience, list) else [audience] if audience else []
        if self.config.clientID not in [*audiences, client_id]:
            raise TokenError("token was issued for another client")
