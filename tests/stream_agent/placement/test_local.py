"""``placement: local`` (the default) needs nothing of Ray: building the daemon and every
placement module but the two Ray ones leaves ``ray`` unimported; only those two import it."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RAY_MODULES = {"ray_actor.py", "ray_group.py"}


def test_local_placement_imports_no_ray(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from stream_agent.config import DaemonConfig, Secrets
        from stream_agent.daemon import Daemon
        import stream_agent.placement.base, stream_agent.placement.local
        import stream_agent.placement.policy, stream_agent.placement.merge
        import stream_agent.placement.camera_set
        config = DaemonConfig.model_validate({{
            "cameras": [{{"name": "a", "path": "x.mp4"}}],
            "memory": {{"store_dir": {str(tmp_path / "memory")!r}}},
            "engine": {{"placement": "local"}},
        }})
        daemon = Daemon(config, Secrets(), load=lambda: None)
        print("ray" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_only_the_ray_modules_import_ray() -> None:
    offenders = []
    for path in sorted((ROOT / "stream_agent").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            ray = any(n == "ray" or n.startswith("ray.") for n in names)
            if ray and path.name not in RAY_MODULES:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
