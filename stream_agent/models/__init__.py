"""The model runtime: video-LLM adapters behind one family-neutral interface.

Load a checkpoint with :func:`load_model` (a local folder, or a Hugging Face id where a hub is
reachable) and use the returned :class:`VideoLLM`; see :mod:`stream_agent.models.base` for what it
offers and :mod:`stream_agent.models.records` for the records it passes. This package (with the
memory) is the only place that imports transformers.

Names are imported lazily, so that reading the family registry (``stream-agent --help``) does not
import torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream_agent.models.base import VideoLLM
    from stream_agent.models.errors import (
        DeviceError,
        IncompleteModelError,
        InputError,
        ModelNotFoundError,
        ModelUnavailableError,
        NotAModelError,
        PromptError,
        UnsupportedFamilyError,
        WrongFamilyError,
    )
    from stream_agent.models.loading import (
        ModelLoader,
        detect_family,
        load_model,
        model_device,
        model_loader,
    )
    from stream_agent.models.records import (
        DecodeOptions,
        DecodeStep,
        FrameTransform,
        LMChunk,
        LMSpec,
        PromptLayout,
        VisionSpec,
        VisualTokens,
    )
    from stream_agent.models.registry import FAMILIES, Family, family_names, get_family

_WHERE = {
    "VideoLLM": "base",
    "DeviceError": "errors",
    "IncompleteModelError": "errors",
    "InputError": "errors",
    "ModelNotFoundError": "errors",
    "ModelUnavailableError": "errors",
    "NotAModelError": "errors",
    "PromptError": "errors",
    "UnsupportedFamilyError": "errors",
    "WrongFamilyError": "errors",
    "detect_family": "loading",
    "load_model": "loading",
    "ModelLoader": "loading",
    "model_device": "loading",
    "model_loader": "loading",
    "DecodeOptions": "records",
    "DecodeStep": "records",
    "FrameTransform": "records",
    "LMChunk": "records",
    "LMSpec": "records",
    "PromptLayout": "records",
    "VisionSpec": "records",
    "VisualTokens": "records",
    "FAMILIES": "registry",
    "Family": "registry",
    "family_names": "registry",
    "get_family": "registry",
}

__all__ = [
    "FAMILIES",
    "DecodeOptions",
    "DecodeStep",
    "DeviceError",
    "Family",
    "FrameTransform",
    "IncompleteModelError",
    "InputError",
    "LMChunk",
    "LMSpec",
    "ModelLoader",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "NotAModelError",
    "PromptError",
    "PromptLayout",
    "UnsupportedFamilyError",
    "VideoLLM",
    "VisionSpec",
    "VisualTokens",
    "WrongFamilyError",
    "detect_family",
    "family_names",
    "get_family",
    "load_model",
    "model_device",
    "model_loader",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
