"""Bearer-token authentication and job ownership.

With `UPZIR_API_TOKENS` set, every /restore and /jobs call needs `Authorization: Bearer <token>` (401
otherwise), compared in constant time against every configured token. A job belongs to the token that
submitted it, stored as a fingerprint (never the token): another token gets the same 404 as an unknown job.
Unset, authentication is off and everyone sees every job; the API warns at start when it listens beyond
loopback that way.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from fastapi import HTTPException, Request

FINGERPRINT_HEX = 32
"""128 bits of SHA-256: enough to tell tokens apart, useless for recovering one."""


@dataclass(frozen=True)
class Caller:
    """Who is asking: `owner` is the token's fingerprint, or None when authentication is off."""

    owner: str | None

    @property
    def submitter(self) -> str:
        """What a new job records as its owner."""
        return self.owner or ""


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:FINGERPRINT_HEX]


def match_token(presented: str, tokens: list[str]) -> bool:
    """Constant-time membership: every token is compared, whatever matches first."""
    found = False
    for token in tokens:
        found |= hmac.compare_digest(presented.encode(), token.encode())
    return found


def authenticate(request: Request) -> Caller:
    """FastAPI dependency: the caller, or 401 when a token is required and missing or wrong."""
    tokens = request.app.state.settings.tokens
    if not tokens:
        return Caller(None)
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented or not match_token(presented, tokens):
        raise HTTPException(
            401,
            "missing or invalid bearer token (send `Authorization: Bearer <token>`)",
            headers={"WWW-Authenticate": 'Bearer realm="upzir"'},
        )
    return Caller(token_fingerprint(presented))


def is_loopback(host: str) -> bool:
    """True when a bind address only accepts local connections."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
