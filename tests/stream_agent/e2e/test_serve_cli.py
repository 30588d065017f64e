"""``stream-agent serve`` refusals that need no running daemon: they exit with a sentence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.daemon import ROOT


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "stream_agent", "serve", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unreachable_hub_model_says_how_to_use_a_local_folder(
    tmp_path: Path, short_clip: Path
) -> None:
    done = serve(
        "--source",
        f"cam={short_clip}",
        "--model",
        "stream-agent-tests/no-such-model",
        "--port",
        "0",
        "--store-dir",
        str(tmp_path / "memory"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 4, done.stderr[-2000:]
    message = done.stderr.splitlines()[-1]
    assert message.startswith("stream-agent: error: ")
    assert "No model hub is reachable" in message
    assert "--model DIR" in message and "stream-agent make-test-model" in message
    # an expected failure is one line, not the chain of the loader's tracebacks
    assert "Traceback" not in done.stderr, done.stderr[-4000:]


def test_a_folder_that_is_no_model_is_one_line_and_debug_shows_why(
    tmp_path: Path, short_clip: Path
) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("no checkpoint here", encoding="utf-8")
    args = ["--source", f"cam={short_clip}", "--model", str(folder), "--port", "0"]
    args += ["--store-dir", str(tmp_path / "memory")]
    done = serve(*args)
    assert done.returncode == 4, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1].startswith("stream-agent: error: ")
    assert "not a model folder" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    # the traceback is there for whoever asks for debug output
    import os

    debug = subprocess.run(
        [sys.executable, "-m", "stream_agent", "-vv", "serve", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert debug.returncode == 4
    assert "Traceback" in debug.stderr


def test_config_file_and_flags_are_not_mixed(tmp_path: Path) -> None:
    config = tmp_path / "daemon.yaml"
    config.write_text("cameras:\n  - name: a\n    path: x.mp4\n", encoding="utf-8")
    done = serve("--config", str(config), "--port", "9")
    assert done.returncode == 2
    assert "either --config or flags (--port)" in done.stderr


def test_serve_needs_a_source() -> None:
    done = serve("--model", "/nonexistent")
    assert done.returncode == 2
    assert "--source" in done.stderr


def test_an_unusable_store_folder_is_reported(
    tmp_path: Path, short_clip: Path, tiny_llava: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    done = serve(
        "--source",
        f"cam={short_clip}",
        "--model",
        str(tiny_llava),
        "--port",
        "0",
        "--store-dir",
        str(blocker / "memory"),
    )
    assert done.returncode == 1, done.stderr[-2000:]
    message = done.stderr.splitlines()[-1]
    assert message.startswith("stream-agent: error: cannot create the memory folder")
    assert "--store-dir" in message
