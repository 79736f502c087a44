"""``TokenAuthMiddleware``: a JWT (PyJWT) makes ``scope["user"]``.

The token comes from ``Authorization: Bearer <jwt>``, a ``?token=<jwt>`` query parameter,
or a ``bearer.<jwt>`` entry among the offered subprotocols (browsers cannot set headers on a
WebSocket); the entry is removed from ``scope["subprotocols"]``. Each key pins the
algorithms it may verify (HMAC secrets only HS*, RSA keys only RS*/PS*, EC keys only ES*,
Ed25519 only EdDSA), so ``alg: none`` and algorithm confusion are refused. A missing token
is an anonymous user unless ``required=True`` (401); a bad or expired token is 401 with
``WWW-Authenticate``. The token's ``exp`` goes into ``scope["auth_expires_at"]``: the bridge
closes the socket with 4001 "token expired" at that moment, unless the consumer took a new
token for the same user first (``refresh_token``, in-band: no reconnect, no missed
messages; its ``token_expiring`` handler is told ahead). Tokens are never logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from realtime.auth import AnonymousUser, User
from realtime.exceptions import Refuse
from realtime.middleware import BaseMiddleware
from realtime.routing import Application, Scope
from realtime.settings import ConfigurationError, settings

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
OKP_ALGORITHMS = ("EdDSA",)
SUBPROTOCOL_PREFIX = "bearer."
UNKNOWN_KID = "unknown key id"
#: Where ``TokenAuthMiddleware`` leaves itself in the scope, for ``refresh_token``.
SCOPE_KEY = "realtime.token_auth"


@dataclass(frozen=True)
class VerificationKey:
    """A key and the algorithms it may verify (never ``none``)."""

    key: Any
    algorithms: tuple[str, ...]
    kid: str | None = None


def _family(key: Any) -> tuple[str, ...]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, str | bytes):
        return HMAC_ALGORITHMS
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return EC_ALGORITHMS
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return OKP_ALGORITHMS
    raise ConfigurationError(f"unsupported JWT key type {type(key).__name__}")


def _pin(key: Any, algorithms: Sequence[str] | None, kid: str | None = None) -> VerificationKey:
    family = _family(key)
    chosen = tuple(a for a in (algorithms or family) if a in family)
    if not chosen:
        raise ConfigurationError(
            f"--jwt-algorithms {','.join(algorithms or ())} do not fit a key of this type "
            f"(it verifies {', '.join(family)})"
        )
    return VerificationKey(key, chosen, kid)


def key_from_text(text: str, algorithms: Sequence[str] | None = None) -> VerificationKey:
    """A PEM public key (or certificate), else an HMAC secret."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        data = stripped.encode()
        public: Any
        try:
            if b"CERTIFICATE" in data.split(b"\n", 1)[0]:
                public = x509.load_pem_x509_certificate(data).public_key()
            else:
                public = load_pem_public_key(data)
        except ValueError as exc:
            raise ConfigurationError(f"cannot read the JWT public key: {exc}") from None
        return _pin(public, algorithms)
    if len(stripped) < 32:
        raise ConfigurationError("an HMAC JWT secret must be at least 32 characters")
    return _pin(stripped, algorithms)


def keys_from_jwks(text: str, algorithms: Sequence[str] | None = None, remote: bool = False,
                   skipped: list[str] | None = None) -> list[VerificationKey]:
    """The signing keys of a JSON Web Key Set. A key that cannot verify here is skipped
    and said why in ``skipped`` (an encryption key, as Keycloak publishes beside its
    signing key; a type or ``alg`` outside ``algorithms``; an HMAC secret under 32 bytes,
    or any HMAC secret when ``remote``: a JWKS URL is public, so anyone could sign with
    it); ``ConfigurationError`` when none is left."""
    import jwt

    try:
        document = json.loads(text)
        entries = document["keys"]
    except (ValueError, KeyError, TypeError):
        raise ConfigurationError("the JWKS file is not a JSON object with a 'keys' list") from None
    if not isinstance(entries, list):
        raise ConfigurationError("the JWKS file is not a JSON object with a 'keys' list")
    keys: list[VerificationKey] = []
    reasons: list[str] = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            reasons.append(f"key #{number}: not a JSON object")
            continue
        kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
        why = _unusable(entry, algorithms, remote)
        if why is None:
            try:
                jwk = jwt.PyJWK(entry)
                if entry.get("kty") == "oct" and len(jwk.key) < 32:
                    why = "an HMAC secret shorter than 32 bytes"
                else:
                    alg = entry.get("alg")
                    keys.append(_pin(jwk.key, [alg] if alg else algorithms, kid))
            except (jwt.PyJWTError, ConfigurationError, TypeError, ValueError) as exc:
                why = str(exc) or type(exc).__name__
        if why is not None:
            reasons.append(f"key {kid or '#' + str(number)}: {why}")
    if skipped is not None:
        skipped.extend(reasons)
    if not keys:
        if not reasons:
            raise ConfigurationError("the JWKS file has no keys")
        raise ConfigurationError("the JWKS file has no usable key (" + "; ".join(reasons[:3])
                                 + ("; ..." if len(reasons) > 3 else "") + ")")
    return keys


def _unusable(entry: dict[str, Any], algorithms: Sequence[str] | None,
              remote: bool) -> str | None:
    """Why a JWK cannot verify tokens here, or None."""
    use, ops, alg = entry.get("use"), entry.get("key_ops"), entry.get("alg")
    if use is not None and use != "sig":
        return f"not a signing key (use {use!r})"
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "its key_ops do not include verify"
    if entry.get("kty") == "oct" and remote:
        return "an HMAC secret published at a URL (anyone who reads it could sign)"
    if alg is not None and (alg == "none" or (algorithms and alg not in algorithms)):
        return f"its alg {alg!r} is not one --jwt-algorithms allows"
    return None


class InvalidToken(Exception):
    pass


def extract_token(scope: Scope) -> str | None:
    """The token, from the header, the query string or a subprotocol entry (removed)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0]
    offered = scope.get("subprotocols") or []
    for entry in offered:
        if entry.startswith(SUBPROTOCOL_PREFIX):
            scope["subprotocols"] = [p for p in offered if p != entry]
            return entry[len(SUBPROTOCOL_PREFIX):]
    return None


def verify(
    token: str,
    keys: Sequence[VerificationKey],
    now: float,
    audience: str | None = None,
    issuer: str | None = None,
    leeway: float = 0.0,
) -> dict[str, Any]:
    """The claims of a valid token; ``InvalidToken`` (with no token text) otherwise."""
    import jwt

    if not token.isascii():  # a JWT is base64url: anything else is not one (nor encodable)
        raise InvalidToken("malformed token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("malformed token") from None
    alg, kid = header.get("alg"), header.get("kid")
    candidates = [k for k in keys if alg in k.algorithms and (kid is None or k.kid in (None, kid))]
    if not candidates:
        if kid is not None and any(alg in k.algorithms for k in keys):
            raise InvalidToken(UNKNOWN_KID)  # a new key, perhaps: a JWKS URL is refetched
        raise InvalidToken("no key for this token's algorithm")
    last = "invalid token"
    # A key id that no key carries, tried against keys without one (a static --jwt-key)
    # and failing them, is an unknown key id too (a JWKS URL is refetched), not a bad
    # signature.
    named = kid is None or any(k.kid == kid for k in candidates)
    for key in candidates:
        try:
            claims = jwt.decode(
                token, key.key, algorithms=list(key.algorithms), audience=audience,
                issuer=issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "verify_aud": audience is not None, "verify_iss": issuer is not None},
            )
        except jwt.InvalidSignatureError:
            last = "bad signature"
            continue
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from None
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if exp is not None and (not isinstance(exp, int | float) or now > exp + leeway):
            raise InvalidToken("token expired")
        if nbf is not None and (not isinstance(nbf, int | float) or now < nbf - leeway):
            raise InvalidToken("token not yet valid")
        return dict(claims)
    raise InvalidToken(last if named or last != "bad signature" else UNKNOWN_KID)


async def verify_refetching(check: Callable[[], dict[str, Any]],
                            source: Any) -> dict[str, Any]:
    """``check()`` (a ``verify``), and once more after ``source`` (``--jwks-url``'s
    ``JwksUrl``, or None) refetched its keys when the token names a key id we lack (the
    provider rotated to a key we have not fetched yet)."""
    try:
        return check()
    except InvalidToken as exc:
        # unknown_kid() is None when a refetch was made less than 10 s ago.
        refetch = source.unknown_kid() if str(exc) == UNKNOWN_KID and source else None
        if refetch is None or not await refetch:
            raise
    return check()


class TokenAuthMiddleware(BaseMiddleware):
    """``scope["user"]`` from a JWT; keys and checks default to the ``--jwt-*`` options."""

    def __init__(
        self,
        inner: Application,
        required: bool = False,
        keys: Sequence[VerificationKey] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float | None = None,
        clock: Any = None,
    ) -> None:
        super().__init__(inner)
        #: Keys given here stay; None: ``settings.jwt_keys``, read at each verification so
        #: that a SIGHUP re-reading ``--jwt-key-file``/``--jwks-file`` reaches this middleware.
        self._keys = list(keys) if keys is not None else None
        # A --jwks-url whose provider was away as this worker started has no keys yet.
        if not self.keys and (self._keys is not None or settings.jwt_key_source is None):
            raise ConfigurationError(
                "TokenAuthMiddleware needs a key: --jwt-key, --jwt-key-file, --jwks-file or "
                "--jwks-url"
            )
        self.required = required
        self.audience = audience if audience is not None else settings.jwt_audience
        self.issuer = issuer if issuer is not None else settings.jwt_issuer
        self.leeway = leeway if leeway is not None else settings.jwt_leeway
        self.clock = clock

    @property
    def keys(self) -> list[VerificationKey]:
        return self._keys if self._keys is not None else settings.jwt_keys

    @keys.setter
    def keys(self, value: Sequence[VerificationKey]) -> None:
        self._keys = list(value)

    def _now(self) -> float:
        return float(self.clock.seconds()) if self.clock is not None else time.time()

    async def resolve_scope(self, scope: Scope) -> None:
        scope[SCOPE_KEY] = self  # for a consumer's refresh_token() on the live socket
        token = extract_token(scope)
        if token is None:
            if self.required:
                raise Refuse(401, [(b"WWW-Authenticate", b'Bearer realm="realtime"')])
            scope.setdefault("user", AnonymousUser())
            return
        try:
            claims = await self._verify(token)
        except InvalidToken as exc:
            challenge = f'Bearer realm="realtime", error="invalid_token", error_description="{exc}"'
            raise Refuse(401, [(b"WWW-Authenticate", challenge.encode())]) from None
        self._adopt(scope, claims)

    async def _verify(self, token: str) -> dict[str, Any]:
        return await verify_refetching(lambda: self._check(token),
                                       settings.jwt_key_source if self._keys is None else None)

    def _check(self, token: str) -> dict[str, Any]:
        """``verify`` with this middleware's keys and checks, now."""
        return verify(token, self.keys, self._now(), self.audience, self.issuer, self.leeway)

    def _unknown_kid(self) -> Any:
        source = settings.jwt_key_source if self._keys is None else None
        return source.unknown_kid() if source is not None else None

    def _adopt(self, scope: Scope, claims: dict[str, Any]) -> None:
        scope["user"] = User(claims.get("sub"), claims=claims)
        if isinstance(claims.get("exp"), int | float):
            scope["auth_expires_at"] = float(claims["exp"]) + self.leeway
        else:
            scope.pop("auth_expires_at", None)

    def refresh(self, scope: Scope, token: str) -> dict[str, Any]:
        """A new token for a live socket: verified as at the handshake (same keys, audience,
        issuer, leeway) and for the same ``sub`` and ``iss``, so a socket never changes who
        it is. The
        scope's user (new claims) and ``auth_expires_at`` follow it; the caller re-arms the
        expiry. ``InvalidToken`` otherwise, and the old expiry stands."""
        current = getattr(scope.get("user"), "claims", None)
        if not isinstance(current, dict) or not current:
            raise InvalidToken("this connection was not opened with a token")
        if not isinstance(token, str) or not token:
            raise InvalidToken("malformed token")
        try:
            claims = self._check(token)
        except InvalidToken as exc:
            if str(exc) == UNKNOWN_KID:
                self._unknown_kid()  # refetched meanwhile: the client's next try may pass
            raise
        # The same subject from the same issuer; with no subject there is nobody to match.
        if current.get("sub") is None or claims.get("sub") is None:
            raise InvalidToken("token has no sub: it cannot be matched to this connection")
        if (claims.get("sub"), claims.get("iss")) != (current.get("sub"), current.get("iss")):
            raise InvalidToken("token is for another user")
        self._adopt(scope, claims)
        return claims
