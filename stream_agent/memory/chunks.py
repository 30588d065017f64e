"""Building a text block's chunk (video steps are laid out by the memory itself, see
:meth:`~stream_agent.memory.memory.Memory.append_step`)."""

from __future__ import annotations

from stream_agent.models.base import LanguageModel
from stream_agent.models.records import LMChunk


def text_chunk(model: LanguageModel, text: str) -> LMChunk:
    """A text observation's block at position 0 (its tokens without special tokens), for
    :meth:`~stream_agent.memory.memory.Memory.append`."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return model.text_chunk([int(i) for i in ids], 0)
