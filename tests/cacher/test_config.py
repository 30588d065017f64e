"""Config records: defaults are the released code's, every field is validated, mappings with
unknown keys are refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from cacher import AdaptiveOptions, CacherConfig, ConfigurationError, config_from_mapping


def test_defaults_follow_the_released_code() -> None:
    config = CacherConfig()
    assert config.cache_interval == 2
    assert config.update_token_ratio == 0.25
    assert config.group_size == 1 and config.group_layout == "consecutive"
    assert config.storage_dtype(torch.float32) is torch.float32
    assert CacherConfig(cache_dtype="float16").storage_dtype(torch.float32) is torch.float16
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "off"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "fast"}, "cacher.mode"),
        ({"cache_interval": 0}, "cache_interval"),
        ({"cache_interval": 1.5}, "cache_interval"),
        ({"update_token_ratio": 0.0}, "update_token_ratio"),
        ({"update_token_ratio": 1.5}, "update_token_ratio"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": 2, "group_layout": "window"}, "square number"),
        ({"group_layout": "zigzag"}, "group_layout"),
        ({"cache_dtype": "int8"}, "cache_dtype"),
        ({"adaptive": {"max_age": 3}}, "AdaptiveOptions"),
    ],
)
def test_cacher_config_is_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CacherConfig(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"token_threshold": -0.1}, "token_threshold"),
        ({"token_threshold": float("nan")}, "token_threshold"),
        ({"max_ratio": 0.0}, "max_ratio"),
        ({"min_ratio": 0.6, "max_ratio": 0.5}, "must not exceed"),
        ({"drift_similarity": 1.2}, "drift_similarity"),
        ({"max_age": 0}, "max_age"),
        ({"max_age": True}, "max_age"),
        ({"settle_cost": 0}, "settle_cost"),
        ({"settle_cost": float("inf")}, "settle_cost"),
    ],
)
def test_adaptive_options_are_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AdaptiveOptions(**fields)


def test_config_from_mapping() -> None:
    config = config_from_mapping(
        {"mode": "paper", "cache_interval": 4, "adaptive": {"token_threshold": 0.05}}
    )
    assert config == CacherConfig(
        mode="paper", cache_interval=4, adaptive=AdaptiveOptions(token_threshold=0.05)
    )
    with pytest.raises(ConfigurationError, match="unknown cacher option"):
        config_from_mapping({"ratio": 0.3})
    with pytest.raises(ConfigurationError, match=r"unknown cacher\.adaptive option"):
        config_from_mapping({"adaptive": {"threshold": 0.3}})
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        config_from_mapping({"adaptive": 3})
