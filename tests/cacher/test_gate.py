"""The change gate on clips the tests draw (static with sensor noise, a pan, a cut, slow lighting
drift, a small object entering) and on the shared clip decoded with PyAV at 1 fps; its documented
promises as hypothesis properties."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacher import ChangeGate, ConfigurationError, FrameError, GateConfig, gate_config_from_mapping
from cacher.gate import small_luma

ROOT = Path(__file__).resolve().parents[2]
SHARED_CLIP = ROOT.parent / "shared" / "data" / "one-by-one-person-detection.mp4"

Frame = npt.NDArray[np.uint8]
H, W = 216, 384


def scene(seed: int = 0) -> npt.NDArray[np.float32]:
    """A textured still scene (smooth gradients plus a few flat shapes), float RGB 0..255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    base = 90 + 50 * np.sin(x / 37.0 + seed) * np.cos(y / 29.0) + 20 * np.sin((x + y) / 11.0)
    img = np.repeat(base[..., None], 3, axis=2)
    for _ in range(6):
        r0, c0 = int(rng.integers(0, H - 40)), int(rng.integers(0, W - 60))
        img[r0 : r0 + 40, c0 : c0 + 60] = rng.uniform(30, 220, size=3)
    return img.astype(np.float32)


def shot(img: npt.NDArray[np.float32], rng: np.random.Generator, sigma: float = 4.0) -> Frame:
    """``img`` as a camera frame with Gaussian sensor noise of ``sigma`` levels."""
    noisy = img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def run(gate: ChangeGate, frames: list[Frame], fps: float = 1.0) -> list[bool]:
    return [gate.check("cam", f, i / fps).passed for i, f in enumerate(frames)]


def test_static_scene_with_sensor_noise_is_gated_after_the_first_frame() -> None:
    rng = np.random.default_rng(1)
    img = scene()
    gate = ChangeGate(GateConfig(max_age_s=None))
    passed = run(gate, [shot(img, rng, sigma=6.0) for _ in range(20)])
    assert passed == [True] + [False] * 19
    assert gate.counters.gated == 19 and gate.counters.by_reason == {"first": 1, "unchanged": 19}


def test_gated_frame_carries_the_span_since_the_last_passed_frame() -> None:
    rng = np.random.default_rng(2)
    img = scene()
    gate = ChangeGate(GateConfig(max_age_s=None))
    first = gate.check("cam", shot(img, rng), 10.0)
    assert first.passed and first.reason == "first" and first.span is None
    for k, t in enumerate((11.0, 12.5, 14.0), start=1):
        d = gate.check("cam", shot(img, rng), t)
        assert not d.passed and d.reason == "unchanged"
        assert d.span == (10.0, t) and d.reference_time == 10.0 and d.skipped == k


def test_a_pan_passes_every_frame() -> None:
    rng = np.random.default_rng(3)
    wide = np.concatenate([scene(0), scene(5)], axis=1)
    frames = [shot(wide[:, 12 * i : 12 * i + W], rng) for i in range(15)]
    assert all(run(ChangeGate(), frames))


def test_a_scene_cut_passes() -> None:
    rng = np.random.default_rng(4)
    a, b = scene(0), scene(9)
    frames = [shot(a, rng) for _ in range(5)] + [shot(b, rng) for _ in range(5)]
    passed = run(ChangeGate(GateConfig(max_age_s=None)), frames)
    assert passed == [True, False, False, False, False, True, False, False, False, False]


def test_slow_lighting_drift_is_gated_mostly_and_refreshed() -> None:
    """A uniform brightening of 0.5 levels a frame: compensated, gated, until the accumulated
    shift passes the brightness threshold or the reference is max_age_s old."""
    rng = np.random.default_rng(5)
    img = scene()
    frames = [shot(img + 0.5 * i, rng) for i in range(120)]
    gate = ChangeGate(GateConfig(max_age_s=40.0))
    passed = run(gate, frames)
    assert sum(passed) <= 6 and gate.counters.gated_share > 0.9
    reasons = set(gate.counters.by_reason) - {"first", "unchanged"}
    assert reasons and reasons <= {"brightness", "max_age"}
    # without compensation a non-uniform drift (only the left half) accumulates and passes
    half = np.zeros_like(img)
    half[:, : W // 2] = 1.0
    frames = [shot(img + 0.6 * i * half, rng) for i in range(60)]
    gate = ChangeGate(GateConfig(max_age_s=None))
    passed = run(gate, frames)
    assert 2 <= sum(passed) <= 8 and gate.counters.by_reason.get("changed", 0) >= 1


def test_a_small_object_entering_passes_and_then_rests() -> None:
    """A 24x48 px figure (1.4 % of the frame) walks in from the left edge and stops."""
    rng = np.random.default_rng(6)
    img = scene()
    frames: list[Frame] = []
    positions = [None, None, None, 0, 30, 60, 90, 90, 90, 90]
    for x in positions:
        f = img.copy()
        if x is not None:
            f[140:188, x : x + 24] = (20.0, 20.0, 160.0)
        frames.append(shot(f, rng))
    passed = run(ChangeGate(GateConfig(max_age_s=None)), frames)
    assert passed[:3] == [True, False, False]
    assert passed[3:7] == [True, True, True, True]  # entering and each step
    assert passed[7:] == [False, False, False]  # standing still


def test_max_skipped_forces_a_refresh() -> None:
    rng = np.random.default_rng(7)
    img = scene()
    gate = ChangeGate(GateConfig(max_age_s=None, max_skipped=3))
    passed = run(gate, [shot(img, rng) for _ in range(9)])
    assert passed == [True, False, False, False, True, False, False, False, True]
    assert gate.counters.by_reason["max_skipped"] == 2


def test_streams_are_independent_shape_and_restart_pass() -> None:
    rng = np.random.default_rng(8)
    img = scene()
    gate = ChangeGate(GateConfig(max_age_s=None, max_streams=2))
    assert gate.check("a", shot(img, rng), 0.0).passed
    assert gate.check("b", shot(img, rng), 0.0).passed
    assert not gate.check("a", shot(img, rng), 1.0).passed
    assert gate.check("a", shot(img, rng)[:, :200], 2.0).reason == "shape"
    assert gate.check("a", shot(img, rng)[:, :200], 1.5).reason == "restart"
    gate.reset("b")
    assert gate.check("b", shot(img, rng), 5.0).reason == "first"
    assert gate.check("c", shot(img, rng), 0.0).reason == "first"  # evicts the oldest ("a")
    assert gate.counters.evictions == 1 and set(gate.streams) == {"b", "c"}


def test_disabled_gate_passes_everything() -> None:
    gate = ChangeGate(GateConfig(enabled=False))
    frame = np.zeros((H, W, 3), np.uint8)
    assert all(gate.check("a", frame, float(t)).reason == "disabled" for t in range(3))


def test_bad_frames_are_refused_and_lose_nothing() -> None:
    rng = np.random.default_rng(9)
    img = scene()
    gate = ChangeGate(GateConfig(max_age_s=None))
    gate.check("a", shot(img, rng), 0.0)
    with pytest.raises(FrameError, match="uint8"):
        gate.check("a", np.zeros((H, W, 3), np.float32), 1.0)
    with pytest.raises(FrameError, match="shape"):
        gate.check("a", np.zeros((H, W, 3, 1), np.uint8), 1.0)
    with pytest.raises(FrameError, match="smaller"):
        gate.check("a", np.zeros((10, 10, 3), np.uint8), 1.0)
    with pytest.raises(FrameError, match="finite"):
        gate.check("a", shot(img, rng), math.nan)
    assert not gate.check("a", shot(img, rng), 1.0).passed  # the reference survived
    assert gate.counters.frames == 2


def test_small_luma_is_the_area_average() -> None:
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[:2, :3] = 255
    small = small_luma(frame, 2, 2)
    assert small.shape == (2, 2)
    np.testing.assert_allclose(small, [[255.0, 0.0], [0.0, 0.0]], atol=1e-3)
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    np.testing.assert_allclose(small_luma(gray, 1, 1), [[gray.mean()]], rtol=1e-6)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cell": 5}, "divide"),
        ({"cell_threshold": -1}, "cell_threshold"),
        ({"changed_share": 1.5}, "changed_share"),
        ({"min_cells": 0}, "min_cells"),
        ({"max_age_s": 0}, "max_age_s"),
        ({"max_skipped": -1}, "max_skipped"),
        ({"enabled": "yes"}, "enabled"),
        ({"width": 2.5}, "width"),
    ],
)
def test_config_is_validated(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        GateConfig(**fields)  # type: ignore[arg-type]


def test_config_from_mapping_rejects_unknown_keys() -> None:
    assert gate_config_from_mapping({"cell_threshold": 8}).cell_threshold == 8
    with pytest.raises(ConfigurationError, match=r"unknown gate option.*threshold"):
        gate_config_from_mapping({"threshold": 8})
    assert GateConfig().cells == 144 and GateConfig().cells_to_pass == 2


# ---------------------------------------------------------------------------------- properties

_FRAMES = st.integers(0, 2**32 - 1).map(
    lambda seed: np.random.default_rng(seed).integers(0, 256, size=(40, 72, 3), dtype=np.uint8)
)


@settings(max_examples=40, deadline=None)
@given(
    frame=_FRAMES,
    gaps=st.lists(st.floats(0.0, 20.0, allow_nan=False), min_size=1, max_size=12),
    max_age=st.one_of(st.none(), st.floats(0.5, 60.0)),
    max_skipped=st.one_of(st.none(), st.integers(0, 6)),
)
def test_identical_frame_is_gated_unless_a_refresh_is_due(
    frame: Frame, gaps: list[float], max_age: float | None, max_skipped: int | None
) -> None:
    config = GateConfig(width=8, height=4, cell=4, max_age_s=max_age, max_skipped=max_skipped)
    gate = ChangeGate(config)
    t = 0.0
    gate.check("s", frame, t)
    last_passed, skipped = t, 0
    for gap in gaps:
        t += gap
        d = gate.check("s", frame.copy(), t)
        due = (max_age is not None and t - last_passed >= max_age) or (
            max_skipped is not None and skipped >= max_skipped
        )
        assert d.passed == due
        if d.passed:
            assert d.reason in ("max_age", "max_skipped")
            last_passed, skipped = t, 0
        else:
            assert d.span == (last_passed, t)
            skipped += 1


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    gaps=st.lists(st.floats(0.01, 5.0), min_size=1, max_size=30),
    max_age=st.floats(0.5, 20.0),
)
def test_a_refresh_happens_at_least_every_max_age(
    seed: int, gaps: list[float], max_age: float
) -> None:
    """Whatever the frames (here: the same scene with noise), no frame is gated at or past
    ``max_age_s`` after the last passed one."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(40, 72, 3)).astype(np.float32)
    gate = ChangeGate(GateConfig(width=8, height=4, cell=4, max_age_s=max_age))
    t = 0.0
    last = gate.check("s", shot(base, rng), t)
    last_passed = last.timestamp
    for gap in gaps:
        t += gap
        d = gate.check("s", shot(base, rng), t)
        if d.passed:
            last_passed = t
        else:
            assert t - last_passed < max_age


# ---------------------------------------------------------------------------------- shared clip


def decode_at_1fps(path: Path) -> list[tuple[float, Frame]]:
    av = pytest.importorskip("av")
    frames: list[tuple[float, Frame]] = []
    next_time = 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            t = float(frame.pts * frame.time_base)
            if t + 1e-6 < next_time:
                continue
            frames.append((t, np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)))
            next_time += 1.0
    return frames


@pytest.mark.skipif(not SHARED_CLIP.exists(), reason=f"shared clip {SHARED_CLIP} is absent")
def test_shared_clip_people_entering_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """Every frame with large motion against the previous second (someone walking in or out:
    a cell whose mean luma moved by > 40 levels) must pass; still stretches are gated."""
    frames = decode_at_1fps(SHARED_CLIP)
    assert len(frames) >= 130
    gate = ChangeGate()
    decisions = [gate.check("clip", f, t) for t, f in frames]
    smalls = [small_luma(f, 64, 36) for _, f in frames]
    moving = [
        i
        for i in range(1, len(frames))
        if np.abs(smalls[i] - smalls[i - 1]).reshape(9, 4, 16, 4).mean(axis=(1, 3)).max() > 40
    ]
    assert len(moving) >= 20  # the clip has a dozen entrances and exits
    missed = [i for i in moving if not decisions[i].passed]
    assert missed == []
    share = gate.counters.gated_share
    with capsys.disabled():
        print(f"\nshared clip at 1 fps: {len(frames)} frames, gated share {share:.3f}")
    assert share >= 0.3  # the empty scene and standing people are mostly gated
    # spans of gated frames start at the previous passed frame
    last_passed = decisions[0].timestamp
    for d in decisions[1:]:
        if d.passed:
            last_passed = d.timestamp
        else:
            assert d.span == (last_passed, d.timestamp)
