"""Refuse request bodies over a size limit before reading them (ASGI middleware).

A declared ``Content-Length`` over the limit is answered 413 at once, unread. A body without one
(chunked) is counted as it arrives and the request is cut off with 413 the moment it passes the
limit (an ``HTTPException`` raised from ``receive``, which FastAPI's body readers let through to
its exception handler), so no route ever holds more than ``max_bytes`` of a body in memory.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await self._refuse(send, 400, "Content-Length is not a number")
                return
            if too_large:
                await self._refuse(send, 413, self._reason())
                return
        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._reason())
            return message

        await self.app(scope, counted_receive, send)

    def _reason(self) -> str:
        return f"the request body is over the {self.max_bytes}-byte limit"

    @staticmethod
    async def _refuse(send: Send, status: int, reason: str) -> None:
        body = json.dumps({"detail": reason}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
