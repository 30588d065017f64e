"""``stream-agent probe SOURCE``: open a video source and show what ingest makes of it.

Prints the stream's properties, then each state change and each sampled frame's time as they
happen, then the counters. Useful to check a camera URL before putting it in the config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import TextIO

from ingest import (
    IngestError,
    IngestOptions,
    InvalidOptionsError,
    SourceSpec,
    StateChange,
    StreamInfo,
    open_source,
    probe_source,
)
from stream_agent.errors import ConfigError, SourceError

# Without --duration, a live source is watched this long.
DEFAULT_LIVE_DURATION_S = 10.0


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 640x360, not {text!r}"
        ) from None
    return width, height


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="open a video source; print its properties, state changes and sampled frame times",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a file, rtsp:// or http(s):// URL, /dev/videoN or a webcam index",
    )
    parser.add_argument(
        "--fps", type=float, default=1.0, help="sampling rate in frames per second (default 1)"
    )
    parser.add_argument(
        "--all-frames", action="store_true", help="keep every decoded frame (ignores --fps)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help=f"stop after S seconds of stream (default: {DEFAULT_LIVE_DURATION_S:g} for live "
        "sources, the whole file otherwise)",
    )
    parser.add_argument(
        "--transport", choices=("tcp", "udp"), default=None, help="RTSP transport (default tcp)"
    )
    parser.add_argument(
        "--fast", action="store_true", help="read a file as fast as possible, not in real time"
    )
    parser.add_argument(
        "--max-size", type=_size, default=None, metavar="WxH", help="scale frames to fit WxH"
    )
    parser.add_argument(
        "--open-timeout", type=float, default=10.0, metavar="S", help="default 10 s"
    )
    parser.add_argument("--read-timeout", type=float, default=5.0, metavar="S", help="default 5 s")
    parser.add_argument("--id", dest="source_id", default=None, help="source id to report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        spec = SourceSpec.parse(args.source, source_id=args.source_id, transport=args.transport)
        options = IngestOptions(
            fps=None if args.all_frames else args.fps,
            realtime=not args.fast,
            max_size=args.max_size,
            open_timeout_s=args.open_timeout,
            read_timeout_s=args.read_timeout,
        )
    except InvalidOptionsError as exc:
        raise ConfigError(str(exc)) from exc
    except IngestError as exc:
        raise SourceError(str(exc)) from exc
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be a positive number of seconds")
    try:
        return asyncio.run(probe(spec, options, args.duration, sys.stdout))
    except IngestError as exc:
        raise SourceError(str(exc)) from exc


def _print_info(info: StreamInfo, out: TextIO) -> None:
    nature = "live" if info.live else "recording"
    transport = f", {info.transport}" if info.transport else ""
    rate = f", {info.fps:g} fps" if info.fps else ", rate unknown"
    rows = [
        ("source", f"{info.source_id} ({info.url})"),
        ("kind", f"{info.kind} ({nature}{transport})"),
        ("container", info.container),
        ("video", f"{info.codec} {info.width}x{info.height}{rate}, rotation {info.rotation}"),
        ("output", f"{info.output_width}x{info.output_height} RGB"),
        ("duration", f"{info.duration_s:.3f} s" if info.duration_s is not None else "-"),
        ("audio", "yes (ignored)" if info.has_audio else "no"),
        ("decoder", info.decoder),
    ]
    for key, value in rows:
        print(f"{key:<10} {value}", file=out)


async def probe(
    spec: SourceSpec, options: IngestOptions, duration: float | None, out: TextIO
) -> int:
    """Print the source's properties, then its states and frames for ``duration`` seconds."""
    info = await probe_source(spec, options)
    _print_info(info, out)
    if duration is None and info.live:
        duration = DEFAULT_LIVE_DURATION_S
    started = time.monotonic()

    def stamp() -> str:
        return f"{time.monotonic() - started:9.3f}"

    def on_state(change: StateChange) -> None:
        print(f"{stamp()}  state  {change.state.value:<10} {change.reason}", file=out, flush=True)

    print(f"{'t (s)':>9}  event", file=out)
    source = open_source(spec, options, on_state_change=on_state)
    # A live source that goes offline never ends by itself: bound the watch by the wall clock.
    wall_limit = None if duration is None else duration + options.open_timeout_s + 2.0
    try:
        async with source:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wall_limit):
                    async for frame in source:
                        if duration is not None and frame.pts >= duration:
                            break
                        print(
                            f"{stamp()}  frame  seq={frame.seq} pts={frame.pts:.3f} "
                            f"{frame.width}x{frame.height}",
                            file=out,
                            flush=True,
                        )
    finally:
        await asyncio.sleep(0)  # let the last state changes reach on_state
        c = source.counters()
        print(
            f"counters   decoded={c.decoded} sampled={c.sampled} delivered={c.delivered} "
            f"dropped_stale={c.dropped_stale} decode_errors={c.decode_errors} "
            f"reconnects={c.reconnects} stalls={c.stalls} "
            f"connect_failures={c.connect_failures}",
            file=out,
        )
    return 0
