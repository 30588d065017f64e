"""The memory's layer-by-layer prefill and answer run on an int8 model (its projections are
called as modules) and stay close to the float32 model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stream_agent.memory import Memory
from stream_agent.models.quantize import quantize_model
from stream_agent.models.testing import build_test_adapter

from .conftest import feed

QUESTION = "What happens at the door?"


@torch.no_grad()
def test_memory_answers_on_an_int8_model(
    make_memory: Callable[..., Memory], tmp_path: Path
) -> None:
    """Also: the store's model fingerprint tells the int8 model from the float one (each gets
    its own store; the same folder would be refused as another model's)."""
    rng = np.random.default_rng(11)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    logits = {}
    for name in ("float", "int8"):
        model = build_test_adapter("llava_onevision", seed=0)
        if name == "int8":
            quantize_model(model)
        tokens = [model.encode_frames([f])[0] for f in frames]
        memory = make_memory(
            model, tmp_path / name, window_tokens=32, top_k=2, store_dtype="float32"
        )
        feed(memory, model, tokens)
        _, prepared = memory.prepare(QUESTION)
        logits[name] = prepared.logits
        assert len(prepared.evidence) >= 1
        memory.close()
    cos = float(F.cosine_similarity(logits["int8"].flatten(), logits["float"].flatten(), dim=0))
    assert cos > 0.99
