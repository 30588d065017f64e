"""WebSocket client helpers of the server and end-to-end tests: JSON messages in and out, and
an ``ask`` that collects a request's messages up to its answer or error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection


async def recv(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(message, dict)
    return message


async def send(ws: ClientConnection, message: Mapping[str, Any] | str) -> None:
    await ws.send(message if isinstance(message, str) else json.dumps(message))


async def until_terminal(
    ws: ClientConnection, request_id: str, timeout: float = 90.0
) -> list[dict[str, Any]]:
    """The messages for ``request_id`` up to and including its ``answer`` or ``error``."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await recv(ws, timeout)
            if message.get("id") != request_id:
                continue
            got.append(message)
            if message["type"] in ("answer", "error"):
                return got


async def ask(
    ws: ClientConnection, request_id: str, question: str = "What happens?", **fields: Any
) -> list[dict[str, Any]]:
    await send(ws, {"type": "ask", "id": request_id, "question": question, **fields})
    return await until_terminal(ws, request_id)
