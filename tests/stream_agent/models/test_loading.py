"""Loading checkpoints: family detection, clear errors, and test checkpoints that round-trip."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stream_agent.config import ModelConfig
from stream_agent.errors import ModelError
from stream_agent.models import (
    DeviceError,
    IncompleteModelError,
    ModelNotFoundError,
    ModelUnavailableError,
    NotAModelError,
    UnsupportedFamilyError,
    WrongFamilyError,
    detect_family,
    load_model,
    model_device,
    model_loader,
    registry,
)
from stream_agent.models.registry import Family
from stream_agent.models.testing import (
    MARKER_FILE,
    CheckpointBuildError,
    build_parts,
    build_test_adapter,
    make_test_model,
)

TinyDir = Callable[[str], Path]


def test_loaded_checkpoint_equals_the_built_one(tiny_model_dir: TinyDir) -> None:
    folder = tiny_model_dir("llava_onevision")
    assert detect_family(folder).name == "llava_onevision"
    loaded = load_model(folder, family="llava_onevision")
    assert loaded.family == "llava_onevision" and loaded.folder == folder
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    built = build_parts("llava_onevision", seed=0).model.state_dict()
    state = loaded.model.state_dict()
    assert state.keys() == built.keys()
    for name, tensor in built.items():
        assert torch.equal(state[name], tensor), name
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 3_000_000
    assert json.loads((folder / MARKER_FILE).read_text())["family"] == "llava_onevision"


def test_test_checkpoints_are_deterministic_from_the_seed(tmp_path: Path) -> None:
    a = make_test_model("llava_onevision", tmp_path / "a", seed=7)
    b = make_test_model("llava_onevision", tmp_path / "b", seed=7)
    c = make_test_model("llava_onevision", tmp_path / "c", seed=8)
    wa, wb, wc = (load_file(str(p / "model.safetensors")) for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    for name in ("tokenizer.json", "config.json", "preprocessor_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_make_test_model_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointBuildError, match="not empty"):
        make_test_model("llava_onevision", tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_in_memory_adapter_equals_the_saved_one(tiny_model_dir: TinyDir) -> None:
    memory = build_test_adapter("llava_onevision", seed=0)
    saved = load_model(tiny_model_dir("llava_onevision"))
    assert memory.transform == saved.transform
    assert memory.vision_spec == saved.vision_spec and memory.lm_spec == saved.lm_spec
    assert memory.build_prompt("hi") == saved.build_prompt("hi")


# ----------------------------------------------------------------------------------- errors


def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(NotAModelError, match=r"no config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(NotAModelError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(NotAModelError, match="no model_type"):
        load_model(tmp_path)
    with pytest.raises(NotAModelError, match="is a file"):
        load_model(tmp_path / "config.json")


def test_other_model_types_are_unsupported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedFamilyError, match=r"'bert'.*llava_onevision"):
        load_model(tmp_path)
    with pytest.raises(UnsupportedFamilyError, match="unknown model family"):
        load_model(tmp_path, family="no_such_family")


def test_wrong_family_is_named(tiny_model_dir: TinyDir, monkeypatch: pytest.MonkeyPatch) -> None:
    other = Family(
        "other_family", ("other_type",), "stream_agent.models.llava_onevision:X", "other"
    )
    monkeypatch.setitem(registry.FAMILIES, other.name, other)
    with pytest.raises(WrongFamilyError, match=r"not other_family.*--family llava_onevision"):
        load_model(tiny_model_dir("llava_onevision"), family="other_family")


def test_missing_parts_are_reported(tiny_model_dir: TinyDir, tmp_path: Path) -> None:
    source = tiny_model_dir("llava_onevision")
    no_processor = tmp_path / "no_processor"
    shutil.copytree(source, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(IncompleteModelError, match=r"preprocessor_config\.json"):
        load_model(no_processor)
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(source, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(IncompleteModelError, match="tokenizer"):
        load_model(no_tokenizer)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(source, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(IncompleteModelError, match="weights"):
        load_model(no_weights)


def test_hub_ids_without_download_ask_for_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="pass its local folder"):
        load_model("stream-agent-tests/no-such-model-xyz", allow_download=False)
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        load_model(tmp_path / "missing" / "dir")


def test_the_configured_device_and_loader(
    tiny_model_dir: TinyDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's way in (model_device, model_loader), moved here from daemon.py."""
    auto = model_device(ModelConfig())
    assert auto == "cuda" if torch.cuda.is_available() else auto in ("mps", "cpu")
    assert model_device(ModelConfig(device="cpu")) == "cpu"
    model = model_loader(ModelConfig(path=tiny_model_dir("llava_onevision"), device="cpu"))()
    assert model.family == "llava_onevision" and model.device.type == "cpu"
    with pytest.raises(ModelNotFoundError, match="no model folder"):  # a folder: as it is
        model_loader(ModelConfig(path=tmp_path / "missing"))()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub library's own switch: fail fast
    with pytest.raises(ModelUnavailableError, match="--model DIR"):  # a hub id: how to fix
        model_loader(ModelConfig(id="stream-agent-tests/no-such-model-xyz"))()


def test_bad_device_and_dtype(tiny_model_dir: TinyDir) -> None:
    folder = tiny_model_dir("llava_onevision")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            load_model(folder, device="cuda")
    with pytest.raises(DeviceError, match="unknown dtype"):
        load_model(folder, dtype="float8")


def test_model_errors_map_to_the_model_exit_code() -> None:
    for cls in (NotAModelError, WrongFamilyError, IncompleteModelError, CheckpointBuildError):
        assert issubclass(cls, ModelError) and cls("x").exit_code == ModelError.exit_code


def test_realistic_shape_is_llava_onevision_0_5b() -> None:
    """The realistic config (on the meta device: shapes only, no memory) has the real sizes."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from stream_agent.models.llava_onevision import LlavaOnevisionAdapter
    from stream_agent.models.records import FrameTransform
    from stream_agent.models.testing import (
        LLAVA_ONEVISION_CHAT_TEMPLATE,
        llava_onevision_config,
        llava_onevision_tokenizer,
    )

    tokenizer = llava_onevision_tokenizer()
    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(llava_onevision_config(tokenizer, True))
    adapter = LlavaOnevisionAdapter(
        model=model,
        tokenizer=tokenizer,
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
        transform=FrameTransform(384, 384, (0.5,) * 3, (0.5,) * 3, 1 / 255, 3),
    )
    vision, lm = adapter.vision_spec, adapter.lm_spec
    assert (vision.patch_grid, vision.token_grid) == ((27, 27), (14, 14))
    assert vision.tokens_per_step == 196
    assert (vision.hidden_size, vision.num_layers, len(adapter.vision_layers)) == (1152, 26, 26)
    assert (lm.num_layers, lm.hidden_size, lm.num_heads, lm.num_kv_heads) == (24, 896, 14, 2)
    assert lm.kv_bytes_per_token == 24 * 1024  # 24 KiB per token in float32
    assert 890e6 < sum(p.numel() for p in model.parameters()) < 900e6
