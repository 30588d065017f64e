"""Serving the web client's files from one folder, and nothing outside it.

A URL path is accepted only if, after percent-decoding, every segment is a plain name (no
``..``, no ``.``, no hidden ``.name``, no backslash or NUL) and the file it resolves to (symlinks
followed) is a regular file inside the resolved root.
"""

from __future__ import annotations

import importlib.util
import mimetypes
from pathlib import Path
from urllib.parse import unquote

MAX_STATIC_BYTES = 8 * 1024 * 1024


def default_web_root() -> Path | None:
    """``clients/web`` of this installation, if it exists (found without importing it)."""
    spec = importlib.util.find_spec("clients")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "web"
        if candidate.is_dir():
            return candidate
    return None


def resolve_static(root: Path, url_path: str) -> Path | None:
    """The file under ``root`` that ``url_path`` names, or None if it is absent or not allowed."""
    try:
        decoded = unquote(url_path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\x00" in decoded or "\\" in decoded or not decoded.startswith("/"):
        return None
    relative = decoded[1:]
    if relative == "" or relative.endswith("/"):
        relative += "index.html"
    parts = relative.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    try:
        base = root.resolve(strict=True)
        resolved = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if not resolved.is_relative_to(base):
        return None
    if resolved.is_dir():
        resolved = resolved / "index.html"
    if not resolved.is_file() or resolved.stat().st_size > MAX_STATIC_BYTES:
        return None
    return resolved


def content_type(path: Path) -> str:
    kind, _ = mimetypes.guess_type(path.name)
    kind = kind or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        kind += "; charset=utf-8"
    return kind
