"""Keeping credentials out of every log line, at every level, from every library.

The daemon's own code never logs a secret, but libraries do: at debug level the websockets
library writes each handshake's request headers (``Authorization: Bearer ...``) and each frame's
text (an ``auth`` message's token). A :class:`RedactingFilter` on the root logger's handlers
rewrites every record that reaches them, whichever logger it came from: the formatted message
(``msg`` with its ``args``) and the traceback. It masks

* ``Authorization:`` header values and ``Bearer``/``Basic`` credentials, right or wrong;
* ``token``/``password``/``secret``/``api_key`` values written as ``key: value``, ``key=value``
  or JSON (``"token": "..."``);
* URL passwords and secret query values (:func:`ingest.redact.redact_url`);
* the secrets the daemon knows (its token, the cameras' passwords and URL secrets) wherever they
  appear.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from ingest.redact import MASK, Redactor

_HEADER = re.compile(
    r"(?i)(\b(?:proxy-)?authorization\b(?:['\"]?\s*[:=]|['\"]\s*,)\s*['\"]?)[^\r\n'\"]+"
)
_SCHEME = re.compile(r"(?i)\b(bearer|basic|digest)(\s+)[A-Za-z0-9\-._~+/=]+")
_KEYS = r"\b(?:token|access_token|password|passwd|secret|api_key|apikey)\b"
# a quoted value runs to its closing quote (a JSON "token": "a b"); a bare one to a separator
_QUOTED_VALUE = re.compile(r"(?i)(" + _KEYS + r"\\?[\"']?\s*[:=]\s*\\?([\"']))(.*?)(\\?\2)")
_BARE_VALUE = re.compile(r"(?i)(" + _KEYS + r"\s*[:=]\s*)([^\"'\\\s,&;}]+)")


def redact_text(text: str, known: Redactor | None = None) -> str:
    """``text`` with every credential it carries masked (see the module docstring)."""
    text = _HEADER.sub(lambda m: m.group(1) + MASK, text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _QUOTED_VALUE.sub(lambda m: m.group(1) + MASK + m.group(4), text)
    text = _BARE_VALUE.sub(lambda m: m.group(1) + MASK, text)
    return (known or Redactor())(text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message and traceback with :func:`redact_text`; drops nothing."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.known = Redactor(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        self.known = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, still redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact_text(message, self.known)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.known)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.known)
        return True


def install_redaction(secrets: Iterable[str] = (), root: logging.Logger | None = None) -> None:
    """Put one :class:`RedactingFilter` on every handler of the root logger (adding the known
    ``secrets`` to one already there). Call again after adding a handler."""
    root = root or logging.getLogger()
    wanted = tuple(secrets)
    for handler in root.handlers:
        existing = [f for f in handler.filters if isinstance(f, RedactingFilter)]
        if existing:
            if wanted:
                existing[0].set_secrets(wanted)
        else:
            handler.addFilter(RedactingFilter(wanted))
