"""API keys: who may write (and predict, when predictions are keyed).

Keys come from ``RAKUTEN_API_KEYS`` (comma-separated) and stay in ``SecretStr`` until compared.
A presented key is compared with every configured key in constant time (``hmac.compare_digest``,
no early exit), so the answer time says nothing about how much of a key was right. Keys are never
logged or echoed; with no key configured, every keyed route refuses.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="one of the keys in RAKUTEN_API_KEYS (or `Authorization: Bearer KEY`)")


class ApiKeys:
    def __init__(self, keys: SecretStr) -> None:
        self._keys = [k.strip().encode() for k in keys.get_secret_value().split(",") if k.strip()]

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def accepts(self, presented: str | None) -> bool:
        if not presented or not self._keys:
            return False
        candidate = presented.encode()
        accepted = False
        for key in self._keys:
            accepted |= hmac.compare_digest(candidate, key)
        return accepted

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} configured)"


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def check_key(keys: ApiKeys, request: Request) -> None:
    """Raise 401 (no key) or 403 (a key that is not accepted, or none configured)."""
    presented = presented_key(request)
    if not keys.configured:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "this service accepts no API key: set RAKUTEN_API_KEYS to allow writes")
    if presented is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "an API key is required: send it as X-API-Key",
                            headers={"WWW-Authenticate": "Bearer"})
    if not keys.accepts(presented):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the API key is not accepted")
