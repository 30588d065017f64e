"""A command-line client: ask a running daemon a question and stream the answer.

``stream-agent ask "what happened?" --camera dock --since 10m`` (or ``python -m clients.cli``)
connects to the daemon's WebSocket endpoint, prints the answer as it is generated, then the
evidence moments (camera, time, score and the URL of the frame) and the timings. Ctrl-C cancels
the answer. It imports only the protocol module and ``websockets``: no model code.

Exit status: 0 answered, 1 the server reported an error, 2 bad arguments, 3 no connection,
130 cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from stream_agent.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Answer,
    Ask,
    Cancel,
    Delta,
    Error,
    Evidence,
    Hello,
    ServerMessage,
    TimeBound,
    UnknownMessageType,
    encode,
    parse_server_message,
)

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_CONNECT, EXIT_CANCELLED = 0, 1, 2, 3, 130


class ClientError(Exception):
    """A failure to report as one sentence, with the exit status to use."""

    def __init__(self, message: str, exit_code: int = EXIT_SERVER_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class AskOptions:
    url: str
    question: str
    camera: str | None = None
    since: str | None = None
    until: str | None = None
    token: str | None = field(default=None, repr=False)
    timeout_s: float | None = None
    json_lines: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ask`` arguments (shared by ``stream-agent ask`` and ``python -m clients.cli``)."""
    parser.add_argument("question", help="the question, in quotes")
    parser.add_argument("--camera", help="ask about this camera only (default: all)")
    parser.add_argument(
        "--since", help="only moments after this: '10m', '2h', or an ISO time with offset"
    )
    parser.add_argument("--until", help="only moments before this (same forms as --since)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the daemon (default {DEFAULT_URL})")
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token", help="bearer token (visible to other users in the process list; prefer the next)"
    )
    token.add_argument("--token-file", type=Path, help="read the bearer token from this file")
    token.add_argument("--token-env", metavar="NAME", help="read the bearer token from $NAME")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds")
    parser.add_argument(
        "--json", action="store_true", help="print the server's messages as JSON lines"
    )


def options_from_args(args: argparse.Namespace) -> AskOptions:
    """Validate the arguments (times, token source) before connecting."""
    for name in ("since", "until"):
        value = getattr(args, name)
        if value is not None:
            try:
                TimeBound.parse(value)
            except ValueError as exc:
                raise ClientError(f"--{name}: {exc}", EXIT_USAGE) from None
    token = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ClientError(f"cannot read --token-file: {exc.strerror}", EXIT_USAGE) from None
    elif args.token_env is not None:
        token = os.environ.get(args.token_env)
        if not token:
            raise ClientError(f"--token-env: ${args.token_env} is not set", EXIT_USAGE)
    parts = urlsplit(args.url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ClientError(f"--url must look like {DEFAULT_URL}, not {args.url!r}", EXIT_USAGE)
    if not args.question.strip():
        raise ClientError("the question is empty", EXIT_USAGE)
    return AskOptions(
        url=args.url,
        question=args.question,
        camera=args.camera,
        since=args.since,
        until=args.until,
        token=token,
        timeout_s=args.timeout,
        json_lines=args.json,
    )


def http_base(ws_url: str) -> str:
    """``ws://host:port/ws`` -> ``http://host:port`` (where the frame URLs live)."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def format_evidence(item: Evidence, base: str) -> str:
    start = item.start_time.replace("T", " ").removesuffix("Z")
    end = item.end_time.split("T")[-1].removesuffix("Z")
    line = (
        f"  {item.camera}  {start} - {end} UTC  (t={item.start_s:.1f}-{item.end_s:.1f} s)  "
        f"score {item.score:.3f}"
    )
    if item.frame_url:
        line += f"  {base}{item.frame_url}"
    return line


def format_timings(answer: Answer) -> str:
    t = answer.timings
    parts = []
    if t.ttft_ms is not None:
        parts.append(f"first token {t.ttft_ms:.0f} ms")
    if t.tokens_per_s is not None:
        parts.append(f"{t.tokens_per_s:.1f} tokens/s")
    parts.append(f"{t.tokens} tokens in {t.total_ms / 1000:.1f} s")
    return "(" + ", ".join(parts) + ")"


async def _next_message(ws: ClientConnection) -> ServerMessage:
    """The next message this client understands (newer message types are skipped)."""
    while True:
        raw = await ws.recv()
        try:
            return parse_server_message(raw)
        except UnknownMessageType:
            continue
        except ValueError as exc:
            raise ClientError(f"the server sent something unexpected: {exc}") from None


async def ask(options: AskOptions, out: TextIO, err: TextIO) -> int:
    """Ask one question; print the answer to ``out`` and problems to ``err``."""
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else None
    try:
        async with connect(
            options.url,
            additional_headers=headers,
            open_timeout=10,
            max_size=16 * 2**20,
            compression=None,
        ) as ws:
            async with asyncio.timeout(options.timeout_s):
                return await _converse(ws, options, out, err)
    except TimeoutError:
        raise ClientError(f"no complete answer within {options.timeout_s} s") from None
    except InvalidURI as exc:
        raise ClientError(f"--url is not a WebSocket URL: {exc}", EXIT_USAGE) from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = bytes(exc.response.body).decode("utf-8", "replace").strip()
        raise ClientError(
            f"{options.url} refused the connection (HTTP {status}: {body})", EXIT_CONNECT
        ) from None
    except (OSError, InvalidHandshake) as exc:
        if isinstance(exc, socket.gaierror):
            reason = f"the host name does not resolve ({exc.strerror})"
        elif isinstance(exc, OSError) and exc.errno and exc.errno > 0:
            reason = os.strerror(exc.errno).lower()
        else:
            reason = str(exc) or type(exc).__name__
        raise ClientError(
            f"cannot connect to {options.url}: {reason}; is the daemon running "
            "(stream-agent serve) and is --url right?",
            EXIT_CONNECT,
        ) from None
    except ConnectionClosed as exc:
        why = exc.rcvd.reason if exc.rcvd is not None and exc.rcvd.reason else "no reason given"
        raise ClientError(f"the server closed the connection ({why})") from None


async def _converse(ws: ClientConnection, options: AskOptions, out: TextIO, err: TextIO) -> int:
    hello = await _next_message(ws)
    if options.json_lines:
        print(encode(hello), file=out)
    if not isinstance(hello, Hello):
        raise ClientError("the server did not greet with 'hello'; is --url a stream-agent daemon?")
    if hello.protocol != PROTOCOL_VERSION:
        raise ClientError(
            f"the server speaks protocol {hello.protocol}, this client {PROTOCOL_VERSION}; "
            "use the client of the same version"
        )
    if hello.auth_required:
        if options.token:
            raise ClientError("the server rejected the token")
        raise ClientError("the server requires a token: pass --token-file FILE or --token-env NAME")
    request_id = uuid.uuid4().hex[:12]
    since = TimeBound.parse(options.since) if options.since else None
    until = TimeBound.parse(options.until) if options.until else None
    await ws.send(encode(Ask(request_id, options.question, options.camera, since, until)))

    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        return await _receive(ws, request_id, options, interrupted, out, err)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


async def _receive(
    ws: ClientConnection,
    request_id: str,
    options: AskOptions,
    interrupted: asyncio.Event,
    out: TextIO,
    err: TextIO,
) -> int:
    base = http_base(options.url)
    streamed = False
    cancel_sent = False
    interrupt_wait = asyncio.create_task(interrupted.wait())
    try:
        while True:
            receive = asyncio.create_task(_next_message(ws))
            await asyncio.wait({receive, interrupt_wait}, return_when=asyncio.FIRST_COMPLETED)
            if interrupted.is_set() and not cancel_sent:
                cancel_sent = True
                await ws.send(encode(Cancel(request_id)))
            message = await receive
            if options.json_lines:
                print(encode(message), file=out, flush=True)
            if getattr(message, "id", None) not in (request_id, None):
                continue
            if isinstance(message, Ack):
                continue
            if isinstance(message, Delta):
                if not options.json_lines:
                    out.write(message.text)
                    out.flush()
                streamed = True
            elif isinstance(message, Answer):
                if not options.json_lines:
                    _print_answer(message, streamed, base, out)
                return EXIT_CANCELLED if message.finish_reason == "cancelled" else EXIT_OK
            elif isinstance(message, Error):
                if streamed and not options.json_lines:
                    out.write("\n")
                print(f"stream-agent ask: {message.code}: {message.message}", file=err)
                return EXIT_SERVER_ERROR
    finally:
        interrupt_wait.cancel()


def _print_answer(answer: Answer, streamed: bool, base: str, out: TextIO) -> None:
    if not streamed:
        out.write(answer.text)
    out.write("\n")
    if answer.finish_reason == "cancelled":
        out.write("(cancelled)\n")
    if answer.evidence:
        out.write("Evidence:\n")
        for item in answer.evidence:
            out.write(format_evidence(item, base) + "\n")
    out.write(format_timings(answer) + "\n")
    out.flush()


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``ask`` for parsed arguments; print errors as sentences; return the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        options = options_from_args(args)
        return asyncio.run(ask(options, out, err))
    except ClientError as exc:
        print(f"stream-agent ask: error: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_CANCELLED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clients.cli", description="Ask a running stream-agent daemon a question."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
