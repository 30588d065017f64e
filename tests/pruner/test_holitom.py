"""HoliTom against straightforward re-implementations: the DP, DPC-kNN and a whole window."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pruner import Budget, HoliTomOptions, PrunerConfig, make_pruner
from pruner.holitom import (
    apportion,
    dpc_knn_centres,
    merge_clusters,
    select_static_windows,
    static_window_gains,
)
from tests.pruner.clips import check_selection, run


def _gain(pairs: torch.Tensor, s: int, e: int) -> int:
    if e <= s:
        return 0
    return int(pairs[s:e].all(0).sum()) * (e - s)


def _segmentations(frames: int) -> list[list[tuple[int, int]]]:
    result = []
    for cuts in itertools.product([False, True], repeat=frames - 1):
        segments, start = [], 0
        for i, cut in enumerate(cuts):
            if cut:
                segments.append((start, i))
                start = i + 1
        segments.append((start, frames - 1))
        result.append(segments)
    return result


def test_gains_match_their_definition() -> None:
    pairs = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) > 0.3
    gains = static_window_gains(pairs)
    for s in range(6):
        for e in range(6):
            assert gains[s, e] == _gain(pairs, s, e)


@pytest.mark.parametrize("seed", range(6))
def test_dynamic_programme_is_optimal(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    frames = 2 + seed % 5
    pairs = torch.rand(frames - 1, 6, generator=generator) > 0.35
    segments, removed = select_static_windows(pairs, max_window=1024)
    best = max(sum(_gain(pairs, s, e) for s, e in seg) for seg in _segmentations(frames))
    assert removed == best
    assert sum(_gain(pairs, s, e) for s, e in segments) == removed
    assert segments[0][0] == 0 and segments[-1][1] == frames - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(segments))


def test_dynamic_programme_toy() -> None:
    static = torch.ones(3, 4, dtype=torch.bool)
    assert select_static_windows(static, 1024) == ([(0, 3)], 12.0)  # one span removes 3 x 4
    assert select_static_windows(static, 2) == ([(0, 1), (2, 3)], 8.0)  # spans of 2 at most
    cut = static.clone()
    cut[1] = False  # frame 2 differs from frame 1 everywhere
    assert select_static_windows(cut, 1024) == ([(0, 1), (2, 3)], 8.0)


def _reference_dpc(x: torch.Tensor, count: int, k: int) -> list[int]:
    """DPC-kNN with plain loops (position breaks density ties, as in the implementation)."""
    n, dim = x.shape
    d = [
        [math.dist(x[i].tolist(), x[j].tolist()) / math.sqrt(dim) for j in range(n)]
        for i in range(n)
    ]
    rho = [math.exp(-sum(v * v for v in sorted(d[i])[:k]) / k) for i in range(n)]
    dmax = max(max(row) for row in d)
    score = []
    for i in range(n):
        denser = [d[i][j] for j in range(n) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        score.append((min(denser) if denser else dmax) * rho[i])
    order = sorted(range(n), key=lambda i: (-score[i], i))
    return sorted(order[:count])


@pytest.mark.parametrize("seed", range(4))
def test_dpc_knn_matches_a_loop_reference(seed: int) -> None:
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(seed))
    centres, distance = dpc_knn_centres(x, 4, 3)
    assert centres.tolist() == _reference_dpc(x, 4, 3)
    values, slot = merge_clusters(x, centres, distance, beta=0.6)
    for j, centre in enumerate(centres.tolist()):
        members = [
            i
            for i in range(12)
            if i not in centres.tolist() and int(torch.argmin(distance[i, centres])) == j
        ]
        expected = x[centre] if not members else 0.6 * x[centre] + 0.4 * x[members].mean(0)
        torch.testing.assert_close(values[j], expected)
        assert all(int(slot[i]) == j for i in [*members, centre])


def test_dpc_knn_toy_two_blobs() -> None:
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [5.0, 5.2]])
    centres, distance = dpc_knn_centres(x, 2, 3)
    assert {i // 3 for i in centres.tolist()} == {0, 1}  # one centre per blob
    _, slot = merge_clusters(x, centres, distance, beta=0.6)
    assert len(set(slot[:3].tolist())) == 1 and len(set(slot[3:].tolist())) == 1


def test_apportion_toy_and_bounds() -> None:
    # the window example of the docs: r' = 16/28; the paper's rounding would keep 7 + 4*3 = 19
    assert apportion([12, 4, 4, 4, 4], 16) == [7, 3, 2, 2, 2]
    assert apportion([5, 0, 3], 100) == [5, 0, 3]
    assert apportion([3, 3, 3], 4) == [2, 1, 1]
    for sizes, total in (([7, 1, 9, 2], 6), ([196] * 8, 392), ([1] * 5, 2)):
        shares = apportion(sizes, total)
        assert sum(shares) == min(total, sum(sizes))
        assert all(0 <= a <= s for a, s in zip(shares, sizes, strict=True))
        assert all(abs(a - s * total / sum(sizes)) < 1 for a, s in zip(shares, sizes, strict=True))


def _reference_window(
    frames: list[torch.Tensor], saliency: list[torch.Tensor], tau: float, per_frame: int
) -> list[tuple[list[int], torch.Tensor]]:
    """HoliTom's outer stage on one window, written out step by step (released code, D = 0)."""
    count, n = len(frames), frames[0].shape[0]
    unit = [f / f.norm(dim=-1, keepdim=True) for f in frames]
    pairs = torch.zeros(count - 1, n, dtype=torch.bool)
    for t in range(count - 1):
        pairs[t] = (unit[t] * unit[t + 1]).sum(-1) > tau
    segments, _ = select_static_windows(pairs, 1024)
    sizes: list[int] = []
    for s, e in segments:
        if s == e:
            sizes.append(n)
        else:
            static = int(pairs[s:e].all(0).sum())
            sizes += [static] + [n - static] * (e - s + 1)
    shares = iter(apportion(sizes, per_frame * count))
    out: list[tuple[list[int], torch.Tensor]] = []
    for s, e in segments:
        mask = pairs[s:e].all(0) if e > s else torch.zeros(n, dtype=torch.bool)
        static_pos = [p for p in range(n) if mask[p]]
        dynamic_pos = [p for p in range(n) if not mask[p]]
        kept: dict[int, torch.Tensor] = {}
        if e > s:
            c = next(shares)
            means = torch.stack(
                [torch.stack([frames[f][p] for f in range(s, e + 1)]).mean(0) for p in static_pos]
            )
            if c >= len(static_pos):
                kept.update(zip(static_pos, means, strict=True))
            elif c > 0:
                centres = _reference_dpc(means, c, min(7, c))
                dist = torch.cdist(means, means) / math.sqrt(means.shape[1])
                for j, centre in enumerate(centres):
                    members = [
                        i
                        for i in range(len(static_pos))
                        if i not in centres
                        and centres[int(torch.argmin(dist[i, centres]))] == centre
                    ]
                    value = means[centre]
                    if members:
                        value = 0.6 * value + 0.4 * means[members].mean(0)
                    kept[static_pos[centre]] = value
                    _ = j
        for f in range(s, e + 1):
            c = next(shares)
            ranked = sorted(dynamic_pos, key=lambda p: (-float(saliency[f][p]), p))[:c]
            frame_kept = dict(kept) if f == s else {}
            frame_kept.update({p: frames[f][p] for p in ranked})
            positions = sorted(frame_kept)
            out.append(
                (
                    positions,
                    torch.stack([frame_kept[p] for p in positions])
                    if positions
                    else torch.zeros(0, frames[0].shape[1]),
                )
            )
    return out


@pytest.mark.parametrize(("seed", "per_frame"), [(0, 3), (1, 6), (2, 16), (3, 2)])
def test_a_window_matches_the_step_by_step_reference(seed: int, per_frame: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    grid, n, dim = (4, 4), 16, 6
    scene = torch.randn(n, dim, generator=generator)
    frames = []
    for t in range(6):
        x = scene + 0.05 * torch.randn(n, dim, generator=generator)
        moving = torch.randint(0, n, (3 + t % 2,), generator=generator)
        x[moving] = torch.randn(moving.shape[0], dim, generator=generator)
        if t == 3:
            x = torch.randn(n, dim, generator=generator)  # a cut
        frames.append(x)
    saliency = [torch.rand(n, generator=generator) for _ in frames]
    config = PrunerConfig(
        method="holitom", budget=Budget(tokens=per_frame), holitom=HoliTomOptions(window=6)
    )
    pruner = make_pruner(config)
    selections, groups = [], []
    for t, (x, s) in enumerate(zip(frames, saliency, strict=True)):
        ready = pruner.push(x, grid, float(t), saliency=s)
        if ready:
            groups.append([r.frame_index for r in ready])
        selections += ready
    rest = pruner.flush()
    groups.append([r.frame_index for r in rest])
    selections += rest
    # a segment closed by the cut is emitted early; the programme's choices for a prefix do not
    # depend on later frames, so each emitted group is a window of its own
    assert len(groups) > 1 and [f for g in groups for f in g] == list(range(6))
    expected = []
    for group in groups:
        expected += _reference_window(
            [frames[f] for f in group], [saliency[f] for f in group], 0.8, per_frame
        )
        assert sum(selections[f].num_kept for f in group) <= len(group) * per_frame
    for selection, frame, (positions, tokens) in zip(selections, frames, expected, strict=True):
        check_selection(selection, frame)
        assert selection.indices.tolist() == positions
        torch.testing.assert_close(selection.tokens, tokens)


def test_latency_dynamic_scenes_flow_static_scenes_wait_for_the_window() -> None:
    generator = torch.Generator().manual_seed(1)
    grid = (3, 3)
    config = PrunerConfig(method="holitom", holitom=HoliTomOptions(window=4))
    pruner = make_pruner(config)
    ready = [
        len(pruner.push(torch.randn(9, 64, generator=generator), grid, float(t))) for t in range(5)
    ]
    assert ready == [0, 1, 1, 1, 1]  # every frame is its own segment: one frame of delay
    pruner.reset()
    still = torch.randn(9, 64, generator=generator)
    ready = [len(pruner.push(still, grid, float(t))) for t in range(6)]
    assert ready == [0, 0, 0, 4, 0, 0] and pruner.pending == 2
    assert len(pruner.flush()) == 2


def test_given_saliency_picks_the_dynamic_tokens() -> None:
    generator = torch.Generator().manual_seed(3)
    grid = (3, 4)
    frames = [torch.randn(12, 4, generator=generator) for _ in range(2)]  # nothing static
    saliency = torch.zeros(12)
    saliency[[2, 9, 10]] = 1.0
    config = PrunerConfig(
        method="holitom", budget=Budget(tokens=3), holitom=HoliTomOptions(window=2)
    )
    pruner = make_pruner(config)
    out = pruner.push(frames[0], grid, 0.0, saliency=saliency)
    out += pruner.push(frames[1], grid, 1.0, saliency=saliency)
    assert [s.indices.tolist() for s in out] == [[2, 9, 10], [2, 9, 10]]
    assert torch.equal(out[0].scores, saliency)


def test_config_run_smoke_with_proxy_saliency() -> None:
    frames = [torch.randn(20, 3, generator=torch.Generator().manual_seed(t)) for t in range(5)]
    selections = run(make_pruner(PrunerConfig(method="holitom")), frames, (4, 5))
    for selection, frame in zip(selections, frames, strict=True):
        check_selection(selection, frame)


def test_buffered_frames_are_copies() -> None:
    buffer = torch.ones(4, 3)
    pruner = make_pruner(PrunerConfig(method="holitom", budget=Budget(ratio=1.0)))
    assert pruner.push(buffer, (2, 2), 0.0) == []
    buffer.fill_(7.0)  # the caller reuses its tensor for the next frame
    (selection,) = pruner.flush()
    assert torch.equal(selection.tokens, torch.ones(4, 3))
