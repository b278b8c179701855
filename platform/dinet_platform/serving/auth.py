"""Bearer-token auth for every ``/v1`` route.

The token comes from ``$DINET_API_TOKEN`` or from the file named by ``$DINET_API_TOKEN_FILE``
(a mounted secret). It is compared in constant time and never logged or echoed; a server
without a token refuses to start rather than serve an open API.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

TOKEN_ENV = "DINET_API_TOKEN"
TOKEN_FILE_ENV = "DINET_API_TOKEN_FILE"
MIN_TOKEN_CHARS = 16


class AuthConfigError(RuntimeError):
    """The server has no usable token configured."""


def load_token(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "").strip()
    if not token and env.get(TOKEN_FILE_ENV):
        path = Path(env[TOKEN_FILE_ENV]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise AuthConfigError(f"${TOKEN_FILE_ENV} names {path}, which cannot be read: "
                                  f"{exc.strerror}") from None
    if not token:
        raise AuthConfigError(f"no API token: set ${TOKEN_ENV} or ${TOKEN_FILE_ENV} (every /v1 "
                              "route needs a bearer token)")
    if len(token) < MIN_TOKEN_CHARS:
        raise AuthConfigError(f"the API token is too short (< {MIN_TOKEN_CHARS} characters)")
    return token


def check_bearer(header: str | None, token: str) -> str | None:
    """None when ``header`` carries the token, else why not (no token text in the reason)."""
    if not header:
        return "missing Authorization header (expected 'Bearer <token>')"
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "Authorization header must be 'Bearer <token>'"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "invalid token"
    return None
