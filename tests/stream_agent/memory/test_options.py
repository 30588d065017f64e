"""The memory options are validated when built, with messages that say what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_agent.errors import ConfigError
from stream_agent.memory import MemoryConfigError, MemoryOptions


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"window_tokens": 0}, "window_tokens"),
        ({"top_k": -1}, "top_k"),
        ({"recent_blocks": -1}, "recent_blocks"),
        ({"ram_budget_bytes": -5}, "ram_budget_bytes"),
        ({"retention_s": 0}, "retention_s"),
        ({"store_dtype": "int4"}, "store_dtype"),
        ({"position_limit": 1}, "position_limit"),
        ({"query_rows": "all"}, "query_rows"),
        ({"segment_bytes": True}, "segment_bytes"),
    ],
)
def test_invalid_options_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(MemoryConfigError, match=message) as info:
        MemoryOptions(store_dir=Path("x"), **changes)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)


def test_defaults_and_changes(tmp_path: Path) -> None:
    options = MemoryOptions(store_dir=tmp_path)
    assert (options.window_tokens, options.top_k, options.store_dtype) == (15_000, 64, "float16")
    changed = options.with_changes(top_k=8)
    assert changed.top_k == 8 and changed.store_dir == tmp_path
    with pytest.raises(MemoryConfigError, match="unknown"):
        options.with_changes(topk=8)


def test_from_daemon_config(tmp_path: Path) -> None:
    from stream_agent.config import MemoryConfig

    section = MemoryConfig(store_dir=tmp_path, top_k=16, window_tokens=4096, retrieval="hybrid")
    options = MemoryOptions.from_config(section, system_prompt="Watch.")
    assert options.top_k == 16 and options.window_tokens == 4096
    assert options.retrieval == "hybrid"
    assert options.ram_budget_bytes == int(section.ram_budget)
    assert options.system_prompt == "Watch."
