"""The SmolVLM2 / Idefics3 adapter against transformers' own classes on tiny random checkpoints."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Idefics3Processor
from transformers.models.smolvlm.image_processing_pil_smolvlm import (
    SmolVLMImageProcessorPil,
    get_resize_output_image_size,
)
from transformers.models.smolvlm.processing_smolvlm import (
    DEFAULT_CHAT_TEMPLATE,
    DEFAULT_MEDIA_OUTTRO,
    FRAME_TIMESTAMP_MESSAGE,
    _prompt_single_image,
)

from cacher.layers import encoder_forward
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
from stream_agent.models.reference import PromptBuilder
from stream_agent.models.smolvlm import (
    FrameResize,
    SmolVLMAdapter,
    library_position_ids,
    longest_edge_size,
    pixel_shuffle,
    preprocess_smolvlm_frames,
    read_frame_settings,
)
from stream_agent.models.smolvlm_testing import SMOLVLM_CHAT_TEMPLATE, build_smolvlm_parts
from stream_agent.models.testing import MARKER_FILE, build_test_adapter, save_parts

QUESTION = "What does the person do?"
TinyDir = Callable[[str], Path]


@pytest.fixture(scope="module")
def model(tiny_model_dir: TinyDir) -> SmolVLMAdapter:
    loaded = load_model(tiny_model_dir("smolvlm"))
    assert isinstance(loaded, SmolVLMAdapter)
    return loaded


@pytest.fixture(scope="module")
def idefics3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-idefics3")
    return save_parts(build_smolvlm_parts(0, False, "idefics3"), folder, seed=0, realistic=False)


def frames(count: int, shape: tuple[int, int] = (48, 64), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


def stamp(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def library_video_text(model: VideoLLM, question: str, timestamps: Sequence[float]) -> str:
    """The prompt ``SmolVLMProcessor`` builds for a video (``replace_video_token``) from the
    library's own pieces, less the introduction that names the frame count and duration."""
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
    ]
    text = model.tokenizer.apply_chat_template(
        messages, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    video = "".join(
        FRAME_TIMESTAMP_MESSAGE.format(timestamp=stamp(t))
        + _prompt_single_image(
            model.vision_spec.tokens_per_step,
            fake_token_around_image="<fake_token_around_image>",
            image_token="<image>",
            global_image_token="<global-img>",
        )
        for t in timestamps
    )
    return str(text).replace("<video>", video + DEFAULT_MEDIA_OUTTRO)


def library_ids(model: VideoLLM, question: str, timestamps: Sequence[float]) -> torch.Tensor:
    text = library_video_text(model, question, timestamps)
    return torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"]])


def prompt_chunks(
    model: VideoLLM, pixels: torch.Tensor, question: str, timestamps: Sequence[float]
) -> list[LMChunk]:
    """Prefix, then per frame its opening text, visual tokens and closing text, then the suffix."""
    layout = model.build_prompt(question)
    chunks = [model.text_chunk(layout.prefix_ids, 0)]
    for step, t in zip(model.encode_pixels(pixels), timestamps, strict=True):
        chunks.append(model.frame_open_chunk(chunks[-1].next_position, timestamp=t))
        chunks.append(model.visual_chunk(step, chunks[-1].next_position))
        chunks.append(model.frame_close_chunk(chunks[-1].next_position))
    end = model.video_end_chunk(chunks[-1].next_position)
    if len(end):
        chunks.append(end)
    chunks.append(model.text_chunk(layout.suffix_ids, chunks[-1].next_position))
    return chunks


# ----------------------------------------------------------------------------------- frames


@pytest.mark.parametrize("shape", [(48, 64), (128, 128), (300, 200), (432, 768)])
def test_preprocessing_equals_the_image_processor(model: VideoLLM, shape: tuple[int, int]) -> None:
    assert model.folder is not None
    processor = SmolVLMImageProcessorPil.from_pretrained(str(model.folder))
    batch = frames(2, shape)
    ours = model.preprocess(batch).numpy()
    theirs = np.stack(
        [processor(images=f, return_tensors="np")["pixel_values"][0, 0] for f in batch]
    )
    assert ours.shape == theirs.shape == (2, 3, 128, 128)
    assert np.array_equal(ours, theirs)


def _real_style_folder(folder: Path, video: dict[str, object] | None) -> Path:
    """A folder with SmolVLM2-500M's processor settings (images: longest edge 2048, split into
    512 tiles; videos per ``video``)."""
    folder.mkdir()
    SmolVLMImageProcessorPil(
        size={"longest_edge": 2048},
        max_image_size={"longest_edge": 512},
        do_image_splitting=True,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    ).save_pretrained(str(folder))
    if video is not None:
        (folder / "video_preprocessor_config.json").write_text(json.dumps(video))
    return folder


@pytest.mark.parametrize(
    ("video", "longest_edge"),
    [
        # No video config: the library's video processor reads preprocessor_config.json, whose
        # "size" wins over any video_sampling (its backwards-compatibility rule).
        (None, 2048),
        # The video config's video_sampling.video_size, when it gives no "size" of its own.
        (
            {
                "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 512}},
                "max_image_size": {"longest_edge": 512},
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
            },
            512,
        ),
        ({"size": {"longest_edge": 640}, "max_image_size": {"longest_edge": 512}}, 640),
    ],
)
def test_real_checkpoint_settings_resize_the_longest_edge_first(
    tmp_path: Path, video: dict[str, object] | None, longest_edge: int
) -> None:
    settings = read_frame_settings(_real_style_folder(tmp_path / "ckpt", video), "smolvlm")
    assert settings.first == FrameResize(longest_edge=longest_edge)
    assert (settings.transform.height, settings.transform.width) == (512, 512)
    assert settings.transform.resample == 1  # LANCZOS
    processor = SmolVLMImageProcessorPil.from_pretrained(str(tmp_path / "ckpt"))
    if video is not None and "image_mean" not in video:  # the video class defaults apply
        assert settings.transform.mean == (0.5, 0.5, 0.5)
    batch = [*frames(1, (432, 768), seed=3), *frames(1, (501, 299), seed=4)]
    ours = preprocess_smolvlm_frames(batch, settings)
    theirs = np.stack(
        [
            processor(
                images=f,
                do_image_splitting=False,
                size={"longest_edge": longest_edge},
                return_tensors="np",
            )["pixel_values"][0, 0]
            for f in batch
        ]
    )
    assert ours.shape == theirs.shape == (2, 3, 512, 512)
    assert np.array_equal(ours, theirs)


def test_longest_edge_size_equals_the_library() -> None:
    rng = np.random.default_rng(0)
    sizes = [(432, 768), (768, 432), (1, 5000), (5000, 3), (299, 501), (512, 512), (7, 7)]
    sizes += [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(200)]
    for height, width in sizes:
        for edge in (364, 512, 2048, 6000):
            expected = get_resize_output_image_size(np.empty((3, height, width)), edge)
            assert longest_edge_size(height, width, edge) == expected, (height, width, edge)


def test_preprocessing_rejects_non_rgb_frames(model: VideoLLM) -> None:
    with pytest.raises(InputError, match="uint8"):
        model.preprocess([np.zeros((8, 8, 3), dtype=np.float32)])  # type: ignore[list-item]
    with pytest.raises(InputError, match="pixels must be"):
        model.embed_patches(torch.zeros(1, 3, 64, 64))


# ----------------------------------------------------------------------------------- vision


@torch.no_grad()
def test_layer_by_layer_vision_equals_the_library_forward(model: VideoLLM) -> None:
    pixels = model.preprocess(frames(3))
    tower = model.model.model.vision_model
    library = tower(pixels, output_hidden_states=True)
    ours = encoder_forward(
        model.vision_layers, model.embed_patches(pixels), keep=range(len(library.hidden_states))
    ).hidden_states
    assert len(ours) == len(library.hidden_states) == model.vision_spec.num_layers + 1
    for mine, theirs in zip(ours, library.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        tower.post_layernorm(ours[-1]), library.last_hidden_state, atol=1e-5, rtol=0
    )
    assert torch.equal(library_position_ids(32), torch.arange(1024))


@torch.no_grad()
def test_visual_tokens_equal_the_library_image_features(model: VideoLLM) -> None:
    pixels = model.preprocess(frames(3))
    library = model.model.model.get_image_features(pixels[None]).pooler_output
    tokens = model.encode_pixels(pixels)
    spec = model.vision_spec
    assert spec.patch_grid == (8, 8) and spec.token_grid == (4, 4)
    assert [t.grid for t in tokens] == [(4, 4)] * 3
    ours = torch.cat([t.embeds for t in tokens])
    assert ours.shape == (3 * 16, model.lm_spec.hidden_size)
    torch.testing.assert_close(ours, torch.cat(list(library)), atol=1e-5, rtol=0)


def test_pixel_shuffle_equals_the_connector_and_keeps_raster_order(model: VideoLLM) -> None:
    connector = model.model.model.connector
    x = torch.randn(2, 32 * 32, 24)
    torch.testing.assert_close(pixel_shuffle(x, (32, 32), 4), connector.pixel_shuffle(x, 4))
    # Token (i, j) of the 8x8 token grid holds patches (4i..4i+3, 4j..4j+3), row by row.
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    coords = torch.stack([rows, cols], dim=-1).reshape(1, 32 * 32, 2).float()
    tokens = pixel_shuffle(coords, (32, 32), 4).reshape(8, 8, 16, 2)
    assert tokens[2, 5, 0].tolist() == [8, 20] and tokens[2, 5, 15].tolist() == [11, 23]
    assert tokens[2, 5, 1].tolist() == [8, 21] and tokens[2, 5, 4].tolist() == [9, 20]
    with pytest.raises(InputError, match="grid"):
        pixel_shuffle(torch.randn(1, 30, 4), (5, 6), 4)


# ----------------------------------------------------------------------------------- prompt


def test_prompt_layout_equals_the_processor_video_prompt(model: SmolVLMAdapter) -> None:
    layout = model.build_prompt(QUESTION)
    assert layout.text == f"<|im_start|>User: <video>\n\n{QUESTION}<end_of_utterance>\nAssistant:"
    timestamps = [0.0, 1.0, 75.6]
    n = model.vision_spec.tokens_per_step
    image_id = int(model.model.config.image_token_id)
    fake = model.tokenizer("<fake_token_around_image>", add_special_tokens=False)["input_ids"]
    ids: list[int] = list(layout.prefix_ids)
    for t in timestamps:
        text = model.frame_open_text(t)
        assert text == f"\nFrame from {stamp(t)}:<fake_token_around_image><global-img>"
        ids += model.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += [image_id] * n + fake
    ids += layout.suffix_ids
    assert ids == library_ids(model, QUESTION, timestamps)[0].tolist()
    assert model.frame_open_text(75.6).startswith("\nFrame from 01:15:")
    assert model.build_prompt("another question").prefix_ids == layout.prefix_ids
    with pytest.raises(InputError, match="timestamp"):
        model.frame_open_chunk(0, timestamp=-1.0)


def test_frame_chunks_hold_text_around_pure_visual_chunks(
    model: VideoLLM, tiny_model_dir: TinyDir
) -> None:
    step = model.encode_frames(frames(1))[0]
    opening = model.frame_open_chunk(10, timestamp=3.0)
    visual = model.visual_chunk(step, opening.next_position)
    closing = model.frame_close_chunk(visual.next_position)
    assert len(visual) == len(step) == 16
    assert visual.positions.tolist() == [list(range(10 + len(opening), 26 + len(opening)))]
    assert len(closing) == 1 and closing.next_position == visual.next_position + 1
    assert len(model.video_end_chunk(5)) == 0 and model.video_end_chunk(5).next_position == 5
    # Families without per-frame text (the base class default) give empty chunks.
    llava = load_model(tiny_model_dir("llava_onevision"))
    empty = llava.frame_open_chunk(7, timestamp=1.0)
    assert len(empty) == 0 and empty.next_position == 7 and empty.positions.shape == (1, 0)
    assert len(llava.frame_close_chunk(7)) == 0


# -------------------------------------------------------------------------------------- LLM


@torch.no_grad()
def test_chunked_prefill_equals_one_shot_prefill_and_the_library(model: VideoLLM) -> None:
    pixels = model.preprocess(frames(3))
    timestamps = [0.0, 1.0, 2.0]
    chunks = prompt_chunks(model, pixels, QUESTION, timestamps)
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
    for a, b in zip(chunked.layers, one_shot.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=0)
    ids = library_ids(model, QUESTION, timestamps)
    assert ids.shape[1] == len(whole)
    library = model.model(input_ids=ids, pixel_values=pixels[None]).logits[0, -1]
    torch.testing.assert_close(one_shot_logits, library, atol=1e-4, rtol=0)


@torch.no_grad()
def test_reference_path_puts_each_frame_text_around_its_tokens(model: VideoLLM) -> None:
    """The reference path (frames added one at a time with their times) builds the library's
    timestamped video prompt and its logits."""
    images = frames(3)
    timestamps = [0.0, 4.0, 9.0]
    builder = PromptBuilder(model, QUESTION)
    for image, t in zip(images, timestamps, strict=True):
        builder.add_frame(image, t)
    prepared = builder.finish()
    ids = library_ids(model, QUESTION, timestamps)
    assert prepared.prompt_tokens == ids.shape[1]
    pixels = model.preprocess(images)
    library = model.model(input_ids=ids, pixel_values=pixels[None]).logits[0, -1]
    torch.testing.assert_close(prepared.logits, library, atol=1e-4, rtol=0)


@torch.no_grad()
def test_decode_loop_equals_library_generate(model: VideoLLM) -> None:
    pixels = model.preprocess(frames(3, seed=5))
    timestamps = [0.0, 2.0, 4.0]
    ids = library_ids(model, QUESTION, timestamps)
    out = model.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixels[None],
        max_new_tokens=16,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    generated = out.sequences[0, ids.shape[1] :].tolist()
    chunks = prompt_chunks(model, pixels, QUESTION, timestamps)
    cache = model.new_cache()
    for chunk in chunks[:-1]:
        model.prefill(cache, chunk)
    logits = model.prefill(cache, chunks[-1], want_logits=True)
    assert logits is not None
    torch.testing.assert_close(logits, out.logits[0][0].float(), atol=1e-4, rtol=0)
    steps = list(
        model.decode(cache, logits, chunks[-1].next_position, DecodeOptions(max_new_tokens=16))
    )
    assert [s.token_id for s in steps] == generated
    assert len(set(generated)) > 3, "the tiny model's output is degenerate"
    text = model.tokenizer.decode(generated, skip_special_tokens=True)
    assert "".join(s.text for s in steps) == text
    assert model.stop_ids == (int(model.tokenizer.convert_tokens_to_ids("<end_of_utterance>")),)


@torch.no_grad()
def test_kv_bytes_per_token_matches_the_cache(model: VideoLLM) -> None:
    cache = model.new_cache()
    chunk = model.text_chunk(model.build_prompt(QUESTION).suffix_ids, 0)
    model.prefill(cache, chunk)
    stored = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert stored == model.lm_spec.kv_bytes_per_token * len(chunk)


# -------------------------------------------------------------------------------- idefics3


@torch.no_grad()
def test_idefics3_frames_equal_the_idefics3_processor_and_model(idefics3_dir: Path) -> None:
    """Idefics3 (no video path) lays frames out as consecutive images, exactly as its own
    processor builds a multi-image prompt, and its forward agrees with ours."""
    model = load_model(idefics3_dir, family="smolvlm")
    assert isinstance(model, SmolVLMAdapter) and model.model_type == "idefics3"
    assert model.chat_template == SMOLVLM_CHAT_TEMPLATE
    batch = frames(2, (60, 80), seed=9)
    processor = Idefics3Processor(
        image_processor=SmolVLMImageProcessorPil.from_pretrained(str(idefics3_dir)),
        tokenizer=model.tokenizer,
        image_seq_len=model.vision_spec.tokens_per_step,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": QUESTION}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )
    inputs = processor(text=text, images=[batch], return_tensors="pt")
    pixels = model.preprocess(batch)
    assert torch.equal(pixels, inputs["pixel_values"][0])
    chunks = prompt_chunks(model, pixels, QUESTION, [0.0, 1.0])
    whole = LMChunk.concat(chunks)
    assert len(whole) == inputs["input_ids"].shape[1]
    logits = model.prefill(model.new_cache(), whole, want_logits=True)
    library = model.model(
        input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]
    ).logits[0, -1]
    assert logits is not None
    torch.testing.assert_close(logits, library, atol=1e-4, rtol=0)
    tokens = model.encode_pixels(pixels)
    features = model.model.model.get_image_features(pixels[None]).pooler_output
    torch.testing.assert_close(
        torch.cat([t.embeds for t in tokens]), torch.cat(list(features)), atol=1e-5, rtol=0
    )


# ------------------------------------------------------------------------ checkpoints, CLI


@torch.no_grad()
def test_checkpoint_round_trips_through_save_and_load(
    model: VideoLLM, tiny_model_dir: TinyDir
) -> None:
    folder = tiny_model_dir("smolvlm")
    built = build_test_adapter("smolvlm", seed=0)
    state = model.model.state_dict()
    assert state.keys() == built.model.state_dict().keys()
    for name, tensor in built.model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    batch = frames(2, (432, 768), seed=11)
    assert torch.equal(built.preprocess(batch), model.preprocess(batch))
    assert built.build_prompt(QUESTION) == model.build_prompt(QUESTION)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 3_000_000
    assert json.loads((folder / MARKER_FILE).read_text())["family"] == "smolvlm"
    with pytest.raises(WrongFamilyError, match="smolvlm"):
        load_model(folder, family="llava_onevision")


def test_make_test_model_command_writes_a_deterministic_loadable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["make-test-model", "--family", "smolvlm", str(tmp_path / "a")]) == 0
    assert "smolvlm" in capsys.readouterr().out
    assert cli_main(["make-test-model", "--family", "smolvlm", str(tmp_path / "b")]) == 0
    cli_main(["make-test-model", "--family", "smolvlm", "--seed", "3", str(tmp_path / "c")])
    wa, wb, wc = (load_file(str(tmp_path / n / "model.safetensors")) for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    loaded = load_model(tmp_path / "a", family="smolvlm")
    assert loaded.family == "smolvlm" and loaded.vision_spec.tokens_per_step == 16


def test_folder_without_image_processor_config_is_refused(
    tiny_model_dir: TinyDir, tmp_path: Path
) -> None:
    copy = shutil.copytree(tiny_model_dir("smolvlm"), tmp_path / "copy")
    (copy / "preprocessor_config.json").unlink()
    with pytest.raises(IncompleteModelError, match=r"preprocessor_config\.json"):
        load_model(copy)
