"""The log filter masks credentials in every record, whichever logger wrote it."""

from __future__ import annotations

import io
import logging

from stream_agent.log_redact import RedactingFilter, install_redaction, redact_text


def test_headers_tokens_urls_and_known_secrets_are_masked() -> None:
    cases = {
        "> Authorization: Bearer abc.def-123": "abc.def-123",
        "headers: [('Authorization', 'Basic dXNlcjpwdw==')]": "dXNlcjpwdw==",
        '< TEXT \'{"type":"auth","token":"tok-xyz"}\' [31 bytes]': "tok-xyz",
        'frame {"type": "auth", "token": "tok 2 ab"}': "tok 2 ab",
        "opening rtsp://admin:hunter22@cam/stream?token=qq11&x=1": "hunter22",
        "GET /stream?access_token=zz99 HTTP/1.1": "zz99",
        "password=pw-123, next": "pw-123",
    }
    for text, secret in cases.items():
        masked = redact_text(text)
        assert secret not in masked, (text, masked)
        assert "***" in masked
    assert redact_text('{"token": "a b", "id": "x"}') == '{"token": "***", "id": "x"}'
    assert redact_text("the token is not valid") == "the token is not valid"
    assert redact_text("camera lobby online") == "camera lobby online"


def test_the_filter_covers_args_tracebacks_and_every_logger() -> None:
    stream = io.StringIO()
    root = logging.Logger("test-root")
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    install_redaction(["s3cret-value"], root)
    assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    child = logging.Logger("websockets.server")
    child.parent = root
    child.setLevel(logging.DEBUG)
    child.debug("> %s", "Authorization: Bearer s3cret-value")
    try:
        raise ValueError("connect to rtsp://u:s3cret-value@host failed")
    except ValueError:
        child.exception("failed with %r", {"token": "s3cret-value"})
    out = stream.getvalue()
    assert "s3cret-value" not in out, out
    assert "Traceback" in out and "***" in out
