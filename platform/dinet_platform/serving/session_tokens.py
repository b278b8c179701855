"""Short-lived tokens that open one live stream of one avatar.

A browser cannot set an ``Authorization`` header on a WebSocket, and the API token must never
travel in a URL (proxies and browser histories keep URLs). So an authenticated
``POST /v1/avatars/{id}/sessions`` mints a token that opens one stream of that avatar, once,
within ``stream.token_ttl_s``; the page passes it as a WebSocket subprotocol (or, where a
client cannot, as ``?token=``: it is single-use and expires in a minute).

A token is ``<payload>.<signature>`` (base64url): the payload names the avatar, the expiry
and a nonce; the signature is HMAC-SHA256 under a key derived from the API token, so any
ingress replica can check it and rotating the API token revokes every token minted with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

SUBPROTOCOL = "dinet-stream"
"""The WebSocket subprotocol a stream speaks; a client offers it and its token:
``new WebSocket(url, ["dinet-stream", token])``."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SessionTokens:
    """Mint and check stream tokens; each opens one stream (nonces are remembered until they
    expire, per ingress replica)."""

    api_token: str
    ttl_s: float
    _used: dict[str, float] = field(default_factory=dict)

    @property
    def _key(self) -> bytes:
        return hmac.new(self.api_token.encode(), b"dinet stream session v1",
                        hashlib.sha256).digest()

    def mint(self, avatar_id: str, now: float | None = None) -> tuple[str, float]:
        """A token for one stream of ``avatar_id`` and its expiry (unix seconds)."""
        expires = (time.time() if now is None else now) + self.ttl_s
        payload = _b64(json.dumps({"a": avatar_id, "e": round(expires, 3),
                                   "n": secrets.token_urlsafe(12)},
                                  separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", expires

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def redeem(self, token: str | None, avatar_id: str, now: float | None = None) -> str | None:
        """None when ``token`` opens a stream of ``avatar_id`` now (and uses it up), else
        why not."""
        if not token:
            return ("missing session token: POST /v1/avatars/{id}/sessions for one, and offer "
                    f"it as a WebSocket subprotocol beside {SUBPROTOCOL!r}")
        payload, _, signature = token.partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return "invalid session token"
        claims = json.loads(_unb64(payload))
        now = time.time() if now is None else now
        if claims["a"] != avatar_id:
            return "the session token was minted for another avatar"
        if claims["e"] < now:
            return "the session token has expired: mint a new one"
        self._used = {nonce: at for nonce, at in self._used.items() if at >= now}
        if claims["n"] in self._used:
            return "the session token was already used: mint one per stream"
        self._used[claims["n"]] = claims["e"]
        return None


def offered_token(subprotocols: list[str], query_token: str | None) -> str | None:
    """The token a client offered: the subprotocol beside :data:`SUBPROTOCOL`, else
    ``?token=``."""
    others = [p for p in subprotocols if p != SUBPROTOCOL]
    return others[0] if others else query_token
