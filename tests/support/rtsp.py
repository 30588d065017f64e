"""The real RTSP server of the tests: ``tests/support/rtsp_server.py`` (GStreamer, run by
Debian's ``/usr/bin/python3``) as a subprocess serving one file on a loopback port."""

from __future__ import annotations

import select
import signal
import subprocess
from functools import cache
from pathlib import Path

RTSP_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")


@cache
def gst_rtsp_problem() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None if it can."""
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing (Debian's python3 runs the GStreamer RTSP server)"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer"
    )
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", probe], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        return (
            f"{SYSTEM_PYTHON} cannot import GstRtspServer (scripts/setup installs python3-gi and "
            "gir1.2-gst-rtsp-server-1.0): " + done.stderr.strip()[-200:]
        )
    return None


class RtspServer:
    """The server process. SIGSTOP simulates a stalled camera, SIGTERM a dropped one; ``start``
    again serves on the port of the previous run (a camera coming back)."""

    def __init__(self, file: Path, mount: str = "/test") -> None:
        self.file = file
        self.mount = mount
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> RtspServer:
        """Start (or restart on the same port) and wait until it listens."""
        self.close()
        self.proc = subprocess.Popen(
            [
                str(SYSTEM_PYTHON),
                str(RTSP_SCRIPT),
                "--file",
                str(self.file),
                "--port",
                str(self.port),
                "--mount",
                self.mount,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=5)
            raise RuntimeError(f"RTSP server did not start: {line!r} {err[-500:]!r}")
        self.port = int(line.split()[1])
        return self

    def url(self, credentials: str = "") -> str:
        auth = f"{credentials}@" if credentials else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{self.mount}"

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
