"""The retrieval rows: only the newest blocks' rows stay in RAM (bounded however long the
stream), older ones come back from the index, and retrieval is the same either way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from stream_agent.memory import AnswerFinal, Memory
from stream_agent.memory.tiers import PagedRows
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import DecodeOptions, VisualTokens

from .conftest import stamp

QUESTION = "Who walked past the door?"


def _feed(memory: Memory, tokens: list[VisualTokens], count: int) -> None:
    for i in range(count):
        memory.append_step("cam", tokens[i % len(tokens)], stamp(i))


def test_ram_rows_stay_bounded_as_the_stream_grows(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, window_tokens=32, index_ram_blocks=4, ram_budget_bytes=0)
    state = None
    sizes = []
    for i in range(40):
        memory.append_step("cam", frame_tokens[i % len(frame_tokens)], stamp(i))
        state = memory.tiers.state("cam")
        sizes.append(memory.tiers.index_bytes(state))
    assert state is not None
    row = llava.lm_spec.num_layers * llava.lm_spec.num_kv_heads * llava.lm_spec.head_dim * 2
    assert len(state.reps) == 4 and len(state.blocks) == 40
    # the table never holds more than max(16, 2 * resident) rows, and internal retrieval keeps
    # no sketches in RAM at all
    assert max(sizes) <= 16 * row
    assert sizes[-1] == sizes[19]
    assert state.sketches.nbytes == 0


@pytest.mark.parametrize("retrieval", ["internal", "embedding", "hybrid"])
def test_paged_rows_retrieve_exactly_as_rows_in_ram(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
    retrieval: str,
) -> None:
    """Every block's rows in RAM, or only the newest three's: the same blocks per layer, the
    same logits, the same answer and evidence; the paged memory read the older rows."""
    options = {"window_tokens": 32, "top_k": 3, "recent_blocks": 1, "retrieval": retrieval}
    in_ram = make_memory(llava, tmp_path / "ram", index_ram_blocks=10_000, **options)  # type: ignore[arg-type]
    paged = make_memory(llava, tmp_path / "paged", index_ram_blocks=3, **options)  # type: ignore[arg-type]
    for memory in (in_ram, paged):
        _feed(memory, frame_tokens, 14)
    results = []
    for memory in (in_ram, paged):
        _, prepared = memory.prepare(QUESTION)
        events = list(memory.answer(QUESTION, options=DecodeOptions(max_new_tokens=4)))
        final = events[-1]
        assert isinstance(final, AnswerFinal)
        picked = [[c.meta.seq for c in layer] for layer in prepared.selections]
        results.append((picked, prepared.logits, final))
    (picked_a, logits_a, final_a), (picked_b, logits_b, final_b) = results
    assert picked_a == picked_b
    assert torch.equal(logits_a, logits_b)
    assert final_a.token_ids == final_b.token_ids
    assert final_a.evidence == final_b.evidence
    assert final_a.timings.index_reads == 0
    assert final_b.timings.index_reads > 0


def test_a_question_with_another_retrieval_reads_sketches_from_the_index(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    """Internal retrieval keeps no sketches in RAM; a question asked with embedding retrieval
    reads them from the index and retrieves as a memory that kept them."""
    memory = make_memory(llava, window_tokens=32, top_k=3, recent_blocks=1)
    _feed(memory, frame_tokens, 8)
    assert memory.tiers.state("cam").sketches.nbytes == 0
    _, prepared = memory.prepare(QUESTION, retrieval="embedding")
    picked = {c.meta.seq for layer in prepared.selections for c in layer}
    memory.close()
    keeping = make_memory(
        llava,
        memory.options.store_dir,
        window_tokens=32,
        top_k=3,
        recent_blocks=1,
        retrieval="embedding",
    )
    assert keeping.tiers.state("cam").sketches.nbytes > 0
    _, again = keeping.prepare(QUESTION)
    assert {c.meta.seq for layer in again.selections for c in layer} == picked


def test_paged_rows_gather_mixes_ram_and_index_in_order(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, window_tokens=32, index_ram_blocks=10_000)
    _feed(memory, frame_tokens, 10)
    state = memory.tiers.state("cam")
    ids = [m.block_id for m in state.blocks]
    everything = state.reps.gather(ids)
    paged = PagedRows(memory.store, state.stream_id, "rep_keys", 4, ids[-4:], everything[-4:])
    wanted = [ids[0], ids[2], ids[5], ids[6], ids[9]]
    assert torch.equal(paged.gather(wanted), everything[[0, 2, 5, 6, 9]])
    assert paged.index_reads == 3
    # evicted blocks leave the RAM rows
    paged.discard({ids[6]})
    assert len(paged) == 3
    assert torch.equal(paged.gather([ids[7], ids[9]]), everything[[7, 9]])
