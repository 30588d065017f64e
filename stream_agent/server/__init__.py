"""The daemon's server: the WebSocket protocol and HTTP (health, metrics, frames, web client)."""

from stream_agent.server.app import StreamAgentServer
from stream_agent.server.context import ServerContext
from stream_agent.server.static import default_web_root

__all__ = [
    "ServerContext",
    "StreamAgentServer",
    "default_web_root",
]
