"""STC-Pruner against straightforward re-implementations of the released code and the paper."""

from __future__ import annotations

from collections import deque

import pytest
import torch
import torch.nn.functional as F

from pruner import Budget, PrunerConfig, STCOptions, make_pruner
from pruner.stc import gaussian_similarity, low_variance_channels
from tests.pruner.clips import run

GRID = (4, 5)
ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)


class ReleasedSTCPruner:
    """``model/prune.py`` of lern-to-write/STC, one frame per chunk, transcribed literally."""

    def __init__(self, k: int, history: int | None = None) -> None:
        self.k = k
        self.past: list[torch.Tensor] = []
        self.history = history

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channel_var = x.var(dim=0, unbiased=False)
        _, channels = torch.topk(channel_var, k=int(channel_var.shape[0] * 0.5), largest=False)
        selected = x[:, channels]
        reshaped = selected.view(1, x.shape[0], -1)
        self.past.append(reshaped.mean(dim=(0, 1), keepdim=True))
        kept = self.past if self.history is None else self.past[-self.history :]
        memory_mean = torch.mean(torch.cat(kept, dim=0), dim=0)
        norm = F.normalize(reshaped, dim=-1)

        def gauss(target: torch.Tensor) -> torch.Tensor:
            d2 = torch.sum((norm - target) ** 2, dim=-1)
            return sum(torch.exp(-d2 / (2 * a)) for a in ALPHAS)  # type: ignore[return-value]

        frame_scores = gauss(norm.mean(dim=1, keepdim=True))
        memory_scores = gauss(F.normalize(memory_mean, dim=-1).view(1, 1, -1))
        combined = (memory_scores + frame_scores)[0]
        _, idx = torch.topk(combined, k=self.k, largest=False)
        return idx.sort().values, combined


def _frames(count: int, dim: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(20, dim, generator=generator)
    return [base + 0.7 * torch.randn(20, dim, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("history", [None, 2])
def test_gaussian_matches_the_released_code(history: int | None) -> None:
    frames = _frames(8, 10, seed=1)
    config = PrunerConfig(budget=Budget(tokens=6), stc=STCOptions(gaussian_history=history))
    reference = ReleasedSTCPruner(k=6, history=history)
    for selection, frame in zip(run(make_pruner(config), frames, GRID), frames, strict=True):
        indices, similarity = reference(frame)
        assert torch.equal(selection.indices, indices)
        torch.testing.assert_close(selection.scores, -similarity)


def test_gaussian_toy_keeps_the_odd_token_out() -> None:
    # 19 identical tokens and one pointing the other way: the odd one is least like both anchors.
    frame = torch.ones(20, 4)
    frame[13] = -1.0
    pruner = make_pruner(PrunerConfig(budget=Budget(tokens=1)))
    (selection,) = pruner.push(frame, GRID, 0.0)
    assert selection.indices.tolist() == [13]
    # a uniform frame has no preference: ties go to the first positions
    (uniform,) = pruner.push(torch.ones(20, 4), GRID, 1.0)
    assert uniform.indices.tolist() == [0]
    # scoring sees only the low-variance half of the channels (released behaviour): a token that
    # differs only in the channels it makes high-variance looks like the others
    frame = torch.ones(20, 4)
    frame[13] = torch.tensor([1.0, -3.0, 2.0, 1.0])
    (blind,) = make_pruner(PrunerConfig(budget=Budget(tokens=1))).push(frame, GRID, 0.0)
    assert blind.indices.tolist() == [0]


def test_kernel_and_channel_helpers() -> None:
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    anchor = torch.tensor([1.0, 0.0])
    # distance^2 is 0 and 2: sum of exp(0) = 5 and sum of exp(-1/alpha)
    expected = torch.tensor([5.0, sum(torch.exp(torch.tensor(-1.0 / a)).item() for a in ALPHAS)])
    torch.testing.assert_close(gaussian_similarity(z, anchor, ALPHAS), expected)
    x = torch.tensor([[0.0, 5.0, 1.0, 0.0], [0.0, -5.0, -1.0, 0.1]])
    assert low_variance_channels(x, 0.5).tolist() == [0, 3]
    assert low_variance_channels(x, 0.1).tolist() == [0]  # at least one channel


def _dual_anchor_reference(
    frames: list[torch.Tensor], k: int, alpha: float, window: int
) -> list[torch.Tensor]:
    """The paper's form, S = a (1 - cos(z, a_t)) + (1 - a)(1 - cos(z, a_s)) with a = alpha and
    a_t the mean of the last W frame means."""
    fifo: deque[torch.Tensor] = deque(maxlen=window)
    kept = []
    for x in frames:
        channels = torch.topk(x.var(0, unbiased=False), int(x.shape[1] * 0.5), largest=False)
        z = F.normalize(x[:, channels.indices], dim=-1)
        spatial = z.mean(0)
        temporal = torch.stack(list(fifo)).mean(0) if fifo else spatial
        score = alpha * (1 - F.cosine_similarity(z, temporal[None], dim=-1)) + (1 - alpha) * (
            1 - F.cosine_similarity(z, spatial[None], dim=-1)
        )
        fifo.append(spatial)
        kept.append(torch.topk(score, k).indices.sort().values)
    return kept


@pytest.mark.parametrize(("alpha", "window"), [(0.5, 3), (0.8, 1)])
def test_dual_anchor_matches_the_paper_form(alpha: float, window: int) -> None:
    frames = _frames(7, 8, seed=4)
    config = PrunerConfig(
        budget=Budget(tokens=5),
        stc=STCOptions(strategy="dual_anchor", alpha=alpha, dual_anchor_window=window),
    )
    selections = run(make_pruner(config), frames, GRID)
    expected = _dual_anchor_reference(frames, 5, alpha, window)
    for selection, indices in zip(selections, expected, strict=True):
        assert torch.equal(selection.indices, indices)


def test_channel_aligned_memory_reads_history_at_current_channels() -> None:
    frames = _frames(5, 6, seed=9)
    config = PrunerConfig(budget=Budget(tokens=4), stc=STCOptions(channel_aligned_memory=True))
    selections = run(make_pruner(config), frames, GRID)
    means: list[torch.Tensor] = []
    for selection, x in zip(selections, frames, strict=True):
        channels = low_variance_channels(x, 0.5)
        means.append(x.mean(0))
        z = F.normalize(x[:, channels], dim=-1)
        memory = F.normalize(torch.stack(means).mean(0)[channels], dim=0)
        score = gaussian_similarity(z, z.mean(0), ALPHAS) + gaussian_similarity(z, memory, ALPHAS)
        assert torch.equal(selection.indices, torch.topk(score, 4, largest=False).indices.sort()[0])


def test_adaptive_budget_counts_changed_positions() -> None:
    generator = torch.Generator().manual_seed(2)
    first = torch.randn(20, 8, generator=generator)
    second = first.clone()
    second[[2, 7, 11]] = torch.randn(3, 8, generator=generator)
    config = PrunerConfig(budget=Budget(tokens=8, adaptive=True, min_tokens=2))
    kept = [s.num_kept for s in run(make_pruner(config), [first, second, second], GRID)]
    assert kept == [8, 3, 2]  # everything is new; three positions changed; nothing changed
