"""``stream-agent make-test-model`` as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stream_agent.cli import main
from stream_agent.errors import ModelError
from stream_agent.models import load_model


def test_make_test_model_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_agent",
            "make-test-model",
            "--family",
            "llava_onevision",
            str(folder),
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(folder)) and "llava_onevision" in proc.stdout
    model = load_model(folder)
    assert model.family == "llava_onevision"
    assert (folder / "stream_agent_test_model.json").read_text().count('"seed": 3') == 1


def test_make_test_model_refuses_a_used_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("keep")
    code = main(["make-test-model", "--family", "llava_onevision", str(tmp_path)])
    assert code == ModelError.exit_code
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_make_test_model_rejects_unknown_families(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["make-test-model", "--family", "nope", "somewhere"])
    assert exc.value.code == 2
    assert "llava_onevision" in capsys.readouterr().err
