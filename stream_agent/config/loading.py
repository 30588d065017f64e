"""Reading a config file (YAML or TOML) into a :class:`DaemonConfig`, with errors that name the
file and the LINE of the offending key.

Pydantic knows only the key path of an error, so the path is mapped back to the parsed document:
YAML through PyYAML's node marks, TOML through a small search over the text. Unknown keys get the
allowed ones listed (found by walking the section models, so a new section needs nothing here)
and the nearest one suggested. Relative paths in a file are relative to the file's folder.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError

from stream_agent.config.sections import DaemonConfig
from stream_agent.errors import ConfigError

Loc = tuple[int | str, ...]


def load_config(path: Path | str) -> DaemonConfig:
    """Read and validate a ``.yaml``/``.yml`` or ``.toml`` file; errors name file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, path)
    if suffix == ".toml":
        return parse_toml(text, path)
    raise ConfigError(f"{path}: unknown config format; name the file *.yaml, *.yml or *.toml")


def parse_yaml(text: str, path: Path) -> DaemonConfig:
    """Validate YAML text; ``path`` names it in errors and anchors relative paths."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if node is not None:
        _reject_duplicate_yaml_keys(node, path)
    return _validate(data, path, lambda loc: _yaml_line(node, loc))


def parse_toml(text: str, path: Path) -> DaemonConfig:
    """Validate TOML text; ``path`` names it in errors and anchors relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _validate(data, path, lambda loc: _toml_line(text, loc))


def _validate(
    data: object, path: Path, line_of: typing.Callable[[Loc], int | None]
) -> DaemonConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:1: the config must be a mapping of sections (server, cameras, ...)"
        )
    try:
        return DaemonConfig.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, line_of)) from None


def _describe(exc: ValidationError, path: Path, line_of: typing.Callable[[Loc], int | None]) -> str:
    errors = exc.errors(include_url=False)
    locs = [tuple(e["loc"]) for e in errors]
    messages = []
    for err in errors:
        loc: Loc = tuple(err["loc"])
        # A list whose items failed is also reported "too short"; the items' errors say it all.
        if err["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
            continue
        line = line_of(loc)
        where = f"{path}:{line}" if line is not None else str(path)
        messages.append(f"{where}: {_dotted(loc) or '(top level)'}: {error_sentence(err, loc)}")
    first, *rest = messages
    if rest:
        first += f" (and {len(rest)} more: " + "; ".join(rest) + ")"
    return first


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def error_sentence(err: Any, loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"unknown key{suggestion} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return "this key is required"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def _fields_at(loc: Loc) -> list[str]:
    """The keys allowed at a location, found by walking the model classes."""
    model: Any = DaemonConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        info = model.model_fields.get(str(part))
        if info is None:
            return []
        model = _inner_model(info.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    """``tuple[CameraConfig, ...]`` / ``X | None`` -> the model class inside, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (tuple, list, typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


# --- YAML: node marks -------------------------------------------------------------------------


def _reject_duplicate_yaml_keys(node: yaml.Node, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise ConfigError(
                        f"{path}:{key.start_mark.line + 1}: key {key.value!r} appears twice "
                        f"(first on line {seen[key.value]})"
                    )
                seen[key.value] = key.start_mark.line + 1
            _reject_duplicate_yaml_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_yaml_keys(item, path)


def _yaml_line(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the key at ``loc`` (or of its nearest ancestor that exists)."""
    if root is None:
        return 1
    node: yaml.Node = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(
                (
                    (k, v)
                    for k, v in node.value
                    if isinstance(k, yaml.ScalarNode) and k.value == part
                ),
                None,
            )
            if match is None:
                return line
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


# --- TOML: a search over the text -------------------------------------------------------------

_TOML_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_TOML_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def _split_toml_key(text: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _toml_key_lines(text: str) -> dict[Loc, int]:
    """Map each key path defined in the text to its line (tables, arrays of tables, dotted keys).

    Keys inside inline tables and arrays are not mapped; errors there point at the line of the
    enclosing key, which is where the user has to look anyway.
    """
    lines: dict[Loc, int] = {}
    table: Loc = ()
    array_counts: dict[Loc, int] = {}
    in_multiline: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if raw.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _TOML_TABLE.match(raw)
        if header is not None and not _TOML_KEY.match(raw):
            names = _split_toml_key(header.group(2))
            prefix: Loc = ()
            # Resolve earlier arrays of tables along the way ([[cameras]] then [cameras.x]).
            for name in names:
                prefix = (*prefix, name)
                if prefix in array_counts and prefix != tuple(names):
                    prefix = (*prefix, array_counts[prefix] - 1)
            if header.group(1) == "[[":
                key = tuple(prefix)
                array_counts[key] = array_counts.get(key, 0) + 1
                lines.setdefault(key, number)
                table = (*key, array_counts[key] - 1)
            else:
                table = tuple(prefix)
            lines.setdefault(table, number)
            continue
        key_match = _TOML_KEY.match(raw)
        if key_match is None:
            continue
        full = (*table, *_split_toml_key(key_match.group(1)))
        for depth in range(len(table) + 1, len(full) + 1):
            lines.setdefault(full[:depth], number)
        rest = raw[key_match.end() :]
        for quote_kind in ('"""', "'''"):
            if rest.count(quote_kind) % 2 == 1:
                in_multiline = quote_kind
                break
    return lines


def _toml_line(text: str, loc: Loc) -> int | None:
    lines = _toml_key_lines(text)
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in lines:
            return lines[loc[:depth]]
    return 1
