"""Int8 inference: a quantized tiny LLaVA-OneVision stays close to float32 (vision features and
LLM logits), runs the cacher and the memory's layer-by-layer forward, and refuses what it cannot
do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cacher import CacherConfig, StreamCacher, stack_hidden
from cacher.layers import QuantizedLinear
from stream_agent.models.base import VideoLLM
from stream_agent.models.errors import DeviceError
from stream_agent.models.quantize import Int8Linear, quantize_model
from stream_agent.models.testing import build_test_adapter


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


@pytest.fixture(scope="module")
def pair() -> tuple[VideoLLM, VideoLLM]:
    reference = build_test_adapter("llava_onevision", seed=0)
    quantized = build_test_adapter("llava_onevision", seed=0)
    report = quantize_model(quantized)
    assert report.parts == ("vision", "llm")
    assert report.vision_layers == len(reference.vision_layers)
    assert report.llm_linears == 7 * reference.lm_spec.num_layers + 1  # q k v o gate up down + head
    assert report.int8_bytes < report.float_bytes / 3
    return reference, quantized


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]


@torch.no_grad()
def test_vision_features_close_to_float(pair: tuple[VideoLLM, VideoLLM]) -> None:
    reference, quantized = pair
    assert all(isinstance(layer.out, QuantizedLinear) for layer in quantized.vision_layers)
    for frame in _frames():
        want = reference.encode_frames([frame])[0].embeds
        got = quantized.encode_frames([frame])[0].embeds
        assert _cos(got, want) > 0.99


@torch.no_grad()
def test_the_cacher_runs_the_quantized_tower(pair: tuple[VideoLLM, VideoLLM]) -> None:
    reference, quantized = pair
    spec = quantized.vision_spec
    outs = {}
    for name, model in (("float", reference), ("int8", quantized)):
        cacher = StreamCacher(model.vision_layers, CacherConfig(), keep=spec.feature_layers)
        encodings = [
            cacher.encode(model.embed_patches(model.preprocess([f]))[0]) for f in _frames()
        ]
        outs[name] = model.tokens_from_hidden(stack_hidden(encodings))
    for got, want in zip(outs["int8"], outs["float"], strict=True):
        assert _cos(got.embeds, want.embeds) > 0.99


@torch.no_grad()
def test_llm_logits_close_to_float(pair: tuple[VideoLLM, VideoLLM]) -> None:
    reference, quantized = pair
    assert isinstance(quantized.lm_head, Int8Linear)
    assert isinstance(quantized.decoder.layers[0].self_attn.k_proj, Int8Linear)
    ids = reference.tokenizer("what is on the table next to the door", add_special_tokens=False)[
        "input_ids"
    ]
    logits = {}
    for name, model in (("float", reference), ("int8", quantized)):
        cache = model.new_cache()
        tokens = model.encode_frames(_frames()[:1])[0]
        chunk = model.visual_chunk(tokens, 0)
        model.prefill(cache, chunk)
        out = model.prefill(cache, model.text_chunk(ids, chunk.next_position), want_logits=True)
        assert out is not None
        logits[name] = out
    assert _cos(logits["int8"], logits["float"]) > 0.99


def test_refuses_what_it_cannot_do() -> None:
    model = build_test_adapter("llava_onevision", seed=1)
    with pytest.raises(ValueError, match="parts"):
        quantize_model(model, parts=("audio",))
    half = build_test_adapter("llava_onevision", seed=1, dtype="float16")
    with pytest.raises(DeviceError, match="float32"):
        quantize_model(half)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "smolvlm"])
@torch.no_grad()
def test_other_families_quantize_close_to_float(family: str) -> None:
    """Qwen2-VL (fused q/k/v, rotary, per-temporal-patch masks), Qwen2.5-VL (gated MLP, RMSNorm,
    window masks) and SmolVLM (Llama LLM)."""
    reference = build_test_adapter(family, seed=0)
    quantized = build_test_adapter(family, seed=0)
    report = quantize_model(quantized)
    assert report.vision_layers == len(reference.vision_layers) and report.llm_linears > 0
    frames = _frames()[:2] if family.startswith("qwen") else _frames()[:1]
    want = reference.encode_frames(frames)[0].embeds
    got = quantized.encode_frames(frames)[0].embeds
    assert _cos(got, want) > 0.99
    ids = reference.tokenizer("what is on the table", add_special_tokens=False)["input_ids"]
    logits = []
    for model in (reference, quantized):
        out = model.prefill(model.new_cache(), model.text_chunk(ids, 0), want_logits=True)
        assert out is not None
        logits.append(out)
    assert _cos(logits[1], logits[0]) > 0.99
