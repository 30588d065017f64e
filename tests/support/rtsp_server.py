"""A minimal RTSP server for tests: serves one H.264 MP4 file on a loopback port and mount.

Run it with Debian's ``/usr/bin/python3`` (the interpreter that ``python3-gi`` and
``gir1.2-gst-rtsp-server-1.0`` install for), not the project's virtual environment::

    /usr/bin/python3 tests/support/rtsp_server.py --file clip.mp4 --port 0 --mount /test

It prints ``READY <port> <mount>`` on stdout once it listens (``--port 0`` picks a free port, so
read the port from that line). The media factory is not shared, so every client session gets the
file from its start: tests are deterministic. Stop it with SIGSTOP to simulate a stalled camera and
SIGTERM to simulate a dropped one; a restart with the same ``--port`` takes the address back.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True, help="MP4 file with an H.264 or H.265 video track")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--mount", default="/test")
    parser.add_argument("--codec", choices=("h264", "h265"), default="h264")
    args = parser.parse_args()

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = args.file.replace("\\", "\\\\").replace('"', '\\"')
    # d.video_0 picks the video pad, so files with an audio track serve too.
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux name=d d.video_0 ! queue ! '
        f"{args.codec}parse ! rtp{args.codec}pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(False)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 1
    print(f"READY {server.get_bound_port()} {args.mount}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
