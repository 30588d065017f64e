"""Bearer-token checks for WebSocket and HTTP (constant-time comparison)."""

from __future__ import annotations

import hmac

from websockets.datastructures import Headers


def bearer_token(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(expected: str | None, given: str | None) -> bool:
    """True when no token is required, or ``given`` equals it."""
    if expected is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))
