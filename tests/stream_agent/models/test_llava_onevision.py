"""The LLaVA-OneVision adapter against transformers' own classes on a tiny random checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from cacher.layers import SeparateQKV, encoder_forward
from stream_agent.models import (
    DecodeOptions,
    InputError,
    LMChunk,
    PromptError,
    VideoLLM,
    load_model,
)
from stream_agent.models.preprocess import frame_transform_from_settings, preprocess_frames
from stream_agent.models.reference import answer_video, prepare_prompt, uniform_indices
from stream_agent.models.text import IncrementalDetokenizer

QUESTION = "What does the person do?"


@pytest.fixture(scope="module")
def model(tiny_model_dir: Callable[[str], Path]) -> VideoLLM:
    return load_model(tiny_model_dir("llava_onevision"))


def frames(count: int, shape: tuple[int, int] = (48, 64), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


def library_inputs(model: VideoLLM, pixels: torch.Tensor, question: str) -> torch.Tensor:
    """The input ids the library's processor would build: one video placeholder per token."""
    layout = model.build_prompt(question)
    n = pixels.shape[0] * model.vision_spec.tokens_per_step + 1
    video_id = int(model.model.config.video_token_id)
    ids = [*layout.prefix_ids, *([video_id] * n), *layout.suffix_ids]
    return torch.tensor([ids])


# ----------------------------------------------------------------------------------- frames


@pytest.mark.parametrize("shape", [(48, 64), (98, 98), (300, 200), (432, 768)])
def test_preprocessing_equals_the_image_processor(model: VideoLLM, shape: tuple[int, int]) -> None:
    assert model.folder is not None
    processor = LlavaOnevisionImageProcessorPil.from_pretrained(str(model.folder))
    batch = frames(2, shape)
    ours = model.preprocess(batch).numpy()
    # The library's first tile of a single image is the whole frame resized to the vision size,
    # which is what its video path does to every frame.
    theirs = np.stack(
        [processor(images=f, return_tensors="np")["pixel_values"][0, 0] for f in batch]
    )
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)


def test_preprocessing_at_the_real_size_and_normalisation() -> None:
    """The real checkpoint's settings (384x384, SigLIP mean/std 0.5) on a 768x432 frame."""
    processor = LlavaOnevisionImageProcessorPil(
        size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    transform = frame_transform_from_settings(processor.to_dict())
    frame = frames(1, (432, 768), seed=3)[0]
    ours = preprocess_frames([frame], transform)[0]
    theirs = processor(images=frame, return_tensors="np")["pixel_values"][0, 0]
    assert np.array_equal(ours, theirs)


def test_preprocessing_rejects_non_rgb_frames(model: VideoLLM) -> None:
    with pytest.raises(InputError, match="uint8"):
        model.preprocess([np.zeros((8, 8, 3), dtype=np.float32)])  # type: ignore[list-item]
    with pytest.raises(InputError, match="3 colour channels"):
        model.preprocess([np.zeros((8, 8, 4), dtype=np.uint8)])


# ----------------------------------------------------------------------------------- vision


@torch.no_grad()
def test_layer_by_layer_vision_equals_the_library_forward(model: VideoLLM) -> None:
    pixels = model.preprocess(frames(3))
    tower = model.model.model.vision_tower
    library = tower(pixels, output_hidden_states=True).hidden_states
    ours = encoder_forward(
        model.vision_layers, model.embed_patches(pixels), keep=range(len(library))
    ).hidden_states
    assert len(ours) == len(library) == model.vision_spec.num_layers + 1
    for mine, theirs in zip(ours, library, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


@torch.no_grad()
def test_visual_tokens_equal_the_library_video_features(model: VideoLLM) -> None:
    pixels = model.preprocess(frames(3))
    library = model.model.model.get_video_features(pixels[None]).pooler_output[0]
    tokens = model.encode_pixels(pixels)
    spec = model.vision_spec
    assert spec.token_grid == (4, 4) and spec.patch_grid == (7, 7)
    assert [t.grid for t in tokens] == [spec.token_grid] * 3
    ours = torch.cat([t.embeds for t in tokens] + [model.video_end_chunk(0).embeds])
    assert ours.shape == library.shape == (3 * 16 + 1, model.lm_spec.hidden_size)
    torch.testing.assert_close(ours, library, atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------------- LLM


def _prompt_chunks(model: VideoLLM, pixels: torch.Tensor, question: str) -> list[LMChunk]:
    layout = model.build_prompt(question)
    chunks = [model.text_chunk(layout.prefix_ids, 0)]
    for step in model.encode_pixels(pixels):
        chunks.append(model.visual_chunk(step, chunks[-1].next_position))
    chunks.append(model.video_end_chunk(chunks[-1].next_position))
    chunks.append(model.text_chunk(layout.suffix_ids, chunks[-1].next_position))
    return chunks


@torch.no_grad()
def test_chunked_prefill_equals_one_shot_prefill_and_the_library(model: VideoLLM) -> None:
    pixels = model.preprocess(frames(3))
    chunks = _prompt_chunks(model, pixels, QUESTION)
    chunked = model.new_cache()
    for chunk in chunks[:-1]:
        assert model.prefill(chunked, chunk) is None
    chunked_logits = model.prefill(chunked, chunks[-1], want_logits=True)
    whole = LMChunk.concat(chunks)
    assert whole.positions.tolist() == [list(range(len(whole)))]
    one_shot = model.new_cache()
    one_shot_logits = model.prefill(one_shot, whole, want_logits=True)
    assert chunked_logits is not None and one_shot_logits is not None
    torch.testing.assert_close(chunked_logits, one_shot_logits, atol=1e-4, rtol=0)
    assert chunked.get_seq_length() == one_shot.get_seq_length() == len(whole)
    for a, b in zip(chunked.layers, one_shot.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=0)
    # ... and equals the library's own multimodal forward on the same pixels.
    ids = library_inputs(model, pixels, QUESTION)
    library = model.model(input_ids=ids, pixel_values_videos=pixels[None]).logits[0, -1]
    torch.testing.assert_close(one_shot_logits, library, atol=1e-4, rtol=0)


@torch.no_grad()
def test_decode_loop_equals_library_generate(model: VideoLLM) -> None:
    batch = frames(3, seed=5)
    pixels = model.preprocess(batch)
    ids = library_inputs(model, pixels, QUESTION)
    out = model.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values_videos=pixels[None],
        max_new_tokens=16,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    generated = out.sequences[0, ids.shape[1] :].tolist()
    answer = answer_video(model, batch, QUESTION, options=DecodeOptions(max_new_tokens=16))
    assert list(answer.token_ids) == generated
    assert len(set(generated)) > 3, "the tiny model's output is degenerate"
    torch.testing.assert_close(answer.first_logits, out.logits[0][0].float(), atol=1e-4, rtol=0)
    assert answer.prompt_tokens == ids.shape[1] and answer.frames == 3
    text = model.tokenizer.decode(generated, skip_special_tokens=True)
    assert answer.text == text


@torch.no_grad()
def test_sampling_is_reproducible_and_top_k_1_is_greedy(model: VideoLLM) -> None:
    batch = frames(2, seed=6)

    def run(options: DecodeOptions) -> tuple[int, ...]:
        return answer_video(model, batch, QUESTION, options=options).token_ids

    greedy = run(DecodeOptions(max_new_tokens=8))
    sampled = DecodeOptions(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=11)
    assert run(sampled) == run(sampled)
    assert run(DecodeOptions(max_new_tokens=8, temperature=1.0, top_k=1, seed=3)) == greedy


@torch.no_grad()
def test_decode_stops_on_a_stop_token(model: VideoLLM) -> None:
    batch = frames(1, seed=7)
    first = answer_video(model, batch, QUESTION, options=DecodeOptions(max_new_tokens=4))
    stop = first.token_ids[1]
    prepared = prepare_prompt(model, batch, QUESTION)
    steps = list(
        model.decode(
            prepared.cache,
            prepared.logits,
            prepared.next_position,
            DecodeOptions(max_new_tokens=10, stop_ids=(stop,)),
        )
    )
    assert [s.token_id for s in steps] == list(first.token_ids[:2])
    assert steps[-1].finished and steps[-1].stopped and not steps[0].finished
    assert model.stop_ids == (int(model.tokenizer.convert_tokens_to_ids("<|im_end|>")),)


# ----------------------------------------------------------------------------------- prompt


def test_prompt_layout_matches_the_chat_template(model: VideoLLM) -> None:
    layout = model.build_prompt(QUESTION)
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}
    ]
    text = model.tokenizer.apply_chat_template(
        messages, chat_template=model.chat_template, tokenize=False, add_generation_prompt=True
    )
    assert (
        layout.text
        == text
        == f"<|im_start|>user <video>\n{QUESTION}<|im_end|><|im_start|>assistant\n"
    )
    video_id = int(model.model.config.video_token_id)
    expanded = text.replace("<video>", "<video>" * 5)
    ids = model.tokenizer(expanded, add_special_tokens=False)["input_ids"]
    assert ids == [*layout.prefix_ids, *([video_id] * 5), *layout.suffix_ids]
    assert model.build_prompt("another question").prefix_ids == layout.prefix_ids
    with_system = model.build_prompt(QUESTION, system="Be brief.")
    assert with_system.text.startswith("<|im_start|>system \nBe brief.<|im_end|>")


def test_prompt_rejects_a_placeholder_in_the_question(model: VideoLLM) -> None:
    with pytest.raises(PromptError, match="placeholder"):
        model.build_prompt("what is <video>?")


def test_incremental_detokenizer_holds_back_partial_characters(model: VideoLLM) -> None:
    text = "café ☕ ok"
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(model.tokenizer)
    deltas = [detok.push(i) for i in ids]
    assert "".join(deltas) == text
    assert "" in deltas  # some token ended inside a multi-byte character
    assert not any("\ufffd" in d for d in deltas)


# ------------------------------------------------------------------------------ cache, misc


@torch.no_grad()
def test_kv_bytes_per_token_matches_the_cache(model: VideoLLM) -> None:
    cache = model.new_cache()
    chunk = model.text_chunk(model.build_prompt(QUESTION).suffix_ids, 0)
    model.prefill(cache, chunk)
    stored = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert stored == model.lm_spec.kv_bytes_per_token * len(chunk)
    spec = model.lm_spec
    assert cache.layers[0].keys.shape == (1, spec.num_kv_heads, len(chunk), spec.head_dim)


@torch.no_grad()
def test_pruned_chunk_keeps_positions_and_prefills(model: VideoLLM) -> None:
    step = model.encode_frames(frames(1))[0]
    chunk = model.visual_chunk(step, 10)
    kept = chunk.select(torch.tensor([0, 3, 15]))
    assert kept.positions.tolist() == [[10, 13, 25]] and kept.next_position == 26
    assert len(chunk.select(torch.arange(16) % 2 == 0)) == 8
    cache = model.new_cache()
    logits = model.prefill(cache, kept, want_logits=True)
    assert logits is not None and torch.isfinite(logits).all()
    with pytest.raises(InputError, match="1-D positions"):
        model.prefill(cache, LMChunk(kept.embeds, kept.positions.repeat(3, 1), 26))


@torch.no_grad()
def test_attention_mask_hides_cached_tokens(model: VideoLLM) -> None:
    """Hiding a cached block with the mask equals never having prefilled it (RoPE is relative)."""
    block = model.encode_frames(frames(1, seed=8))[0]
    suffix = model.build_prompt(QUESTION).suffix_ids
    cache = model.new_cache()
    model.prefill(cache, model.visual_chunk(block, 0))
    hidden = len(block)
    question = model.text_chunk(suffix, hidden)
    mask = torch.ones(1, hidden + len(question), dtype=torch.long)
    mask[0, :hidden] = 0
    masked = model.prefill(cache, question, want_logits=True, attention_mask=mask)
    alone = model.prefill(model.new_cache(), question, want_logits=True)
    assert masked is not None and alone is not None
    torch.testing.assert_close(masked, alone, atol=1e-5, rtol=0)
    visible = model.new_cache()
    model.prefill(visible, model.visual_chunk(block, 0))
    seen = model.prefill(visible, question, want_logits=True)
    assert seen is not None and (seen - alone).abs().max() > 1e-2  # the block matters unmasked


def test_vision_records_reference_frozen_model_weights(model: VideoLLM) -> None:
    layer = model.vision_layers[0]
    tower_layer = model.model.model.vision_tower.encoder.layers[0]
    assert isinstance(layer.qkv, SeparateQKV)
    assert layer.qkv.q.weight is tower_layer.self_attn.q_proj.weight
    assert layer.out.weight is tower_layer.self_attn.out_proj.weight
    assert layer.mlp.activation == "gelu_pytorch_tanh"
    assert not any(p.requires_grad for p in model.model.parameters())


def test_uniform_indices() -> None:
    assert uniform_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_indices(3, 8) == [0, 1, 2]
    assert uniform_indices(1394, 2) == [0, 1393]
    assert uniform_indices(0, 4) == []
