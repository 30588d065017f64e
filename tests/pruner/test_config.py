"""Config records: defaults, validation messages, building from a mapping, the factory."""

from __future__ import annotations

import pytest

from pruner import (
    METHODS,
    Budget,
    ConfigurationError,
    DyCokeOptions,
    HoliTomOptions,
    METokOptions,
    PrunerConfig,
    PrunerError,
    STCOptions,
    config_from_mapping,
    make_pruner,
)
from pruner.errors import BudgetError, FrameError, ShapeChangedError


def test_defaults_are_the_released_ones() -> None:
    config = PrunerConfig()
    assert config.method == "stc" and config.budget.ratio == 0.33
    assert config.stc.strategy == "gaussian"
    assert config.stc.channel_keep_ratio == 0.5
    assert config.stc.bandwidths == (0.125, 0.25, 0.5, 1.0, 2.0)
    assert config.stc.alpha == 0.5 and config.stc.gaussian_history is None
    assert config.holitom.tau == 0.8 and config.holitom.beta == 0.6 and config.holitom.knn == 7
    assert config.metok.cuts == 4 and config.metok.window == 32
    assert set(METHODS) == {"stc", "dycoke", "holitom", "metok", "none"}


def test_error_hierarchy() -> None:
    assert issubclass(ConfigurationError, PrunerError) and issubclass(
        ConfigurationError, ValueError
    )
    assert issubclass(BudgetError, ConfigurationError)
    assert issubclass(FrameError, PrunerError) and issubclass(ShapeChangedError, FrameError)


def test_budget_per_frame() -> None:
    assert Budget(tokens=64).per_frame(196) == 64
    assert Budget(tokens=500).per_frame(196) == 196
    assert Budget(ratio=0.33).per_frame(196) == 64
    assert Budget(ratio=0.25).per_frame(196) == 49
    assert Budget(ratio=0.29).per_frame(100) == 29  # not 28 from 28.999...
    assert Budget(ratio=0.01).per_frame(10) == 1  # never zero


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Budget(), "exactly one of tokens"),
        (lambda: Budget(tokens=4, ratio=0.5), "exactly one of tokens"),
        (lambda: Budget(tokens=0), "budget.tokens must be at least 1"),
        (lambda: Budget(tokens=True), "budget.tokens must be an integer"),
        (lambda: Budget(ratio=0.0), "budget.ratio must be in (0.0, 1.0]"),
        (lambda: Budget(ratio=1.5), "budget.ratio must be in (0.0, 1.0]"),
        (lambda: Budget(ratio=float("nan")), "finite number"),
        (lambda: Budget(tokens=4, min_tokens=5), "must not exceed budget.tokens"),
        (lambda: Budget(ratio=0.5, novelty_tau=1.0), "budget.novelty_tau"),
        (
            lambda: STCOptions(strategy="mean"),  # type: ignore[arg-type]
            "stc.strategy must be one of gaussian, dual_anchor",
        ),
        (lambda: STCOptions(channel_keep_ratio=0.0), "stc.channel_keep_ratio"),
        (lambda: STCOptions(bandwidths=()), "stc.bandwidths"),
        (lambda: STCOptions(bandwidths=(1.0, -2.0)), "stc.bandwidths[]"),
        (lambda: STCOptions(alpha=1.2), "stc.alpha"),
        (lambda: STCOptions(gaussian_history=0), "stc.gaussian_history"),
        (lambda: DyCokeOptions(k=1.5), "dycoke.k"),
        (lambda: HoliTomOptions(window=0), "holitom.window"),
        (lambda: HoliTomOptions(tau=1.0), "holitom.tau"),
        (lambda: METokOptions(strides=(2, 2, 4)), "strictly increasing"),
        (lambda: METokOptions(cuts=31, window=32), "metok.cuts"),
        (lambda: METokOptions(credit_frames=-1), "metok.credit_frames"),
        (lambda: PrunerConfig(method="fastv"), "pruner.method must be one of"),  # type: ignore[arg-type]
        (lambda: PrunerConfig(on_shape_change="ignore"), "pruner.on_shape_change"),  # type: ignore[arg-type]
        (lambda: PrunerConfig(method="dycoke", budget=Budget(ratio=0.2)), "at least 0.25"),
        (
            lambda: PrunerConfig(method="holitom", budget=Budget(ratio=0.3, adaptive=True)),
            "holitom adapts to novelty",
        ),
        (lambda: PrunerConfig(budget={"ratio": 0.3}), "pruner.budget must be a Budget"),  # type: ignore[arg-type]
    ],
)
def test_invalid_values_raise_clear_errors(build: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build()  # type: ignore[operator]
    assert message in str(caught.value)


def test_dycoke_low_ratio_is_fine_with_explicit_k() -> None:
    config = PrunerConfig(method="dycoke", budget=Budget(ratio=0.1), dycoke=DyCokeOptions(k=0.7))
    assert make_pruner(config).method == "dycoke"


def test_config_from_mapping() -> None:
    config = config_from_mapping(
        {
            "method": "metok",
            "budget": {"ratio": 0.25, "adaptive": True},
            "metok": {"strides": [1, 2, 4], "credit_frames": 2},
            "stc": {"bandwidths": [0.5, 1.0]},
        }
    )
    assert config.method == "metok" and config.budget == Budget(ratio=0.25, adaptive=True)
    assert config.metok.strides == (1, 2, 4) and config.metok.credit_frames == 2
    assert config.stc.bandwidths == (0.5, 1.0)
    assert make_pruner(config).method == "metok"


def test_config_from_mapping_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown key\(s\) tokens_per_frame in pruner;"):
        config_from_mapping({"tokens_per_frame": 64})
    with pytest.raises(ConfigurationError, match=r"in pruner.holitom; allowed: beta, knn, tau"):
        config_from_mapping({"holitom": {"D": 0.1}})
    with pytest.raises(ConfigurationError, match=r"pruner\.budget must be a mapping"):
        config_from_mapping({"budget": 64})


def test_make_pruner_builds_each_method() -> None:
    for method in METHODS:
        pruner = make_pruner(PrunerConfig(method=method))  # type: ignore[arg-type]
        assert pruner.method == method
        assert pruner.max_delay_frames == (7 if method == "holitom" else 0)
    with pytest.raises(ConfigurationError):
        make_pruner({"method": "stc"})  # type: ignore[arg-type]
