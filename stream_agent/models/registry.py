"""The model families this runtime supports, keyed by name, and how to tell them apart.

A family is recognised by the ``model_type`` in a checkpoint's ``config.json``. Its adapter class is
imported only when a model of that family is loaded. To add a family, add one :class:`Family` to
:data:`FAMILIES` (and a builder to :mod:`stream_agent.models.testing`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stream_agent.models.errors import UnsupportedFamilyError

if TYPE_CHECKING:
    from stream_agent.models.base import VideoLLM


@dataclass(frozen=True, slots=True)
class Family:
    """A supported model family.

    ``model_types`` are the ``config.json`` ``model_type`` values of its checkpoints; ``adapter``
    is ``"module:Class"`` of its :class:`~stream_agent.models.base.VideoLLM` subclass.
    """

    name: str
    model_types: tuple[str, ...]
    adapter: str
    description: str


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="llava_onevision",
            model_types=("llava_onevision",),
            adapter="stream_agent.models.llava_onevision:LlavaOnevisionAdapter",
            description="LLaVA-OneVision (SigLIP vision tower + Qwen2 LLM)",
        ),
        Family(
            name="qwen2_vl",
            model_types=("qwen2_vl",),
            adapter="stream_agent.models.qwen2_vl:Qwen2VLAdapter",
            description="Qwen2-VL (ViT with 2x2 patch merging + Qwen2 LLM with M-RoPE)",
        ),
        Family(
            name="qwen2_5_vl",
            model_types=("qwen2_5_vl",),
            adapter="stream_agent.models.qwen2_vl:Qwen2_5_VLAdapter",
            description="Qwen2.5-VL (windowed ViT with 2x2 patch merging + Qwen2 LLM with M-RoPE)",
        ),
        Family(
            name="smolvlm",
            model_types=("smolvlm", "idefics3"),
            adapter="stream_agent.models.smolvlm:SmolVLMAdapter",
            description="SmolVLM2 / Idefics3 (SigLIP vision tower, pixel shuffle + Llama LLM)",
        ),
    )
}


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def get_family(name: str) -> Family:
    """The family called ``name``; :class:`UnsupportedFamilyError` lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnsupportedFamilyError(
            f"unknown model family {name!r}; supported: {', '.join(FAMILIES)}"
        ) from None


def family_for_config(config: Mapping[str, Any], where: str = "the model") -> Family:
    """The family of a checkpoint from its parsed ``config.json``."""
    model_type = config.get("model_type")
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise UnsupportedFamilyError(
        f"{where} is a {model_type!r} model, which this runtime does not support; "
        f"supported model types: {supported}"
    )


def adapter_class(family: Family) -> type[VideoLLM]:
    """Import and return the family's adapter class."""
    module_name, _, class_name = family.adapter.partition(":")
    cls: type[VideoLLM] = getattr(importlib.import_module(module_name), class_name)
    return cls
