"""Load a model from a local folder or a Hugging Face id, on a device, in a dtype.

:func:`model_loader` is the daemon's way in: the loader of the model its config names, on the
device :func:`model_device` picks (``auto``: a GPU where there is one).

The family is read from the folder's ``config.json`` and its adapter does the rest. A source that is
not an existing path but looks like ``owner/name`` is looked up in the local Hugging Face cache and,
if ``allow_download``, fetched from the Hub; when that fails (no network here), the error says to
pass a local folder.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stream_agent.models.base import VideoLLM
from stream_agent.models.errors import (
    DeviceError,
    ModelNotFoundError,
    ModelUnavailableError,
    NotAModelError,
    WrongFamilyError,
)
from stream_agent.models.registry import Family, adapter_class, family_for_config, get_family

if TYPE_CHECKING:
    from stream_agent.config import ModelConfig

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``None`` -> float32 on CPU (bf16 is many times slower there), bfloat16 on accelerators."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise DeviceError(
            f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}"
        ) from None


def parse_device(device: torch.device | str) -> torch.device:
    """A torch device, checked to exist on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but CUDA is not available here; use cpu")
    return dev


def resolve_source(source: str | Path, *, allow_download: bool = True) -> Path:
    """The local folder for ``source`` (a folder path or a Hugging Face id)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotAModelError(f"{path} is a file; pass the model's folder (with config.json)")
        return path
    text = str(source)
    if not _HUB_ID.match(text):
        raise ModelNotFoundError(f"no model folder at {path}; pass an existing local folder")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=text, local_files_only=not allow_download)
    except Exception as exc:  # network, auth, missing repo, offline mode: one answer for the user
        how = (
            "fetching it from the Hugging Face Hub failed"
            if allow_download
            else ("it is not in the local Hugging Face cache and downloads are off")
        )
        raise ModelNotFoundError(
            f"{text!r} is not a local folder and {how} ({type(exc).__name__}); download the "
            "model on a connected machine and pass its local folder instead"
        ) from exc
    log.info("model %s resolved to %s", text, local)
    return Path(local)


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's parsed ``config.json``, or :class:`NotAModelError`."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise NotAModelError(
            f"{folder} is not a model folder (no config.json); pass the folder that holds the "
            "checkpoint's config.json, weights and tokenizer"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotAModelError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise NotAModelError(f"{config_path} has no model_type; it is not a transformers model")
    return config


def detect_family(folder: Path) -> Family:
    """The family of the checkpoint in ``folder``."""
    return family_for_config(read_config(folder), where=str(folder))


def load_model(
    source: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    family: str | None = None,
    allow_download: bool = True,
) -> VideoLLM:
    """Load the model at ``source`` (folder or Hugging Face id) as its family's adapter.

    ``family`` (a name from :mod:`stream_agent.models.registry`), when given, must match the
    checkpoint's. ``dtype`` defaults to float32 on CPU and bfloat16 on accelerators.
    """
    wanted = get_family(family) if family is not None else None
    dev = parse_device(device)
    torch_dtype = parse_dtype(dtype, dev)
    folder = resolve_source(source, allow_download=allow_download)
    found = detect_family(folder)
    if wanted is not None and wanted.name != found.name:
        raise WrongFamilyError(
            f"{folder} holds a {found.description} model ({found.name}), not {wanted.name}; "
            f"pass a {wanted.name} checkpoint or --family {found.name}"
        )
    log.info("loading %s model from %s on %s (%s)", found.name, folder, dev, torch_dtype)
    model = adapter_class(found).from_folder(folder, device=dev, dtype=torch_dtype)
    log.info("loaded %s model from %s", found.name, folder)
    return model


ModelLoader = Callable[[], VideoLLM]
"""Builds the model when called (the engine thread calls it once)."""


def model_device(config: ModelConfig) -> str:
    """``auto`` -> ``cuda`` where a GPU is present, ``mps`` on Apple silicon, else ``cpu``."""
    if config.device != "auto":
        return config.device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def model_loader(config: ModelConfig) -> ModelLoader:
    """The loader of the configured model; its errors tell how to point at a local folder."""

    def load() -> VideoLLM:
        dtype = None if config.dtype == "auto" else config.dtype
        try:
            return load_model(config.source, device=model_device(config), dtype=dtype)
        except ModelNotFoundError as exc:
            if config.path is not None:
                raise
            raise ModelUnavailableError(
                f"{exc}. No model hub is reachable from here, or the model is not in the local "
                "Hugging Face cache: pass a local model folder with --model DIR (or model.path in "
                "the config file); for an offline demo whose answers are noise, build a tiny test "
                "model with `stream-agent make-test-model --family llava_onevision "
                "/tmp/tiny-llava` and serve it with --model /tmp/tiny-llava"
            ) from exc

    return load
