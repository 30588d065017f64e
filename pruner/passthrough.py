"""The ``none`` method: every token goes to the LLM, so the pipeline can always run uncompressed."""

from __future__ import annotations

import torch

from pruner.base import Frame, StreamPruner, plain_selection
from pruner.records import Selection


class PassthroughPruner(StreamPruner):
    """Keeps all N tokens of every frame; the budget is ignored; scores are all ones."""

    method = "none"

    def _describe(self) -> str:
        return "keeps every token"

    def _push(self, frame: Frame) -> list[Selection]:
        device = frame.tokens.device
        keep = torch.arange(frame.num_tokens, device=device)
        scores = torch.ones(frame.num_tokens, dtype=torch.float32, device=device)
        return [plain_selection(self.method, frame, keep, scores)]

    def _reset_state(self) -> None:
        """Nothing is kept between frames."""
