"""Credentials never reach text meant for people."""

from __future__ import annotations

import pytest

from ingest import Redactor, redact_url
from ingest.redact import url_secrets


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:secret@10.0.0.5:554/h264", "rtsp://admin:***@10.0.0.5:554/h264"),
        ("rtsp://admin:p@ss@cam/live", "rtsp://admin:***@cam/live"),
        ("rtsp://admin@cam/live", "rtsp://admin@cam/live"),
        ("rtsp://cam/live", "rtsp://cam/live"),
        (
            "http://cam/snap.cgi?user=admin&pwd=12345&res=hd",
            "http://cam/snap.cgi?user=admin&pwd=***&res=hd",
        ),
        ("https://x/v.m3u8?access_token=abc.def&x=1", "https://x/v.m3u8?access_token=***&x=1"),
        ("http://x/y?api_key=k1;sig=zz", "http://x/y?api_key=***;sig=***"),
        ("/data/clip.mp4", "/data/clip.mp4"),
        (":1", ":1"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_inside_text() -> None:
    text = "Connection refused: 'rtsp://u:topsecret@cam/x' and again rtsp://v:other@cam2/y"
    out = redact_url(text)
    assert "topsecret" not in out and "other" not in out
    assert "rtsp://u:***@cam/x" in out and "rtsp://v:***@cam2/y" in out


def test_url_secrets_include_encoded_forms() -> None:
    secrets = url_secrets("rtsp://u:pa%40ss@cam/x?token=t0k3n")
    assert {"pa%40ss", "pa@ss", "t0k3n"} <= set(secrets)


def test_redactor_masks_known_secrets_in_free_text() -> None:
    redact = Redactor.for_url("rtsp://admin:pa%40ssword@cam/x")
    assert redact("auth failed for pa@ssword at cam") == "auth failed for *** at cam"
    assert redact("raw pa%40ssword") == "raw ***"
    # A secret too short to mask in free text is still masked inside URLs.
    short = Redactor.for_url("rtsp://a:xy@cam/x")
    assert short("rtsp://a:xy@cam/x says xy") == "rtsp://a:***@cam/x says xy"
