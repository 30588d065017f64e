"""The helpers every family shares, kept once in models/base.py."""

from __future__ import annotations

import pytest
import torch

from stream_agent.models import IncompleteModelError, VideoLLM
from stream_agent.models.base import placeholder_token
from stream_agent.models.testing import build_test_adapter


@pytest.fixture(scope="module")
def llava() -> VideoLLM:
    return build_test_adapter("llava_onevision")


def test_placeholder_token_is_checked_against_the_tokenizer(llava: VideoLLM) -> None:
    config = llava.model.config
    assert placeholder_token(llava.tokenizer, config.video_token_id) == llava.placeholder
    missing = len(llava.tokenizer) + 1000
    with pytest.raises(IncompleteModelError, match=f"no token for video_token_id {missing}"):
        placeholder_token(llava.tokenizer, missing)


def test_sequential_chunks_place_tokens_one_after_another(llava: VideoLLM) -> None:
    ids = llava.tokenizer("a short text", add_special_tokens=False)["input_ids"]
    chunk = llava.text_chunk(ids, 5)
    assert chunk.positions.tolist() == [list(range(5, 5 + len(ids)))]
    assert chunk.next_position == 5 + len(ids)
    assert torch.equal(chunk.embeds, llava.embed_text(ids).to(llava.dtype))
    embeds = torch.zeros(3, llava.lm_spec.hidden_size)
    after = llava.sequential_chunk(embeds, chunk.next_position)
    assert after.positions.tolist() == [[chunk.next_position + i for i in range(3)]]
    assert after.embeds.dtype == llava.dtype
