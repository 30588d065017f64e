"""The daemon config: validation, file/line errors for YAML and TOML, secrets, flags, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream_agent.config import (
    DEFAULT_MODEL_ID,
    DaemonConfig,
    from_flags,
    load_config,
    redact_url,
    resolve_secrets,
)
from stream_agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

GOOD_YAML = """\
server:
  port: 9000
  token_env: SA_TOKEN
cameras:
  - name: dock
    url: rtsp://10.0.0.7:554/stream1
    username: viewer
    password_file: secrets/dock.txt
    fps: 0.5
  - name: door
    path: clips/door.mp4
    enabled: false
model:
  path: models/tiny
  device: cpu
memory:
  ram_budget: 512MiB
  retention_s: 2d
  store_dir: state
engine:
  frame_overflow: drop_newest
"""

GOOD_TOML = """\
# a comment
[server]
port = 9000
token_file = "token.txt"

[[cameras]]
name = "dock"
url = "rtsp://10.0.0.7/stream1"

[[cameras]]
name = "door"
device = "/dev/video0"
fps = 2

[memory]
top_k = 8
disk_budget = "1GiB"
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


# --- valid files ------------------------------------------------------------------------------


def test_a_yaml_file_loads_with_relative_paths_anchored_at_its_folder(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "daemon.yaml", GOOD_YAML))
    assert config.server.port == 9000 and config.server.host == "127.0.0.1"
    assert [c.name for c in config.cameras] == ["dock", "door"]
    assert [c.name for c in config.enabled_cameras] == ["dock"]
    assert config.cameras[0].fps == 0.5
    assert config.cameras[0].password_file == tmp_path / "secrets/dock.txt"
    assert config.cameras[1].path == tmp_path / "clips/door.mp4"
    assert config.model.source == str(tmp_path / "models/tiny")
    assert config.memory.ram_budget == 512 * 1024**2
    assert config.memory.retention_s == 2 * 86400
    assert config.memory.store_dir == tmp_path / "state"
    assert config.engine.frame_overflow == "drop_newest"


def test_a_toml_file_loads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "daemon.toml", GOOD_TOML))
    assert config.server.token_file == tmp_path / "token.txt"
    assert config.cameras[1].device == "/dev/video0" and config.cameras[1].fps == 2
    assert config.memory.top_k == 8 and config.memory.disk_budget == 1024**3


def test_defaults_are_safe() -> None:
    config = DaemonConfig.model_validate({"cameras": [{"name": "a", "path": "x.mp4"}]})
    assert config.server.host == "127.0.0.1"
    assert config.server.token_env is None and config.server.token_file is None
    assert config.model.source == DEFAULT_MODEL_ID
    assert config.engine.frame_overflow == "drop_oldest"
    assert config.server.max_message_bytes < config.server.transport_max_message_bytes


def test_the_config_is_frozen() -> None:
    config = DaemonConfig.model_validate({"cameras": [{"name": "a", "path": "x.mp4"}]})
    with pytest.raises(ValidationError):
        config.server.port = 1


# --- errors with lines: YAML ------------------------------------------------------------------


def test_yaml_unknown_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    text = GOOD_YAML.replace("    fps: 0.5\n", "    fsp: 0.5\n")
    path = _write(tmp_path, "d.yaml", text)
    message = _error(path)
    assert message.startswith(f"{path}:9: cameras[0].fsp: unknown key; did you mean 'fps'?")
    assert "allowed: " in message


def test_yaml_unknown_section_and_invalid_value_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", GOOD_YAML + "sirens:\n  x: 1\n")
    assert _error(path).startswith(f"{path}:22: sirens: unknown key")
    bad = GOOD_YAML.replace("frame_overflow: drop_newest", "frame_overflow: sometimes")
    message = _error(_write(tmp_path, "e.yaml", bad))
    assert message.startswith(f"{tmp_path / 'e.yaml'}:21: engine.frame_overflow: ")
    assert "drop_oldest" in message


def test_yaml_cross_field_errors_point_at_the_item(tmp_path: Path) -> None:
    text = GOOD_YAML.replace("    path: clips/door.mp4\n", "    path: a.mp4\n    device: /dev/v\n")
    path = _write(tmp_path, "d.yaml", text)
    assert _error(path).startswith(f"{path}:10: cameras[1]: camera 'door' needs exactly one of")


def test_yaml_missing_required_section(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", "server:\n  port: 1\n")
    assert _error(path) == f"{path}:1: cameras: this key is required"


def test_yaml_duplicate_keys_are_rejected_with_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", "server:\n  port: 1\n  port: 2\ncameras: []\n")
    assert _error(path) == f"{path}:3: key 'port' appears twice (first on line 2)"


def test_yaml_syntax_errors_have_a_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", "server:\n  port: 1\n  host: [unclosed\ncameras: 3\n")
    message = _error(path)
    assert message.startswith(f"{path}:4: not valid YAML")


# --- errors with lines: TOML ------------------------------------------------------------------


def test_toml_unknown_key_in_an_array_of_tables(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.toml", GOOD_TOML.replace("fps = 2", "fsp = 2"))
    message = _error(path)
    assert message.startswith(f"{path}:13: cameras[1].fsp: unknown key; did you mean 'fps'?")


def test_toml_invalid_value_in_a_table(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.toml", GOOD_TOML.replace("top_k = 8", "top_k = 0"))
    assert _error(path).startswith(f"{path}:16: memory.top_k: Input should be greater than")


def test_toml_dotted_keys_and_unknown_sections(tmp_path: Path) -> None:
    text = 'server.port = 1\nserver.hots = "x"\n\n[[cameras]]\nname = "a"\npath = "a.mp4"\n'
    path = _write(tmp_path, "d.toml", text)
    assert _error(path).startswith(f"{path}:2: server.hots: unknown key; did you mean 'host'?")
    text2 = GOOD_TOML + '\n[logging]\nlevel = "INFO"\n\n[sirens]\nrules = 1\n'
    path2 = _write(tmp_path, "e.toml", text2)
    assert _error(path2).startswith(f"{path2}:22: sirens: unknown key")


def test_toml_inline_tables_point_at_the_enclosing_key(tmp_path: Path) -> None:
    text = '# cams\ncameras = [\n  {name = "a", path = "a.mp4", x = 1},\n]\n[server]\nport = 1\n'
    path = _write(tmp_path, "d.toml", text)
    # the key path lives inside an inline array: the error points at its key's line
    assert _error(path).startswith(f"{path}:2: cameras[0].x: unknown key")


def test_toml_multiline_strings_do_not_confuse_the_search(tmp_path: Path) -> None:
    text = (
        '[model]\nid = """\nport = 3\n"""\n\n[server]\nprot = 1\n\n'
        '[[cameras]]\nname = "a"\npath = "a.mp4"\n'
    )
    path = _write(tmp_path, "d.toml", text)
    assert _error(path).startswith(f"{path}:7: server.prot: unknown key")


def test_toml_syntax_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.toml", "[server]\nport = \n")
    message = _error(path)
    assert message.startswith(f"{path}: not valid TOML") and "line 2" in message


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    assert "*.yaml" in _error(_write(tmp_path, "d.json", "{}"))
    assert "cannot read the config file" in _error(tmp_path / "absent.yaml")


# --- secrets ----------------------------------------------------------------------------------


def test_secrets_come_only_from_what_the_config_names(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/dock.txt").write_text("p@ss:word\n")
    config = load_config(_write(tmp_path, "d.yaml", GOOD_YAML))
    secrets = resolve_secrets(config, {"SA_TOKEN": "tok-123"})
    assert secrets.token == "tok-123"
    assert "tok-123" not in repr(secrets) and "p@ss" not in repr(secrets)
    assert (
        secrets.camera_url(config.cameras[0]) == "rtsp://viewer:p%40ss%3Aword@10.0.0.7:554/stream1"
    )
    assert secrets.camera_url(config.cameras[1]) == str(tmp_path / "clips/door.mp4")
    # a config that names no token gets none, whatever the environment holds
    plain = DaemonConfig.model_validate({"cameras": [{"name": "a", "path": "a.mp4"}]})
    assert resolve_secrets(plain, {"SA_TOKEN": "tok-123", "TOKEN": "x"}).token is None


def test_missing_secrets_are_reported(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "d.yaml", GOOD_YAML))
    with pytest.raises(ConfigError, match="environment variable SA_TOKEN, which is not set"):
        resolve_secrets(config, {})
    with pytest.raises(ConfigError, match=r"password of camera 'dock' comes from .*cannot be read"):
        resolve_secrets(config, {"SA_TOKEN": "t"})
    empty = _write(tmp_path, "t.toml", GOOD_TOML)
    (tmp_path / "token.txt").write_text("  \n")
    with pytest.raises(ConfigError, match="which is empty"):
        resolve_secrets(load_config(empty), {})


def test_token_env_and_file_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="either token_env or token_file"):
        DaemonConfig.model_validate(
            {
                "server": {"token_env": "A", "token_file": "f"},
                "cameras": [{"name": "a", "path": "a.mp4"}],
            }
        )


def test_urls_are_redacted_in_the_summary(tmp_path: Path) -> None:
    assert redact_url("rtsp://u:secret@h:554/x") == "rtsp://u:***@h:554/x"
    assert redact_url("/dev/video0") == "/dev/video0"
    config = DaemonConfig.model_validate(
        {"cameras": [{"name": "a", "url": "rtsp://admin:hunter2@10.1.1.1/live"}]}
    )
    summary = config.summary()
    assert "hunter2" not in summary and "rtsp://admin:***@10.1.1.1/live" in summary


def test_secret_query_values_are_redacted_through_the_config_too() -> None:
    """The config uses ingest's one redact_url: secret query values are masked as well."""
    assert redact_url("rtsp://h/x?token=abc123&channel=2") == "rtsp://h/x?token=***&channel=2"
    url = "rtsp://admin:hunter2@10.1.1.1/live?api_key=s3cr3tk3y&ch=1"
    config = DaemonConfig.model_validate({"cameras": [{"name": "a", "url": url}]})
    summary = config.summary()
    assert "hunter2" not in summary and "s3cr3tk3y" not in summary
    assert "rtsp://admin:***@10.1.1.1/live?api_key=***&ch=1" in summary


@pytest.mark.parametrize("value", ["1.0e+400", f"{10**400}", f'"{10**12}d"', ".inf"])
def test_durations_too_long_are_config_errors_with_a_line(tmp_path: Path, value: str) -> None:
    text = GOOD_YAML.replace("retention_s: 2d", f"retention_s: {value}")
    message = _error(_write(tmp_path, "long.yaml", text))
    assert message.startswith(f"{tmp_path / 'long.yaml'}:18: memory.retention_s: ")
    assert "too long a duration" in message


# --- flags ------------------------------------------------------------------------------------


def test_from_flags_builds_the_same_object(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    config = from_flags(
        ["rtsp://cam/1", "door=clip.mp4", "/dev/video2"],
        model=str(model_dir),
        port=0,
        fps=2,
        token_env="SA_TOKEN",
    )
    assert [(c.name, c.location) for c in config.cameras] == [
        ("cam0", "rtsp://cam/1"),
        ("door", "clip.mp4"),
        ("cam2", "/dev/video2"),
    ]
    assert all(c.fps == 2 for c in config.cameras)
    assert config.model.path == model_dir and config.server.port == 0
    assert config.server.token_env == "SA_TOKEN"
    assert from_flags(["a.mp4"], model="org/model").model.id == "org/model"
    assert from_flags(["a.mp4"]).model.source == DEFAULT_MODEL_ID


def test_from_flags_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="at least one --source"):
        from_flags([])
    with pytest.raises(ConfigError, match=r"^--fps: "):
        from_flags(["a.mp4"], fps=0)
    with pytest.raises(ConfigError, match=r"^--port: "):
        from_flags(["a.mp4"], port=70000)
    with pytest.raises(ConfigError, match="two cameras are named 'x'"):
        from_flags(["x=a.mp4", "x=b.mp4"])


# --- check-config, as a user runs it ----------------------------------------------------------


def _check_config(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_agent", "check-config", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=60,
    )


def test_check_config_prints_ok_and_a_summary(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.toml", GOOD_TOML)
    (tmp_path / "token.txt").write_text("secret-token\n")
    done = _check_config(str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"OK: {path}\n")
    assert "cameras: 2 enabled of 2" in done.stdout
    assert "secret-token" not in done.stdout


def test_check_config_reports_the_line_and_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", GOOD_YAML.replace("  port: 9000", "  prot: 9000"))
    done = _check_config(str(path))
    assert done.returncode == 2
    assert f"{path}:2: server.prot: unknown key; did you mean 'port'?" in done.stderr
    assert done.stdout == ""


def test_check_config_checks_secrets_unless_told_not_to(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", GOOD_YAML)
    done = _check_config(str(path))
    assert done.returncode == 2 and "SA_TOKEN, which is not set" in done.stderr
    done = _check_config(str(path), "--no-secrets")
    assert done.returncode == 0 and done.stdout.startswith("OK: ")


def test_only_the_real_error_is_reported_for_a_single_bad_camera(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", "cameras:\n  - name: dock\n    url: rtsp://h/s\n    fsp: 1\n")
    message = _error(path)
    assert message.startswith(f"{path}:4: cameras[0].fsp: unknown key")
    assert "more" not in message


def test_mqtt_and_alerts_sections_are_validated(tmp_path: Path) -> None:
    ok = GOOD_YAML + (
        "mqtt:\n  host: broker.lan\n  port: 1884\n  password_env: MQTT_PW\n"
        "alerts:\n  rules:\n    - name: at-door\n      cameras: [door]\n"
        "      condition: Is someone at the door?\n      cooldown_s: 2m\n"
    )
    names = [c.name for c in load_config(_write(tmp_path, "a.yaml", ok)).cameras]
    config = load_config(_write(tmp_path, "a.yaml", ok.replace("[door]", f"[{names[0]}]")))
    assert config.mqtt is not None and config.mqtt.port == 1884
    assert config.alerts.rules[0].cooldown_s == 120
    assert config.alerts_config.mqtt == config.mqtt
    assert config.alerts_data_dir == config.memory.store_dir
    assert "MQTT broker.lan:1884" in config.summary()
    # a rule's camera must exist
    message = _error(_write(tmp_path, "b.yaml", ok.replace("[door]", "[attic]")))
    assert "no camera named 'attic'" in message
    # MQTT settings under alerts: pointed at the top-level section
    moved = GOOD_YAML + "alerts:\n  mqtt:\n    host: x\n"
    assert "top-level 'mqtt:'" in _error(_write(tmp_path, "c.yaml", moved))
    # bad values name the line
    bad = GOOD_YAML + "mqtt:\n  port: 0\n"
    assert ": mqtt.port: " in _error(_write(tmp_path, "d.yaml", bad))
    unknown = GOOD_YAML + "mqtt:\n  hots: x\n"
    assert "did you mean 'host'" in _error(_write(tmp_path, "e.yaml", unknown))


def test_mqtt_flags() -> None:
    config = from_flags(["clip.mp4"], mqtt_host="broker.lan", mqtt_port=1884)
    assert config.mqtt is not None and (config.mqtt.host, config.mqtt.port) == ("broker.lan", 1884)
    assert from_flags(["clip.mp4"]).mqtt is None
    with pytest.raises(ConfigError, match="--mqtt-port"):
        from_flags(["clip.mp4"], mqtt_port=70000)
