"""The live routes: session tokens, the WebSocket stream (:mod:`.live`), and the browser page
(``/app``, plain HTML/JS from ``static/``, public: it holds no secret and asks for the token)."""

from __future__ import annotations

import contextlib
import logging
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response

from dinet_platform.serving import openapi
from dinet_platform.serving.api import ApiError
from dinet_platform.serving.guard import app_path, deny
from dinet_platform.serving.live import LiveSession
from dinet_platform.serving.session_tokens import SUBPROTOCOL
from dinet_platform.serving.state import AppState

logger = logging.getLogger("ray.serve")
router = APIRouter()
PAGE_FILES = {"": ("app.html", "text/html; charset=utf-8"),
              "/app.js": ("app.js", "text/javascript; charset=utf-8"),
              "/capture.js": ("capture.js", "text/javascript; charset=utf-8")}
PAGE_PATHS = frozenset(f"/app{suffix}" for suffix in PAGE_FILES)


@router.post("/v1/avatars/{avatar_id}/sessions", status_code=201, responses=openapi.ERRORS)
async def create_session(avatar_id: str, request: Request) -> dict[str, Any]:
    """A token that opens one live stream of the avatar (once, within ``stream.token_ttl_s``):
    connect a WebSocket to ``stream_path`` offering the subprotocols ``dinet-stream`` and the
    token. The protocol is in ``dinet_platform.serving.live``."""
    st: AppState = request.app.state.dinet
    if not st.store.exists(avatar_id):
        raise ApiError(404, "avatar_id", f"unknown avatar id {avatar_id!r:.80}")
    token, expires = st.session_tokens.mint(avatar_id)
    return {"session_token": token, "expires_at": expires,
            "expires_in_s": st.session_tokens.ttl_s, "subprotocol": SUBPROTOCOL,
            "stream_path": f"{request.scope.get('root_path', '')}/v1/avatars/{avatar_id}/stream"}


@router.websocket("/v1/avatars/{avatar_id}/stream")
async def stream(socket: WebSocket, avatar_id: str) -> None:
    """Speech in, frames out (the Guard has checked the session token)."""
    st: AppState = socket.app.state.dinet
    config = st.settings.serving.stream
    if not st.store.exists(avatar_id):
        await deny(socket, 404, "avatar_id", f"unknown avatar id {avatar_id!r:.80}")
        return
    if st.live_sessions >= config.max_sessions:
        await deny(socket, 503, "stream.max_sessions", f"{st.live_sessions} live sessions are "
                   f"open on this replica, its limit (stream.max_sessions): retry later")
        return
    try:
        model = await st.served()
    except ApiError as exc:
        await deny(socket, exc.status, exc.field, exc.message)
        return
    st.live_sessions += 1
    try:
        offered = socket.scope.get("subprotocols") or []
        await socket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        await LiveSession(socket, st, avatar_id, model, config).run()
    except Exception:
        logger.exception("live session of avatar %s failed", avatar_id)
        with contextlib.suppress(RuntimeError):
            await socket.close(1011, "internal error")
    finally:
        st.live_sessions -= 1


@router.get("/app", include_in_schema=False)
@router.get("/app/app.js", include_in_schema=False)
@router.get("/app/capture.js", include_in_schema=False)
async def page(request: Request) -> Response:
    """The browser page: pick or upload an avatar, speak or drop a WAV, watch it talk."""
    name, media_type = PAGE_FILES[app_path(request.scope)[len("/app"):]]
    body = resources.files("dinet_platform.serving").joinpath("static", name).read_bytes()
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})
