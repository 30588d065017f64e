"""The Qwen2-VL and Qwen2.5-VL adapters against transformers' own classes on tiny checkpoints.

Vision comparisons map the library's patch rows (merge-window order; for Qwen2.5-VL also permuted
into attention windows) onto ours (raster order per temporal patch). In float32 the two forwards
differ only by rounding, which grows with the activations (the tiny towers' hidden states reach
about 12 and the merged tokens about 17): differences are checked against ``1e-5`` times the
reference's largest magnitude.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from cacher.layers import FusedQKV, GatedMLP, LayerNorm, RMSNorm, encoder_forward_masks
from stream_agent.cli import main as cli_main
from stream_agent.models import (
    DecodeOptions,
    IncompleteModelError,
    InputError,
    LMChunk,
    VideoLLM,
    WrongFamilyError,
    load_model,
)
from stream_agent.models.qwen2_vl import (
    Qwen2_5_VLAdapter,
    Qwen2VLAdapter,
    QwenVLAdapter,
    SmartResizeTransform,
    merge_window_to_raster,
    qwen_frame_transform,
)
from stream_agent.models.qwen2_vl_testing import (
    QWEN2_VL_CHAT_TEMPLATE,
    REAL_MAX_PIXELS,
    REAL_MIN_PIXELS,
    qwen2_5_vl_config,
    qwen2_vl_config,
    qwen_tokenizer,
)
from stream_agent.models.reference import prepare_prompt
from stream_agent.models.testing import MARKER_FILE, build_parts, build_test_adapter

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
QUESTION = "What does the person do?"
SHAPE = (90, 120)  # -> 84x112 pixels, 6x8 patches, 3x4 tokens per frame pair

TinyDir = Callable[[str], Path]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request: pytest.FixtureRequest, tiny_model_dir: TinyDir) -> QwenVLAdapter:
    loaded = load_model(tiny_model_dir(request.param))
    assert isinstance(loaded, QwenVLAdapter) and loaded.family == request.param
    return loaded


def frames(count: int, shape: tuple[int, int] = SHAPE, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


def assert_scaled_close(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-5) -> None:
    """max |ours - theirs| <= rel * max(1, max |theirs|): float32 rounding, relative to scale."""
    assert ours.shape == theirs.shape
    bound = rel * max(1.0, float(theirs.abs().max()))
    diff = float((ours.float() - theirs.float()).abs().max())
    assert diff <= bound, f"max |diff| {diff:.3g} > {bound:.3g}"


def library_rows(model: QwenVLAdapter, grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(step, raster index) of each row of the library's vision hidden states."""
    steps, gh, gw = (int(v) for v in grid_thw[0])
    rows = torch.arange(steps * gh * gw)
    if model.family == "qwen2_5_vl":  # the tower runs on rows permuted into windows
        window, _ = get_vision_window_index(
            grid_thw, model.merge_size, model.model.config.vision_config.window_size, 14
        )
        rows = window[rows // 4] * 4 + rows % 4
    return rows // (gh * gw), merge_window_to_raster((gh, gw))[rows % (gh * gw)]


def video_kwargs(model: QwenVLAdapter, pixels: torch.Tensor, seconds: float) -> dict[str, Any]:
    values, grid_thw = model.patchify(pixels)
    kwargs: dict[str, Any] = {"pixel_values_videos": values, "video_grid_thw": grid_thw}
    if model.family == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([seconds])
    return kwargs


def library_ids(model: QwenVLAdapter, pixels: torch.Tensor, suffix: bool = True) -> torch.Tensor:
    layout = model.build_prompt(QUESTION)
    steps = -(-pixels.shape[0] // 2)
    n = steps * model.vision_spec_for_size(*pixels.shape[-2:]).tokens_per_step
    video_id = int(model.model.config.video_token_id)
    ids = [*layout.prefix_ids, *([video_id] * n), *(layout.suffix_ids if suffix else ())]
    return torch.tensor([ids])


def prompt_chunks(
    model: QwenVLAdapter, pixels: torch.Tensor, seconds: float, suffix: bool = True
) -> list[LMChunk]:
    """The prompt frame pair by frame pair, as a stream prefills it."""
    layout = model.build_prompt(QUESTION)
    chunks = [model.text_chunk(layout.prefix_ids, 0)]
    for step, tokens in enumerate(model.encode_pixels(pixels)):
        chunks.append(
            model.visual_chunk(
                tokens, chunks[-1].next_position, step=step, seconds_per_step=seconds
            )
        )
    chunks.append(model.video_end_chunk(chunks[-1].next_position))
    if suffix:
        chunks.append(model.text_chunk(layout.suffix_ids, chunks[-1].next_position))
    return [c for c in chunks if len(c)]


# ----------------------------------------------------------------------------------- frames


@pytest.mark.parametrize("shape", [(90, 120), (50, 40), (300, 200), (432, 768)])
def test_preprocessing_equals_the_image_processor(
    model: QwenVLAdapter, shape: tuple[int, int]
) -> None:
    """One frame equals the processor bit for bit; each frame of a pair fills its half of the
    temporal patch exactly as the processor fills both halves of a lone frame."""
    assert model.folder is not None
    processor = Qwen2VLImageProcessorPil.from_pretrained(str(model.folder))
    a, b = frames(2, shape, seed=sum(shape))

    def library(frame: np.ndarray) -> tuple[np.ndarray, list[int]]:
        out = processor(images=frame, return_tensors="np")
        return out["pixel_values"], out["image_grid_thw"][0].tolist()

    single, grid = library(a)
    ours, ours_grid = model.patchify(model.preprocess([a]))
    assert ours_grid[0].tolist() == grid
    assert np.array_equal(ours.numpy(), single)
    pair, pair_grid = model.patchify(model.preprocess([a, b]))
    assert pair_grid[0].tolist() == grid
    halves = pair.numpy().reshape(len(single), 3, 2, 14 * 14)
    assert np.array_equal(halves[:, :, 0], single.reshape(len(single), 3, 2, -1)[:, :, 0])
    assert np.array_equal(halves[:, :, 1], library(b)[0].reshape(len(single), 3, 2, -1)[:, :, 1])


def test_preprocessing_at_the_real_pixel_bounds() -> None:
    """The released processors' bounds on the shared test video's 768x432 frames: 420x756."""
    processor = Qwen2VLImageProcessorPil(min_pixels=REAL_MIN_PIXELS, max_pixels=REAL_MAX_PIXELS)
    transform = qwen_frame_transform(processor.to_dict())
    assert transform.target_size(432, 768) == (420, 756)
    tiny = build_test_adapter("qwen2_vl")
    adapter = Qwen2VLAdapter(
        model=tiny.model,
        tokenizer=tiny.tokenizer,
        chat_template=tiny.chat_template,
        transform=transform,
    )
    frame = frames(1, (432, 768), seed=3)[0]
    ours, grid = adapter.patchify(adapter.preprocess([frame]))
    theirs = processor(images=frame, return_tensors="np")
    assert grid[0].tolist() == theirs["image_grid_thw"][0].tolist() == [1, 30, 54]
    assert np.array_equal(ours.numpy(), theirs["pixel_values"])
    assert adapter.vision_spec_for_frame(432, 768).token_grid == (15, 27)


def test_frame_transform_reads_the_processor_settings(model: QwenVLAdapter) -> None:
    transform = model.transform
    assert isinstance(transform, SmartResizeTransform)
    assert (transform.min_pixels, transform.max_pixels, transform.factor) == (3136, 18816, 28)
    assert (transform.height, transform.width) == (84, 168)  # the nominal 360x640 frame
    spec = model.vision_spec
    assert (spec.patch_grid, spec.token_grid, spec.frames_per_step) == ((6, 12), (3, 6), 2)
    assert model.vision_spec_for_frame(*SHAPE).token_grid == (3, 4)
    assert model.vision_spec_for_frame(432, 768) == spec


def test_preprocessing_refuses_mixed_sizes_and_bad_frames(model: QwenVLAdapter) -> None:
    with pytest.raises(InputError, match="different sizes"):
        model.preprocess([*frames(1, (90, 120)), *frames(1, (300, 200))])
    with pytest.raises(InputError, match="uint8"):
        model.preprocess([np.zeros((30, 30, 3), dtype=np.float32)])  # type: ignore[list-item]
    with pytest.raises(InputError, match="aspect ratio"):
        model.preprocess([np.zeros((2, 500, 3), dtype=np.uint8)])
    with pytest.raises(InputError, match="multiples of 28"):
        model.embed_patches(torch.zeros(2, 3, 70, 84))


# ----------------------------------------------------------------------------------- vision


@torch.no_grad()
def test_layer_by_layer_vision_equals_the_library_forward(model: QwenVLAdapter) -> None:
    pixels = model.preprocess(frames(4))
    values, grid_thw = model.patchify(pixels)
    visual = model.model.model.visual
    library: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: library.append(o)) for b in visual.blocks]
    try:
        visual(values, grid_thw=grid_thw)
    finally:
        for hook in hooks:
            hook.remove()
    step, raster = library_rows(model, grid_thw)
    hidden = model.embed_patches(pixels)
    assert hidden.shape == (2, 48, visual.patch_embed.embed_dim)  # one row per frame pair
    embedded = torch.empty_like(hidden)  # the library's patch rows, put in raster order
    embedded[:, merge_window_to_raster((6, 8))] = visual.patch_embed(values).reshape(2, 48, -1)
    assert_scaled_close(hidden, embedded)
    rotary, mask = model.vision_attention(pixels)
    assert rotary is not None and mask is None
    ours = encoder_forward_masks(
        model.vision_layers,
        hidden,
        masks=model.vision_layer_masks(pixels),
        keep=range(1, len(model.vision_layers) + 1),
        rotary=rotary,
    ).hidden_states
    assert len(ours) == len(library) == model.vision_spec.num_layers
    for mine, theirs in zip(ours, library, strict=True):
        mapped = torch.empty_like(mine)
        mapped[step, raster] = theirs
        assert_scaled_close(mine, mapped)


@torch.no_grad()
def test_visual_tokens_equal_the_library_video_features(model: QwenVLAdapter) -> None:
    pixels = model.preprocess(frames(5))
    values, grid_thw = model.patchify(pixels)
    assert grid_thw.tolist() == [[3, 6, 8]]  # an odd last frame is paired with itself
    library = torch.cat(model.model.model.get_video_features(values, grid_thw).pooler_output)
    tokens = model.encode_pixels(pixels)
    assert [(t.grid, t.frames) for t in tokens] == [((3, 4), 2), ((3, 4), 2), ((3, 4), 1)]
    ours = torch.cat([t.embeds for t in tokens])
    assert ours.shape == library.shape == (36, model.lm_spec.hidden_size)
    assert_scaled_close(ours, library)
    # tokens_from_hidden on hidden states run elsewhere needs only the grid
    hidden = encoder_forward_masks(
        model.vision_layers,
        model.embed_patches(pixels),
        masks=model.vision_layer_masks(pixels),
        keep=(-1,),
        rotary=model.vision_attention(pixels)[0],
    ).hidden_states
    again = model.tokens_from_hidden(hidden, grid=(6, 8))
    torch.testing.assert_close(torch.cat([t.embeds for t in again]), ours, atol=0, rtol=0)
    with pytest.raises(InputError, match="does not hold"):
        model.tokens_from_hidden(hidden, grid=(4, 8))


def test_merge_window_order_maps_to_raster_like_the_library() -> None:
    """The library's own (row, col) of each patch row equals our documented mapping."""
    for grid in ((6, 8), (4, 4), (10, 2)):
        positions = get_vision_position_ids(torch.tensor([[1, *grid]]), 2)
        expected = positions[:, 0] * grid[1] + positions[:, 1]
        assert torch.equal(merge_window_to_raster(grid), expected)


def test_qwen2_5_windows_group_patches_like_the_library() -> None:
    adapter = build_test_adapter("qwen2_5_vl")
    assert adapter.window == 2 and adapter.full_attention_layers == frozenset({1})
    for grid in ((6, 8), (8, 8), (10, 6)):
        ids = adapter.window_ids(grid)  # type: ignore[attr-defined]
        thw = torch.tensor([[1, *grid]])
        index, cu = get_vision_window_index(thw, 2, 56, 14)
        order = merge_window_to_raster(grid)[(index[:, None] * 4 + torch.arange(4)).flatten()]
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
            assert ids[order[start:end]].unique().numel() == 1  # one window per library segment
        assert ids.unique().numel() == len(cu) - 1
    pixels = torch.zeros(2, 3, 84, 112)
    masks = adapter.vision_layer_masks(pixels)
    assert masks[1] is None and masks[0] is not None and masks[0].shape == (48, 48)


# -------------------------------------------------------------------------------------- LLM


@pytest.mark.parametrize("seconds", [0.5, 0.75])
@torch.no_grad()
def test_chunked_prefill_equals_the_library_one_shot_forward(
    model: QwenVLAdapter, seconds: float
) -> None:
    """Frame pair by frame pair, with positions computed per chunk, equals the library's forward
    on the whole prompt: the same 3-D positions as get_rope_index, logits and KV cache. (Three
    steps at these seconds per step keep the video's temporal extent within its width, where the
    two position rules agree; see the next test.)"""
    pixels = model.preprocess(frames(6, seed=1))
    chunks = prompt_chunks(model, pixels, seconds)
    cache = model.new_cache()
    for chunk in chunks[:-1]:
        assert model.prefill(cache, chunk) is None
    logits = model.prefill(cache, chunks[-1], want_logits=True)
    assert logits is not None
    whole = LMChunk.concat(chunks)
    ids = library_ids(model, pixels)
    kwargs = video_kwargs(model, pixels, seconds)
    video = (ids == model.model.config.video_token_id).int()
    rope_kwargs = {k: v for k, v in kwargs.items() if k != "pixel_values_videos"}
    expected, _ = model.model.model.get_rope_index(ids, video * 2, **rope_kwargs)
    assert torch.equal(whole.positions, expected[:, 0])
    if model.family == "qwen2_5_vl" and seconds == 0.75:  # interval 1.5: t = 0, 1, 3
        video_t = whole.positions[0, (ids[0] == model.model.config.video_token_id)]
        assert (video_t - video_t[0]).unique().tolist() == [0, 1, 3]
    out = model.model(input_ids=ids, mm_token_type_ids=video * 2, use_cache=True, **kwargs)
    assert_scaled_close(logits, out.logits[0, -1], rel=1e-5)
    assert cache.get_seq_length() == ids.shape[1]
    for ours, theirs in zip(cache.layers, out.cache.layers, strict=True):
        assert_scaled_close(ours.keys, theirs.keys)
        assert_scaled_close(ours.values, theirs.values)
    # ... and equals our own one-shot prefill of the concatenated chunks
    one_shot = model.new_cache()
    one_logits = model.prefill(one_shot, whole, want_logits=True)
    assert one_logits is not None
    assert_scaled_close(one_logits, logits)


@torch.no_grad()
def test_reference_path_feeds_frame_pairs_as_steps_of_one_video(model: QwenVLAdapter) -> None:
    """The reference path takes frames one at a time (an odd count included) and lays them out
    as the library does one video: pairs as temporal patches, steps of one M-RoPE video."""
    images = frames(5, seed=3)
    prepared = prepare_prompt(model, images, QUESTION, seconds_per_frame=0.25)
    assert prepared.frames == 5
    pixels = model.preprocess([*images, images[-1]])  # the library pads a last odd frame
    ids = library_ids(model, pixels)
    out = model.model(
        input_ids=ids,
        mm_token_type_ids=(ids == model.model.config.video_token_id).int() * 2,
        **video_kwargs(model, pixels, seconds=0.5),
    )
    assert prepared.prompt_tokens == ids.shape[1]
    assert_scaled_close(prepared.logits, out.logits[0, -1])


@torch.no_grad()
def test_text_after_a_long_video_continues_after_its_last_frame(model: QwenVLAdapter) -> None:
    """Once the video is longer in time than in space, the next position is max(t) + 1, which
    is where the library's generate() continues (its rope_deltas); transformers 5.23's
    get_rope_index would put the following text at start + max(rows, cols) instead."""
    pixels = model.preprocess(frames(12, seed=2))  # 6 steps of 3x4 tokens
    chunks = prompt_chunks(model, pixels, 1.0, suffix=False)
    ids = library_ids(model, pixels, suffix=False)
    kwargs = video_kwargs(model, pixels, 1.0)
    video = (ids == model.model.config.video_token_id).int() * 2
    rope_kwargs = {k: v for k, v in kwargs.items() if k != "pixel_values_videos"}
    expected, deltas = model.model.model.get_rope_index(ids, video, **rope_kwargs)
    whole = LMChunk.concat(chunks)
    assert torch.equal(whole.positions, expected[:, 0])
    assert whole.next_position == int(deltas[0, 0]) + ids.shape[1]  # max + 1
    video_start = len(model.build_prompt(QUESTION).prefix_ids)
    interval = 1 if model.family == "qwen2_vl" else 2
    assert whole.next_position == video_start + 5 * interval + 1 > video_start + 4


@torch.no_grad()
def test_decode_loop_equals_library_generate(model: QwenVLAdapter) -> None:
    pixels = model.preprocess(frames(4, seed=5))
    chunks = prompt_chunks(model, pixels, 1.0)
    cache = model.new_cache()
    for chunk in chunks[:-1]:
        model.prefill(cache, chunk)
    logits = model.prefill(cache, chunks[-1], want_logits=True)
    assert logits is not None
    steps = list(
        model.decode(cache, logits, chunks[-1].next_position, DecodeOptions(max_new_tokens=16))
    )
    ids = library_ids(model, pixels)
    video = (ids == model.model.config.video_token_id).int() * 2
    out = model.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=video,
        max_new_tokens=16,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        **video_kwargs(model, pixels, 1.0),
    )
    generated = out.sequences[0, ids.shape[1] :].tolist()
    assert [s.token_id for s in steps] == generated
    assert len(set(generated)) > 3, "the tiny model's output is degenerate"
    assert_scaled_close(logits, out.logits[0][0].float())
    text = "".join(s.text for s in steps)
    assert text == model.tokenizer.decode(generated, skip_special_tokens=True)


@torch.no_grad()
def test_pruned_chunks_keep_their_3d_positions_and_prefill(model: QwenVLAdapter) -> None:
    tokens = model.encode_frames(frames(2, seed=6))[0]
    chunk = model.visual_chunk(tokens, 20)
    assert chunk.positions[:, :5].tolist() == [[20] * 5, [20, 20, 20, 20, 21], [20, 21, 22, 23, 20]]
    assert chunk.next_position == 24  # 20 + max(3 rows, 4 cols)
    kept = chunk.select(torch.tensor([0, 5, 11]))
    assert kept.positions.tolist() == [[20, 20, 20], [20, 21, 22], [20, 21, 23]]
    assert kept.next_position == 24
    assert len(chunk.select(torch.arange(12) % 3 == 0)) == 4
    cache = model.new_cache()
    model.prefill(cache, model.text_chunk([1, 2, 3], 17))
    pruned_logits = model.prefill(cache, kept, want_logits=True)
    assert pruned_logits is not None and torch.isfinite(pruned_logits).all()
    # pruning equals hiding the dropped tokens with the attention mask (RoPE is relative)
    suffix = model.text_chunk(model.build_prompt(QUESTION).suffix_ids, chunk.next_position)
    pruned = model.prefill(cache, suffix, want_logits=True)
    visible = torch.zeros(1, 3 + len(chunk) + len(suffix), dtype=torch.long)
    visible[0, :3] = 1
    visible[0, 3 + torch.tensor([0, 5, 11])] = 1
    visible[0, 3 + len(chunk) :] = 1
    full = model.new_cache()
    model.prefill(full, model.text_chunk([1, 2, 3], 17))
    model.prefill(full, chunk, attention_mask=visible[:, : 3 + len(chunk)])
    masked = model.prefill(full, suffix, want_logits=True, attention_mask=visible)
    assert pruned is not None and masked is not None
    assert_scaled_close(pruned, masked)
    with pytest.raises(InputError, match="3-D positions"):
        model.prefill(cache, LMChunk(kept.embeds, kept.positions[:1], 24))


def test_visual_chunk_steps_recover_the_video_start(model: QwenVLAdapter) -> None:
    tokens = model.encode_frames(frames(2, seed=7))[0]
    first = model.visual_chunk(tokens, 30, step=0)
    second = model.visual_chunk(tokens, first.next_position, step=1)
    assert second.positions[1:].tolist() == first.positions[1:].tolist()  # same rows, cols
    interval = 1 if model.family == "qwen2_vl" else 2
    assert int(second.positions[0, 0]) == 30 + interval
    with pytest.raises(InputError, match="next_position"):
        model.visual_chunk(tokens, 2, step=1)
    with pytest.raises(InputError, match="step must be"):
        model.visual_chunk(tokens, 30, step=-1)
    end = model.video_end_chunk(second.next_position)
    assert len(end) == 0 and end.positions.shape == (3, 0)


# ----------------------------------------------------------------------------------- prompt


def test_prompt_layout_matches_the_chat_template(model: QwenVLAdapter) -> None:
    layout = model.build_prompt(QUESTION)
    assert layout.text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|video_pad|><|vision_end|>{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    tok = model.tokenizer
    assert layout.prefix_ids[-1] == tok.convert_tokens_to_ids("<|vision_start|>")
    assert layout.suffix_ids[0] == tok.convert_tokens_to_ids("<|vision_end|>")
    expanded = layout.text.replace("<|video_pad|>", "<|video_pad|>" * 7)
    video_id = int(model.model.config.video_token_id)
    assert tok(expanded, add_special_tokens=False)["input_ids"] == [
        *layout.prefix_ids,
        *([video_id] * 7),
        *layout.suffix_ids,
    ]
    assert model.build_prompt(QUESTION, system="Be brief.").text.startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n"
    )
    assert model.stop_ids == (int(tok.convert_tokens_to_ids("<|im_end|>")),)


# ----------------------------------------------------------------------- checkpoints, records


def test_checkpoint_round_trips_through_save_and_load(
    model: QwenVLAdapter, tiny_model_dir: TinyDir
) -> None:
    folder = tiny_model_dir(model.family)
    built = build_parts(model.family, seed=0)
    state = model.model.state_dict()
    for name, tensor in built.model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    memory = build_test_adapter(model.family, seed=0)
    assert memory.transform == model.transform
    assert memory.vision_spec == model.vision_spec and memory.lm_spec == model.lm_spec
    assert memory.build_prompt("hi") == model.build_prompt("hi")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2_000_000
    assert json.loads((folder / MARKER_FILE).read_text())["family"] == model.family


def test_video_processor_settings_override_and_missing_parts(
    tiny_model_dir: TinyDir, tmp_path: Path
) -> None:
    source = tiny_model_dir("qwen2_vl")
    copy = tmp_path / "with_video_config"
    shutil.copytree(source, copy)
    (copy / "video_preprocessor_config.json").write_text(
        json.dumps({"min_pixels": 3136, "max_pixels": 28 * 28 * 6})
    )
    adapter = load_model(copy)
    assert isinstance(adapter.transform, SmartResizeTransform)
    assert adapter.transform.max_pixels == 4704
    assert adapter.vision_spec.token_grid == (1, 3)  # 360x640 -> 28x84 pixels
    (copy / "preprocessor_config.json").unlink()
    with pytest.raises(IncompleteModelError, match=r"preprocessor_config\.json"):
        load_model(copy)
    with pytest.raises(WrongFamilyError, match="--family qwen2_vl"):
        load_model(source, family="qwen2_5_vl")


def test_make_test_model_command_writes_a_loadable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for family in FAMILIES:
        folder = tmp_path / family
        assert cli_main(["make-test-model", "--family", family, "--seed", "3", str(folder)]) == 0
        assert family in capsys.readouterr().out
        loaded = load_model(folder, family=family)
        assert isinstance(loaded, QwenVLAdapter)
        ours = loaded.model.state_dict()
        again = build_parts(family, seed=3).model.state_dict()
        assert ours.keys() == again.keys()
        assert all(torch.equal(ours[k], again[k]) for k in ours)
        other = build_parts(family, seed=4).model.state_dict()
        assert not all(torch.equal(ours[k], other[k]) for k in ours)


def test_vision_records_reference_frozen_model_weights(model: QwenVLAdapter) -> None:
    layer = model.vision_layers[0]
    block = model.model.model.visual.blocks[0]
    assert isinstance(layer.qkv, FusedQKV) and layer.qkv.qkv.weight is block.attn.qkv.weight
    assert layer.out.weight is block.attn.proj.weight
    kernel = model.model.model.visual.patch_embed.proj.weight
    assert model.patch_embedding.weight.data_ptr() == kernel.data_ptr()
    if model.family == "qwen2_vl":
        assert isinstance(layer.norm1, LayerNorm) and layer.mlp.activation == "quick_gelu"
    else:
        assert isinstance(layer.norm1, RMSNorm) and isinstance(layer.mlp, GatedMLP)
        assert layer.mlp.activation == "silu"
    assert not any(p.requires_grad for p in model.model.parameters())


def test_kv_bytes_per_token_matches_the_cache(model: QwenVLAdapter) -> None:
    cache = model.new_cache()
    chunk = model.text_chunk(model.build_prompt(QUESTION).suffix_ids, 0)
    model.prefill(cache, chunk)
    stored = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert stored == model.lm_spec.kv_bytes_per_token * len(chunk)
    assert model.lm_spec.rope == "mrope" and model.lm_spec.position_dims == 3


@pytest.mark.parametrize(
    ("family", "params", "kv_kib", "vision", "lm"),
    [
        ("qwen2_vl", (2.20e9, 2.22e9), 56, (1280, 32, 16), (28, 1536, 12, 2)),
        ("qwen2_5_vl", (3.74e9, 3.76e9), 72, (1280, 32, 16), (36, 2048, 16, 2)),
    ],
)
def test_realistic_shapes(
    family: str,
    params: tuple[float, float],
    kv_kib: int,
    vision: tuple[int, int, int],
    lm: tuple[int, int, int, int],
) -> None:
    """The realistic configs (on the meta device: shapes only) are Qwen2-VL-2B / Qwen2.5-VL-3B."""
    tokenizer = qwen_tokenizer()
    config: Any = (qwen2_vl_config if family == "qwen2_vl" else qwen2_5_vl_config)(tokenizer, True)
    cls: Any = Qwen2VLAdapter if family == "qwen2_vl" else Qwen2_5_VLAdapter
    with torch.device("meta"):
        built = cls.model_class(config)
    processor = Qwen2VLImageProcessorPil(min_pixels=REAL_MIN_PIXELS, max_pixels=REAL_MAX_PIXELS)
    adapter: VideoLLM = cls(
        model=built,
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        transform=cls.transform_from_processor(processor),
    )
    spec, lm_spec = adapter.vision_spec, adapter.lm_spec
    assert (spec.image_size, spec.token_grid) == ((364, 644), (13, 23))
    width, depth, heads = vision
    assert (spec.hidden_size, spec.num_layers, len(adapter.vision_layers)) == (width, depth, depth)
    assert adapter.vision_layers[0].num_heads == heads
    assert (
        lm_spec.num_layers,
        lm_spec.hidden_size,
        lm_spec.num_heads,
        lm_spec.num_kv_heads,
    ) == lm
    assert lm_spec.kv_bytes_per_token == kv_kib * 1024
    assert params[0] < sum(p.numel() for p in built.parameters()) < params[1]
