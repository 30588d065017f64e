"""Keeping credentials out of logs, state-change reasons and error messages.

Camera URLs carry passwords (``rtsp://admin:secret@cam/stream``) and sometimes tokens in the query
(``?token=...``). Everything ``ingest`` writes for people goes through a :class:`Redactor`, which
rewrites URLs to ``rtsp://admin:***@cam/stream`` and also blanks the known secrets wherever they
appear in free text (FFmpeg error strings repeat the URL they failed on).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

MASK = "***"

# Query parameters whose values are secrets. Matched as substrings of the lower-cased key, so
# "api_key", "access_token", "passwd" and "X-Signature" are all covered.
_SECRET_KEY_PARTS = ("pass", "pwd", "token", "secret", "key", "auth", "sig", "cred")

# scheme://userinfo@ -- userinfo runs to the last "@" before the path, so that an unencoded "@"
# inside a password is still covered.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s?#]*)@")
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<key>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")

# Shorter secrets are still masked inside URLs, but not in free text, where masking every "ab"
# would garble the message more than it protects.
_MIN_FREE_TEXT_SECRET = 4


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in _SECRET_KEY_PARTS)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _password = match.group("userinfo").partition(":")
    return f"{match.group('scheme')}{user}:{MASK}@" if sep else match.group(0)


def _mask_query(match: re.Match[str]) -> str:
    if not _is_secret_key(match.group("key")) or not match.group("value"):
        return match.group(0)
    return f"{match.group('sep')}{match.group('key')}={MASK}"


def redact_url(text: str) -> str:
    """Mask the password of every ``scheme://user:password@`` and every secret query value.

    Works on a bare URL or on any text containing URLs; the user name is kept (it helps to tell
    cameras apart and is not a secret), the password becomes ``***``.
    """
    text = _USERINFO.sub(_mask_userinfo, text)
    if "://" in text:
        text = _QUERY_PARAM.sub(_mask_query, text)
    return text


def url_secrets(url: str) -> tuple[str, ...]:
    """The secrets carried by ``url``: its password and its secret query values, as written and
    percent-decoded."""
    found: list[str] = []
    match = _USERINFO.search(url)
    if match:
        _user, sep, password = match.group("userinfo").partition(":")
        if sep and password:
            found.append(password)
    found.extend(
        m.group("value")
        for m in _QUERY_PARAM.finditer(url)
        if _is_secret_key(m.group("key")) and m.group("value")
    )
    variants: list[str] = []
    for secret in found:
        for variant in (secret, unquote(secret), quote(unquote(secret), safe="")):
            if variant and variant not in variants:
                variants.append(variant)
    return tuple(variants)


class Redactor:
    """Masks URL credentials and a fixed set of known secrets in any text.

    Built once per source from its URL; call it on every string meant for a log line, a
    state-change reason or an exception message.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another one is masked whole.
        self._secrets = tuple(
            sorted({s for s in secrets if len(s) >= _MIN_FREE_TEXT_SECRET}, key=len, reverse=True)
        )

    @classmethod
    def for_url(cls, url: str) -> Redactor:
        return cls(url_secrets(url))

    def __call__(self, text: str) -> str:
        text = redact_url(text)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text
