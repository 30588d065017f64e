"""The command-line client against a real loopback server (in-process and as a subprocess)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from clients.cli import AskOptions, ask
from tests.stream_agent.engine.fake_worker import FakeWorker
from tests.stream_agent.server.harness import running_server

REPO = Path(__file__).resolve().parents[2]


async def _run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stream_agent",
        "ask",
        *args,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_ask_in_process_prints_the_answer_evidence_and_timings() -> None:
    async with running_server() as h:
        await h.feed("dock", 4)
        out, err = io.StringIO(), io.StringIO()
        code = await ask(AskOptions(url=h.url, question="Who?", camera="dock"), out, err)
        assert code == 0, err.getvalue()
        lines = out.getvalue().splitlines()
        assert lines[0] == "Seen 3 moments. word0 word1 word2"
        assert lines[1] == "Evidence:"
        evidence = lines[2:5]
        assert all(line.startswith("  dock  ") for line in evidence)
        assert "(t=3.0-4.0 s)  score 0.900" in evidence[0]
        assert f"http://127.0.0.1:{h.port}/cameras/dock/frame.jpg?at=" in evidence[0]
        assert lines[5].startswith("(first token ") and "tokens/s, 4 tokens in" in lines[5]
        assert err.getvalue() == ""


async def test_stream_agent_ask_as_a_subprocess() -> None:
    async with running_server() as h:
        await h.feed("door", 2)
        code, out, err = await _run_cli(
            "What happened at the door?", "--url", h.url, "--camera", "door", "--since", "10m"
        )
        assert code == 0, err
        assert out.startswith("Seen 2 moments. word0 word1 word2\nEvidence:\n  door  ")
        assert err == ""


async def test_errors_are_sentences_with_a_nonzero_exit() -> None:
    async with running_server() as h:
        code, _, err = await _run_cli("Anything?", "--url", h.url, "--camera", "attic")
        assert code == 1
        assert err.strip() == (
            "stream-agent ask: unknown_camera: "
            "there is no camera named 'attic'; cameras: dock, door"
        )
        code, _, err = await _run_cli("Anything?", "--url", h.url, "--since", "last tuesday")
        assert code == 2 and "--since: 'last tuesday' is neither a duration" in err


async def test_no_daemon_means_exit_3_with_a_hint() -> None:
    code, _, err = await _run_cli("Anything?", "--url", "ws://127.0.0.1:9/ws")
    assert code == 3
    assert "cannot connect to ws://127.0.0.1:9/ws" in err and "stream-agent serve" in err


async def test_tokens_from_env_and_file(tmp_path: Path) -> None:
    async with running_server(token="cli-s3cret") as h:
        code, _, err = await _run_cli("q?", "--url", h.url)
        assert code == 1 and "requires a token" in err
        code, out, err = await _run_cli(
            "q?", "--url", h.url, "--token-env", "SA_TOKEN", env={"SA_TOKEN": "cli-s3cret"}
        )
        assert code == 0 and out.startswith("Seen 0 moments."), err
        token_file = tmp_path / "token"
        token_file.write_text("wrong\n")
        code, _, err = await _run_cli("q?", "--url", h.url, "--token-file", str(token_file))
        assert code == 1 and "rejected the token" in err


async def test_ctrl_c_cancels_the_answer() -> None:
    gate = threading.Event()
    worker = FakeWorker(token_gate=gate, answer_words=100)
    async with running_server(worker=worker) as h:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stream_agent",
            "ask",
            "Go on and on",
            "--url",
            h.url,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.read(15), 30)
        assert first == b"Seen 0 moments."
        process.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 130, err
        assert b"(cancelled)" in rest
        assert h.metrics.answers.value(outcome="cancelled") == 1


def test_the_client_imports_no_model_code() -> None:
    code = (
        "import sys, clients.cli, stream_agent.commands.ask; "
        "heavy = {'torch', 'transformers', 'stream_agent.engine', 'pydantic'} & set(sys.modules); "
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
