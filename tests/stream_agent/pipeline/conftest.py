"""Fixtures of the pipeline tests."""

from __future__ import annotations

import pytest

from stream_agent.models import VideoLLM
from stream_agent.models.testing import build_test_adapter


@pytest.fixture(scope="module")
def llava() -> VideoLLM:
    """The tiny LLaVA-OneVision test model (one per module: some tests change it)."""
    return build_test_adapter("llava_onevision")
