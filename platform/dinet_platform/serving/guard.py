"""What every request passes before a route sees it: readiness of the app, the bearer token,
the body size, and a request id; for a WebSocket, its session token.

Deny by default: every path needs the token except :data:`PUBLIC_PATHS`, matched exactly
against the path *inside* the app (Serve mounts the app under its ``route_prefix`` and passes
that prefix as the ASGI ``root_path``), so the app's routes are protected wherever it is
mounted.

The body limit counts the bytes actually received, chunk by chunk, whatever the headers
say: a declared ``Content-Length`` over the limit is refused before reading, and a chunked
(or lying) body is cut off with 413 the moment it passes the limit, before a route keeps any
more of it.

A WebSocket may only open a live stream (``/v1/avatars/{id}/stream``) with a session token for
that avatar (:mod:`.session_tokens`; browsers cannot send the bearer header); anything else is
refused before the handshake completes, with an HTTP status and the API's error body where the
server supports the denial-response extension (Serve's proxy does), else a policy close.

Plain ASGI: ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``) runs every
request through an extra task group and memory streams, a measurable share of the ingress's
CPU per live-avatar request.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from dinet_platform.serving.api import ApiError
from dinet_platform.serving.auth import check_bearer
from dinet_platform.serving.session_tokens import offered_token

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect",
                          "/openapi.json", "/app", "/app/app.js", "/app/capture.js"})
STREAM_PATH = re.compile(r"^/v1/avatars/([^/]{1,128})/stream$")
REQUEST_ID_HEADER = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "body", f"request body exceeds the limit of {limit} bytes")


def app_path(scope: Scope) -> str:
    """The request's path inside the app: without the prefix Serve mounted it under."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


def error(status: int, field: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status,
                        headers=headers or None)


class Guard:
    """503 until the app state is attached; 401 without the token off the public paths; 413
    for a body over the limit (declared or counted); an ``X-Request-Id`` on every answer
    (the caller's, when it sends a plain one) that 5xx logs name."""

    def __init__(self, app: ASGIApp, state: Callable[[Scope], object | None]):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get(REQUEST_ID_HEADER, "")
        # Ray Serve gives every request an id (the caller's X-Request-Id, else its own), puts
        # it in the request's headers and echoes it in the response; elsewhere we do both
        request_id = given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start" and not given:
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        refusal, limit = self.refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send_with_id)
            return
        await self.app(scope, counted(receive, limit), send_with_id)

    def refusal(self, scope: Scope, headers: Headers) -> tuple[JSONResponse | None, int]:
        st = self.state(scope)
        if st is None:
            return error(503, "server", "starting", **{"Retry-After": "1"}), 0
        limit = st.settings.serving.max_request_bytes
        if app_path(scope) not in PUBLIC_PATHS:
            reason = check_bearer(headers.get("authorization"), st.token)
            if reason:
                return error(401, "Authorization", reason,
                             **{"WWW-Authenticate": "Bearer"}), limit
        length = headers.get("content-length", "")
        if length.isdigit() and len(length) < 20 and int(length) > limit:
            return error(413, "body", f"request body of {length} bytes exceeds the limit of "
                                      f"{limit} bytes"), limit
        return None, limit


    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        socket = WebSocket(scope, receive, send)
        st = self.state(scope)
        if st is None:
            await deny(socket, 503, "server", "starting")
            return
        match = STREAM_PATH.match(app_path(scope))
        if match is None:
            await deny(socket, 404, "path", "the only WebSocket route is "
                                            "/v1/avatars/{avatar_id}/stream")
            return
        token = offered_token(list(scope.get("subprotocols") or []),
                              socket.query_params.get("token"))
        reason = st.session_tokens.redeem(token, match[1])
        if reason:
            await deny(socket, 401, "session_token", reason)
            return
        await self.app(scope, receive, send)


async def deny(socket: WebSocket, status: int, field: str, message: str) -> None:
    """Refuse a WebSocket handshake: ``status`` with the API's error body where the server
    can send one, else close code 1008 with the message as the reason."""
    if "websocket.http.response" in socket.scope.get("extensions", {}):
        await socket.send_denial_response(error(status, field, message))
    else:
        await socket.close(1008, f"{field}: {message}"[:120])


def counted(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once more than ``limit`` body bytes came
    in (the route's exception handler answers 413)."""
    received = 0

    async def receive_counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return receive_counted
